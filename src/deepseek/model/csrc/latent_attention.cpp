// Decode attention over the MLA latent cache, read in place (see deepseek/model/kernels.py).
//
// latent_attention(q_lat, q_pe, latent, k_pe, slots, visible, scale) -> o_lat [B, H, R]:
//   for each sequence b and head h, over the rows t with visible[b, t] (all when visible is None),
//   s_t = scale * (q_lat[b, h] . latent[slots[b, t]] + q_pe[b, h] . k_pe[slots[b, t]])   (fp32)
//   p = softmax(s), rounded to the cache's dtype, as `probs.to(c.dtype)` is
//   o_lat[b, h] = sum_t p_t latent[slots[b, t]]    (fp32 sums, rounded once to the cache's dtype)
// `latent` [S, R] and `k_pe` [S, Dr] are a layer's cache rows as they lie (row strides free), so a
// decode step needs no gathered copy of every visible row. Rows that are not visible are skipped,
// never read: a sequence's result is bitwise the same alone, in any batch, with any padding, and
// wherever its rows lie. Heads are taken 4 at a time, so each cached row is read once per 4 heads.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "vec.h"

namespace {

constexpr int kHeads = 4;     // heads per pass over the rows

// 4 dot products of fp32 q rows (stride ldq, zero-padded to a multiple of 16) with one cached row.
template <typename TC>
inline void dots4(const float* q, int64_t ldq, const TC* row, int64_t n, float* out) {
  __m512 acc[kHeads];
  for (int i = 0; i < kHeads; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __m512 v = load16(row + c, tail16(n - c));
#pragma GCC unroll 4
    for (int i = 0; i < kHeads; ++i) acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(q + i * ldq + c), v, acc[i]);
  }
  for (int i = 0; i < kHeads; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

template <typename TC>
inline float round_to(float v) { return static_cast<float>(static_cast<TC>(v)); }

template <typename TQ, typename TC>
void attend(const TQ* q_lat, const TQ* q_pe, int64_t H, int64_t R, int64_t Dr, const TC* latent, int64_t ldl,
            const TC* k_pe, int64_t ldp, const int64_t* slots, const bool* visible, int64_t K, float scale, TC* out) {
  const int64_t H4 = (H + kHeads - 1) / kHeads * kHeads, Rp = (R + 15) / 16 * 16, Dp = (Dr + 15) / 16 * 16;
  std::vector<float> ql(H4 * Rp, 0.0f), qp(H4 * Dp, 0.0f), s(H4 * K), p(H4 * K);
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t c = 0; c < R; ++c) ql[h * Rp + c] = static_cast<float>(q_lat[h * R + c]);
    for (int64_t c = 0; c < Dr; ++c) qp[h * Dp + c] = static_cast<float>(q_pe[h * Dr + c]);
  }
  std::vector<int64_t> rows;        // the visible t, in order
  rows.reserve(K);
  for (int64_t t = 0; t < K; ++t)
    if (visible == nullptr || visible[t]) rows.push_back(t);
  const int64_t T = static_cast<int64_t>(rows.size());
  // scores, [H4, T] over the visible rows
  for (int64_t i = 0; i < T; ++i) {
    const int64_t slot = slots[rows[i]];
    for (int64_t h = 0; h < H4; h += kHeads) {
      float a[kHeads], b[kHeads];
      dots4(ql.data() + h * Rp, Rp, latent + slot * ldl, R, a);
      dots4(qp.data() + h * Dp, Dp, k_pe + slot * ldp, Dr, b);
      for (int j = 0; j < kHeads; ++j) s[(h + j) * T + i] = (a[j] + b[j]) * scale;
    }
  }
  // softmax over each head's T scores: 16 rows per lane group, in t order
  for (int64_t h = 0; h < H; ++h) {
    float* sh = s.data() + h * T;
    float* ph = p.data() + h * T;
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < T; i += 16)
      mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, tail16(T - i), sh + i));
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < T; i += 16) {
      const __mmask16 k = tail16(T - i);
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sh + i), m));
      sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
      _mm512_mask_storeu_ps(ph + i, k, e);
    }
    const __m512 total = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
    for (int64_t i = 0; i < T; i += 16) {
      const __mmask16 k = tail16(T - i);
      _mm512_mask_storeu_ps(ph + i, k, _mm512_div_ps(_mm512_maskz_loadu_ps(k, ph + i), total));
    }
    for (int64_t i = 0; i < T; ++i) ph[i] = round_to<TC>(ph[i]);
  }
  for (int64_t h = H; h < H4; ++h) std::fill(p.begin() + h * T, p.begin() + (h + 1) * T, 0.0f);
  // o_lat: 4 heads x 64 columns of accumulators, over the rows in t order
  for (int64_t c0 = 0; c0 < R; c0 += 64) {
    __mmask16 mask[4];
    for (int j = 0; j < 4; ++j) mask[j] = tail16(R - c0 - 16 * j);
    for (int64_t h = 0; h < H4; h += kHeads) {
      __m512 acc[kHeads][4];
#pragma GCC unroll 4
      for (int i = 0; i < kHeads; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
      for (int64_t i = 0; i < T; ++i) {
        const TC* row = latent + slots[rows[i]] * ldl + c0;
        __m512 v[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) v[j] = load16(row + 16 * j, mask[j]);
#pragma GCC unroll 4
        for (int a = 0; a < kHeads; ++a) {
          const __m512 w = _mm512_set1_ps(p[(h + a) * T + i]);
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) acc[a][j] = _mm512_fmadd_ps(w, v[j], acc[a][j]);
        }
      }
      for (int a = 0; a < kHeads && h + a < H; ++a)
        for (int j = 0; j < 4; ++j) store16(out + (h + a) * R + c0 + 16 * j, acc[a][j], mask[j]);
    }
  }
}

