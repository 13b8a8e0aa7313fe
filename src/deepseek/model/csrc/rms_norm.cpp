// rms_norm(x, weight, eps) -> w * x / sqrt(mean(x^2) + eps) per row (deepseek/model/layers.py,
// `RMSNorm`): fp32 math, the result in x's dtype (bf16 rounds to nearest even). One pass per row,
// its sum in 16 lanes in a fixed order, so a row's result does not depend on its batch. Eager CPU
// inference only: torch's own is seven ops, each a pass over the activations.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "vec.h"

namespace {

template <typename T>
void norm_row(const T* x, const float* w, T* y, int64_t D, float eps) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < D; i += 16) {
    const __m512 v = load16(x + i, tail16(D - i));
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const float r = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(D) + eps);
  const __m512 rv = _mm512_set1_ps(r);
  for (int64_t i = 0; i < D; i += 16) {
    const __mmask16 m = tail16(D - i);
    store16(y + i, _mm512_mul_ps(_mm512_mul_ps(load16(x + i, m), rv), load16(w + i, m)), m);
  }
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "rms_norm: fp32 or bf16 x");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 1 && weight.is_contiguous() &&
                  x.dim() >= 1 && x.size(-1) == weight.size(0), "rms_norm: an fp32 weight [D] for x [..., D]");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t D = x.size(-1), rows = D ? xc.numel() / D : 0;
  const float* w = weight.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (x.scalar_type() == at::kFloat)
        norm_row(xc.data_ptr<float>() + r * D, w, y.data_ptr<float>() + r * D, D, static_cast<float>(eps));
      else
        norm_row(xc.data_ptr<at::BFloat16>() + r * D, w, y.data_ptr<at::BFloat16>() + r * D, D, static_cast<float>(eps));
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(deepseek_kernels, m) { m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor"); }
TORCH_LIBRARY_IMPL(deepseek_kernels, CPU, m) { m.impl("rms_norm", &rms_norm); }
