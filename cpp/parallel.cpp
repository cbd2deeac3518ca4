#include "parallel.hpp"

#include <atomic>

#include "errors.hpp"

namespace htcore {

namespace {
// Seeded from OMP_NUM_THREADS (or the core count) the first time it is read.
std::atomic<int> g_num_threads{0};
}  // namespace

int num_threads() {
  int n = g_num_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    n = omp_get_max_threads();
    g_num_threads.store(n, std::memory_order_relaxed);
  }
  return n;
}

void set_num_threads(int n) {
  require(n >= 1, "num_threads must be >= 1, got " + std::to_string(n));
  g_num_threads.store(n, std::memory_order_relaxed);
}

}  // namespace htcore
