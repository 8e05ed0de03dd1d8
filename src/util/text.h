// Text for one-line messages.
#pragma once

#include <string>
#include <string_view>

namespace hoist {

// `text` with control characters written as \xNN, so that whatever a file or
// a file name contains, a message stays on one line and sends no terminal
// escape sequences.
std::string Printable(std::string_view text);

inline bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace hoist
