#include "format/json_util.h"

#include <string>
#include <unordered_set>
#include <vector>

#include "format/safetensors.h"

namespace hoist {
namespace {

using json = nlohmann::json;

// nlohmann's DOM builder plus a check for repeated keys. sax_parse calls the
// handler's members by name (no virtual dispatch), so hiding start_object,
// end_object and key is enough. (nlohmann's own callback parser would do
// this too, but it rescans the parent object at every object's end, which is
// quadratic in the number of tensors.)
class StrictDomParser : public nlohmann::detail::json_sax_dom_parser<json> {
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
    --depth_;
    return json_sax_dom_parser::end_array();
  }
  bool end_object() {
    --depth_;
    open_keys_.pop_back();
    return json_sax_dom_parser::end_object();
  }
  bool key(std::string& k) {
    if (!open_keys_.back().insert(k).second) {
      duplicate_ = k;
      has_duplicate_ = true;
      return false;  // stop parsing
    }
    return json_sax_dom_parser::key(k);
  }
  bool parse_error(std::size_t position, const std::string& token, const nlohmann::detail::exception& e) {
    error_ = e.what();
    return json_sax_dom_parser::parse_error(position, token, e);
  }

  bool too_deep() const { return too_deep_; }
  bool has_duplicate() const { return has_duplicate_; }
  const std::string& duplicate() const { return duplicate_; }
  const std::string& error() const { return error_; }

 private:
  // Checkpoint files nest three levels at most; the limit keeps a hostile
  // header from building a DOM of millions of nested arrays.
  bool Enter() {
    if (++depth_ > kMaxJsonDepth) {
      too_deep_ = true;
      return false;
    }
    return true;
  }

  std::vector<std::unordered_set<std::string>> open_keys_;
  int depth_ = 0;
  bool too_deep_ = false;
  std::string duplicate_;
  std::string error_;
  bool has_duplicate_ = false;
};

}  // namespace

Result<nlohmann::json> ParseJsonStrict(std::string_view label, std::string_view text) {
  if (!IsValidUtf8(text)) return Corruption(std::string(label) + " is not valid UTF-8");
  // JSON allows neither a raw NUL nor a byte order mark; nlohmann would stop
  // at the first and skip the second, so refuse them before it sees them.
  if (size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return Corruption(std::string(label) + " contains a NUL byte at position " + std::to_string(nul));
  }
  if (text.substr(0, 3) == "\xEF\xBB\xBF") {
    return Corruption(std::string(label) + " begins with a UTF-8 byte order mark, which JSON does not allow");
  }
  json doc;
  StrictDomParser handler(doc);
  bool ok = json::sax_parse(text.begin(), text.end(), &handler, json::input_format_t::json, /*strict=*/true);
  if (handler.too_deep()) {
    return Corruption(std::string(label) + " nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  }
  if (handler.has_duplicate()) {
    return Corruption(std::string(label) + ": key " + QuoteName(handler.duplicate()) + " appears twice");
  }
  if (!ok || handler.is_errored()) {
    std::string why = handler.error().empty() ? "syntax error" : handler.error();
    const std::string tag = "parse error";
    if (auto at = why.find(tag); at != std::string::npos) why = why.substr(at);
    // The parser quotes the token it stopped in, which a hostile file can make
    // as long as the header; QuoteName escapes and shortens it.
    std::string shown = QuoteName(why);
    return Corruption(std::string(label) + ": not valid JSON: " + shown.substr(1, shown.size() - 2));
  }
  return doc;
}

}  // namespace hoist
