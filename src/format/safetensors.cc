#include "format/safetensors.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <string>

#include "format/json_util.h"
#include "io/file.h"
#include "util/text.h"

namespace hoist {
namespace {

constexpr std::string_view kLfsPrefix = "version https://git-lfs";
constexpr uint64_t kPrefixBytes = 64;

std::string Num(uint64_t v) { return std::to_string(v); }

// The header's tensors, built straight from the parser's events: no DOM, so
// a header costs one pass over its text and the tensors themselves (a
// 100k-tensor header parses several times faster than through a DOM).
//
// Where a value is wrong the handler notes the first such problem and parses
// on, so that a syntax error, a repeated key or too deep a nesting later in
// the text is still the error reported, as it would be for any other JSON.
class HeaderSax : public StrictSax {
 public:
  explicit HeaderSax(std::string_view label) : label_(label) {}

  bool null() { return Scalar(/*is_null=*/true); }
  bool boolean(bool) { return Scalar(); }
  bool number_integer(int64_t v) { return v >= 0 ? Unsigned(static_cast<uint64_t>(v)) : Scalar(); }
  bool number_unsigned(uint64_t v) { return Unsigned(v); }
  bool number_float(double, const std::string&) { return Scalar(); }
  bool binary(nlohmann::json::binary_t&) { return Scalar(); }
  bool string(std::string& s);
  bool start_object(std::size_t);
  bool start_array(std::size_t);
  bool end_object();
  bool end_array();
  bool key(std::string& k);

  bool root_is_object() const { return root_is_object_; }
  // The first tensor name that repeats an earlier one, or null.
  const std::string* RepeatedName() const {
    size_t i = FirstRepeatedName(tensors_.size(), [&](size_t k) { return std::string_view(tensors_[k].name); });
    return i == tensors_.size() ? nullptr : &tensors_[i].name;
  }
  const Status& problem() const { return problem_; }
  std::vector<HeaderTensor>& tensors() { return tensors_; }
  std::vector<std::pair<std::string, std::string>> TakeMetadata() {
    return {std::make_move_iterator(metadata_.begin()), std::make_move_iterator(metadata_.end())};
  }

 private:
  enum class Frame : uint8_t { kRoot, kMetadata, kEntry, kShape, kOffsets, kSkip };
  enum class Field : uint8_t { kOther, kDtype, kShape, kOffsets };
  // What an entry said about one of its fields before it is judged.
  enum class Seen : uint8_t { kAbsent, kWrongType, kPresent };

  struct Entry {
    Seen dtype = Seen::kAbsent, shape = Seen::kAbsent, data_offsets = Seen::kAbsent;
    std::string dtype_name;
    uint64_t rank = 0;           // shape elements seen (only kMaxRank are kept)
    int64_t first_bad_dim = -1;  // index of the first shape element that is not a usize
    uint64_t offsets_count = 0;
    uint64_t offsets[2] = {0, 0};
    bool offsets_ok[2] = {false, false};
    Field field = Field::kOther;  // the field whose value comes next
    KeySet other_keys;
  };

  // The first problem wins; later ones are not looked at.
  void Problem(Status s) {
    if (problem_.ok()) problem_ = std::move(s);
  }
  void TensorProblem(const std::string& what) {
    Problem(Corruption(std::string(label_) + ": tensor " + QuoteName(tensors_.back().name) + ": " + what));
  }
  // A value where the top frame expects something else; a container under it
  // is skipped whole.
  bool Container(bool is_object);

  bool Scalar(bool is_null = false);
  bool Unsigned(uint64_t v);
  void FinishEntry();

