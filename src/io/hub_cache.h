// Checkpoints named as transformers names them: "org/name" (or a legacy
// "name"), read from the Hugging Face hub cache that huggingface_hub
// downloads into. hoist reads no network; a model has to be downloaded
// first (huggingface_hub's snapshot_download, `hf download`).
#pragma once

#include <string>
#include <string_view>

#include "hoist/status.h"

namespace hoist {

// The hub cache directory, as huggingface_hub.constants finds it:
// $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub; "~", "~user" and
// $VARIABLES in them expanded as Python expands them.
std::string HubCacheDir();

// `path` itself when it exists. Otherwise, when it is a repo id as
// huggingface_hub validates one ("org/name" or "name", not ending in
// .safetensors or .json, which are taken for missing files), optionally with
// "@REVISION", the snapshot that snapshot_download(local_files_only=True)
// gives: a 40-hex REVISION is the commit, anything else (main by default)
// the commit its refs/ file holds. A snapshot whose weight files
// (*.safetensors, the index) fall short of the commit's listing
// (trees/COMMIT.json) is an interrupted download: NotFound, as
// huggingface_hub refuses it (which also asks for every other file listed).
// An "org/name" or "name@REVISION" the cache lacks is NotFound, saying where
// it looked; anything else comes back unchanged, for the caller's own "not
// found".
Result<std::string> ResolveCheckpointPath(std::string_view path);

}  // namespace hoist
