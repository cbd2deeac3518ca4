#include "topk.hpp"

#include <algorithm>
#include <cmath>
#include <functional>

#include "errors.hpp"
#include "parallel.hpp"
#include "splitmix64.hpp"

namespace htcore {

namespace {

using u128 = unsigned __int128;

// Work is handed out in chunks of about this many entries, so threads that the OS schedules late
// (the machine may be shared) simply do less. Chunking never changes results: histograms merge
// exactly and every row's output position is fixed.
constexpr std::int64_t kChunkEntries = std::int64_t(1) << 16;

// Below about a millisecond of work per pass (2^20 entries), waking a second thread costs more
// than it saves.
int threads_for(std::int64_t entries) { return entries >= (std::int64_t(1) << 20) ? htcore::num_threads() : 1; }

std::int64_t rows_per_chunk(std::int64_t cols) {
  return std::max<std::int64_t>(1, kChunkEntries / std::max<std::int64_t>(cols, 1));
}

// IEEE layout and the radix digits used per level (most significant first). The first digit
// always covers the whole exponent, so every first-level bucket holds a single exponent and the
// sums of squares below it can be kept as exact integer mantissa sums.
template <class U>
struct Format;
template <>
struct Format<std::uint16_t> {
  static constexpr int kMant = 10, kExpBits = 5, kSqShift = 0, kLevelCount = 2;
  static constexpr int kLevels[kLevelCount] = {7, 8};
};
template <>
struct Format<std::uint32_t> {
  static constexpr int kMant = 23, kExpBits = 8, kSqShift = 0, kLevelCount = 3;
  static constexpr int kLevels[kLevelCount] = {11, 10, 10};
};
template <>
struct Format<std::uint64_t> {
  // mantissa squares have 106 bits; dropping the low 20 keeps sums of 2^42 entries in 128 bits
  static constexpr int kMant = 52, kExpBits = 11, kSqShift = 20, kLevelCount = 5;
  static constexpr int kLevels[kLevelCount] = {11, 13, 13, 13, 13};
};

template <class U>
constexpr int kKeyBits = Format<U>::kMant + Format<U>::kExpBits;
template <class U>
constexpr U kMagnitudeMask = static_cast<U>(~(U(1) << kKeyBits<U>));
template <class U>
constexpr U kInfinityKey = static_cast<U>(((U(1) << Format<U>::kExpBits) - 1) << Format<U>::kMant);
// A threshold above every finite key: selects nothing.
template <class U>
constexpr U kNoneKey = static_cast<U>(~U(0));

template <class U>
inline U key_of(U bits) {
  return static_cast<U>(bits & kMagnitudeMask<U>);
}

// Bits of the key below level `level`'s digit.
template <class U>
int shift_after(int level) {
  int used = 0;
  for (int l = 0; l <= level; ++l) used += Format<U>::kLevels[l];
  return kKeyBits<U> - used;
}

template <class U>
int effective_exponent(U key) {
  return std::max(static_cast<int>(key >> Format<U>::kMant), 1);
}

template <class U>
U significand(U key) {
  const U frac = static_cast<U>(key & ((U(1) << Format<U>::kMant) - 1));
  return (key >> Format<U>::kMant) ? static_cast<U>(frac | (U(1) << Format<U>::kMant)) : frac;
}

// significand^2 >> sq_shift: x^2 in units of 2^(2 (e_eff - bias - mant) + sq_shift).
template <class U>
inline u128 square(U key) {
  const U m = significand(key);
  return (u128(m) * m) >> Format<U>::kSqShift;
}

template <class U>
double key_to_double(U key) {
  constexpr int kBias = (1 << (Format<U>::kExpBits - 1)) - 1;
  return std::ldexp(static_cast<double>(significand(key)), effective_exponent(key) - kBias - Format<U>::kMant);
}

template <class U>
std::int64_t total_count(const std::vector<TopkSegment<U>>& segments) {
  std::int64_t n = 0;
  for (const auto& s : segments) n += s.n;
  return n;
}

// Counts and (optionally) mantissa-square sums per bin. Integer merges are exact, so the merged
// histogram never depends on the thread count.
template <bool Sums>
struct Histogram {
  std::vector<std::uint64_t> count;
  std::vector<u128> sum;
  void reset(std::size_t n) {
    count.assign(n, 0);
    if (Sums) sum.assign(n, 0);
  }
  void add(const Histogram& other) {
    for (std::size_t i = 0; i < count.size(); ++i) count[i] += other.count[i];
    if (Sums)
      for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += other.sum[i];
  }
};

// Bins the keys of level `level` by their digit. Level 0 takes every key; deeper levels only the
// keys whose higher bits equal one of `prefixes` (at most 16), one block of bins per prefix. The
// loops are branch-free: a key matching no prefix is counted in an extra block that is then
// dropped (random data would mispredict a branch on every other key).
template <class U, bool Sums>
void histogram(const std::vector<TopkSegment<U>>& segments, int level, const std::vector<U>& prefixes,
               Histogram<Sums>& out) {
  const int bits = Format<U>::kLevels[level];
  const std::size_t bins = std::size_t(1) << bits;
  const int shift = shift_after<U>(level);
  const std::size_t slots = level == 0 ? 1 : prefixes.size();
  out.reset(slots * bins);
#pragma omp parallel num_threads(threads_for(total_count(segments)))
  {
    Histogram<Sums> local;
    local.reset((slots + 1) * bins);
    for (const auto& seg : segments) {
      if (level == 0) {
        std::uint64_t* const count = local.count.data();
        u128* const sum = Sums ? local.sum.data() : nullptr;
        const U* const x = seg.x;
#pragma omp for schedule(dynamic, kChunkEntries) nowait
        for (std::int64_t i = 0; i < seg.n; ++i) {
          const U key = key_of(x[i]);
          const std::size_t bin = key >> shift;
          ++count[bin];
          if constexpr (Sums) sum[bin] += square(key);
        }
      } else {
        const int prefix_shift = shift + bits;
        const U* const x = seg.x;
        // by value: a uint64 count store could otherwise alias bins and shift, forcing reloads
        std::uint64_t* const count = local.count.data();
        u128* const sum = Sums ? local.sum.data() : nullptr;
        const auto count_key = [=](U key, std::size_t slot) {
          const std::size_t bin = slot * bins + ((key >> shift) & (bins - 1));
          ++count[bin];
          if constexpr (Sums) sum[bin] += square(key);
        };
        if (slots == 1) {  // the common case: one target
          const U only = prefixes[0];
#pragma omp for schedule(dynamic, kChunkEntries) nowait
          for (std::int64_t i = 0; i < seg.n; ++i) {
            const U key = key_of(x[i]);
            count_key(key, static_cast<U>(key >> prefix_shift) == only ? 0 : 1);
          }
        } else {
#pragma omp for schedule(dynamic, kChunkEntries) nowait
          for (std::int64_t i = 0; i < seg.n; ++i) {
            const U key = key_of(x[i]);
            const U prefix = static_cast<U>(key >> prefix_shift);
            std::size_t slot = slots;
            for (std::size_t j = 0; j < slots; ++j) slot = prefix == prefixes[j] ? j : slot;
            count_key(key, slot);
          }
        }
      }
    }
    local.count.resize(slots * bins);
    if (Sums) local.sum.resize(slots * bins);
#pragma omp critical(htcore_topk_histogram)
    out.add(local);
  }
}

// Deeper levels only look at keys in the level-0 buckets of the targets. When those hold at most
// an eighth of the entries (the usual case: a bucket is one exponent and a few mantissa bits),
// they are copied out once, per thread (order is irrelevant to histograms), so the remaining
// passes read a small buffer instead of the whole input. Otherwise the input is used as is.
template <class U>
std::vector<TopkSegment<U>> narrow_to_buckets(const std::vector<TopkSegment<U>>& segments,
                                              const std::vector<std::uint64_t>& level0_count,
                                              const std::vector<U>& buckets, std::vector<std::vector<U>>& storage) {
  const std::int64_t n = total_count(segments);
  std::uint64_t wanted = 0;
  for (const U b : buckets) wanted += level0_count[b];
  if (wanted > static_cast<std::uint64_t>(n / 8)) return segments;
  std::vector<unsigned char> is_wanted(level0_count.size(), 0);
  for (const U b : buckets) is_wanted[b] = 1;
  const int shift = shift_after<U>(0);
  const int threads = threads_for(n);
  storage.assign(static_cast<std::size_t>(threads), {});
#pragma omp parallel num_threads(threads)
  {
    std::vector<U>& mine = storage[static_cast<std::size_t>(omp_get_thread_num())];
    mine.reserve(wanted / static_cast<std::uint64_t>(omp_get_num_threads()) + 64);
    for (const auto& seg : segments) {
      const U* const x = seg.x;
#pragma omp for schedule(dynamic, kChunkEntries) nowait
      for (std::int64_t i = 0; i < seg.n; ++i) {
        const U key = key_of(x[i]);
        if (is_wanted[key >> shift]) mine.push_back(key);
      }
    }
  }
  std::vector<TopkSegment<U>> narrowed;
  for (const auto& part : storage) narrowed.push_back({part.data(), static_cast<std::int64_t>(part.size())});
  return narrowed;
}

template <class U>
void require_finite(const std::vector<std::uint64_t>& level0_count, const std::string& name) {
  const std::size_t first_bad = kInfinityKey<U> >> shift_after<U>(0);
  std::uint64_t bad = 0;
  for (std::size_t b = first_bad; b < level0_count.size(); ++b) bad += level0_count[b];
  if (bad) fail(name + " contains " + std::to_string(bad) + " non-finite value(s) (NaN or Inf)");
}

// Level-0 bucket sums as doubles, scaled so the largest exponent present maps to ~1.
template <class U>
struct Scale {
  int e_ref = 1;
  // exponent that turns an integer mantissa-square sum of keys with this exponent into scaled units
  int unit(int e_eff) const { return 2 * (e_eff - e_ref) - 2 * Format<U>::kMant + Format<U>::kSqShift; }
};

template <class U>
int bucket_exponent(std::size_t bucket) {
  return std::max(static_cast<int>(bucket >> (Format<U>::kLevels[0] - Format<U>::kExpBits)), 1);
}

template <class U>
std::vector<double> scaled_bucket_sums(const Histogram<true>& h0, Scale<U>& scale) {
  for (std::size_t b = 0; b < h0.count.size(); ++b)
    if (h0.count[b]) scale.e_ref = bucket_exponent<U>(b);
  std::vector<double> out(h0.count.size());
  for (std::size_t b = 0; b < out.size(); ++b)
    out[b] = std::ldexp(static_cast<double>(h0.sum[b]), scale.unit(bucket_exponent<U>(b)));
  return out;
}

// Within bins [base, base + bins), the bin holding the k-th largest (1-based) key; `above` gets
// the count in higher bins.
std::size_t bin_of_rank(const std::vector<std::uint64_t>& count, std::size_t base, std::size_t bins, std::int64_t k,
                        std::int64_t& above) {
  above = 0;
  for (std::size_t b = bins; b-- > 0;) {
    const std::int64_t c = static_cast<std::int64_t>(count[base + b]);
    if (above + c >= k) return b;
    above += c;
  }
  fail("internal error: rank beyond histogram");
}

template <class U, bool Sums>
TopkSelection select_impl(const std::vector<TopkSegment<U>>& segments, const std::vector<std::int64_t>& ks,
                          const std::string& name) {
  using F = Format<U>;
  const std::int64_t n = total_count(segments);
  for (const std::int64_t k : ks)
    require(k >= 1 && k <= n, [&] { return "k must be in [1, " + std::to_string(n) + "], got " + std::to_string(k); });

  Histogram<Sums> h0;
  histogram<U, Sums>(segments, 0, {}, h0);
  require_finite<U>(h0.count, name);
  TopkSelection result;
  Scale<U> scale;
  std::vector<double> bucket_sq;
  if constexpr (Sums) {
    bucket_sq = scaled_bucket_sums<U>(h0, scale);
    for (const double s : bucket_sq) result.total_sq += s;  // ascending: small terms first
  }

  struct State {
    std::int64_t rank;  // rank of the target within its current bucket, 1 = largest
    std::int64_t greater = 0;
    U prefix = 0;
    std::int64_t ties = 0;
    double tail_hi = 0.0;  // level-0 buckets below the target's, scaled
    u128 tail_lo = 0;      // deeper bins below the target's, integer units of its exponent
  };
  std::vector<State> states;
  const std::size_t bins0 = std::size_t(1) << F::kLevels[0];
  for (const std::int64_t k : ks) {
    State s{k};
    std::int64_t above = 0;
    const std::size_t b = bin_of_rank(h0.count, 0, bins0, k, above);
    s.greater = above;
    s.rank = k - above;
    s.prefix = static_cast<U>(b);
    s.ties = static_cast<std::int64_t>(h0.count[b]);
    if constexpr (Sums)
      for (std::size_t lower = 0; lower < b; ++lower) s.tail_hi += bucket_sq[lower];
    states.push_back(s);
  }

  // Refines the targets of `group` through the deeper levels, reading `data`.
  const auto refine = [&](const std::vector<State*>& group, const std::vector<TopkSegment<U>>& data) {
    for (int level = 1; level < F::kLevelCount; ++level) {
      const int bits = F::kLevels[level];
      const std::size_t bins = std::size_t(1) << bits;
      std::vector<U> distinct;
      for (const State* s : group) distinct.push_back(s->prefix);
      std::sort(distinct.begin(), distinct.end());
      distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
      // at most 16 prefixes (and about 16k bins) per pass
      const std::size_t batch = std::clamp<std::size_t>((std::size_t(1) << 14) >> bits, 1, 16);
      for (std::size_t first = 0; first < distinct.size(); first += batch) {
        const std::vector<U> prefixes(distinct.begin() + first,
                                      distinct.begin() + std::min(distinct.size(), first + batch));
        Histogram<Sums> h;
        histogram<U, Sums>(data, level, prefixes, h);
        for (State* s : group) {
          const auto it = std::lower_bound(prefixes.begin(), prefixes.end(), s->prefix);
          if (it == prefixes.end() || *it != s->prefix) continue;
          const std::size_t base = static_cast<std::size_t>(it - prefixes.begin()) * bins;
          std::int64_t above = 0;
          const std::size_t b = bin_of_rank(h.count, base, bins, s->rank, above);
          s->greater += above;
          s->rank -= above;
          s->ties = static_cast<std::int64_t>(h.count[base + b]);
          if constexpr (Sums)
            for (std::size_t lower = 0; lower < b; ++lower) s->tail_lo += h.sum[base + lower];
          s->prefix = static_cast<U>((s->prefix << bits) | b);
        }
      }
    }
  };
  // Targets in level-0 order, grouped so each group's buckets hold at most an eighth of the
  // entries: each group is then copied out once and refined on the copy (see narrow_to_buckets).
  std::vector<State*> order;
  for (auto& s : states) order.push_back(&s);
  std::sort(order.begin(), order.end(), [](const State* a, const State* b) { return a->prefix < b->prefix; });
  for (std::size_t first = 0; first < order.size();) {
    std::vector<State*> group{order[first]};
    std::vector<U> buckets{order[first]->prefix};
    std::uint64_t held = h0.count[order[first]->prefix];
    std::size_t next = first + 1;
    for (; next < order.size(); ++next) {
      const U b = order[next]->prefix;
      const std::uint64_t extra = b == buckets.back() ? 0 : h0.count[b];
      if (held + extra > static_cast<std::uint64_t>(n / 8)) break;
      if (extra) buckets.push_back(b);
      held += extra;
      group.push_back(order[next]);
    }
    std::vector<std::vector<U>> storage;
    refine(group, narrow_to_buckets<U>(segments, h0.count, buckets, storage));
    first = next;
  }

  for (const auto& s : states) {
    TopkTarget out;
    out.key = s.prefix;
    out.value = key_to_double(s.prefix);
    out.greater = s.greater;
    out.ties = s.ties;
    if constexpr (Sums) {
      // ties beyond the rank are not kept: they belong to the tail
      const u128 tail_lo = s.tail_lo + u128(static_cast<std::uint64_t>(s.ties - s.rank)) * square(s.prefix);
      out.tail_sq = s.tail_hi + std::ldexp(static_cast<double>(tail_lo), scale.unit(effective_exponent(s.prefix)));
    }
    result.targets.push_back(out);
  }
  return result;
}

// Writes, in column order, a row's entries for which keep(key) holds; there are `want` (> 0).
template <class U, class Idx, class Keep>
void compact_if(const U* row, std::int64_t cols, std::int64_t want, U* d, Idx* ix, Keep keep) {
  std::int64_t pos = 0;
  if (want * 8 < cols) {  // few kept: a well-predicted branch is cheapest
    for (std::int64_t c = 0; c < cols; ++c) {
      if (keep(key_of(row[c]))) {
        d[pos] = row[c];
        ix[pos] = static_cast<Idx>(c);
        if (++pos == want) return;
      }
    }
    return;
  }
  // many kept: write every entry, advance only past kept ones, stop when full
  for (std::int64_t c = 0; c < cols; ++c) {
    const U v = row[c];
    d[pos] = v;
    ix[pos] = static_cast<Idx>(c);
    pos += keep(key_of(v));
    if (pos == want) return;
  }
}

// A row's entries with key > t and its first `ties` of `row_ties` entries with key == t.
template <class U, class Idx>
void compact_row(const U* row, std::int64_t cols, U t, std::int64_t ties, std::int64_t row_ties, U* d, Idx* ix,
                 std::int64_t want) {
  if (want == 0) return;
  if (ties == 0) return compact_if(row, cols, want, d, ix, [t](U key) { return key > t; });
  if (ties == row_ties) return compact_if(row, cols, want, d, ix, [t](U key) { return key >= t; });
  // the one row where the tie budget runs out: a running count
  std::int64_t tie_left = ties;
  compact_if(row, cols, want, d, ix, [t, &tie_left](U key) {
    const bool keep = key > t || (key == t && tie_left > 0);
    tie_left -= keep && key == t;
    return keep;
  });
}

}  // namespace

template <class U>
TopkSelection topk_select(const std::vector<TopkSegment<U>>& segments, const std::vector<std::int64_t>& ks, bool sums,
                          const std::string& name) {
  return sums ? select_impl<U, true>(segments, ks, name) : select_impl<U, false>(segments, ks, name);
}

template <class U>
std::int64_t topk_k_for_rel_error(const std::vector<TopkSegment<U>>& segments, double max_rel_error,
                                  const std::string& name) {
  using F = Format<U>;
  const std::int64_t n = total_count(segments);
  Histogram<true> h0;
  histogram<U, true>(segments, 0, {}, h0);
  require_finite<U>(h0.count, name);
  Scale<U> scale;
  const std::vector<double> bucket_sq = scaled_bucket_sums<U>(h0, scale);
  double total = 0.0;
  for (const double s : bucket_sq) total += s;
  const double budget = max_rel_error * max_rel_error * total;

  // Drop whole level-0 buckets from the bottom while the tail stays within budget; the partial
  // sums repeat select's ascending order, so compressibility errors agree with this choice.
  std::int64_t dropped = 0;
  double cum = 0.0;
  std::size_t bucket = h0.count.size();
  for (std::size_t b = 0; b < h0.count.size(); ++b) {
    if (cum + bucket_sq[b] > budget) {
      bucket = b;
      break;
    }
    cum += bucket_sq[b];
    dropped += static_cast<std::int64_t>(h0.count[b]);
  }
  if (bucket == h0.count.size()) return 0;
  // remaining budget in integer units of this bucket's exponent (exact from here on)
  u128 left =
      static_cast<u128>(std::floor(std::ldexp(std::max(budget - cum, 0.0), -scale.unit(bucket_exponent<U>(bucket)))));
  U prefix = static_cast<U>(bucket);
  std::vector<std::vector<U>> storage;
  const auto narrowed = narrow_to_buckets<U>(segments, h0.count, {prefix}, storage);
  for (int level = 1; level < F::kLevelCount; ++level) {
    const int bits = F::kLevels[level];
    Histogram<true> h;
    histogram<U, true>(narrowed, level, {prefix}, h);
    std::size_t chosen = h.count.size();
    for (std::size_t b = 0; b < h.count.size(); ++b) {
      if (h.sum[b] > left) {
        chosen = b;
        break;
      }
      left -= h.sum[b];
      dropped += static_cast<std::int64_t>(h.count[b]);
    }
    require(chosen < h.count.size(), "internal error: budget beyond bucket");
    prefix = static_cast<U>((prefix << bits) | chosen);
  }
  // the chosen key has a positive square (its bin's sum exceeded the budget)
  dropped += static_cast<std::int64_t>(left / square(prefix));
  return n - dropped;
}

namespace {

// CSR of the entries with key > t plus, in row-major order, the first `tie_budget` with key == t,
// given each row's counts of both.
template <class U, class Idx>
TopkCsr<U, Idx> fill_csr(const U* w, std::int64_t rows, std::int64_t cols, U t, std::int64_t tie_budget,
                         const std::vector<std::int64_t>& greater, const std::vector<std::int64_t>& row_ties) {
  std::vector<std::int64_t> ties(static_cast<std::size_t>(rows));
  std::int64_t left = std::max<std::int64_t>(tie_budget, 0);
  TopkCsr<U, Idx> out(0, static_cast<std::size_t>(rows));
  std::int64_t* indptr = out.indptr.data();
  indptr[0] = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    ties[r] = std::min(row_ties[r], left);
    left -= ties[r];
    indptr[r + 1] = indptr[r] + greater[r] + ties[r];
  }
  out.ties_taken = std::max<std::int64_t>(tie_budget, 0) - left;
  out.data = Buffer<U>(static_cast<std::size_t>(indptr[rows]));
  out.indices = Buffer<Idx>(static_cast<std::size_t>(indptr[rows]));
  U* data = out.data.data();
  Idx* indices = out.indices.data();
#pragma omp parallel for schedule(dynamic, rows_per_chunk(cols)) num_threads(threads_for(rows* cols))
  for (std::int64_t r = 0; r < rows; ++r)
    compact_row(w + r * cols, cols, t, ties[r], row_ties[r], data + indptr[r], indices + indptr[r],
                indptr[r + 1] - indptr[r]);
  return out;
}

// Sample-select: from a fixed pseudo-random sample, keys lo <= hi that bracket the k-th largest
// with overwhelming probability (5 standard deviations of the sample rank either side).
template <class U>
std::pair<U, U> sampled_bracket(const U* w, std::int64_t n, std::int64_t k) {
  constexpr std::int64_t kSampleSize = 1 << 15;
  std::vector<U> sample(static_cast<std::size_t>(kSampleSize));
  std::uint64_t state = 0;  // fixed seed: the bracket, hence the work done, is reproducible
  for (auto& v : sample) v = key_of(w[splitmix64(state) % static_cast<std::uint64_t>(n)]);
  const double q = static_cast<double>(k) / static_cast<double>(n);
  const double mean = kSampleSize * q, spread = 5.0 * std::sqrt(kSampleSize * q * (1.0 - q)) + 2.0;
  const std::int64_t hi_rank = static_cast<std::int64_t>(std::floor(mean - spread));  // 1-based ranks from the top
  const std::int64_t lo_rank = static_cast<std::int64_t>(std::ceil(mean + spread));
  const auto at_rank = [&](std::int64_t rank) {
    std::nth_element(sample.begin(), sample.begin() + (rank - 1), sample.end(), std::greater<U>());
    return sample[static_cast<std::size_t>(rank - 1)];
  };
  const U hi = hi_rank >= 1 ? at_rank(hi_rank) : static_cast<U>(kInfinityKey<U> - 1);
  const U lo = lo_rank <= kSampleSize ? at_rank(lo_rank) : U(0);
  return {lo, hi};
}

// Matrix top-k in two passes over W when the sampled bracket [lo, hi] holds the threshold: one
// pass counts, per row, keys above hi and copies the (few) keys inside the bracket; the exact
// threshold is then selected among the copies, and a second pass writes CSR. Returns false,
// having changed nothing, when the bracket misses or holds more than an eighth of W (heavy ties),
// so the caller takes the general path; the result never depends on which path ran.
template <class U, class Idx>
bool sampled_topk(const U* w, std::int64_t rows, std::int64_t cols, std::int64_t k, const std::string& name,
                  TopkCsr<U, Idx>& out) {
  const std::int64_t n = rows * cols;
  const auto [lo, hi] = sampled_bracket(w, n, k);
  const U width = static_cast<U>(hi - lo);
  const std::int64_t chunk_rows = rows_per_chunk(cols), n_chunks = (rows + chunk_rows - 1) / chunk_rows;
  const int threads = threads_for(n);
  const std::size_t cap = static_cast<std::size_t>(n / 8 / threads);
  std::vector<std::int64_t> greater(static_cast<std::size_t>(rows)), inside(static_cast<std::size_t>(rows));
  std::vector<std::vector<U>> copies(static_cast<std::size_t>(threads));
  std::vector<std::pair<int, std::size_t>> chunk_at(static_cast<std::size_t>(n_chunks));  // (thread, offset)
  bool finite = true, fits = true;
#pragma omp parallel num_threads(threads) reduction(&& : finite, fits)
  {
    const int me = omp_get_thread_num();
    std::vector<U>& mine = copies[static_cast<std::size_t>(me)];
    U largest = 0;
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t chunk = 0; chunk < n_chunks; ++chunk) {
      chunk_at[chunk] = {me, mine.size()};
      for (std::int64_t r = chunk * chunk_rows; r < std::min(rows, (chunk + 1) * chunk_rows); ++r) {
        const U* row = w + r * cols;
        std::int64_t above = 0, in = 0;
        // blocks of 64: a vectorisable count, then a rescan only of blocks with keys in the bracket
        for (std::int64_t c0 = 0; c0 < cols; c0 += 64) {
          const std::int64_t c1 = std::min(cols, c0 + 64);
          std::int64_t block_in = 0;
          for (std::int64_t c = c0; c < c1; ++c) {
            const U key = key_of(row[c]);
            largest = std::max(largest, key);
            above += key > hi;
            block_in += static_cast<U>(key - lo) <= width;  // lo <= key <= hi
          }
          in += block_in;
          if (block_in == 0 || !fits) continue;
          for (std::int64_t c = c0; c < c1; ++c) {
            const U key = key_of(row[c]);
            if (static_cast<U>(key - lo) <= width) mine.push_back(key);
          }
        }
        greater[r] = above;
        inside[r] = in;
      }
      fits = fits && mine.size() <= cap;
    }
    finite = largest < kInfinityKey<U>;
  }
  if (!finite) fail(name + " contains non-finite values (NaN or Inf)");
  std::int64_t above_total = 0, inside_total = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    above_total += greater[r];
    inside_total += inside[r];
  }
  if (!fits || !(above_total < k && k <= above_total + inside_total)) return false;

  std::vector<TopkSegment<U>> segments;
  for (const auto& part : copies) segments.push_back({part.data(), static_cast<std::int64_t>(part.size())});
  const TopkTarget exact = topk_select<U>(segments, {k - above_total}, false, name).targets[0];
  const U t = static_cast<U>(exact.key);
  // per row: copied keys above t join `greater`, keys equal to t are its ties
  std::vector<std::int64_t> row_ties(static_cast<std::size_t>(rows));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_for(inside_total))
  for (std::int64_t chunk = 0; chunk < n_chunks; ++chunk) {
    const U* key = copies[static_cast<std::size_t>(chunk_at[chunk].first)].data() + chunk_at[chunk].second;
    for (std::int64_t r = chunk * chunk_rows; r < std::min(rows, (chunk + 1) * chunk_rows); ++r) {
      for (std::int64_t j = 0; j < inside[r]; ++j, ++key) {
        greater[r] += *key > t;
        row_ties[r] += *key == t;
      }
    }
  }
  copies.clear();
  out = fill_csr<U, Idx>(w, rows, cols, t, k - above_total - exact.greater, greater, row_ties);
  return true;
}

}  // namespace

