#include <algorithm>
#include <filesystem>
#include <map>
#include <string>

#include "cast/cast.h"
#include "hoist/catalog.h"
#include "hoist/plan.h"
#include "hoist/writer.h"
#include "io/file.h"
#include "util/text.h"

namespace hoist {

Result<WriteResult> ConvertCheckpoint(const Catalog& catalog, const std::string& dst,
                                      const ConvertOptions& options) {
  if (options.cast_to && !IsCastableFloat(*options.cast_to)) {
    return InvalidArgument("--dtype must be bf16, f16 or f32");
  }
  // Writing over the source would truncate it while it is being read.
  for (const CatalogFile& f : catalog.files()) {
    std::error_code ec;
    const std::filesystem::path src(f.path);
    if (std::filesystem::equivalent(src, dst, ec) ||
        std::filesystem::equivalent(src.parent_path().empty() ? "." : src.parent_path(), dst, ec)) {
      return InvalidArgument(dst + ": this is (or holds) the checkpoint being converted, " + f.path +
                             "; write somewhere else");
    }
  }
  // What to write, under which names and dtypes, is what a load onto the
  // cpu would plan: the same key mapping, filter and cast rules.
  PlanOptions po;
  po.cast_to = options.cast_to;
  po.only_regex = options.only_regex;
  po.compat_hf_legacy = options.compat_hf_legacy;
  po.drops = options.drops;
  for (const auto& [pattern, replacement] : options.renames) po.renames.push_back({pattern, replacement});
  po.shard = options.shard;
  po.splits = options.splits;
  po.device = DeviceId::Cpu();
  HOIST_ASSIGN_OR_RETURN(LoadPlan plan, BuildPlan(catalog, po));
  if (plan.tensors.empty() && !catalog.tensors().empty()) {  // an empty checkpoint is no conversion of this one
    const std::filesystem::path first(catalog.files().front().path);
    const std::string src = catalog.files().size() == 1 ? first.string() : first.parent_path().string();
    return InvalidArgument(Printable(src) + ": none of the checkpoint's " + std::to_string(catalog.tensors().size()) +
                           " tensors is kept (" + Opt("--only") + " or " + Opt("--drop") +
                           " left out every one); nothing was written");
  }
  std::vector<const PlannedTensor*> selected;
  std::vector<OutTensor> out;
  out.reserve(plan.tensors.size());
  for (const PlannedTensor& p : plan.tensors) {
    selected.push_back(&p);
    out.push_back({p.name, p.dtype, p.shape, p.size_bytes});  // a split tensor: its part's shape
  }
  std::vector<File> files;
  for (const CatalogFile& f : catalog.files()) {
    HOIST_ASSIGN_OR_RETURN(File file, File::OpenRead(f.path));
    files.push_back(std::move(file));
  }
  // Bytes [at, at + size) of a planned tensor's stored bytes: one read per
  // run they cross (a part split along an inner dimension is one run per
  // outer index; anything else is one run).
  auto read_stored = [&](const PlannedTensor& p, uint64_t at, uint64_t size, unsigned char* to) -> Status {
    const File& file = files[p.source->file_index];
    if (p.runs <= 1) return file.ReadAt(p.file_offset_bytes + at, to, size);
    while (size > 0) {
      const uint64_t n = std::min(size, p.run_bytes - at % p.run_bytes);
      HOIST_RETURN_IF_ERROR(file.ReadAt(FileOffsetOf(p, at), to, n));
      at += n;
      to += n;
      size -= n;
    }
    return Status::Ok();
  };
  FillFn fill = [&](size_t index, uint64_t offset, uint64_t size, unsigned char* dst_bytes) -> Status {
    const PlannedTensor& p = *selected[index];
    const DType stored = p.source->dtype, target = out[index].dtype;
    if (target == stored) return read_stored(p, offset, size, dst_bytes);
    uint64_t out_elem = static_cast<uint64_t>(DTypeBits(target) / 8);
    uint64_t src_elem = static_cast<uint64_t>(DTypeBits(stored) / 8);
    uint64_t first = offset / out_elem, count = size / out_elem;
    thread_local std::vector<unsigned char> scratch;
    scratch.resize(count * src_elem);
    HOIST_RETURN_IF_ERROR(read_stored(p, first * src_elem, scratch.size(), scratch.data()));
    CastFloats(stored, scratch.data(), target, dst_bytes, count);
    return Status::Ok();
  };
  WriteOptions write = options.write;
  // Never remove a source, nor the index that makes its shards a checkpoint.
  for (const CatalogFile& f : catalog.files()) {
    write.keep_files.push_back(f.path);
    write.keep_files.push_back((std::filesystem::path(f.path).parent_path() / kIndexFileName).string());
  }
  // One rank's part says so, beside the source's own metadata.
  std::map<std::string, std::string> metadata = catalog.metadata();
  if (options.shard) {
    // transformers before 5 refuses metadata without a format.
    metadata.emplace("format", "pt");
    metadata["hoist.shard"] = std::to_string(options.shard->rank) + "/" + std::to_string(options.shard->world);
    std::string rules;
    for (const SplitRule& r : options.splits) rules += (rules.empty() ? "" : "\n") + r.pattern + "=" + std::to_string(r.dim);
    metadata["hoist.split"] = rules;
  }
  HOIST_ASSIGN_OR_RETURN(WriteResult result, WriteCheckpoint(dst, out, metadata, write, fill));
  // The plan's warnings first, then the write's own (leftovers of other
  // writes, a directory that could not be synced).
  result.warnings.insert(result.warnings.begin(), plan.warnings.begin(), plan.warnings.end());
  return result;
}

}  // namespace hoist
