#include "build_info.hpp"

#ifndef HTCORE_BUILD_FLAGS
#define HTCORE_BUILD_FLAGS "unknown"
#endif

namespace htcore {

BuildInfo build_info() {
  BuildInfo info;
#if defined(__clang__)
  info.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  info.compiler = "gcc " __VERSION__;
#else
  info.compiler = "unknown";
#endif
  info.build_flags = HTCORE_BUILD_FLAGS;
#ifdef _OPENMP
  info.openmp_version = _OPENMP;
#else
  info.openmp_version = 0;
#endif
#ifdef __SSE2__
  info.simd.push_back("sse2");
#endif
#ifdef __SSE4_2__
  info.simd.push_back("sse4.2");
#endif
#ifdef __AVX__
  info.simd.push_back("avx");
#endif
#ifdef __AVX2__
  info.simd.push_back("avx2");
#endif
#ifdef __FMA__
  info.simd.push_back("fma");
#endif
#ifdef __F16C__
  info.simd.push_back("f16c");
#endif
#ifdef __AVX512F__
  info.simd.push_back("avx512f");
#endif
#ifdef __ARM_NEON
  info.simd.push_back("neon");
#endif
  return info;
}

}  // namespace htcore