template <class U, class Idx>
TopkCsr<U, Idx> topk_csr_threshold(const U* w, std::int64_t rows, std::int64_t cols, std::uint64_t threshold,
                                   std::int64_t tie_budget) {
  const U t = threshold > kNoneKey<U> ? kNoneKey<U> : static_cast<U>(threshold);
  std::vector<std::int64_t> greater(static_cast<std::size_t>(rows)), row_ties(static_cast<std::size_t>(rows));
#pragma omp parallel for schedule(dynamic, rows_per_chunk(cols)) num_threads(threads_for(rows* cols))
  for (std::int64_t r = 0; r < rows; ++r) {
    const U* row = w + r * cols;
    std::int64_t g = 0, e = 0;
    for (std::int64_t c = 0; c < cols; ++c) {
      const U key = key_of(row[c]);
      g += key > t;
      e += key == t;
    }
    greater[r] = g;
    row_ties[r] = e;
  }
  return fill_csr<U, Idx>(w, rows, cols, t, tie_budget, greater, row_ties);
}

template <class U, class Idx>
TopkCsr<U, Idx> topk_csr_matrix(const U* w, std::int64_t rows, std::int64_t cols, std::int64_t k,
                                const std::string& name) {
  const std::int64_t n = rows * cols;
  require(k >= 0 && k <= n, [&] { return "k must be in [0, " + std::to_string(n) + "], got " + std::to_string(k); });
  if (k > 0 && k < n && n >= (std::int64_t(1) << 18)) {
    TopkCsr<U, Idx> out(0, 0);
    if (sampled_topk<U, Idx>(w, rows, cols, k, name, out)) return out;
  }
  const std::vector<TopkSegment<U>> whole{{w, n}};
  const TopkSelection sel =
      topk_select<U>(whole, k > 0 ? std::vector<std::int64_t>{k} : std::vector<std::int64_t>{}, false, name);
  if (k == 0) return topk_csr_threshold<U, Idx>(w, rows, cols, kNoneKey<U>, 0);
  return topk_csr_threshold<U, Idx>(w, rows, cols, sel.targets[0].key, k - sel.targets[0].greater);
}