  std::string_view label_;
  std::vector<Frame> stack_;
  std::vector<KeySet> skip_keys_;  // one per kSkip object on the stack
  std::vector<HeaderTensor> tensors_;
  std::map<std::string, std::string> metadata_;
  std::string metadata_key_;
  bool metadata_seen_ = false;
  bool next_is_metadata_ = false;  // the root's current key is __metadata__
  bool root_is_object_ = false;
  Entry entry_;
  Status problem_;
};

bool HeaderSax::Scalar(bool is_null) {
  if (stack_.empty()) return true;  // a bare value: the root is not an object
  switch (stack_.back()) {
    case Frame::kRoot:
      if (next_is_metadata_) {
        if (!is_null) Problem(Corruption(std::string(label_) + ": __metadata__ is not a JSON object"));
      } else {
        TensorProblem("entry is not a JSON object");
      }
      break;
    case Frame::kMetadata:
      Problem(Corruption(std::string(label_) + ": __metadata__ value for " + QuoteName(metadata_key_) +
                         " is not a string"));
      break;
    case Frame::kEntry:
      if (entry_.field == Field::kDtype) entry_.dtype = Seen::kWrongType;
      if (entry_.field == Field::kShape) entry_.shape = Seen::kWrongType;
      if (entry_.field == Field::kOffsets) entry_.data_offsets = Seen::kWrongType;
      break;
    case Frame::kShape:
      if (entry_.first_bad_dim < 0) entry_.first_bad_dim = static_cast<int64_t>(entry_.rank);
      ++entry_.rank;
      break;
    case Frame::kOffsets:
      ++entry_.offsets_count;
      break;
    case Frame::kSkip:
      break;
  }
  return true;
}

bool HeaderSax::Unsigned(uint64_t v) {
  if (!stack_.empty() && stack_.back() == Frame::kShape) {
    if (entry_.rank < kMaxRank) tensors_.back().shape.push_back(v);
    ++entry_.rank;
    return true;
  }
  if (!stack_.empty() && stack_.back() == Frame::kOffsets) {
    if (entry_.offsets_count < 2) {
      entry_.offsets[entry_.offsets_count] = v;
      entry_.offsets_ok[entry_.offsets_count] = true;
    }
    ++entry_.offsets_count;
    return true;
  }
  return Scalar();
}

bool HeaderSax::string(std::string& s) {
  if (!stack_.empty() && stack_.back() == Frame::kMetadata) {
    metadata_.emplace(std::move(metadata_key_), std::move(s));
    return true;
  }
  if (!stack_.empty() && stack_.back() == Frame::kEntry && entry_.field == Field::kDtype) {
    entry_.dtype = Seen::kPresent;
    entry_.dtype_name = std::move(s);
    return true;
  }
  return Scalar();
}

bool HeaderSax::Container(bool is_object) {
  Frame next = Frame::kSkip;
  if (stack_.empty()) {
    if (is_object) {
      next = Frame::kRoot;
      root_is_object_ = true;
    }
  } else {
    switch (stack_.back()) {
      case Frame::kRoot:
        if (next_is_metadata_) {
          if (is_object) {
            next = Frame::kMetadata;
          } else {
            Problem(Corruption(std::string(label_) + ": __metadata__ is not a JSON object"));
          }
        } else if (is_object) {
          next = Frame::kEntry;
          entry_ = Entry();
        } else {
          TensorProblem("entry is not a JSON object");
        }
        break;
      case Frame::kEntry:
        if (!is_object && entry_.field == Field::kShape) {
          next = Frame::kShape;
          entry_.shape = Seen::kPresent;
        } else if (!is_object && entry_.field == Field::kOffsets) {
          next = Frame::kOffsets;
          entry_.data_offsets = Seen::kPresent;
        } else {
          Scalar();  // marks dtype, shape or data_offsets as the wrong type
        }
        break;
      case Frame::kSkip:
        break;
      default:
        Scalar();  // a metadata value, shape element or offset that is not a scalar
        break;
    }
  }
  stack_.push_back(next);
  if (next == Frame::kSkip && is_object) skip_keys_.emplace_back();
  return true;
}

bool HeaderSax::start_object(std::size_t) { return Enter() && Container(/*is_object=*/true); }
bool HeaderSax::start_array(std::size_t) { return Enter() && Container(/*is_object=*/false); }

bool HeaderSax::end_object() {
  Leave();
  Frame done = stack_.back();
  stack_.pop_back();
  if (done == Frame::kSkip) skip_keys_.pop_back();
  if (done == Frame::kEntry) FinishEntry();
  return true;
}

bool HeaderSax::end_array() {
  Leave();
  stack_.pop_back();
  return true;
}

bool HeaderSax::key(std::string& k) {
  switch (stack_.back()) {
    case Frame::kRoot:
      next_is_metadata_ = k == "__metadata__";
      if (next_is_metadata_) {
        if (metadata_seen_) return Repeated(k);
        metadata_seen_ = true;
        return true;
      }
      tensors_.emplace_back().name = std::move(k);  // repeats: RepeatedName()
      return true;
    case Frame::kMetadata:
      if (metadata_.count(k) != 0) return Repeated(k);
      metadata_key_ = std::move(k);
      return true;
    case Frame::kEntry: {
      Field f = k == "dtype" ? Field::kDtype : k == "shape" ? Field::kShape
                : k == "data_offsets" ? Field::kOffsets : Field::kOther;
      bool repeated = f == Field::kDtype    ? entry_.dtype != Seen::kAbsent
                      : f == Field::kShape  ? entry_.shape != Seen::kAbsent
                      : f == Field::kOffsets ? entry_.data_offsets != Seen::kAbsent
                                              : !entry_.other_keys.Insert(k);
      if (repeated) return Repeated(k);
      entry_.field = f;
      return true;
    }
    default:  // kSkip: an object nobody reads, still held to the no-repeated-keys rule
      if (!skip_keys_.back().Insert(k)) return Repeated(k);
      return true;
  }
}

// Judges a finished entry in a fixed order, so the message names the first
// of its problems whatever order the fields came in.
void HeaderSax::FinishEntry() {
  const Entry& e = entry_;
  HeaderTensor& t = tensors_.back();
  if (e.dtype == Seen::kAbsent) return TensorProblem("missing \"dtype\"");
  if (e.shape == Seen::kAbsent) return TensorProblem("missing \"shape\"");
  if (e.data_offsets == Seen::kAbsent) return TensorProblem("missing \"data_offsets\"");
  if (e.dtype == Seen::kWrongType) return TensorProblem("\"dtype\" is not a string");
  auto dtype = ParseDTypeName(e.dtype_name);
  if (!dtype) return TensorProblem("unknown dtype " + QuoteName(e.dtype_name));
  if (e.shape == Seen::kWrongType) return TensorProblem("\"shape\" is not an array");
  if (e.rank > kMaxRank) {
    return TensorProblem("shape has " + Num(e.rank) + " dimensions, more than " + Num(kMaxRank));
  }
  if (e.first_bad_dim >= 0) {
    return TensorProblem("shape entry " + Num(static_cast<uint64_t>(e.first_bad_dim)) +
                         " is not a non-negative integer");
  }
  if (e.data_offsets == Seen::kWrongType || e.offsets_count != 2) {
    return TensorProblem("\"data_offsets\" is not a [begin, end] pair");
  }
  if (!e.offsets_ok[0] || !e.offsets_ok[1]) {
    return TensorProblem("\"data_offsets\" holds something other than non-negative integers");
  }
  const uint64_t begin = e.offsets[0], end = e.offsets[1];
  if (begin > end) {
    return TensorProblem("data_offsets [" + Num(begin) + ", " + Num(end) + "] end before they begin");
  }
  Result<uint64_t> nbytes = TensorBytes(*dtype, t.shape);
  if (!nbytes.ok()) return TensorProblem(nbytes.status().message());
  if (end - begin != *nbytes) {
    return TensorProblem("data_offsets [" + Num(begin) + ", " + Num(end) + "] span " + Num(end - begin) +
                         " bytes but " + std::string(DTypeName(*dtype)) + " of this shape needs " + Num(*nbytes));
  }
  t.dtype = *dtype;
  t.begin_bytes = begin;
  t.end_bytes = end;
}

}  // namespace


bool IsValidUtf8(std::string_view bytes) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  while (i < n) {
    // Headers are almost all ASCII: skip it 8 bytes at a time.
    uint64_t word;
    while (n - i >= 8 && (std::memcpy(&word, s + i, 8), (word & 0x8080808080808080ull) == 0)) i += 8;
    if (i == n) break;
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
  HeaderSax sax(label);
  const std::string header_label = std::string(label) + ": header";
  HOIST_RETURN_IF_ERROR(ParseJsonSaxStrict(header_label, json_text, &sax));
  if (!sax.root_is_object()) return Corruption(std::string(label) + ": header is not a JSON object");
  if (const std::string* name = sax.RepeatedName()) return RepeatedKeyError(header_label, *name);
  if (!sax.problem().ok()) return sax.problem();

  ParsedHeader out;
  out.header_bytes = json_text.size();
  out.data_offset_bytes = 8 + json_text.size();
  out.data_bytes = data_bytes;
  out.tensors = std::move(sax.tensors());
  out.metadata = sax.TakeMetadata();

  std::sort(out.tensors.begin(), out.tensors.end(), [](const HeaderTensor& a, const HeaderTensor& b) {
    return a.begin_bytes != b.begin_bytes ? a.begin_bytes < b.begin_bytes : a.end_bytes < b.end_bytes;
  });
  uint64_t expected = 0;
  for (const HeaderTensor& t : out.tensors) {
    if (t.end_bytes <= data_bytes && t.begin_bytes == expected) {
      expected = t.end_bytes;
      continue;
    }
    std::string where = std::string(label) + ": tensor " + QuoteName(t.name) + ": data_offsets [" +
                        Num(t.begin_bytes) + ", " + Num(t.end_bytes) + "]";
    if (t.end_bytes > data_bytes) {
      return Corruption(where + " run past the end of the " + Num(data_bytes) +
                        "-byte data section (truncated file?)");
    }
    if (t.begin_bytes > expected) {
      return Corruption(where + " leave a gap: the previous tensor ends at " + Num(expected));
    }
    return Corruption(where + " overlap the previous tensor, which ends at " + Num(expected));
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
