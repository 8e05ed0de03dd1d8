#include "format/json_util.h"

#include <string>
#include <unordered_set>
#include <vector>

#include "format/safetensors.h"

namespace hoist {

Result<nlohmann::json> ParseJsonStrict(std::string_view label, std::string_view text) {
  using json = nlohmann::json;
  std::vector<std::unordered_set<std::string>> open_objects;
  std::string duplicate;
  bool has_duplicate = false;
  json::parser_callback_t callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!has_duplicate && !open_objects.empty() &&
            !open_objects.back().insert(parsed.get<std::string>()).second) {
          has_duplicate = true;
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  json doc = json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false,
                         /*ignore_comments=*/false);
  if (doc.is_discarded()) {
    // Parse again with exceptions only to get the parser's position message.
    std::string why = "syntax error";
    try {
      json unused = json::parse(text.begin(), text.end());
      (void)unused;
    } catch (const json::parse_error& e) {
      why = e.what();
      const std::string tag = "parse error";
      auto at = why.find(tag);
      if (at != std::string::npos) why = why.substr(at);
    }
    return Corruption(std::string(label) + ": not valid JSON: " + why);
  }
  if (has_duplicate) {
    return Corruption(std::string(label) + ": key " + QuoteName(duplicate) + " appears twice");
  }
  return doc;
}

}  // namespace hoist