template <class U, class Idx>
TopkCsr<U, Idx> topk_csr_rows(const U* w, std::int64_t rows, std::int64_t cols, std::int64_t k,
                              const std::string& name) {
  require(k >= 0 && k <= cols,
          [&] { return "k must be in [0, " + std::to_string(cols) + "], got " + std::to_string(k); });
  TopkCsr<U, Idx> out(static_cast<std::size_t>(rows * k), static_cast<std::size_t>(rows));
  for (std::int64_t r = 0; r <= rows; ++r) out.indptr.data()[r] = r * k;
  U* data = out.data.data();
  Idx* indices = out.indices.data();
  bool finite = true;
#pragma omp parallel num_threads(threads_for(rows* cols)) reduction(&& : finite)
  {
    std::vector<U> keys(static_cast<std::size_t>(cols));
#pragma omp for schedule(dynamic, rows_per_chunk(cols))
    for (std::int64_t r = 0; r < rows; ++r) {
      const U* row = w + r * cols;
      U largest = 0;
      for (std::int64_t c = 0; c < cols; ++c) {
        keys[c] = key_of(row[c]);
        largest = std::max(largest, keys[c]);
      }
      if (largest >= kInfinityKey<U>) finite = false;
      if (!finite || k == 0) continue;
      std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<U>());
      const U t = keys[k - 1];
      std::int64_t greater = 0, row_ties = 0;
      for (std::int64_t c = 0; c < cols; ++c) {
        const U key = key_of(row[c]);
        greater += key > t;
        row_ties += key == t;
      }
      compact_row(row, cols, t, k - greater, row_ties, data + r * k, indices + r * k, k);
    }
  }
  if (!finite) fail(name + " contains non-finite values (NaN or Inf)");
  return out;
}

