#include "parallel.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

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

namespace {

// One call's chunks. Workers hold it by shared_ptr, so a worker that arrives after the call has
// returned still finds next >= chunks and leaves without touching body (which lives only as long
// as the call).
struct Task {
  const std::function<void(std::int64_t)>* body;
  std::int64_t chunks;
  std::atomic<std::int64_t> next{0}, done{0};
  std::atomic<int> helpers{0};  // workers still allowed to join (the pool may hold more than asked for)
};

void take_chunks(Task& task) {
  for (std::int64_t i; (i = task.next.fetch_add(1, std::memory_order_relaxed)) < task.chunks;) {
    (*task.body)(i);
    task.done.fetch_add(1, std::memory_order_release);
  }
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// About 50-100 µs of polling before a worker sleeps: calls that follow each other closely (the
// layers of one forward pass) find it awake; an idle worker soon stops taking a core from others.
constexpr int kSpinPolls = 20000;

class Pool {
 public:
  // Publishes task to the workers (starting up to `wanted` of them), without waiting for any.
  void publish(const std::shared_ptr<Task>& task, int wanted) {
    std::lock_guard<std::mutex> lock(mutex_);
    while (workers_ < wanted) {
      try {
        std::thread([this] { work(); }).detach();
      } catch (const std::system_error&) {
        break;  // no more threads to be had: the callers do the work themselves
      }
      ++workers_;
    }
    task_ = task;
    generation_.fetch_add(1, std::memory_order_release);
    if (sleepers_ > 0) wake_.notify_all();
  }

 private:
  void work() {
    std::uint64_t seen = 0;
    for (;;) {
      bool ready = false;
      for (int poll = 0; poll < kSpinPolls && !ready; ++poll) {
        ready = generation_.load(std::memory_order_acquire) != seen;
        if (!ready) cpu_relax();
      }
      std::shared_ptr<Task> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        if (!ready) {
          ++sleepers_;
          wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
          --sleepers_;
        }
        seen = generation_.load(std::memory_order_acquire);
        task = task_;
      }
      if (task && task->helpers.fetch_sub(1, std::memory_order_relaxed) > 0) take_chunks(*task);
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::shared_ptr<Task> task_;
  std::atomic<std::uint64_t> generation_{0};
  int workers_ = 0, sleepers_ = 0;
};

// Never destroyed: detached workers may still be polling it while the process exits.
std::atomic<Pool*> g_pool{nullptr};

void forget_pool_after_fork() { g_pool.store(nullptr); }  // the child has none of the workers

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  static const int registered = pthread_atfork(nullptr, nullptr, forget_pool_after_fork);
  (void)registered;
  auto* fresh = new Pool;
  if (g_pool.compare_exchange_strong(p, fresh)) return *fresh;
  delete fresh;  // another thread made one first
  return *p;
}

}  // namespace

void set_num_threads(int n) {
  require(n >= 1 && n <= kMaxThreads,
          [&] { return "num_threads must be in [1, " + std::to_string(kMaxThreads) + "], got " + std::to_string(n); });
  g_num_threads.store(n, std::memory_order_relaxed);
  if (n > 1) pool().publish(nullptr, n - 1);  // start the workers now, not in the first product
}

void parallel_chunks(int threads, std::int64_t chunks, const std::function<void(std::int64_t)>& body) {
  if (threads <= 1 || chunks <= 1) {
    for (std::int64_t i = 0; i < chunks; ++i) body(i);
    return;
  }
  auto task = std::make_shared<Task>();
  task->body = &body;
  task->chunks = chunks;
  const int helpers = static_cast<int>(std::min<std::int64_t>(threads, chunks)) - 1;
  task->helpers.store(helpers, std::memory_order_relaxed);
  pool().publish(task, helpers);
  take_chunks(*task);
  // Only chunks a worker has started are left: poll as long as one takes, and give the core away
  // only after that (a yield on a loaded machine can cost this thread a whole scheduler round).
  for (int poll = 0; task->done.load(std::memory_order_acquire) < chunks; ++poll) {
    if (poll < kSpinPolls) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace htcore
