#include "kvpr/common/error.h"

namespace kvpr {

std::string_view to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::failed:
      return "failed";
    case ErrorKind::overloaded:
      return "overloaded";
    case ErrorKind::disconnected:
      return "disconnected";
    case ErrorKind::unimplemented:
      return "unimplemented";
    case ErrorKind::permission_denied:
      return "permission_denied";
  }
  return "unknown";
}

}  // namespace kvpr
