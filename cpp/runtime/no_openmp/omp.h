// Stand-in for <omp.h> in builds without OpenMP (CMake: -DHTCORE_OPENMP=OFF): the runtime's kernels
// (CSR, SELL-8, convolution) run on htcore's own thread pool (parallel.hpp), so only the core count
// is asked of OpenMP. Only the functions the runtime's kernels call.
#pragma once

inline int omp_get_num_procs() { return 1; }
