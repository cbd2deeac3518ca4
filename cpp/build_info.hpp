// What this build of the core is: compiler, OpenMP, SIMD flags. Reported by `htcore info`.
#pragma once
#include <string>
#include <vector>

namespace htcore {

struct BuildInfo {
  std::string compiler;
  std::string build_flags;
  int openmp_version;             // _OPENMP macro, e.g. 201511
  std::vector<std::string> simd;  // instruction sets the compiler targeted
};

BuildInfo build_info();

}  // namespace htcore
