// Decode attention over the MLA latent cache, read in place (see deepseek/model/kernels.py).
//
// latent_attention(q_lat, q_pe, latent, k_pe, slots, visible, scale) -> o_lat [B, H, R]:
//   for each sequence b and head h, over the rows t with visible[b, t] (all when visible is None),
//   s_t = scale * (q_lat[b, h] . latent[slots[b, t]] + q_pe[b, h] . k_pe[slots[b, t]])   (fp32)
//   p = softmax(s), rounded to the cache's dtype, as `probs.to(c.dtype)` is
//   o_lat[b, h] = sum_t p_t latent[slots[b, t]]    (fp32 sums, rounded once to the cache's dtype)
// `latent` [S, R] and `k_pe` [S, Dr] are a layer's cache rows as they lie (row strides free), so a
// decode step needs no gathered copy of every visible row; q_lat and q_pe are read as they lie too
// (batch and head strides free). Rows that are not visible are skipped,
// never read: a sequence's result is bitwise the same alone, in any batch, with any padding, and
// wherever its rows lie, and at any thread count. Heads are taken 4 at a time, so each cached row
// is read once per 4 heads. With fewer sequences than threads, a long one's work is split: scores
// by rows, the softmax by fixed chunks of rows, the output by columns.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "vec.h"

namespace {

constexpr int kHeads = 4;     // heads per pass over the rows
constexpr int kRows = 4;      // cached rows per score tile
constexpr int64_t kChunk = 1024;   // rows per softmax chunk (the unit threads split it in)
constexpr int64_t kSplitRows = 512;   // a lone sequence's phases split across threads from this many rows

// v[16] -> one vector whose lane j is the sum of v[j]'s lanes: 15 adds and 30 shuffles for all 16
// (a reduce per vector takes ~8 dependent steps each).
inline __m512 reduce16(const __m512 (&v)[16]) {
  __m512 t[8], u[4], w[2];
  for (int j = 0; j < 8; ++j)   // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    t[j] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * j], v[2 * j + 1]), _mm512_unpackhi_ps(v[2 * j], v[2 * j + 1]));
  for (int j = 0; j < 4; ++j)   // per 128-bit lane: the lane's sums of 4 vectors
    u[j] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * j], t[2 * j + 1], 0x44), _mm512_shuffle_ps(t[2 * j], t[2 * j + 1], 0xEE));
  for (int j = 0; j < 2; ++j)
    w[j] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], 0x88), _mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

// acc[4 * i + r] += q row i (fp32, zero-padded to 16s, stride ldq) . cached row r, over n columns.
// (Each works on a local copy of acc: the loads may alias it, so the compiler would otherwise store
// all 16 accumulators back every step.)
template <typename TC>
inline void score_tile(const float* q, int64_t ldq, const TC* const (&rows)[kRows], int64_t n, __m512 (&out)[16]) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) acc[j] = out[j];
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = tail16(n - c);
    __m512 v[kRows];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) v[r] = load16(rows[r] + c, m);
#pragma GCC unroll 4
    for (int i = 0; i < kHeads; ++i) {
      const __m512 a = _mm512_loadu_ps(q + i * ldq + c);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) acc[4 * i + r] = _mm512_fmadd_ps(a, v[r], acc[4 * i + r]);
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) out[j] = acc[j];
}

// The same with bf16 q (zero-padded to 32s) and bf16 rows: pair dot products, 32 columns a step.
BF16_TARGET inline void score_tile(const uint16_t* q, int64_t ldq, const at::BFloat16* const (&rows)[kRows], int64_t n,
                                   __m512 (&out)[16]) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) acc[j] = out[j];
  for (int64_t c = 0; c < n; c += 32) {
    const __mmask32 m = tail32(n - c);
    __m512bh v[kRows];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) v[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, rows[r] + c);
#pragma GCC unroll 4
    for (int i = 0; i < kHeads; ++i) {
      const __m512bh a = (__m512bh)_mm512_loadu_si512(q + i * ldq + c);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) acc[4 * i + r] = _mm512_dpbf16_ps(acc[4 * i + r], a, v[r]);
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) out[j] = acc[j];
}

