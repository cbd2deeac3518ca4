// Exceptions the kernels throw. The bindings translate them to Python:
//   std::invalid_argument / std::domain_error / std::length_error -> ValueError
//   htcore::type_error                                             -> TypeError
//   std::bad_alloc                                                 -> MemoryError
// Messages name the offending argument, because they reach users verbatim.
#pragma once
#include <stdexcept>
#include <string>

namespace htcore {

struct type_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

[[noreturn]] inline void fail(const std::string& message) { throw std::invalid_argument(message); }

inline void require(bool ok, const std::string& message) {
  if (!ok) fail(message);
}

}  // namespace htcore
