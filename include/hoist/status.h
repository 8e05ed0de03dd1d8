// Status and Result<T>: how every hoist library function reports failure.
//
// A Status is either OK or carries one code from a small closed set and a
// one-line message that names the file, the tensor and what is wrong. Result<T>
// holds either a value or a non-OK Status. Both are [[nodiscard]]: ignoring a
// failure is a compile warning. hoist throws no exceptions; only the Python
// boundary turns a Status into one.
//
// Thread-safety: plain values; copy freely.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>

namespace hoist {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // the caller asked for something impossible (bad flag, bad regex)
  kCorruption,       // a file is not a valid checkpoint
  kNotFound,         // a file or tensor does not exist
  kIoError,          // the OS refused a read, write or open
  kOutOfMemory,      // host or device memory does not suffice
  kDevice,           // a device API failed
  kNotSupported,     // valid, but hoist does not do it (yet)
  kCancelled,        // the caller asked it to stop (Ctrl-C)
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // True for codes that mean "the input is bad" (CLI exit code 2).
  bool IsBadInput() const {
    return code_ == StatusCode::kInvalidArgument || code_ == StatusCode::kCorruption ||
           code_ == StatusCode::kNotFound || code_ == StatusCode::kOutOfMemory;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status Corruption(std::string m) { return {StatusCode::kCorruption, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status OutOfMemory(std::string m) { return {StatusCode::kOutOfMemory, std::move(m)}; }
inline Status NotSupported(std::string m) { return {StatusCode::kNotSupported, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT
    assert(!status_.ok() && "Result built from an OK status without a value");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { assert(ok()); return *value_; }
  const T& value() const& { assert(ok()); return *value_; }
  T&& value() && { assert(ok()); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace hoist

// Early-return helpers. HOIST_ASSIGN_OR_RETURN(auto x, Expr()) declares x.
#define HOIST_RETURN_IF_ERROR(expr)            \
  do {                                         \
    ::hoist::Status hoist_status_ = (expr);    \
    if (!hoist_status_.ok()) return hoist_status_; \
  } while (0)

#define HOIST_CONCAT_INNER_(a, b) a##b
#define HOIST_CONCAT_(a, b) HOIST_CONCAT_INNER_(a, b)
#define HOIST_ASSIGN_OR_RETURN(lhs, expr) \
  HOIST_ASSIGN_OR_RETURN_IMPL_(HOIST_CONCAT_(hoist_result_, __LINE__), lhs, expr)
#define HOIST_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
