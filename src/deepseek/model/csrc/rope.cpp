// rope(x, cos, sin, interleaved) -> x rotated (deepseek/model/rope.py): x [N, M, d] (the head dims
// flattened into M), cos and sin [N, d/2] fp32. Each pair (a, b) of a row (x[2i], x[2i+1]) when
// interleaved (MLA), (x[i], x[i + d/2]) otherwise (the indexer) becomes (a c - b s, a s + b c) in
// fp32, rounded to x's dtype: torch's expression, operation for operation (no fused multiply-adds,
// which would round once where it rounds twice), in one pass where it takes about fifteen ops.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include "vec.h"

namespace {

template <typename T>
__attribute__((optimize("fp-contract=off"))) void rotate_row(const T* x, T* y, const float* c, const float* s,
                                                             int64_t half, bool interleaved) {
  for (int64_t i = 0; i < half; ++i) {
    const int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
    const float a = static_cast<float>(x[ia]), b = static_cast<float>(x[ib]);
    const float ac = a * c[i], bs = b * s[i], as = a * s[i], bc = b * c[i];
    y[ia] = static_cast<T>(ac - bs);
    y[ib] = static_cast<T>(as + bc);
  }
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleaved) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "rope: fp32 or bf16 x");
  TORCH_CHECK(x.dim() >= 2 && x.size(-1) % 2 == 0, "rope: x must be [N, ..., d] with an even d");
  const int64_t N = x.size(0), d = x.size(-1), half = d / 2;
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.dim() == 2 &&
                  cos.size(0) == N && cos.size(1) == half && sin.sizes() == cos.sizes(),
              "rope: cos and sin must be fp32 [N, d/2]");
  const at::Tensor xc = x.contiguous(), cc = cos.contiguous(), sc = sin.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t M = N ? xc.numel() / (N * d) : 0;
  at::parallel_for(0, N * M, std::max<int64_t>(1, 8192 / std::max<int64_t>(d, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* c = cc.data_ptr<float>() + (r / M) * half;
      const float* s = sc.data_ptr<float>() + (r / M) * half;
      if (x.scalar_type() == at::kFloat)
        rotate_row(xc.data_ptr<float>() + r * d, y.data_ptr<float>() + r * d, c, s, half, interleaved);
      else
        rotate_row(xc.data_ptr<at::BFloat16>() + r * d, y.data_ptr<at::BFloat16>() + r * d, c, s, half, interleaved);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(deepseek_kernels, m) { m.def("rope(Tensor x, Tensor cos, Tensor sin, bool interleaved) -> Tensor"); }
TORCH_LIBRARY_IMPL(deepseek_kernels, CPU, m) { m.impl("rope", &rope); }
