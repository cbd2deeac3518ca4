// One process-wide thread count for every parallel region in htcore, and the pool the CSR products use.
// omp_set_num_threads only affects the calling thread, so a server that calls kernels from
// several Python threads would see different counts; kernels read this value instead and pass
// it as num_threads(...) explicitly.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <functional>

namespace htcore {

// The most threads htcore runs: libgomp aborts the whole process when it cannot create the threads
// asked for (about 40,000 here), and far fewer already only add fork/join cost on any CPU sold today.
constexpr int kMaxThreads = 1024;

int num_threads();
void set_num_threads(int n);  // 1 <= n <= kMaxThreads
// Kernels called from the calling thread use at most `limit` threads from now on (0: no limit,
// num_threads()); returns the previous limit. For callers that already run several kernels at once
// from their own threads: nested teams would put more threads than cores on the machine.
int set_calling_thread_limit(int limit);

// Chunks per thread a product is cut into for parallel_chunks: enough that a thread whose core is
// taken late holds up little (the CSR products' chunks keep >= 1/4 of their parallel grain each).
constexpr int kChunksPerThread = 4;

// Work (multiply-adds) from which a product wakes sleeping workers at once. A product this large
// takes ~100 µs or more on one core: enough for a worker woken from sleep (tens of µs on a quiet
// machine) to take a share. Smaller products (the MLP's batch-1 layers, 2^16-2^17) wake workers
// only in a run of back-to-back products (parallel.cpp, kStreak): a loop of batch-1 forward
// passes gets its second thread (never woken, batch 1 was 1.26x slower than with a pool that woke
// workers for every product), while a lone call never waits for a worker it woke (waking for
// every small product gave first calls of 3 ms instead of 0.27 on a busy machine). No product
// wakes a worker for a while after one found the cores taken (kBackOff). A round figure, not swept.
constexpr std::int64_t kWakeWork = std::int64_t(1) << 18;

// A sparse product's work in multiply-adds, (nnz + rows) * k (a row's store counts as one),
// saturating instead of overflowing.
inline std::int64_t product_work(std::int64_t rows, std::int64_t nnz, std::int64_t k) {
  std::int64_t work;
  if (__builtin_add_overflow(nnz, rows, &work) || __builtin_mul_overflow(work, k, &work)) return INT64_MAX;
  return work;
}

// Runs body(0), ..., body(chunks - 1), each exactly once, on the calling thread and up to
// threads - 1 pool workers, and returns when all have run. `work` is the call's size in
// multiply-adds (kWakeWork). Unlike an OpenMP region, the caller takes chunks itself and waits
// only for chunks a worker has already started: a worker that is asleep, or whose core another
// process holds, costs nothing, so on a busy machine a product degrades to the caller's own speed
// instead of waiting a scheduler time slice for its team. Workers spin ~50 µs for the next call
// before sleeping, and leave the chunks to the caller when they find themselves on its core or
// got their core late (another process holds the cores).
// body must not throw. After fork() the child starts a fresh pool.
void parallel_chunks(int threads, std::int64_t chunks, std::int64_t work,
                     const std::function<void(std::int64_t)>& body);

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