// One 64-column group of output_pairs, every head.
BF16_TARGET void output_pair_columns(const uint32_t* pairs, int64_t P, const std::vector<int64_t>& rows, int64_t H,
                                     int64_t H4, int64_t T, int64_t R, const uint16_t* base, int64_t ldl,
                                     at::BFloat16* out, int64_t c0) {
  const __m512i zero = _mm512_setzero_si512();
  __mmask16 m16[4];
  __mmask32 m32[2];
  for (int j = 0; j < 4; ++j) m16[j] = tail16(R - c0 - 16 * j);
  for (int j = 0; j < 2; ++j) m32[j] = tail32(R - c0 - 32 * j);
  for (int64_t h = 0; h < H4; h += kHeads) {
    __m512 acc[kHeads][4];
    for (int a = 0; a < kHeads; ++a)
      for (int j = 0; j < 4; ++j) acc[a][j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < P; ++i) {
      const uint16_t* a = base + rows[2 * i] * ldl + c0;
      const uint16_t* b = 2 * i + 1 < T ? base + rows[2 * i + 1] * ldl + c0 : nullptr;
      pair_step<kHeads>(acc, pairs + h * P, P, i, _mm512_maskz_loadu_epi16(m32[0], a),
                        _mm512_maskz_loadu_epi16(m32[1], a + 32), b ? _mm512_maskz_loadu_epi16(m32[0], b) : zero,
                        b ? _mm512_maskz_loadu_epi16(m32[1], b + 32) : zero);
    }
    for (int a = 0; a < kHeads && h + a < H; ++a) store_pair_sums(acc[a], out + (h + a) * R + c0, m16);
  }
}

// o_lat with bf16 probabilities and rows: rows t and t + 1 interleaved in registers, as the pair
// GEMM does with weight rows (vec.h pair_step), the probabilities of each head as pairs.
BF16_TARGET void output_pairs(const std::vector<float>& p, const std::vector<int64_t>& rows, int64_t H, int64_t H4,
                              int64_t T, int64_t R, const at::BFloat16* latent, int64_t ldl, at::BFloat16* out,
                              int64_t grain) {
  const int64_t P = (T + 1) / 2;
  const std::vector<uint32_t> pairs = bf16_pairs(H4, T, [&](int64_t h, int64_t i) { return p[h * T + i]; });
  const uint16_t* base = reinterpret_cast<const uint16_t*>(latent);
  at::parallel_for(0, (R + 63) / 64, grain, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) output_pair_columns(pairs.data(), P, rows, H, H4, T, R, base, ldl, out, 64 * g);
  });
}

