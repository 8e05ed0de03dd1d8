#include "format/json_util.h"

#include <algorithm>
#include <string>
#include <unordered_set>
#include <vector>

#include "format/safetensors.h"

namespace hoist {
namespace {

using json = nlohmann::json;

// nlohmann's DOM builder plus the strict checks. sax_parse calls the
// handler's members by name (no virtual dispatch), so hiding start_object,
// end_object and key is enough. (nlohmann's own callback parser would check
// keys too, but it rescans the parent object at every object's end, which is
// quadratic in the number of keys.)
class StrictDomParser : public nlohmann::detail::json_sax_dom_parser<json>, public StrictSax {
 public:
  explicit StrictDomParser(json& root) : json_sax_dom_parser(root, /*allow_exceptions=*/false) {}

  bool start_object(std::size_t n) {
    if (!Enter()) return false;
    open_keys_.emplace_back();
    return json_sax_dom_parser::start_object(n);
  }
  bool start_array(std::size_t n) {
    if (!Enter()) return false;
    return json_sax_dom_parser::start_array(n);
  }
  bool end_array() {
    Leave();
    return json_sax_dom_parser::end_array();
  }
  bool end_object() {
    Leave();
    open_keys_.pop_back();
    return json_sax_dom_parser::end_object();
  }
  bool key(std::string& k) {
    if (!open_keys_.back().Insert(k)) return Repeated(k);
    return json_sax_dom_parser::key(k);
  }
  using StrictSax::parse_error;

 private:
  std::vector<KeySet> open_keys_;
};

}  // namespace

bool StrictSax::parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
  syntax_error_ = true;
  error_ = e.what();
  return false;
}

bool StrictSax::Enter() {
  // Checkpoint files nest three levels at most; the limit keeps a hostile
  // header from building millions of nested arrays.
  if (++depth_ > kMaxJsonDepth) {
    too_deep_ = true;
    return false;
  }
  return true;
}

bool StrictSax::Repeated(std::string key) {
  has_duplicate_ = true;
  duplicate_ = std::move(key);
  return false;
}

Status StrictSax::Outcome(std::string_view label, bool ok) const {
  if (too_deep_) {
    return Corruption(std::string(label) + " nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  }
  if (has_duplicate_) return RepeatedKeyError(label, duplicate_);
  if (!ok || syntax_error_) {
    std::string why = error_.empty() ? "syntax error" : error_;
    const std::string tag = "parse error";
    if (auto at = why.find(tag); at != std::string::npos) why = why.substr(at);
    // The parser quotes the token it stopped in, which a hostile file can make
    // as long as the header; QuoteName escapes and shortens it.
    std::string shown = QuoteName(why);
    return Corruption(std::string(label) + ": not valid JSON: " + shown.substr(1, shown.size() - 2));
  }
  return Status::Ok();
}

Status RepeatedKeyError(std::string_view label, std::string_view key) {
  return Corruption(std::string(label) + ": key " + QuoteName(key) + " appears twice");
}

Status CheckJsonText(std::string_view label, std::string_view text) {
  if (!IsValidUtf8(text)) return Corruption(std::string(label) + " is not valid UTF-8");
  // JSON allows neither a raw NUL nor a byte order mark; nlohmann would stop
  // at the first and skip the second, so refuse them before it sees them.
  if (size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return Corruption(std::string(label) + " contains a NUL byte at position " + std::to_string(nul));
  }
  if (text.substr(0, 3) == "\xEF\xBB\xBF") {
    return Corruption(std::string(label) + " begins with a UTF-8 byte order mark, which JSON does not allow");
  }
  return Status::Ok();
}

size_t FirstRepeatedName(size_t count, const std::function<std::string_view(size_t)>& name) {
  std::vector<std::pair<uint64_t, size_t>> hashes;
  hashes.reserve(count);
  for (size_t i = 0; i < count; ++i) hashes.emplace_back(std::hash<std::string_view>{}(name(i)), i);
  std::sort(hashes.begin(), hashes.end());
  size_t first = count;
  for (size_t i = 1; i < hashes.size(); ++i) {
    // Equal hashes sort by index, so hashes[i] is the later of any pair.
    for (size_t j = i; j-- > 0 && hashes[j].first == hashes[i].first;) {
      if (name(hashes[j].second) == name(hashes[i].second)) {
        first = std::min(first, hashes[i].second);
        break;
      }
    }
  }
  return first;
}

Result<nlohmann::json> ParseJsonStrict(std::string_view label, std::string_view text) {
  json doc;
  StrictDomParser handler(doc);
  HOIST_RETURN_IF_ERROR(ParseJsonSaxStrict(label, text, &handler));
  if (handler.is_errored()) return Corruption(std::string(label) + ": not valid JSON: syntax error");
  return doc;
}

}  // namespace hoist
