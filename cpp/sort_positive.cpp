// The ascending sort of a positive sample that the tail estimators and the power-law fit share.
//
// Positive doubles order like their IEEE bit patterns read as unsigned integers ("keys"), so the
// sort is an MSD radix sort on keys: one parallel pass spreads the sample over 2^kMaxBits
// buckets of equal key width between its smallest and largest key (per-thread histograms over
// fixed contiguous parts), then threads take whole buckets and sort each in cache by the same
// split applied recursively down to small leaves. A sorted sequence is unique, so the result
// does not depend on the thread count or on which thread sorted which bucket. The bucket sorts
// use per-thread scratch sized to the largest bucket rather than a second copy. float samples
// (most weights) take a cheaper route, an LSD radix sort of their 32-bit keys inside the result's
// buffer (sort_float), so they need no float64 copy besides the result either.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "parallel.hpp"
#include "tails.hpp"

namespace htcore {

namespace {

constexpr int kMaxBits = 11;                                // at most 2^11 buckets per split
constexpr std::size_t kLeaf = 32;                           // buckets up to this size are finished by std::sort
constexpr std::size_t kParallelMin = std::size_t{1} << 20;  // smaller samples sort on one thread

// Number of buckets (as bits) for m samples: about m / 8, at most 2^kMaxBits.
int split_bits(std::size_t m) { return std::clamp(64 - __builtin_clzll(m) - 3, 1, kMaxBits); }

// A positive value's bits as an unsigned integer: the same order as the values.
std::uint64_t key_of(double v) {
  std::uint64_t k;
  std::memcpy(&k, &v, sizeof k);
  return k;
}

std::uint32_t key_of(float v) {
  std::uint32_t k;
  std::memcpy(&k, &v, sizeof k);
  return k;
}

// Samples below this size are sorted by std::sort: the radix passes would not pay.
constexpr std::size_t kSmallSort = std::size_t{1} << 14;

// x[0..size) widened to doubles and sorted by std::sort.
template <class T>
std::unique_ptr<double[]> std_sorted(const T* x, std::size_t size) {
  std::unique_ptr<double[]> out(new double[size]);
  std::copy(x, x + size, out.get());
  std::sort(out.get(), out.get() + size);
  return out;
}

// The smallest and largest key_of over x[0..size), size >= 1.
template <class T>
auto key_range(const T* x, std::size_t size, int threads) {
  auto lo = key_of(x[0]), hi = lo;
#pragma omp parallel for num_threads(threads) reduction(min : lo) reduction(max : hi)
  for (std::size_t i = 0; i < size; ++i) {
    const auto k = key_of(x[i]);
    lo = std::min(lo, k);
    hi = std::max(hi, k);
  }
  return std::make_pair(lo, hi);
}

// Shift that maps keys in [lo, hi] to at most 2^bits buckets: (key - lo) >> shift.
int bucket_shift(std::uint64_t lo, std::uint64_t hi, int bits) {
  const int width = 64 - __builtin_clzll(hi - lo);  // hi > lo
  return std::max(0, width - bits);
}

// Sorts a[0..m) ascending, using b[0..m) as scratch.
void msd_sort(double* a, double* b, std::size_t m) {
  if (m <= kLeaf) {
    std::sort(a, a + m);
    return;
  }
  std::uint64_t lo = key_of(a[0]), hi = lo;
  for (std::size_t i = 1; i < m; ++i) {
    const std::uint64_t k = key_of(a[i]);
    lo = std::min(lo, k);
    hi = std::max(hi, k);
  }
  if (lo == hi) return;
  const int bits = split_bits(m), shift = bucket_shift(lo, hi, bits);
  const std::size_t buckets = std::size_t{1} << bits;
  std::size_t count[(1u << kMaxBits) + 1], next[1u << kMaxBits];
  std::fill(count, count + buckets + 1, 0);
  for (std::size_t i = 0; i < m; ++i) ++count[((key_of(a[i]) - lo) >> shift) + 1];
  for (std::size_t j = 1; j <= buckets; ++j) count[j] += count[j - 1];
  std::copy(count, count + buckets, next);
  for (std::size_t i = 0; i < m; ++i) b[next[(key_of(a[i]) - lo) >> shift]++] = a[i];
  for (std::size_t j = 0; j < buckets; ++j) {
    const std::size_t begin = count[j], size = count[j + 1] - begin;
    if (size > kLeaf) msd_sort(b + begin, a + begin, size);
    else std::sort(b + begin, b + begin + size);
  }
  std::memcpy(a, b, m * sizeof(double));
}

std::unique_ptr<double[]> sort_double(const double* x, std::int64_t n) {
  const std::size_t size = static_cast<std::size_t>(n);
  if (size < kSmallSort) return std_sorted(x, size);
  std::unique_ptr<double[]> out(new double[size]);
  const int threads = size >= kParallelMin ? htcore::num_threads() : 1;
  const auto range = key_range(x, size, threads);
  const std::uint64_t lo = range.first, hi = range.second;
  if (lo == hi) {
    std::copy(x, x + size, out.get());
    return out;
  }
  const int shift = bucket_shift(lo, hi, kMaxBits);
  constexpr std::size_t kBuckets = std::size_t{1} << kMaxBits;
  // counts[t][j]: samples of part t in bucket j, turned into part t's write position in bucket j.
  std::vector<std::size_t> counts(static_cast<std::size_t>(threads) * kBuckets, 0);
  std::vector<std::size_t> start(kBuckets + 1, 0);
  std::atomic<bool> out_of_memory{false};
#pragma omp parallel num_threads(threads)
  {
    const std::size_t t = static_cast<std::size_t>(omp_get_thread_num()),
                      parts = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t begin = size * t / parts, end = size * (t + 1) / parts;
    std::size_t* mine = &counts[t * kBuckets];
    for (std::size_t i = begin; i < end; ++i) ++mine[(key_of(x[i]) - lo) >> shift];
#pragma omp barrier
#pragma omp single
    {
      std::size_t offset = 0;
      for (std::size_t j = 0; j < kBuckets; ++j) {
        start[j] = offset;
        for (std::size_t p = 0; p < parts; ++p) {
          const std::size_t c = counts[p * kBuckets + j];
          counts[p * kBuckets + j] = offset;
          offset += c;
        }
      }
      start[kBuckets] = offset;
    }
    for (std::size_t i = begin; i < end; ++i) out[mine[(key_of(x[i]) - lo) >> shift]++] = x[i];
#pragma omp barrier
    std::unique_ptr<double[]> scratch;
    std::size_t scratch_size = 0;
#pragma omp for schedule(dynamic, 1)
    for (std::size_t j = 0; j < kBuckets; ++j) {
      const std::size_t b = start[j], m = start[j + 1] - b;
      if (m <= 1) continue;
      if (m > scratch_size) {
        scratch.reset();
        scratch.reset(new (std::nothrow) double[m]);  // an exception must not leave the parallel region
        scratch_size = scratch ? m : 0;
        if (!scratch) {
          out_of_memory = true;
          continue;
        }
      }
      msd_sort(out.get() + b, scratch.get(), m);
    }
  }
  if (out_of_memory) throw std::bad_alloc();
  return out;
}

// float samples: an LSD radix sort of their 32-bit keys (minus the smallest) in digit_bits-bit
// digits, inside the result's own buffer, whose two halves serve as the two key arrays; then the
// keys are widened to doubles in place, from the back (double i ends at byte 8i + 8 and only
// overwrites keys >= i, which are already widened). Half the bytes per pass of the double sort,
// and no scratch. Each pass is a stable counting sort, parallel over fixed contiguous parts (one
// histogram per part), so the result is the same at any thread count.
// Digits of 11 bits (fewer passes) while the keys fit in the caches; 8 bits above: a pass over a
// large array scatters to 2^bits places at once, and 256 of them stay within the TLB where 2048 did
// not (MiniLM's 11.7M-entry embedding sorted in 0.20 s instead of 0.26).
int digit_bits(std::size_t size) { return size > (std::size_t{1} << 20) ? 8 : 11; }

std::unique_ptr<double[]> sort_float(const float* x, std::int64_t n) {
  const std::size_t size = static_cast<std::size_t>(n);
  if (size < kSmallSort) return std_sorted(x, size);
  std::unique_ptr<double[]> out(new double[size]);
  const int threads = size >= kParallelMin ? htcore::num_threads() : 1;
  const auto range = key_range(x, size, threads);
  const std::uint32_t lo = range.first, hi = range.second;
  int passes = 0;
  const int bits = digit_bits(size);
  for (std::uint32_t span = hi - lo; span != 0; span >>= bits) ++passes;
  auto* keys = reinterpret_cast<std::uint32_t*>(out.get());  // 2 * size keys fit in size doubles
  std::uint32_t* halves[2] = {keys, keys + size};
  const std::size_t digits = std::size_t{1} << bits, mask = digits - 1;
  // On one thread, a first pass counts the digits of every pass (how many keys have a digit does not
  // depend on their order), so each pass reads the keys once, to scatter them, instead of twice.
  std::vector<std::size_t> all_counts(threads == 1 ? static_cast<std::size_t>(passes) * digits : 0);
  if (threads == 1) {
    for (std::size_t i = 0; i < size; ++i) {
      const std::uint32_t k = key_of(x[i]) - lo;
      for (int pass = 0; pass < passes; ++pass)
        ++all_counts[static_cast<std::size_t>(pass) * digits + ((k >> (pass * bits)) & mask)];
    }
  }
  std::vector<std::size_t> counts(static_cast<std::size_t>(threads) * digits);
  for (int pass = 0; pass < passes; ++pass) {
    // The last pass writes the lower half, so the passes alternate backwards from it.
    const std::uint32_t* src = halves[(passes - pass) % 2];
    std::uint32_t* dst = halves[(passes - 1 - pass) % 2];
    const int shift = pass * bits;
    auto key = [&](std::size_t i) { return pass == 0 ? key_of(x[i]) - lo : src[i]; };
    if (threads == 1) {
      const auto pass_counts =
          all_counts.begin() + static_cast<std::ptrdiff_t>(pass) * static_cast<std::ptrdiff_t>(digits);
      std::copy(pass_counts, pass_counts + static_cast<std::ptrdiff_t>(digits), counts.begin());
    } else {
      std::fill(counts.begin(), counts.end(), 0);
    }
#pragma omp parallel num_threads(threads)
    {
      const std::size_t t = static_cast<std::size_t>(omp_get_thread_num()),
                        parts = static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t begin = size * t / parts, end = size * (t + 1) / parts;
      std::size_t* mine = &counts[t * digits];
      if (threads > 1)
        for (std::size_t i = begin; i < end; ++i) ++mine[(key(i) >> shift) & mask];
#pragma omp barrier
#pragma omp single
      {
        std::size_t offset = 0;
        for (std::size_t d = 0; d < digits; ++d)
          for (std::size_t p = 0; p < parts; ++p) {
            const std::size_t c = counts[p * digits + d];
            counts[p * digits + d] = offset;
            offset += c;
          }
      }
      for (std::size_t i = begin; i < end; ++i) {
        const std::uint32_t k = key(i);
        dst[mine[(k >> shift) & mask]++] = k;
      }
    }
  }
  for (std::size_t i = size; i-- > 0;) {
    const std::uint32_t k = (passes == 0 ? 0 : keys[i]) + lo;
    float v;
    std::memcpy(&v, &k, sizeof v);
    const double widened = v;
    std::memcpy(reinterpret_cast<char*>(out.get()) + 8 * i, &widened, sizeof widened);
  }
  return out;
}

// |w| of the nonzero entries of w[0..size), in their order, and their number; throws on NaN or Inf.
// One pass without branches on the data (the entries of pruned weights are zero at random).
template <class T>
std::pair<std::unique_ptr<T[]>, std::int64_t> nonzero_magnitudes(const T* w, std::int64_t size) {
  using Key = decltype(key_of(T{}));
  constexpr Key kSign = Key{1} << (8 * sizeof(Key) - 1);
  const Key infinity = key_of(std::numeric_limits<T>::infinity());
  std::unique_ptr<T[]> out(new T[static_cast<std::size_t>(std::max<std::int64_t>(size, 1))]);
  std::int64_t m = 0, non_finite = 0;
  for (std::int64_t i = 0; i < size; ++i) {
    const Key key = key_of(w[i]) & ~kSign;
    T magnitude;
    std::memcpy(&magnitude, &key, sizeof magnitude);
    out[m] = magnitude;
    m += key != 0;
    non_finite += key >= infinity;
  }
  if (non_finite > 0) fail("W contains " + std::to_string(non_finite) + " non-finite value(s) (NaN or Inf)");
  return {std::move(out), m};
}

template <class T>
std::unique_ptr<double[]> sorted_magnitudes_of(const T* w, std::int64_t size, std::int64_t* n) {
  auto [magnitudes, m] = nonzero_magnitudes(w, size);
  *n = m;
  return sorted_positive(magnitudes.get(), m);
}

}  // namespace

std::unique_ptr<double[]> sorted_positive(const double* x, std::int64_t n) { return sort_double(x, n); }
std::unique_ptr<double[]> sorted_positive(const float* x, std::int64_t n) { return sort_float(x, n); }

std::unique_ptr<double[]> sorted_magnitudes(const double* w, std::int64_t size, std::int64_t* n) {
  return sorted_magnitudes_of(w, size, n);
}
std::unique_ptr<double[]> sorted_magnitudes(const float* w, std::int64_t size, std::int64_t* n) {
  return sorted_magnitudes_of(w, size, n);
}

}  // namespace htcore