// One sequence. Bf16 q and cache with AVX512-BF16 (Q16 = true) take pair dot products throughout:
// the scores sum pairs of columns, and the output sums pairs of rows (probabilities are bf16 there).
template <bool Q16, typename TQ, typename TC>
void attend(const TQ* q_lat, int64_t hl, const TQ* q_pe, int64_t hp, int64_t H, int64_t R, int64_t Dr, const TC* latent, int64_t ldl,
            const TC* k_pe, int64_t ldp, const int64_t* slots, const bool* visible, int64_t K, float scale, TC* out) {
  constexpr int64_t kPad = Q16 ? 32 : 16;
  using QT = std::conditional_t<Q16, uint16_t, float>;
  const int64_t H4 = (H + kHeads - 1) / kHeads * kHeads, Rp = (R + kPad - 1) / kPad * kPad,
                Dp = (Dr + kPad - 1) / kPad * kPad;
  std::vector<QT> ql(H4 * Rp, QT(0)), qp(H4 * Dp, QT(0));
  for (int64_t h = 0; h < H; ++h) {
    if constexpr (Q16) {
      for (int64_t c = 0; c < R; ++c) ql[h * Rp + c] = q_lat[h * hl + c].x;
      for (int64_t c = 0; c < Dr; ++c) qp[h * Dp + c] = q_pe[h * hp + c].x;
    } else {
      for (int64_t c = 0; c < R; ++c) ql[h * Rp + c] = static_cast<float>(q_lat[h * hl + c]);
      for (int64_t c = 0; c < Dr; ++c) qp[h * Dp + c] = static_cast<float>(q_pe[h * hp + c]);
    }
  }
  std::vector<int64_t> rows;        // slots of the visible t, in t order
  rows.reserve(K);
  for (int64_t t = 0; t < K; ++t)
    if (visible == nullptr || visible[t]) rows.push_back(slots[t]);
  const int64_t T = static_cast<int64_t>(rows.size());
  // Threads split the phases of a long context only: a parallel region costs a few microseconds.
  const bool split = T >= kSplitRows;
  auto grain = [split](int64_t g) { return split ? g : std::numeric_limits<int64_t>::max(); };
  std::vector<float> s(H4 * T), p(H4 * T);
  // scores [H4, T]: tiles of 4 heads x 4 rows, each score one sum over the latent and rope columns
  at::parallel_for(0, (T + kRows - 1) / kRows, grain(16), [&](int64_t i0, int64_t i1) {
  for (int64_t i = i0 * kRows; i < std::min(T, i1 * kRows); i += kRows) {
    const TC* lat[kRows];
    const TC* pe[kRows];
    for (int r = 0; r < kRows; ++r) {   // past the end, repeat the last row (its scores are dropped)
      const int64_t slot = rows[std::min(i + r, T - 1)];
      lat[r] = latent + slot * ldl;
      pe[r] = k_pe + slot * ldp;
    }
    const int64_t n = std::min<int64_t>(kRows, T - i);
    for (int64_t r = i + kRows; r < std::min(T, i + 2 * kRows); ++r) {   // the next tile's rows, on their way
      const char* l = reinterpret_cast<const char*>(latent + rows[r] * ldl);
      const char* e = reinterpret_cast<const char*>(k_pe + rows[r] * ldp);
      for (int64_t b = 0; b < R * static_cast<int64_t>(sizeof(TC)); b += 64) _mm_prefetch(l + b, _MM_HINT_T0);
      for (int64_t b = 0; b < Dr * static_cast<int64_t>(sizeof(TC)); b += 64) _mm_prefetch(e + b, _MM_HINT_T0);
    }
    for (int64_t h = 0; h < H4; h += kHeads) {
      __m512 acc[16];
      for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
      score_tile(ql.data() + h * Rp, Rp, lat, R, acc);
      score_tile(qp.data() + h * Dp, Dp, pe, Dr, acc);
      alignas(64) float sums[16];
      _mm512_store_ps(sums, _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale)));
      for (int a = 0; a < kHeads; ++a)
        for (int64_t r = 0; r < n; ++r) s[(h + a) * T + i + r] = sums[4 * a + r];
    }
  }
  });
  // softmax over each head's T scores, in fixed chunks of kChunk rows (16 lanes each, in t order;
  // the chunks' lane sums are then added in order): the same sums at any thread count
  const int64_t chunks = (T + kChunk - 1) / kChunk;
  std::vector<float> top(H), partial(H * chunks * 16);
  for (int64_t h = 0; h < H; ++h) {
    const float* sh = s.data() + h * T;
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < T; i += 16)
      mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, tail16(T - i), sh + i));
    top[h] = _mm512_reduce_max_ps(mx);
  }
  at::parallel_for(0, H * chunks, grain(1), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t h = j / chunks, end = std::min(T, (j % chunks + 1) * kChunk);
      const __m512 m = _mm512_set1_ps(top[h]);
      __m512 sum = _mm512_setzero_ps();
      for (int64_t i = j % chunks * kChunk; i < end; i += 16) {
        const __mmask16 k = tail16(end - i);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s.data() + h * T + i), m));
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
        _mm512_mask_storeu_ps(p.data() + h * T + i, k, e);
      }
      _mm512_storeu_ps(partial.data() + j * 16, sum);
    }
  });
  std::vector<float> total(H);
  for (int64_t h = 0; h < H; ++h) {
    __m512 sum = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) sum = _mm512_add_ps(sum, _mm512_loadu_ps(partial.data() + (h * chunks + c) * 16));
    total[h] = _mm512_reduce_add_ps(sum);
  }
  at::parallel_for(0, H * chunks, grain(1), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t h = j / chunks, end = std::min(T, (j % chunks + 1) * kChunk);
      const __m512 d = _mm512_set1_ps(total[h]);
      float* ph = p.data() + h * T;
      for (int64_t i = j % chunks * kChunk; i < end; i += 16) {
        const __mmask16 k = tail16(end - i);
        _mm512_mask_storeu_ps(ph + i, k, round_to<TC>(_mm512_div_ps(_mm512_maskz_loadu_ps(k, ph + i), d)));
      }
    }
  });
  for (int64_t h = H; h < H4; ++h) std::fill(p.begin() + h * T, p.begin() + (h + 1) * T, 0.0f);
  if constexpr (Q16) {
    output_pairs(p, rows, H, H4, T, R, latent, ldl, out, grain(1));
  } else {
    // o_lat: 4 heads x 64 columns of accumulators, over the rows in t order
    at::parallel_for(0, (R + 63) / 64, grain(1), [&](int64_t g0, int64_t g1) {
    for (int64_t c0 = 64 * g0; c0 < std::min(R, 64 * g1); c0 += 64) {
      __mmask16 mask[4];
      for (int j = 0; j < 4; ++j) mask[j] = tail16(R - c0 - 16 * j);
      for (int64_t h = 0; h < H4; h += kHeads) {
        __m512 acc[kHeads][4];
#pragma GCC unroll 4
        for (int i = 0; i < kHeads; ++i)
#pragma GCC unroll 4
          for (int j = 0; j < 4; ++j) acc[i][j] = _mm512_setzero_ps();
        for (int64_t i = 0; i < T; ++i) {
          const TC* row = latent + rows[i] * ldl + c0;
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
    });
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
  // q is read where it lies (any batch and head strides; a transposed product's output needs no copy)
  const at::Tensor ql = q_lat.stride(2) == 1 ? q_lat : q_lat.contiguous(), qp = q_pe.stride(2) == 1 ? q_pe : q_pe.contiguous();
  at::Tensor out = at::empty({B, H, R}, latent.options());
  if (out.numel() == 0) return out;
  auto each = [&](auto tq, auto tc, auto q16) {
    using TQ = decltype(tq);
    using TC = decltype(tc);
    constexpr bool Q16 = decltype(q16)::value;
    // Enough sequences: one per thread (their inner loops then run inline); else each sequence's
    // phases split across threads. Either way the same arithmetic.
    auto run = [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        attend<Q16, TQ, TC>(ql.data_ptr<TQ>() + b * ql.stride(0), ql.stride(1), qp.data_ptr<TQ>() + b * qp.stride(0),
                            qp.stride(1), H, R, Dr, latent.data_ptr<TC>(),
                       latent.stride(0), k_pe.data_ptr<TC>(), k_pe.stride(0), sp + b * K, vp ? vp + b * K : nullptr, K,
                       static_cast<float>(scale), out.data_ptr<TC>() + b * H * R);
    };
    if (B >= at::get_num_threads()) at::parallel_for(0, B, 1, run);
    else run(0, B);
  };
  const bool qf = qt == at::kFloat, cf = ct == at::kFloat;
  using No = std::false_type;
  if (qf && cf) each(float(), float(), No());
  else if (qf) each(float(), at::BFloat16(), No());
  else if (cf) each(at::BFloat16(), float(), No());
  else if (bf16_dot_enabled()) each(at::BFloat16(), at::BFloat16(), std::true_type());
  else each(at::BFloat16(), at::BFloat16(), No());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(deepseek_kernels, m) {
  m.def("latent_attention(Tensor q_lat, Tensor q_pe, Tensor latent, Tensor k_pe, Tensor slots, Tensor? visible, "
        "float scale) -> Tensor");
}
TORCH_LIBRARY_IMPL(deepseek_kernels, CPU, m) { m.impl("latent_attention", &latent_attention); }
