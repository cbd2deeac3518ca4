// kernel_bench: times htcore's CSR and SELL-8 kernels directly (no Python), cache-hot.
//
// For each shape of the performance notes (docs/performance.md) it builds one seeded random
// matrix (each entry kept with probability `density`, values uniform in +-[0.01, 1]) in three
// storage formats (float32 values + int32 columns, float32 + uint16, float16 + uint16) and times
//   A x         csr_spmm with k = 1 (CSRMatrix.matvec),
//   A X, b32    csr_spmm with X (cols, 32) and Y (rows, 32) row-major (CSRMatrix.matmat),
//   X A^T, b32  csr_spmm with X (32, cols) batch-major and Y (32, rows) (sparse_linear),
//   SELL-8 A x  sell_spmv on the SELL-8 layout of the same matrix (the runtime's batch-1 path),
// at 1 and 2 threads (htcore::set_num_threads; a product below the parallel grain runs on one
// thread whatever is asked, and the table says how many it used). The same x, X and matrix are
// used on every call, so everything the product touches stays in cache when it fits (4096x4096
// at 10% is 13 MiB in float32 + int32, inside the 32 MiB L3 of the machine the notes come from).
// The grid is walked --rounds times (default 5); in each round every (case, thread count) gets 3
// warm-up calls, then up to reps / rounds timed calls or budget / rounds seconds, whichever ends
// first. The table shows the median and the 10th percentile of all per-call times. Unless
// GOMP_SPINCOUNT or OMP_WAIT_POLICY is set, the program runs itself again with GOMP_SPINCOUNT=30000,
// the setting of benchmarks/bench_spmv.py (libgomp reads it at load time, before main).
//
// Usage: kernel_bench [--reps N] [--budget SECONDS] [--rounds R] [--threads 1,2] [--quick] [--out PATH]
// Writes a markdown table to stdout and to PATH (default benchmarks/results/cpp_kernels.md).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "csr.hpp"
#include "parallel.hpp"
#include "sell.hpp"
#include "splitmix64.hpp"

#ifndef KERNEL_BENCH_FLAGS
#define KERNEL_BENCH_FLAGS "unknown"
#endif
#ifndef KERNEL_BENCH_BUILD_TYPE
#define KERNEL_BENCH_BUILD_TYPE "unknown"
#endif
#ifndef KERNEL_BENCH_RESULTS
#define KERNEL_BENCH_RESULTS "cpp_kernels.md"
#endif

namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kBatch = 32;

struct Shape {
  int64_t rows, cols;
  double density;
};

// The shapes the performance notes quote (docs/performance.md).
const Shape kShapes[] = {
    {3072, 768, 0.01},   // ~8 values per row: per-row overhead dominates
    {768, 3072, 0.01},   // ~31 per row
    {1024, 784, 0.10},   // ~78 per row (the MLP's first layer)
    {4096, 4096, 0.10},  // ~410 per row, 13 MiB in float32 + int32
};

double uniform(uint64_t& state) { return static_cast<double>(htcore::splitmix64(state) >> 11) * 0x1.0p-53; }

// float -> IEEE binary16 bits, round to nearest even; magnitudes below 2^-14 become zero (the
// benchmark's values are at least 0.01 in magnitude).
uint16_t to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int32_t exp = static_cast<int32_t>((x >> 23) & 0xffu) - 127 + 15;
  const uint32_t mant = x & 0x7fffffu;
  if (exp <= 0) return static_cast<uint16_t>(sign);
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(h);
}

// One random CSR matrix in every storage format the bench uses.
struct Matrix {
  int64_t rows = 0, cols = 0;
  std::vector<int32_t> indptr;
  std::vector<int32_t> idx32;
  std::vector<uint16_t> idx16;
  std::vector<float> val32;
  std::vector<uint16_t> val16;
  int64_t nnz() const { return static_cast<int64_t>(val32.size()); }
};

