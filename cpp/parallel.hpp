// One process-wide thread count for every OpenMP region in htcore.
// omp_set_num_threads only affects the calling thread, so a server that calls kernels from
// several Python threads would see different counts; kernels read this value instead and pass
// it as num_threads(...) explicitly.
#pragma once
#include <omp.h>

#include <algorithm>

namespace htcore {

int num_threads();
void set_num_threads(int n);  // n >= 1

// Splits [0, n_rows) into `parts` contiguous ranges of about equal nnz, given CSR row pointers.
// bounds has parts + 1 entries; bounds[p]..bounds[p+1] is part p's row range.
template <class Ptr>
void split_rows_by_nnz(const Ptr* indptr, long long n_rows, int parts, long long* bounds) {
  const long long nnz = static_cast<long long>(indptr[n_rows]);
  bounds[0] = 0;
  for (int p = 1; p < parts; ++p) {  // first row starting at or after nnz * p / parts (binary search)
    const long long target = nnz * p / parts;
    bounds[p] = std::lower_bound(indptr + bounds[p - 1], indptr + n_rows, target,
                                 [](Ptr v, long long t) { return static_cast<long long>(v) < t; }) - indptr;
  }
  bounds[parts] = n_rows;
}

}  // namespace htcore
