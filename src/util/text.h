// Text for one-line messages.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hoist {

// `text` with control characters and bytes that are not UTF-8 written as
// \xNN, so that whatever a file or a file name contains, a message stays on
// one line of valid UTF-8 and sends no terminal escape sequences.
std::string Printable(std::string_view text);

// For messages: the name in quotes, control characters escaped, long names
// shortened, so an error stays on one line whatever a file contains.
std::string QuoteName(std::string_view name);

// "279808 bytes (273.25 KiB)": exact, and readable at any size; for error
// messages about memory. (Summaries for people use decimal units, as GB/s
// does: the CLI's HumanBytes.)
std::string ByteText(uint64_t bytes);

// "'a', 'b', 'c' and 5 more": the first `shown` of `names`, quoted, in the
// order given.
std::string SomeNames(const std::vector<std::string>& names, size_t shown = 3);

// "[4096, 14336]": a tensor's shape, for messages and tables.
std::string ShapeText(const std::vector<uint64_t>& shape);

// How messages name the user's options: as the `hoist` command's flags
// (--device-map), or as hoist.load's keyword arguments (device_map), which
// the Python module chooses once when it is imported (a process is one or
// the other). Opt("--device-map") is the option's name in that style;
// OptText gives a whole phrase in each style where the syntax differs too.
enum class OptionStyle { kFlags, kKeywords };
void SetOptionStyle(OptionStyle style);
std::string Opt(std::string_view flag);
std::string OptText(std::string_view flags_text, std::string_view keywords_text);
// One A=B value of an option as the caller wrote it: --tie 'a=b' on the
// command line, tie={'a': 'b'} in Python.
std::string AssignmentText(std::string_view flag, std::string_view a, std::string_view b);

inline bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace hoist
