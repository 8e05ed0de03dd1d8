#include "util/text.h"

#include <atomic>
#include <cstdio>

namespace hoist {

namespace {
// The length of the well-formed UTF-8 sequence at text[i] (RFC 3629: no
// overlong forms, no surrogates, nothing past U+10FFFF), or 0.
size_t Utf8SequenceAt(std::string_view text, size_t i) {
  const auto at = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char c = at(i);
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
  else return 0;
  if (i + n > text.size() || at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if ((at(i + k) & 0xC0) != 0x80) return 0;
  }
  return n;
}
}  // namespace

std::string Printable(std::string_view text) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    size_t n = c < 0x80 ? 1 : Utf8SequenceAt(text, i);
    // Characters that act on a terminal or break a line though they are
    // UTF-8: C1 controls (U+0080-U+009F: CSI, NEL) and U+2028, U+2029.
    const auto next = [&](size_t k) { return static_cast<unsigned char>(text[i + k]); };
    if ((n == 2 && c == 0xC2 && next(1) <= 0x9F) || (n == 3 && c == 0xE2 && next(1) == 0x80 && (next(2) == 0xA8 || next(2) == 0xA9))) {
      n = 0;
    }
    if (c < 0x20 || c == 0x7f || n == 0) {  // a control character, or a byte that is not UTF-8
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
      ++i;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

std::string ByteText(uint64_t bytes) {
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes);
  int u = -1;
  while (v >= 1024 && u < 5) v /= 1024, ++u;
  char buf[64];
  if (u < 0) {
    std::snprintf(buf, sizeof buf, "%llu bytes", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%llu bytes (%.2f %s)", static_cast<unsigned long long>(bytes), v, units[u]);
  }
  return buf;
}

std::string QuoteName(std::string_view name) {
  constexpr size_t kMaxShown = 160;
  size_t cut = name.size();
  if (cut > kMaxShown) {
    cut = kMaxShown;  // never inside a multi-byte UTF-8 character
    while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xC0) == 0x80) --cut;
  }
  return "'" + Printable(name.substr(0, cut)) + (cut < name.size() ? "..." : "") + "'";
}

std::string SomeNames(const std::vector<std::string>& names, size_t shown) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < shown; ++i) out += (i ? ", " : "") + QuoteName(names[i]);
  if (names.size() > shown) out += " and " + std::to_string(names.size() - shown) + " more";
  return out;
}

std::string ShapeText(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {
std::atomic<OptionStyle> option_style{OptionStyle::kFlags};
}  // namespace

void SetOptionStyle(OptionStyle style) { option_style.store(style, std::memory_order_relaxed); }

std::string Opt(std::string_view flag) {
  if (option_style.load(std::memory_order_relaxed) == OptionStyle::kFlags) return std::string(flag);
  std::string keyword;
  for (char c : flag.substr(flag.find_first_not_of('-'))) keyword += c == '-' ? '_' : c;
  return keyword;
}

std::string OptText(std::string_view flags_text, std::string_view keywords_text) {
  return std::string(option_style.load(std::memory_order_relaxed) == OptionStyle::kFlags ? flags_text : keywords_text);
}

std::string AssignmentText(std::string_view flag, std::string_view a, std::string_view b) {
  if (option_style.load(std::memory_order_relaxed) == OptionStyle::kFlags) {
    return std::string(flag) + " " + QuoteName(std::string(a) + "=" + std::string(b));
  }
  return Opt(flag) + "={" + QuoteName(a) + ": " + QuoteName(b) + "}";
}

}  // namespace hoist
