#include "format/safetensors.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "format/json_util.h"
#include "io/file.h"
#include "util/text.h"

namespace hoist {
namespace {

using nlohmann::json;

constexpr std::string_view kLfsPrefix = "version https://git-lfs";
constexpr uint64_t kPrefixBytes = 64;

std::string Num(uint64_t v) { return std::to_string(v); }

// A JSON value that is a non-negative integer (what serde's usize accepts).
bool AsUnsigned(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

Status ParseTensorEntry(std::string_view label, const std::string& name, const json& entry,
                        HeaderTensor* out) {
  auto fail = [&](const std::string& what) {
    return Corruption(std::string(label) + ": tensor " + QuoteName(name) + ": " + what);
  };
  if (!entry.is_object()) return fail("entry is not a JSON object");
  auto dtype_it = entry.find("dtype");
  auto shape_it = entry.find("shape");
  auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end()) return fail("missing \"dtype\"");
  if (shape_it == entry.end()) return fail("missing \"shape\"");
  if (offsets_it == entry.end()) return fail("missing \"data_offsets\"");

  if (!dtype_it->is_string()) return fail("\"dtype\" is not a string");
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  auto dtype = ParseDTypeName(dtype_name);
  if (!dtype) return fail("unknown dtype " + QuoteName(dtype_name));

  if (!shape_it->is_array()) return fail("\"shape\" is not an array");
  if (shape_it->size() > kMaxRank) {
    return fail("shape has " + Num(shape_it->size()) + " dimensions, more than " + Num(kMaxRank));
  }
  std::vector<uint64_t> shape;
  shape.reserve(shape_it->size());
  for (const json& dim : *shape_it) {
    uint64_t d = 0;
    if (!AsUnsigned(dim, &d)) {
      return fail("shape entry " + Num(shape.size()) + " is not a non-negative integer");
    }
    shape.push_back(d);
  }

  if (!offsets_it->is_array() || offsets_it->size() != 2) {
    return fail("\"data_offsets\" is not a [begin, end] pair");
  }
  uint64_t begin = 0, end = 0;
  if (!AsUnsigned((*offsets_it)[0], &begin) || !AsUnsigned((*offsets_it)[1], &end)) {
    return fail("\"data_offsets\" holds something other than non-negative integers");
  }
  if (begin > end) return fail("data_offsets [" + Num(begin) + ", " + Num(end) + "] end before they begin");

  Result<uint64_t> nbytes = TensorBytes(*dtype, shape);
  if (!nbytes.ok()) return fail(nbytes.status().message());
  if (end - begin != *nbytes) {
    return fail("data_offsets [" + Num(begin) + ", " + Num(end) + "] span " + Num(end - begin) +
                " bytes but " + std::string(DTypeName(*dtype)) + " of this shape needs " + Num(*nbytes));
  }
  out->name = name;
  out->dtype = *dtype;
  out->shape = std::move(shape);
  out->begin_bytes = begin;
  out->end_bytes = end;
  return Status::Ok();
}

}  // namespace


bool IsValidUtf8(std::string_view bytes) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2, cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3, cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4, cp = c & 0x07;
    } else {
      return false;  // continuation byte, overlong lead (C0/C1) or > U+10FFFF lead
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return false;
    if (cp >= 0xD800 && cp <= 0xDFFF) return false;
    i += len;
  }
  return true;
}

