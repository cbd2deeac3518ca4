// One process-wide thread count for every OpenMP region in htcore.
// omp_set_num_threads only affects the calling thread, so a server that calls kernels from
// several Python threads would see different counts; kernels read this value instead and pass
// it as num_threads(...) explicitly.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace htcore {

// The most threads htcore runs: libgomp aborts the whole process when it cannot create the threads
// asked for (about 40,000 here), and far fewer already only add fork/join cost on any CPU sold today.
constexpr int kMaxThreads = 1024;

int num_threads();
void set_num_threads(int n);  // 1 <= n <= kMaxThreads

// Splits [0, n_rows) into `parts` contiguous ranges of about equal nnz, given CSR row pointers.
// bounds has parts + 1 entries; bounds[p]..bounds[p+1] is part p's row range.
template <class Ptr>
void split_rows_by_nnz(const Ptr* indptr, std::int64_t n_rows, int parts, std::int64_t* bounds) {
  const std::int64_t nnz = static_cast<std::int64_t>(indptr[n_rows]);
  bounds[0] = 0;
  for (int p = 1; p < parts; ++p) {  // first row starting at or after nnz * p / parts (binary search)
    const std::int64_t target = nnz * p / parts;
    bounds[p] = std::lower_bound(indptr + bounds[p - 1], indptr + n_rows, target,
                                 [](Ptr v, std::int64_t t) { return static_cast<std::int64_t>(v) < t; }) -
                indptr;
  }
  bounds[parts] = n_rows;
}

}  // namespace htcore