template <class U, class Idx>
TopkCsr<U, Idx> topk_csr_cols(const U* w, std::int64_t rows, std::int64_t cols, std::int64_t k,
                              const std::string& name) {
  require(k >= 0 && k <= rows,
          [&] { return "k must be in [0, " + std::to_string(rows) + "], got " + std::to_string(k); });
  // per column: threshold key and the last row whose tie is kept (ties go to the lowest rows)
  std::vector<U> threshold(static_cast<std::size_t>(cols), kNoneKey<U>);
  std::vector<std::int64_t> last_tie_row(static_cast<std::size_t>(cols), -1);
  constexpr std::int64_t kBlock = 16;  // columns gathered together, so reads stay row-contiguous
  const std::int64_t n_blocks = (cols + kBlock - 1) / kBlock;
  bool finite = true;
#pragma omp parallel num_threads(threads_for(rows* cols)) reduction(&& : finite)
  {
    std::vector<U> gathered(static_cast<std::size_t>(kBlock * rows)), work(static_cast<std::size_t>(rows));
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
      const std::int64_t c0 = blk * kBlock, width = std::min(kBlock, cols - c0);
      U largest = 0;
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t j = 0; j < width; ++j) {
          const U key = key_of(w[r * cols + c0 + j]);
          gathered[j * rows + r] = key;
          largest = std::max(largest, key);
        }
      if (largest >= kInfinityKey<U>) finite = false;
      if (!finite || k == 0) continue;
      for (std::int64_t j = 0; j < width; ++j) {
        const U* column = gathered.data() + j * rows;
        std::copy(column, column + rows, work.begin());
        std::nth_element(work.begin(), work.begin() + (k - 1), work.end(), std::greater<U>());
        const U t = work[k - 1];
        std::int64_t tie_left = k;
        for (std::int64_t r = 0; r < rows; ++r) tie_left -= column[r] > t;
        std::int64_t r = 0;
        for (; tie_left > 0; ++r) tie_left -= column[r] == t;
        threshold[c0 + j] = t;
        last_tie_row[c0 + j] = r - 1;
      }
    }
  }
  if (!finite) fail(name + " contains non-finite values (NaN or Inf)");

  TopkCsr<U, Idx> out(static_cast<std::size_t>(cols * k), static_cast<std::size_t>(rows));
  std::int64_t* indptr = out.indptr.data();
  indptr[0] = 0;
