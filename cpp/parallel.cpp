#include "parallel.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
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

// 0, or the most threads kernels called from this thread may use (set_calling_thread_limit).
thread_local int t_calling_thread_limit = 0;

int num_threads() {
  const int n = g_num_threads.load(std::memory_order_relaxed);
  return t_calling_thread_limit > 0 ? std::min(n, t_calling_thread_limit) : n;
}

int set_calling_thread_limit(int limit) {
  require(limit >= 0, [&] { return "limit must be >= 0, got " + std::to_string(limit); });
  const int previous = t_calling_thread_limit;
  t_calling_thread_limit = limit;
  return previous;
}

namespace {

// One call's chunks. Workers hold it by shared_ptr, so a worker that arrives after the call has
// returned still finds next >= chunks and leaves without touching body (which lives only as long
// as the call).
struct Task {
  const std::function<void(std::int64_t)>* body;
  std::int64_t chunks;
  std::atomic<std::int64_t> next{0}, done{0};
  std::atomic<int> helpers{0};  // workers still allowed to join (the pool may hold more than asked for)
  int caller_cpu = -1;          // where the caller runs (a worker there leaves the chunks to it)
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

// The CPU the calling thread runs on, or -1 where that cannot be asked.
int current_cpu() {
#ifdef __linux__
  return sched_getcpu();
#else
  return -1;
#endif
}

// True when the calling thread runs on `cpu` (known: not -1).
bool on_cpu(int cpu) { return cpu >= 0 && current_cpu() == cpu; }

using Clock = std::chrono::steady_clock;

// How long a worker polls for the next call before it sleeps: calls that follow each other
// closely (the layers of one forward pass) find it awake; an idle worker soon stops taking a core
// from others. A time, not a poll count: PAUSE takes 10-140 cycles depending on the CPU.
constexpr auto kSpin = std::chrono::microseconds(50);

// Signs that the cores are taken, so that a worker's core may be taken from it mid-chunk (the
// caller then waits a scheduler slice, milliseconds, for that chunk): a worker gets a core more
// than kLate after it was woken (on a free core here 25-60 µs, an idle virtual CPU waking; beside
// a busy process a scheduler tick), finds a gap that long in its own polling, or is woken onto the
// caller's own core (the other cores taken; on a quiet machine also when the caller had just been
// idle). After such a sign no product wakes a sleeping worker for kBackOff; workers still spinning
// on a core of their own join as usual. Waking a worker beside a busy process costs even when it
// takes no chunk: a runnable thread added to the caller's core made the caller lose its core
// sooner (a first batch-8 MLP call of 6 ms instead of 0.34). Short enough that on a quiet machine
// one unlucky wake costs little.
constexpr auto kLate = std::chrono::microseconds(250);
constexpr auto kBackOff = std::chrono::milliseconds(20);

// Products below kWakeWork wake sleeping workers only after a run of kStreak parallel products,
// each published within kStreakGap of the one before (a loop of forward passes, where a second
// thread pays; such a product itself lasts up to ~100 µs). A woken worker only joins the
// products after the first few anyway (a wake takes 25-60 µs), and a program's first call never
// waits for a worker that took a chunk and then lost its core: waking for every small product gave
// the batch-1 MLP a first call of 3 ms instead of 0.27 beside a busy process, in most processes.
constexpr int kStreak = 8;
constexpr auto kStreakGap = std::chrono::microseconds(200);

// Workers run as SCHED_BATCH where Linux offers it: same share of the CPU as any thread, but a
// woken worker never preempts the thread running on the core it is placed on. Without it, a
// caller waking a worker on its own core (the other cores busy) was descheduled in favour of the
// worker, which then ran the whole product and spun; the caller got its core back after a
// scheduler slice: first calls of 0.5-10 ms instead of 0.05 ms (benchmarks/README.md, "Runtime
// under contention").
// (Set by the thread that starts the worker, so it holds before the worker first runs.)
void make_batch_thread(std::thread& worker) {
#ifdef SCHED_BATCH
  sched_param param{};
  param.sched_priority = 0;
  (void)pthread_setschedparam(worker.native_handle(), SCHED_BATCH, &param);
#else
  (void)worker;
#endif
}

// A thread's first allocation makes glibc set up a malloc arena for it: ~90 µs for a process's
// first extra thread (measured in a C++ test program), which a worker otherwise pays inside its
// first chunk (the kernels' thread-local buffers) while the caller waits for that chunk: a first
// 2-thread call slower than on 1 thread. A worker allocates once when it starts, before any call.
void warm_allocator() {
  void* volatile block = std::malloc(64);  // volatile: the pair must not be optimised away
  std::free(block);
}

// How long the caller polls for chunks a worker has started before it yields its core instead.
constexpr int kWaitPolls = 20000;

class Pool {
 public:
  // Publishes task to the workers without waiting for any of them. Spinning workers see it at
  // once. Sleeping ones (and workers not started yet) are woken unless a worker found the machine
  // busy in the last kBackOff; for a small task only after a run of kStreak, and only when no
  // wake is already on its way (a wake is a system call). Returns false (publishing nothing) when
  // a worker holds the pool's lock, possibly descheduled while holding it: the caller then runs
  // every chunk itself rather than wait for that worker.
  bool publish(const std::shared_ptr<Task>& task, int wanted, bool large) {
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    bool started = false;
    while (large && workers_ < wanted) {
      try {
        std::thread worker([this] { work(); });
        make_batch_thread(worker);
        worker.detach();
      } catch (const std::system_error&) {
        break;  // no more threads to be had: the callers do the work themselves
      }
      ++workers_;
      started = true;
    }
    task_ = task;
    caller_cpu_.store(task ? task->caller_cpu : -1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    const auto now = Clock::now();
    streak_ = now - last_publish_ < kStreakGap ? streak_ + 1 : 0;
    last_publish_ = now;
    const bool notify = sleepers_ > 0 && now >= quiet_from_.load(std::memory_order_relaxed) &&
                        (large || (streak_ >= kStreak && !wake_pending_));
    if ((notify || started) && !wake_pending_) {  // (a new worker's start is timed as a wake)
      wake_pending_ = true;
      woken_at_ = now;
    }
    lock.unlock();  // (notifying under the lock would make a woken worker block on it at once)
    if (notify) wake_.notify_all();
    return true;
  }

 private:
  enum class Spin { task, timeout, busy };

  // Polls for a generation other than `seen` for up to kSpin. `busy` when it was descheduled
  // meanwhile (kLate); stops early on the last caller's core, where a poll only takes time from
  // the caller.
  Spin spin_for(std::uint64_t seen) {
    auto last = Clock::now();
    const auto until = last + kSpin;
    for (int poll = 1;; ++poll) {
      if (generation_.load(std::memory_order_acquire) != seen)
        return Clock::now() - last > kLate ? found_busy() : Spin::task;
      cpu_relax();
      if (poll % 64 != 0) continue;
      const auto now = Clock::now();
      if (now - last > kLate) return found_busy();
      if (now >= until || on_cpu(caller_cpu_.load(std::memory_order_relaxed))) return Spin::timeout;
      last = now;
    }
  }

  // Starts a back-off: no wakes for kBackOff.
  Spin found_busy() {
    quiet_from_.store(Clock::now() + kBackOff, std::memory_order_relaxed);
    return Spin::busy;
  }

  void work() {
    warm_allocator();
    std::uint64_t seen = 0;
    // A new worker first answers the wake that started it (sleeping only if a task is already
    // gone), then polls after each task it sees.
    for (Spin spin = Spin::timeout;;) {
      if (spin == Spin::task) spin = spin_for(seen);
      std::shared_ptr<Task> task;
      bool busy = false;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        if (spin != Spin::task) {
          // Leaves to their callers any tasks published while it polled descheduled.
          if (spin == Spin::busy) seen = generation_.load(std::memory_order_acquire);
          ++sleepers_;
          wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
          --sleepers_;
          if (wake_pending_) {  // this worker answers the wake: did it get a core in time?
            wake_pending_ = false;
            busy = Clock::now() - woken_at_ > kLate;
          }
        }
        seen = generation_.load(std::memory_order_acquire);
        task = task_;
      }
      // A worker that got its core late leaves the task to its caller (its core is shared); on the
      // caller's own core it would only time-share that core with the caller.
      if (busy || (task && on_cpu(task->caller_cpu))) {
        spin = found_busy();
        continue;  // to sleep, leaving this task to its caller
      }
      spin = Spin::task;  // (not busy: poll for the next task first)
      if (task && task->helpers.fetch_sub(1, std::memory_order_relaxed) > 0) take_chunks(*task);
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::shared_ptr<Task> task_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> caller_cpu_{-1};
  std::atomic<Clock::time_point> quiet_from_{};  // no wake before this (kBackOff)
  int workers_ = 0, sleepers_ = 0;
  bool wake_pending_ = false;   // a wake was sent and no worker has returned from it yet
  Clock::time_point woken_at_;  // when that wake was sent
  Clock::time_point last_publish_;
  int streak_ = 0;  // products published in a row, each within kStreakGap of the one before
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
  // Start the workers now, not in the first product (thread creation costs that call ~50 µs).
  if (n > 1) pool().publish(nullptr, n - 1, true);
}

void parallel_chunks(int threads, std::int64_t chunks, std::int64_t work,
                     const std::function<void(std::int64_t)>& body) {
  if (threads <= 1 || chunks <= 1) {
    for (std::int64_t i = 0; i < chunks; ++i) body(i);
    return;
  }
  auto task = std::make_shared<Task>();
  task->body = &body;
  task->chunks = chunks;
  task->caller_cpu = current_cpu();
  const int helpers = static_cast<int>(std::min<std::int64_t>(threads, chunks)) - 1;
  task->helpers.store(helpers, std::memory_order_relaxed);
  if (!pool().publish(task, helpers, work >= kWakeWork)) task->helpers.store(0, std::memory_order_relaxed);
  take_chunks(*task);
  // Only chunks a worker has started are left: poll as long as one takes, and give the core away
  // only after that (a yield on a loaded machine can cost this thread a whole scheduler round).
  for (int poll = 0; task->done.load(std::memory_order_acquire) < chunks; ++poll) {
    if (poll < kWaitPolls) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace htcore
