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

// Checks run on every kernel call, so a message is only built when the check fails: pass a
// literal, or a lambda returning the message (a std::string argument would be built, and
// allocated, on every call: half the fixed cost of a small product).
inline void require(bool ok, const char* message) {
  if (!ok) fail(message);
}
template <class MakeMessage>
inline void require(bool ok, MakeMessage&& make_message) {
  if (!ok) fail(make_message());
}

}  // namespace htcore
