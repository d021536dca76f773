// Does this libtorch's CPU convolution backward return non-finite input gradients for finite inputs?
// Runs the same seeded conv2d forward/backward (a UNet-sized 64→4 channel 3×3 conv on 8×8) with oneDNN on and
// off, with the given intra-op thread count, and counts the iterations whose gradients are not finite.
// Found on Debian trixie's libtorch 2.6 (system oneDNN 3.7) with 2 threads: about 1 in 300 input gradients
// has NaNs with oneDNN on, none with it off; Debian 12's libtorch 1.13 shows none either way.
// Usage: onednn_conv_backward THREADS [ITERATIONS]. Exit status 3 when only oneDNN gives non-finite gradients.
#include <torch/torch.h>
#include <cstdio>
#include <cstdlib>

static int run(bool onednn, int iterations) {
  at::globalContext().setUserEnabledMkldnn(onednn);
  torch::manual_seed(0);
  int bad = 0;
  for (int i = 0; i < iterations; ++i) {
    auto x = torch::randn({2, 64, 8, 8}).requires_grad_();
    auto w = torch::randn({4, 64, 3, 3}).requires_grad_();
    auto b = torch::randn({4}).requires_grad_();
    auto y = at::conv2d(x, w, b, {1, 1}, {1, 1});
    y.backward(torch::randn_like(y));
    bool finite = y.isfinite().all().item<bool>() && x.grad().isfinite().all().item<bool>() &&
                  w.grad().isfinite().all().item<bool>();
    if (!finite) ++bad;
  }
  return bad;
}

int main(int argc, char** argv) {
  if (argc < 2) { std::fprintf(stderr, "usage: %s THREADS [ITERATIONS]\n", argv[0]); return 2; }
  at::set_num_threads(std::atoi(argv[1]));
  int iterations = argc > 2 ? std::atoi(argv[2]) : 300;
  int with = run(true, iterations), without = run(false, iterations);
  std::printf("libtorch %s, %d threads: conv2d backward non-finite in %d/%d iterations with oneDNN, %d/%d without\n",
              TORCH_VERSION, at::get_num_threads(), with, iterations, without, iterations);
  return with > 0 && without == 0 ? 3 : (with > 0 || without > 0 ? 1 : 0);
}
