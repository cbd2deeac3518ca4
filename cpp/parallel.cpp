#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "errors.hpp"

namespace htcore {

namespace {

// OMP_NUM_THREADS when it is a positive integer, else the core count. Read from the environment
// rather than omp_get_max_threads(), which another library in the process (torch.set_num_threads)
// may already have lowered for its own calling thread.
int default_num_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end != env && n >= 1 && n <= kMaxThreads) return static_cast<int>(n);
  }
  return std::min(omp_get_num_procs(), kMaxThreads);
}

std::atomic<int> g_num_threads{default_num_threads()};

}  // namespace

int num_threads() { return g_num_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  require(n >= 1 && n <= kMaxThreads, [&] {
    return "num_threads must be in [1, " + std::to_string(kMaxThreads) + "], got " + std::to_string(n);
  });
  g_num_threads.store(n, std::memory_order_relaxed);
}

}  // namespace htcore