Matrix random_matrix(const Shape& s, uint64_t seed) {
  Matrix m;
  m.rows = s.rows;
  m.cols = s.cols;
  m.indptr.assign(1, 0);
  uint64_t state = seed;
  for (int64_t r = 0; r < s.rows; ++r) {
    for (int64_t c = 0; c < s.cols; ++c) {
      if (uniform(state) >= s.density) continue;
      const double v = (0.01 + 0.99 * uniform(state)) * (uniform(state) < 0.5 ? -1.0 : 1.0);
      m.idx32.push_back(static_cast<int32_t>(c));
      m.idx16.push_back(static_cast<uint16_t>(c));
      m.val32.push_back(static_cast<float>(v));
      m.val16.push_back(to_half(static_cast<float>(v)));
    }
    m.indptr.push_back(static_cast<int32_t>(m.idx32.size()));
  }
  return m;
}

enum class Format { f32_i32, f32_u16, f16_u16 };
const Format kFormats[] = {Format::f32_i32, Format::f32_u16, Format::f16_u16};

const char* format_name(Format f) {
  switch (f) {
    case Format::f32_i32: return "float32 / int32";
    case Format::f32_u16: return "float32 / uint16";
    case Format::f16_u16: return "float16 / uint16";
  }
  return "?";
}

htcore::CsrRef csr_ref(const Matrix& m, Format f) {
  htcore::CsrRef a;
  a.rows = m.rows;
  a.cols = m.cols;
  a.nnz = m.nnz();
  a.indptr = m.indptr.data();
  a.indptr_type = htcore::IndptrType::i32;
  const bool u16 = f != Format::f32_i32;
  a.indices = u16 ? static_cast<const void*>(m.idx16.data()) : static_cast<const void*>(m.idx32.data());
  a.index_type = u16 ? htcore::IndexType::u16 : htcore::IndexType::i32;
  const bool half = f == Format::f16_u16;
  a.data = half ? static_cast<const void*>(m.val16.data()) : static_cast<const void*>(m.val32.data());
  a.value_type = half ? htcore::ValueType::f16 : htcore::ValueType::f32;
  return a;
}

// A SELL-8 copy of a CSR matrix (owns its arrays).
struct Sell {
  std::vector<int32_t> perm;
  std::vector<int64_t> slice_ptr;
  std::vector<unsigned char> indices, data;
  htcore::SellRef ref;
};

Sell make_sell(const htcore::CsrRef& a) {
  Sell s;
  htcore::sell_layout(a, s.perm, s.slice_ptr);
  const int64_t entries = s.slice_ptr.back();
  const size_t idx_bytes = a.index_type == htcore::IndexType::u16 ? 2 : 4;
  const size_t val_bytes = a.value_type == htcore::ValueType::f16 ? 2 : 4;
  s.indices.resize(static_cast<size_t>(entries) * idx_bytes + 64);
  s.data.resize(static_cast<size_t>(entries) * val_bytes + 64);
  htcore::sell_fill(a, s.perm, s.slice_ptr, s.indices.data(), s.data.data());
  s.ref.rows = a.rows;
  s.ref.cols = a.cols;
  s.ref.perm_size = static_cast<int64_t>(s.perm.size());
  s.ref.slice_ptr_size = static_cast<int64_t>(s.slice_ptr.size());
  s.ref.entries = entries;
  s.ref.perm = s.perm.data();
  s.ref.slice_ptr = s.slice_ptr.data();
  s.ref.indices = s.indices.data();
  s.ref.index_type = a.index_type;
  s.ref.data = s.data.data();
  s.ref.value_type = a.value_type;
  return s;
}

struct Options {
  int reps = 2500;        // timed calls per (case, thread count), over all rounds
  double budget = 0.5;    // seconds per (case, thread count), over all rounds
  int rounds = 5;         // passes over the whole grid; each takes its share of reps and budget
  std::vector<int> threads{1, 2};
  std::string out = KERNEL_BENCH_RESULTS;
};

// Per-call times of one (case, thread count), collected over the rounds.
struct Samples {
  std::vector<double> us;
  int threads_used = 1;
};

