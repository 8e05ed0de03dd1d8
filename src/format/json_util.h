// Strict JSON parsing shared by the header, index and device-map readers.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "hoist/status.h"

namespace hoist {

inline constexpr int kMaxJsonDepth = 64;

// Parses `text` as JSON. Also refuses invalid UTF-8, raw NUL bytes, a byte
// order mark and nesting deeper than kMaxJsonDepth. Fails (Corruption, message prefixed by `label`) on a
// syntax error or on an object that repeats a key: a plain parser keeps the
// last value silently, which would let two entries hide one another.
Result<nlohmann::json> ParseJsonStrict(std::string_view label, std::string_view text);

// The text checks ParseJsonStrict makes before parsing: UTF-8, no NUL, no BOM.
Status CheckJsonText(std::string_view label, std::string_view text);

// What every strict SAX handler shares: the nesting limit, the first
// repeated key and the parser's own error. A handler derives from it, calls
// Enter()/Leave() around every object and array and Repeated() when a key
// comes twice, and is run by ParseJsonSaxStrict.
class StrictSax {
 public:
  bool parse_error(std::size_t position, const std::string& token, const nlohmann::detail::exception& e);

  // After nlohmann's sax_parse returned `ok`: the one-line error, if any, in
  // the order a reader meets them (nesting, repeated key, syntax).
  Status Outcome(std::string_view label, bool ok) const;

 protected:
  bool Enter();
  void Leave() { --depth_; }
  bool Repeated(std::string key);  // records the key; returns false to stop

 private:
  int depth_ = 0;
  bool too_deep_ = false;
  bool has_duplicate_ = false;
  bool syntax_error_ = false;
  std::string duplicate_;
  std::string error_;
};

// Key sets for objects whose keys a handler does not interpret itself.
class KeySet {
 public:
  // False when `key` was already inserted.
  bool Insert(const std::string& key) {
    if (!keys_) keys_ = std::make_unique<std::unordered_set<std::string>>();
    return keys_->insert(key).second;
  }

 private:
  std::unique_ptr<std::unordered_set<std::string>> keys_;  // most objects never need one
};

// The error for a key an object holds twice (`label` names the text).
Status RepeatedKeyError(std::string_view label, std::string_view key);

// Among `count` names (name(i) gives the i-th), the index of the first one
// that repeats an earlier one, or `count` when all differ. Sorts hashes
// rather than probing a hash table, so it costs no allocation per name.
size_t FirstRepeatedName(size_t count, const std::function<std::string_view(size_t)>& name);

// Checks `text` (CheckJsonText), then runs `handler` over it with
// nlohmann's strict SAX parser.
template <class Handler>
Status ParseJsonSaxStrict(std::string_view label, std::string_view text, Handler* handler) {
  HOIST_RETURN_IF_ERROR(CheckJsonText(label, text));
  bool ok = nlohmann::json::sax_parse(text.begin(), text.end(), handler, nlohmann::json::input_format_t::json,
                                      /*strict=*/true);
  return handler->Outcome(label, ok);
}

}  // namespace hoist
