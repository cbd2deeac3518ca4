// One layer, 1 vs 2 threads interleaved in one process: 3x3 64->128, padding 1, relu, automatic
// loop, float32 + int32, Bernoulli sparsity. Prints medians and p10s over 200 rounds (p10 shows
// what the kernel does when the shared host leaves the second core alone).
//   conv_probe [H=W (14)] [sparsity (0.7; 1.0 = no kept weights)] [batch (1)] [stride (1)]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "conv2d.hpp"
#include "parallel.hpp"

using namespace htcore;

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int main(int argc, char** argv) {
  const int cin = 64, cout = 128, k = 3, pad = 1;
  const int hw = argc > 1 ? std::atoi(argv[1]) : 14;
  const double sp = argc > 2 ? std::atof(argv[2]) : 0.7;
  const int batch = argc > 3 ? std::atoi(argv[3]) : 1;
  const int stride = argc > 4 ? std::atoi(argv[4]) : 1;
  std::mt19937 r(1);
  std::uniform_real_distribution<float> u(-1, 1);
  const int cols = cin * k * k;
  std::vector<int32_t> ptr{0}, idx;
  std::vector<float> val;
  for (int i = 0; i < cout; i++) {
    for (int j = 0; j < cols; j++)
      if (u(r) * 0.5f + 0.5f >= sp) idx.push_back(j), val.push_back(u(r));
    ptr.push_back(static_cast<int32_t>(idx.size()));
  }
  CsrRef a;
  a.rows = cout, a.cols = cols, a.nnz = static_cast<int64_t>(idx.size());
  a.indptr = ptr.data(), a.indices = idx.data(), a.data = val.data();
  Conv2dParams p;
  p.batch = batch, p.in_channels = cin, p.out_channels = cout, p.height = p.width = hw;
  p.kernel_h = p.kernel_w = k, p.padding_h = p.padding_w = pad, p.stride_h = p.stride_w = stride;
  int64_t ho, wo;
  conv2d_output_size(p, &ho, &wo);
  std::vector<float> x(static_cast<size_t>(batch) * cin * hw * hw), y(static_cast<size_t>(batch) * cout * ho * wo);
  for (auto& v : x) v = u(r);
  auto call = [&] { sparse_conv2d(a, x.data(), x.size(), p, nullptr, 0, Activation::relu, y.data(), y.size()); };
  std::vector<double> t[2], ratio;
  for (int round = 0; round < 200; round++) {
    double tt[2];
    for (int i = 0; i < 2; i++) {
      const int th = (round % 2 ? 1 - i : i) + 1;
      set_num_threads(th);
      call();
      const double t0 = now();
      for (int rep = 0; rep < 5; rep++) call();
      tt[th - 1] = (now() - t0) / 5;
      t[th - 1].push_back(tt[th - 1]);
    }
    ratio.push_back(tt[1] / tt[0]);
  }
  for (auto& v : t) std::sort(v.begin(), v.end());
  std::sort(ratio.begin(), ratio.end());
  std::printf("3x3 64->128 %dx%d p1 s%d, sparsity %.2f, batch %d: median 1 thread %.1f us, 2 threads %.1f us "
              "(p10 %.1f / %.1f), median ratio 2/1 threads %.2f\n",
              hw, hw, stride, sp, batch, t[0][100] * 1e6, t[1][100] * 1e6, t[0][20] * 1e6, t[1][20] * 1e6, ratio[100]);
}