// One round of a case: 3 warm-up calls (caches, kept buffers, the thread pool), then up to
// reps / rounds timed calls or budget / rounds seconds, whichever ends first (at least 5 calls).
template <class F>
void time_round(F&& call, const Options& o, Samples& s) {
  for (int i = 0; i < 3; ++i) call();
  const int reps = std::max(5, o.reps / o.rounds);
  const double budget = o.budget / o.rounds;
  const auto start = Clock::now();
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    call();
    const auto t1 = Clock::now();
    s.us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    if (i >= 4 && std::chrono::duration<double>(t1 - start).count() > budget) break;
  }
}

struct Timing {
  double median_us = 0, p10_us = 0;
  int calls = 0, threads_used = 1;
};

Timing summarise(Samples s) {
  std::sort(s.us.begin(), s.us.end());
  Timing t;
  t.calls = static_cast<int>(s.us.size());
  t.median_us = s.us[s.us.size() / 2];
  t.p10_us = s.us[s.us.size() / 10];
  t.threads_used = s.threads_used;
  return t;
}

std::string read_first_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown";
}

std::string load_average() {
  std::istringstream in(read_first_line("/proc/loadavg"));
  std::string a, b, c;
  in >> a >> b >> c;
  return a.empty() ? "unknown" : a + " / " + b + " / " + c;
}

std::string utc_now() {
  char buf[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  return buf;
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

std::string fmt(double v, int digits = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::vector<int> parse_threads(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::max(1, std::atoi(item.c_str())));
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "kernel_bench: " << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--reps") o.reps = std::max(15, std::atoi(next().c_str()));
    else if (a == "--budget") o.budget = std::max(0.0, std::atof(next().c_str()));
    else if (a == "--rounds") o.rounds = std::max(1, std::atoi(next().c_str()));
    else if (a == "--threads") o.threads = parse_threads(next());
    else if (a == "--out") o.out = next();
    else if (a == "--quick") {
      o.reps = 60;
      o.budget = 0.03;
    } else {
      std::cerr << "usage: kernel_bench [--reps N] [--budget SECONDS] [--rounds R] [--threads 1,2] [--quick] "
                   "[--out PATH]\n";
      std::exit(a == "--help" || a == "-h" ? 0 : 2);
    }
  }
  if (o.threads.empty()) o.threads = {1, 2};
  return o;
}

std::string compiler() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "gcc " __VERSION__;
#else
  return "unknown";
#endif
}

// One timed product: a shape, an op, a storage format, and the call itself.
struct Case {
  std::string shape, op, format;
  double per_row = 0;
  bool baseline = false;  // float32 / int32 CSR: the reference of its op
  std::string base_op;    // the op whose float32 / int32 CSR time this row is compared with
  std::function<void()> call;
  std::function<int()> threads_used;
  std::vector<Samples> samples;  // one per thread count
};

}  // namespace