at::Tensor latent_attention(const at::Tensor& q_lat, const at::Tensor& q_pe, const at::Tensor& latent,
                            const at::Tensor& k_pe, const at::Tensor& slots, const c10::optional<at::Tensor>& visible,
                            double scale) {
  TORCH_CHECK(q_lat.dim() == 3 && q_pe.dim() == 3 && q_lat.size(0) == q_pe.size(0) && q_lat.size(1) == q_pe.size(1),
              "latent_attention: expected q_lat [B, H, R] and q_pe [B, H, Dr], got ", q_lat.sizes(), " and ", q_pe.sizes());
  TORCH_CHECK(latent.dim() == 2 && k_pe.dim() == 2 && latent.size(1) == q_lat.size(2) && k_pe.size(1) == q_pe.size(2),
              "latent_attention: expected latent [S, R] and k_pe [S, Dr], got ", latent.sizes(), " and ", k_pe.sizes());
  TORCH_CHECK(latent.stride(1) == 1 && k_pe.stride(1) == 1, "latent_attention: cache rows must be contiguous");
  TORCH_CHECK(slots.dim() == 2 && slots.size(0) == q_lat.size(0) && slots.scalar_type() == at::kLong,
              "latent_attention: expected int64 slots [B, K], got ", slots.sizes());
  const auto ct = latent.scalar_type(), qt = q_lat.scalar_type();
  TORCH_CHECK(ct == k_pe.scalar_type() && (ct == at::kFloat || ct == at::kBFloat16) && qt == q_pe.scalar_type() &&
              (qt == at::kFloat || qt == at::kBFloat16), "latent_attention: float32 or bfloat16 tensors only");
  const int64_t B = q_lat.size(0), H = q_lat.size(1), R = q_lat.size(2), Dr = q_pe.size(2), K = slots.size(1);
  const at::Tensor sl = slots.contiguous();
  at::Tensor vis;
  if (visible.has_value()) {
    vis = visible->contiguous();
    TORCH_CHECK(vis.sizes() == slots.sizes() && vis.scalar_type() == at::kBool,
                "latent_attention: visible must be a bool tensor shaped like slots");
  }
  const int64_t S = latent.size(0);
  TORCH_CHECK(k_pe.size(0) == S, "latent_attention: latent and k_pe hold different row counts");
  const int64_t* sp = sl.data_ptr<int64_t>();
  const bool* vp = visible.has_value() ? vis.data_ptr<bool>() : nullptr;
  for (int64_t i = 0; i < B * K; ++i)
    TORCH_CHECK(!(vp == nullptr || vp[i]) || (sp[i] >= 0 && sp[i] < S), "latent_attention: slot ", sp[i], " out of range");
  const at::Tensor ql = q_lat.contiguous(), qp = q_pe.contiguous();
  at::Tensor out = at::empty({B, H, R}, latent.options());
  if (out.numel() == 0) return out;
  auto each = [&](auto tq, auto tc) {
    using TQ = decltype(tq);
    using TC = decltype(tc);
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, K * (R + Dr) * H));
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        attend<TQ, TC>(ql.data_ptr<TQ>() + b * H * R, qp.data_ptr<TQ>() + b * H * Dr, H, R, Dr, latent.data_ptr<TC>(),
                       latent.stride(0), k_pe.data_ptr<TC>(), k_pe.stride(0), sp + b * K, vp ? vp + b * K : nullptr, K,
                       static_cast<float>(scale), out.data_ptr<TC>() + b * H * R);
    });
  };
  const bool qf = qt == at::kFloat, cf = ct == at::kFloat;
  if (qf && cf) each(float(), float());
  else if (qf) each(float(), at::BFloat16());
  else if (cf) each(at::BFloat16(), float());
  else each(at::BFloat16(), at::BFloat16());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(deepseek_kernels, m) {
  m.def("latent_attention(Tensor q_lat, Tensor q_pe, Tensor latent, Tensor k_pe, Tensor slots, Tensor? visible, "
        "float scale) -> Tensor");
}
TORCH_LIBRARY_IMPL(deepseek_kernels, CPU, m) { m.impl("latent_attention", &latent_attention); }