#pragma omp parallel for schedule(dynamic, rows_per_chunk(cols)) num_threads(threads_for(rows* cols))
  for (std::int64_t r = 0; r < rows; ++r) {
    const U* row = w + r * cols;
    std::int64_t kept = 0;
    for (std::int64_t c = 0; c < cols; ++c) {
      const U key = key_of(row[c]);
      kept += (key > threshold[c]) | ((key == threshold[c]) & (r <= last_tie_row[c]));
    }
    indptr[r + 1] = kept;
  }
  for (std::int64_t r = 0; r < rows; ++r) indptr[r + 1] += indptr[r];
  U* data = out.data.data();
  Idx* indices = out.indices.data();
#pragma omp parallel for schedule(dynamic, rows_per_chunk(cols)) num_threads(threads_for(rows* cols))
  for (std::int64_t r = 0; r < rows; ++r) {
    const U* row = w + r * cols;
    std::int64_t pos = indptr[r];
    for (std::int64_t c = 0; c < cols; ++c) {
      const U key = key_of(row[c]);
      if ((key > threshold[c]) | ((key == threshold[c]) & (r <= last_tie_row[c]))) {
        data[pos] = row[c];
        indices[pos] = static_cast<Idx>(c);
        ++pos;
      }
    }
  }
  return out;
}

