// Checkpoints named as transformers names them: "org/name" (or a legacy
// "name"), read from the Hugging Face hub cache that huggingface_hub
// downloads into. hoist reads no network; a model has to be downloaded
// first (huggingface_hub's snapshot_download, `hf download`).
#pragma once

#include <string>
#include <string_view>

#include "hoist/status.h"

namespace hoist {

// The hub cache directory, as huggingface_hub finds it: $HF_HUB_CACHE, else
// $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
std::string HubCacheDir();

// `path` itself when it exists. Otherwise, when it is shaped like a repo id
// ("org/name" or "name", optionally "@REVISION"), the snapshot directory that
// the cache's refs/main (refs/REVISION, or snapshots/REVISION for a commit
// hash) names, if the cache holds it. An "org/name" it does not hold is
// NotFound, saying where it looked; anything else comes back unchanged, for
// the caller's own "not found".
Result<std::string> ResolveCheckpointPath(std::string_view path);

}  // namespace hoist
