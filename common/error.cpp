#include "common/error.h"

namespace qlora {

void throw_file_error(const std::string& path, const std::string& what, const std::string& hint) {
  std::string msg = path + ": " + what;
  if (!hint.empty()) msg += "\nHINT: " + hint;
  throw Error(msg);
}

}  // namespace qlora
