// hadamard(x) -> x @ H_n · n^-0.5 over the last dim (deepseek/model/indexer.py, `rotate_activation`):
// H_n the Sylvester-ordered ±1 Walsh-Hadamard matrix, n a power of two from 16 to 1024, fp32 math,
// the result in x's dtype (bf16 rounds to nearest even). As the reference's fast_hadamard_transform
// does, log2(n) butterfly stages (a + b to the lower index, a - b to the upper), then the scale: n log n
// additions per row where the matrix product takes n^2 multiply-adds. Stages of stride 1 to 8 run
// within a 16-lane vector, wider ones between vectors. A row's result does not depend on its batch.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "vec.h"

namespace {

constexpr int64_t kMaxWidth = 1024;

// One in-vector stage: lane i pairs with lane i ^ h; lanes with bit h clear get a + b, the others a - b
// (a the lower lane's value). `swapped` holds the partner lanes.
inline __m512 stage(__m512 v, __m512 swapped, __mmask16 upper) {
  return _mm512_mask_sub_ps(_mm512_add_ps(v, swapped), upper, swapped, v);
}

template <typename T>
void transform_row(const T* x, T* y, int64_t n, float scale) {
  __m512 v[kMaxWidth / 16];
  const int64_t vectors = n / 16;
  for (int64_t i = 0; i < vectors; ++i) {
    __m512 a = load16(x + 16 * i, 0xffff);
    a = stage(a, _mm512_permute_ps(a, 0xB1), 0xAAAA);            // stride 1
    a = stage(a, _mm512_permute_ps(a, 0x4E), 0xCCCC);            // stride 2
    a = stage(a, _mm512_shuffle_f32x4(a, a, 0xB1), 0xF0F0);      // stride 4
    v[i] = stage(a, _mm512_shuffle_f32x4(a, a, 0x4E), 0xFF00);   // stride 8
  }
  for (int64_t h = 1; h < vectors; h *= 2)                       // strides 16, 32, ...
    for (int64_t i = 0; i < vectors; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const __m512 a = v[j], b = v[j + h];
        v[j] = _mm512_add_ps(a, b);
        v[j + h] = _mm512_sub_ps(a, b);
      }
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < vectors; ++i) store16(y + 16 * i, _mm512_mul_ps(v[i], s), 0xffff);
}

at::Tensor hadamard(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "hadamard: fp32 or bf16 only");
  const int64_t n = x.dim() ? x.size(-1) : 0;
  TORCH_CHECK(n >= 16 && n <= kMaxWidth && (n & (n - 1)) == 0,
              "hadamard: the last dim must be a power of two from 16 to ", kMaxWidth, ", got ", x.sizes());
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t rows = xc.numel() / n;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  at::parallel_for(0, rows, std::max<int64_t>(1, 8192 / n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (x.scalar_type() == at::kFloat)
        transform_row(xc.data_ptr<float>() + r * n, y.data_ptr<float>() + r * n, n, scale);
      else
        transform_row(xc.data_ptr<at::BFloat16>() + r * n, y.data_ptr<at::BFloat16>() + r * n, n, scale);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(deepseek_kernels, m) { m.def("hadamard(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(deepseek_kernels, CPU, m) { m.impl("hadamard", &hadamard); }
