// Stand-in for <omp.h> in builds without OpenMP (CMake: -DHTCORE_OPENMP=OFF): the kernels' OpenMP
// pragmas (the convolution's) are then ignored and each such loop runs all of its parts on the
// calling thread, in the same order, so results are unchanged; the CSR products keep htcore's own
// thread pool (parallel.hpp). Only the functions the runtime's kernels call.
#pragma once

inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
inline int omp_get_num_procs() { return 1; }
