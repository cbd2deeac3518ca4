// SplitMix64 (Steele, Lea & Flood 2014): a tiny, fast generator used to seed streams and to draw
// fixed pseudo-random samples; advances `state` and returns the next 64-bit value.
#pragma once
#include <cstdint>

namespace htcore {

inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace htcore