#define HTCORE_TOPK_VALUE(U)                                                                                        \
  template TopkSelection topk_select<U>(const std::vector<TopkSegment<U>>&, const std::vector<std::int64_t>&, bool, \
                                        const std::string&);                                                        \
  template std::int64_t topk_k_for_rel_error<U>(const std::vector<TopkSegment<U>>&, double, const std::string&);
#define HTCORE_TOPK_CSR(U, Idx)                                                                            \
  template TopkCsr<U, Idx> topk_csr_threshold<U, Idx>(const U*, std::int64_t, std::int64_t, std::uint64_t, \
                                                      std::int64_t);                                       \
  template TopkCsr<U, Idx> topk_csr_matrix<U, Idx>(const U*, std::int64_t, std::int64_t, std::int64_t,     \
                                                   const std::string&);                                    \
  template TopkCsr<U, Idx> topk_csr_rows<U, Idx>(const U*, std::int64_t, std::int64_t, std::int64_t,       \
                                                 const std::string&);                                      \
  template TopkCsr<U, Idx> topk_csr_cols<U, Idx>(const U*, std::int64_t, std::int64_t, std::int64_t,       \
                                                 const std::string&);

HTCORE_TOPK_VALUE(std::uint16_t)
HTCORE_TOPK_VALUE(std::uint32_t)
HTCORE_TOPK_VALUE(std::uint64_t)
HTCORE_TOPK_CSR(std::uint16_t, std::uint16_t)
HTCORE_TOPK_CSR(std::uint16_t, std::int32_t)
HTCORE_TOPK_CSR(std::uint32_t, std::uint16_t)
HTCORE_TOPK_CSR(std::uint32_t, std::int32_t)
HTCORE_TOPK_CSR(std::uint64_t, std::uint16_t)
HTCORE_TOPK_CSR(std::uint64_t, std::int32_t)

}  // namespace htcore
