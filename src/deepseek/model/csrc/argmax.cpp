// argmax_rows(x) -> [B] int64: torch.argmax(x, -1) for fp32 rows (see deepseek/model/kernels.py).
//
// The greedy pick of every decode step. Each row is one pass for its largest value and a second
// for the first place it occurs, 16 lanes at a time; torch's own reduction here runs one element at
// a time. torch's answer exactly: the first index of the largest value, and a NaN counts as the
// largest (its first index wins).

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "vec.h"

namespace {

int64_t row_argmax(const float* x, int64_t V) {
  __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 nan = 0;
  for (int64_t v = 0; v < V; v += 16) {
    const __mmask16 m = tail16(V - v);
    const __m512 a = _mm512_mask_loadu_ps(best, m, x + v);
    nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    best = _mm512_max_ps(best, a);
  }
  if (nan) {
    for (int64_t v = 0; v < V; ++v)
      if (x[v] != x[v]) return v;
  }
  const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(best));
  for (int64_t v = 0; v < V; v += 16) {
    const __mmask16 hit = _mm512_mask_cmp_ps_mask(tail16(V - v), _mm512_loadu_ps(x + v), top, _CMP_EQ_OQ);
    if (hit) return v + __builtin_ctz(hit);
  }
  return 0;   // V == 0 is refused before
}

at::Tensor argmax_rows(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.stride(1) == 1,
              "argmax_rows: expected float32 CPU rows [B, V] with contiguous rows, got ", x.sizes());
  TORCH_CHECK(x.size(1) > 0, "argmax_rows: rows of no values");
  const int64_t B = x.size(0), V = x.size(1);
  at::Tensor out = at::empty({B}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, B, std::max<int64_t>(1, 262144 / V), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) op[b] = row_argmax(xp + b * x.stride(0), V);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(deepseek_kernels, m) { m.def("argmax_rows(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(deepseek_kernels, CPU, m) { m.impl("argmax_rows", &argmax_rows); }