Result<uint64_t> CheckHeaderLength(std::string_view label, std::string_view prefix,
                                   uint64_t file_size_bytes) {
  if (prefix.substr(0, kLfsPrefix.size()) == kLfsPrefix) {
    return Corruption(std::string(label) +
                      ": this is a Git LFS pointer file, not the weights (run `git lfs pull` "
                      "or download the file itself)");
  }
  if (file_size_bytes < 8) {
    return Corruption(std::string(label) + ": file is " + Num(file_size_bytes) +
                      " bytes, too short for the 8-byte header length");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(prefix[i]);
  if (n > kMaxHeaderBytes) {
    return Corruption(std::string(label) + ": header length " + Num(n) + " exceeds the limit of " +
                      Num(kMaxHeaderBytes) + " bytes (truncated download or not a safetensors file?)");
  }
  if (8 + n > file_size_bytes) {
    return Corruption(std::string(label) + ": header length " + Num(n) + " runs past the end of the " +
                      Num(file_size_bytes) + "-byte file (truncated?)");
  }
  return n;
}

Result<ParsedHeader> ParseHeaderJson(std::string_view label, std::string_view json_text,
                                     uint64_t data_bytes) {
  HOIST_ASSIGN_OR_RETURN(json doc, ParseJsonStrict(std::string(label) + ": header", json_text));
  if (!doc.is_object()) return Corruption(std::string(label) + ": header is not a JSON object");

  ParsedHeader out;
  out.header_bytes = json_text.size();
  out.data_offset_bytes = 8 + json_text.size();
  out.data_bytes = data_bytes;
  out.tensors.reserve(doc.size());
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    const std::string& key = it.key();
    if (key == "__metadata__") {
      if (it->is_null()) continue;
      if (!it->is_object()) return Corruption(std::string(label) + ": __metadata__ is not a JSON object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return Corruption(std::string(label) + ": __metadata__ value for " + QuoteName(m.key()) +
                            " is not a string");
        }
        out.metadata.emplace_back(m.key(), m->get<std::string>());
      }
      continue;
    }
    HeaderTensor t;
    HOIST_RETURN_IF_ERROR(ParseTensorEntry(label, key, *it, &t));
    out.tensors.push_back(std::move(t));
  }

  std::sort(out.tensors.begin(), out.tensors.end(), [](const HeaderTensor& a, const HeaderTensor& b) {
    return a.begin_bytes != b.begin_bytes ? a.begin_bytes < b.begin_bytes : a.end_bytes < b.end_bytes;
  });
  uint64_t expected = 0;
  for (const HeaderTensor& t : out.tensors) {
    std::string where = std::string(label) + ": tensor " + QuoteName(t.name) + ": data_offsets [" +
                        Num(t.begin_bytes) + ", " + Num(t.end_bytes) + "]";
    if (t.end_bytes > data_bytes) {
      return Corruption(where + " run past the end of the " + Num(data_bytes) +
                        "-byte data section (truncated file?)");
    }
    if (t.begin_bytes > expected) {
      return Corruption(where + " leave a gap: the previous tensor ends at " + Num(expected));
    }
    if (t.begin_bytes < expected) {
      return Corruption(where + " overlap the previous tensor, which ends at " + Num(expected));
    }
    expected = t.end_bytes;
  }
  if (expected != data_bytes) {
    return Corruption(std::string(label) + ": " + Num(data_bytes - expected) +
                      " bytes after the last tensor belong to no tensor");
  }
  return out;
}

Result<ParsedHeader> ParseSafetensorsBuffer(std::string_view label, std::string_view file_bytes) {
  HOIST_ASSIGN_OR_RETURN(uint64_t n, CheckHeaderLength(label, file_bytes.substr(0, kPrefixBytes),
                                                       file_bytes.size()));
  return ParseHeaderJson(label, file_bytes.substr(8, n), file_bytes.size() - 8 - n);
}

Result<ParsedHeader> ReadSafetensorsHeader(const File& file) {
  const std::string label = Printable(file.path());
  std::string prefix(std::min<uint64_t>(file.size_bytes(), kPrefixBytes), '\0');
  HOIST_RETURN_IF_ERROR(file.ReadAt(0, prefix.data(), prefix.size()));
  HOIST_ASSIGN_OR_RETURN(uint64_t n, CheckHeaderLength(label, prefix, file.size_bytes()));
  std::string header(n, '\0');
  HOIST_RETURN_IF_ERROR(file.ReadAt(8, header.data(), n));
  return ParseHeaderJson(label, header, file.size_bytes() - 8 - n);
}

}  // namespace hoist
