// The one error vocabulary of kvpr. An Error carries a kind that tells the caller what it can do
// (retry later, reconnect, give up) and a one-line message that names the offending value.
// Library code throws Error on the control path; each process or service boundary catches it once
// and turns it into an exit code or an error reply. Nothing else is thrown on purpose.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace kvpr {

enum class ErrorKind {
  failed,             // bad input or a broken invariant: retrying the same thing fails again
  overloaded,         // out of a resource (memory, capacity): may succeed later or elsewhere
  disconnected,       // a peer went away or timed out
  unimplemented,      // the request names something this build or device cannot do
  permission_denied,  // the caller may not touch what it named (not its own, or not authenticated)
};

std::string_view to_string(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// str(a, b, c) concatenates anything that has an operator<<; used to build messages.
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(ErrorKind::failed, str(args...));
}

template <typename... Args>
[[noreturn]] void raise(ErrorKind kind, const Args&... args) {
  throw Error(kind, str(args...));
}

}  // namespace kvpr