int main(int argc, char** argv) {
  // libgomp reads GOMP_SPINCOUNT when it loads, before main: run again with the setting of the
  // Python benchmarks (bench_spmv.py, and the notes in docs/performance.md) unless one is given.
  if (!std::getenv("GOMP_SPINCOUNT") && !std::getenv("OMP_WAIT_POLICY") && !std::getenv("KERNEL_BENCH_REEXEC")) {
    setenv("GOMP_SPINCOUNT", "30000", 1);
    setenv("KERNEL_BENCH_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: then carry on with the default
    unsetenv("GOMP_SPINCOUNT");
  }
  const Options o = parse(argc, argv);
  const std::string started = utc_now(), load_start = load_average();
  const auto wall0 = Clock::now();

  // Matrices, vectors and SELL-8 copies live until the end: the cases refer to them.
  std::deque<Matrix> matrices;
  std::deque<std::vector<float>> buffers;
  std::deque<Sell> sells;
  std::vector<Case> cases;
  uint64_t seed = 20261202;
  for (const Shape& s : kShapes) {
    const Matrix& m = matrices.emplace_back(random_matrix(s, seed++));
    uint64_t st = seed * 7919;
    std::vector<float>& x = buffers.emplace_back(static_cast<size_t>(m.cols));
    std::vector<float>& X = buffers.emplace_back(static_cast<size_t>(m.cols * kBatch));
    for (auto& v : x) v = static_cast<float>(2 * uniform(st) - 1);
    for (auto& v : X) v = static_cast<float>(2 * uniform(st) - 1);
    std::vector<float>& y = buffers.emplace_back(static_cast<size_t>(m.rows));
    std::vector<float>& Y = buffers.emplace_back(static_cast<size_t>(m.rows * kBatch));
    const std::string shape = std::to_string(s.rows) + "x" + std::to_string(s.cols) + " " + fmt(100 * s.density, 0) + "%";
    const double per_row = static_cast<double>(m.nnz()) / static_cast<double>(m.rows);
    const int64_t rows = m.rows, cols = m.cols, nnz = m.nnz();
    float *xp = x.data(), *Xp = X.data(), *yp = y.data(), *Yp = Y.data();
    for (Format f : kFormats) {
      const htcore::CsrRef a = csr_ref(m, f);
      const Sell& sell = sells.emplace_back(make_sell(a));
      const htcore::SellRef sref = sell.ref;
      const bool base = f == Format::f32_i32;
      auto add = [&](const char* op, const char* base_op, bool is_base, std::function<void()> call,
                     std::function<int()> used) {
        cases.push_back({shape, op, format_name(f), per_row, is_base, base_op, std::move(call), std::move(used), {}});
      };
      add("A x", "A x", base,
          [=] { htcore::csr_spmm(a, xp, cols, 1, false, nullptr, 0, htcore::Activation::none, yp, rows, 1, 1); },
          [=] { return htcore::csr_threads(rows, nnz, 1); });
      add("SELL-8 A x", "A x", false,
          [=] { htcore::sell_spmv(sref, xp, cols, nullptr, 0, htcore::Activation::none, yp, rows); },
          [=] { return htcore::csr_threads(rows, sref.entries, 1); });
      add("A X, batch 32", "A X, batch 32", base,
          [=] {
            htcore::csr_spmm(a, Xp, cols * kBatch, kBatch, false, nullptr, 0, htcore::Activation::none, Yp,
                             rows * kBatch, kBatch, 1);
          },
          [=] { return htcore::csr_threads(rows, nnz, kBatch); });
      add("X A^T, batch 32", "X A^T, batch 32", base,
          [=] {
            htcore::csr_spmm(a, Xp, cols * kBatch, kBatch, true, nullptr, 0, htcore::Activation::none, Yp,
                             rows * kBatch, 1, rows);
          },
          [=] { return htcore::csr_threads(rows, nnz, kBatch); });
    }
  }
  for (Case& c : cases) c.samples.resize(o.threads.size());

  for (int round = 0; round < o.rounds; ++round) {
    for (Case& c : cases) {
      for (size_t ti = 0; ti < o.threads.size(); ++ti) {
        htcore::set_num_threads(o.threads[ti]);
        time_round(c.call, o, c.samples[ti]);
        c.samples[ti].threads_used = c.threads_used();
      }
    }
    std::cerr << "round " << round + 1 << " of " << o.rounds << " done\n";
  }
  const double wall = std::chrono::duration<double>(Clock::now() - wall0).count();
  const std::string load_end = load_average();

  std::vector<std::vector<Timing>> timings;
  for (const Case& c : cases) {
    std::vector<Timing> t;
    for (const Samples& s : c.samples) t.push_back(summarise(s));
    timings.push_back(t);
  }
  // The float32 / int32 CSR median of (shape, op, thread count).
  auto baseline = [&](const Case& c, size_t ti) {
    for (size_t j = 0; j < cases.size(); ++j)
      if (cases[j].baseline && cases[j].shape == c.shape && cases[j].op == c.base_op) return timings[j][ti].median_us;
    return std::nan("");
  };

  std::ostringstream md;
  md << "# htcore kernels timed from C++ (benchmarks/cpp, kernel_bench)\n\n";
  md << "Date: " << started << ". CPU: " << cpu_model() << ", " << omp_get_num_procs()
     << " logical cores. **The host is shared with other jobs**: load average (1 / 5 / 15 min, from "
        "/proc/loadavg, the figures `uptime` shows) "
     << load_start << " at the start and " << load_end
     << " at the end, so a second thread may wait for a busy core; compare figures within one run and "
        "read the p10 column as the less contended time.\n\n";
  md << "Build: " << KERNEL_BENCH_BUILD_TYPE << ", " << compiler() << ", flags `" << KERNEL_BENCH_FLAGS << "`, OpenMP "
     << _OPENMP << "; AVX2+FMA+F16C kernels: " << (htcore::csr_uses_avx2() ? "yes" : "no (portable kernels)")
     << ". GOMP_SPINCOUNT=" << env_or("GOMP_SPINCOUNT", "(unset)") << ", OMP_WAIT_POLICY="
     << env_or("OMP_WAIT_POLICY", "(unset)") << ".\n\n";
  md << "Method: one seeded random matrix per shape (each entry kept with probability = density, "
        "values uniform in ±[0.01, 1]); the same matrix, x and X on every call, so the product is "
        "**cache-hot** wherever it fits in cache (4096x4096 at 10% is 13 MiB in float32 / int32). "
     << o.rounds << " rounds over the whole grid; in each, per (case, thread count), 3 warm-up calls then up to "
     << std::max(5, o.reps / o.rounds) << " timed calls or " << fmt(o.budget / o.rounds, 3)
     << " s, whichever ends first. Times are per call in µs over all rounds: median and 10th "
        "percentile (p10). Cases follow each other (no A/B interleaving). `thr` = threads asked / "
        "used (a product under 2 × 8,192 multiply-adds, (nnz + rows) × batch, runs on one thread "
        "whatever is asked). `vs f32/i32` = median time of the float32 / int32 CSR kernel for the "
        "same product (CSR A x for the SELL-8 rows) ÷ this row's median, same thread count (> 1: "
        "this row is faster). Ops: `A x` = csr_spmm with k = 1 (CSRMatrix.matvec); `SELL-8 A x` = "
        "sell_spmv on the SELL-8 copy (the runtime's batch-1 path); `A X, batch 32` = X (cols, 32) "
        "and Y (rows, 32) row-major (CSRMatrix.matmat); `X A^T, batch 32` = X (32, cols) and Y "
        "(32, rows), the blocked transpose of X included (sparse_linear). Whole run: "
     << fmt(wall, 0) << " s.\n\n";

  int contended = 0, measured = 0;
  for (const auto& row : timings)
    for (const Timing& t : row) {
      ++measured;
      contended += t.median_us > 1.2 * t.p10_us;
    }
  md << "Noise: in " << contended << " of " << measured
     << " (case, thread count) pairs the median is more than 1.2x the p10, a sign that other jobs took "
        "the cores during part of that case; their medians overstate the kernel's time.\n\n";

  md << "| shape, density | values/row | op | values / columns |";
  for (int t : o.threads) md << " " << t << " thr: median µs (p10) | thr |";
  for (int t : o.threads) md << " vs f32/i32, " << t << " thr |";
  md << "\n|---|---:|---|---|";
  for (size_t i = 0; i < o.threads.size(); ++i) md << "---:|---:|";
  for (size_t i = 0; i < o.threads.size(); ++i) md << "---:|";
  md << "\n";
  for (size_t j = 0; j < cases.size(); ++j) {
    const Case& c = cases[j];
    md << "| " << c.shape << " | " << fmt(c.per_row) << " | " << c.op << " | " << c.format << " |";
    for (size_t ti = 0; ti < o.threads.size(); ++ti)
      md << " " << fmt(timings[j][ti].median_us) << " (" << fmt(timings[j][ti].p10_us) << ") | " << o.threads[ti]
         << "/" << timings[j][ti].threads_used << " |";
    for (size_t ti = 0; ti < o.threads.size(); ++ti) md << " " << fmt(baseline(c, ti) / timings[j][ti].median_us, 2) << " |";
    md << "\n";
  }

  std::cout << md.str();
  std::ofstream out(o.out);
  if (!out) {
    std::cerr << "kernel_bench: cannot write " << o.out << "\n";
    return 1;
  }
  out << md.str();
  std::cerr << "wrote " << o.out << "\n";
  return 0;
}
