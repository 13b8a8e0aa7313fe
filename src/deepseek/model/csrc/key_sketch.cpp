// sketch_bounds(...) -> [2, T] fp32: bounds on the lightning indexer's score of each of a sequence's
// T cached keys, from their int8 sketch (see deepseek/model/indexer.py, `KeySketch`).
//
// The long-context decode scan. For key t and index head h the sketch gives the logit
//     a[h, t] = scale_t * (qscale[h, 0] * D0 + qscale[h, 1] * D1),  Dp = sum_d q8[h, p, d] * row_t[d]
// where row_t holds the key's int8 sketch and q8 the query in two int8 parts (coarse, then what it
// left). Both dot products are exact integers, from the CPU's int8 dot products (AVX512-VNNI
// vpdpbusd: 64 byte products an instruction). They multiply an unsigned byte by a signed one,
// so rows are stored offset by 128 and the kernel subtracts 128 * sum_d q8[h, p, d].
//
// Rows are interleaved in groups of 16 slots: byte d of slot 16 g + j lies at
// [g][d / 4][j][d % 4], so one 64-byte load holds 4 dims of 16 keys, and the 16 keys' sums build up
// in the 16 lanes of one register (no horizontal sums). A sequence's slots come as a table
// (positions -> slots); 16 positions on 16 consecutive slots starting a group (any block size that
// is a multiple of 16) are read in place, other positions copied into a group of their own first.
//
// The query [H, Di] (fp32) is split here: q_h = s_h hi_h + (s_h / 128) lo_h + d_h, with int8 hi, lo
// and powers of two s_h (|q_h / s_h| <= 127); d_h, what the parts miss, is known exactly (fp64).
// Per key the kernel returns score -/+ err, where
//     score = sum_h w[h] * relu(a[h, t])
//     err   = (residual_t * c1 + c2 + rel * sum_h |w[h]| * |a[h, t]|) * (1 + 2^-10)
// a[h, t] is q~_h . k~_t (the quantized query and key) up to one fp32 rounding; the true logit
// q_h . k_t differs by q_h . (k_t - k~_t) + d_h . k~_t, at most ||q_h|| residual_t +
// ||d_h|| (key_norm + residual_t) (Cauchy-Schwarz, with ||k~_t|| <= ||k_t|| + residual_t and
// key_norm >= every ||k_t||). ReLU is 1-Lipschitz, so a score errs by at most sum_h |w_h| times that:
//     c1 = sum_h |w_h| (||q_h|| + ||d_h||),  c2 = key_norm sum_h |w_h| ||d_h||   (both rounded up),
// plus the fp32 roundings of the logits and of the sum, rel = (H + 4) 2^-24 of sum_h |w_h a_h|.
//
// screen_candidates(bounds, k) -> [C] int64: the positions whose upper bound reaches the k-th best
// lower bound (so every key of the true top-k), ascending. That lower bound is the k-th largest
// maximum of blocks of T / (8 k) lower bounds (each block's maximum is some key's, so k blocks give
// k distinct keys at least that high), or of all T where blocks would hold fewer than 2.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <functional>
#include <limits>
#include <vector>

#include "vec.h"

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

namespace {

struct Screen {
  const uint8_t* rows;          // [G][C][16][4], each byte a sketch entry + 128
  const at::BFloat16* scale;    // [16 G]
  const float* residual;        // [16 G]
  int64_t C;                    // Di / 4
  int64_t H;
  std::vector<int32_t> q;       // [H][2][C]: 4 bytes of int8 query parts each
  std::vector<float> qscale;    // [H][2]
  const float* w;               // [H]
  std::vector<float> offset;    // [H][2]: 128 * sum of that part's bytes
  float c1, c2, rel;
};

// The query's int8 parts and the error terms (see the top of this file).
void split_query(Screen& s, const float* q, int64_t Di, double key_norm) {
  const int64_t H = s.H;
  s.q.assign(H * 2 * s.C, 0);
  s.qscale.assign(2 * H, 0.0f);
  s.offset.assign(2 * H, 0.0f);
  double c1 = 0, c2 = 0;
  for (int64_t h = 0; h < H; ++h) {
    const float* x = q + h * Di;
    double top = 0, norm = 0;
    for (int64_t d = 0; d < Di; ++d) {
      top = std::max(top, std::fabs(double(x[d])));
      norm += double(x[d]) * x[d];
    }
    int e = 0;
    std::frexp(top / 127, &e);                 // top / 127 < 2^e
    const double s0 = top > 0 ? std::ldexp(1.0, e) : 1.0, s1 = s0 / 128;
    int8_t* hi = reinterpret_cast<int8_t*>(s.q.data() + (2 * h) * s.C);
    int8_t* lo = reinterpret_cast<int8_t*>(s.q.data() + (2 * h + 1) * s.C);
    double lost = 0;
    int32_t sum_hi = 0, sum_lo = 0;
    for (int64_t d = 0; d < Di; ++d) {         // every step exact in fp64
      const double a = std::clamp(std::nearbyint(x[d] / s0), -127.0, 127.0);
      const double left = x[d] - a * s0;
      const double b = std::clamp(std::nearbyint(left / s1), -127.0, 127.0);
      const double miss = left - b * s1;
      hi[d] = static_cast<int8_t>(a);
      lo[d] = static_cast<int8_t>(b);
      sum_hi += hi[d];
      sum_lo += lo[d];
      lost += miss * miss;
    }
    s.qscale[2 * h] = static_cast<float>(s0);
    s.qscale[2 * h + 1] = static_cast<float>(s1);
    s.offset[2 * h] = static_cast<float>(128 * sum_hi);     // exact: |128 sum| < 2^24
    s.offset[2 * h + 1] = static_cast<float>(128 * sum_lo);
    const double wa = std::fabs(double(s.w[h]));
    c1 += wa * (std::sqrt(norm) + std::sqrt(lost));
    c2 += wa * std::sqrt(lost);
  }
  const double up = 1 + std::ldexp(1.0, -20);  // fp64 sums and square roots, then fp32: rounded up
  s.c1 = static_cast<float>(c1 * up);
  s.c2 = static_cast<float>(c2 * key_norm * up);
  s.rel = static_cast<float>((H + 4) * std::ldexp(1.0, -24));
}

constexpr float kSlack = 1.0f + 1.0f / 1024;
constexpr int64_t kAhead = 4;   // chunks of 16 positions ahead whose rows are prefetched

// NH heads from h0 of one whole group: adds w * relu(a) and |w| * |a| into score and size.
template <int NH>
VNNI_TARGET __attribute__((always_inline)) inline void group_heads(const Screen& s, const uint8_t* group,
                                                                   __m512 st, int64_t h0, __m512& score,
                                                                   __m512& size) {
  __m512i acc[NH][2];
#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h) acc[h][0] = acc[h][1] = _mm512_setzero_si512();
  const int32_t* q = s.q.data() + h0 * 2 * s.C;
  for (int64_t c = 0; c < s.C; ++c) {
    const __m512i k = _mm512_load_si512(group + c * 64);
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) {
      acc[h][0] = _mm512_dpbusd_epi32(acc[h][0], k, _mm512_set1_epi32(q[(2 * h) * s.C + c]));
      acc[h][1] = _mm512_dpbusd_epi32(acc[h][1], k, _mm512_set1_epi32(q[(2 * h + 1) * s.C + c]));
    }
  }
#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h) {
    const int64_t i = h0 + h;
    const __m512 d0 = _mm512_sub_ps(_mm512_cvtepi32_ps(acc[h][0]), _mm512_set1_ps(s.offset[2 * i]));
    const __m512 d1 = _mm512_sub_ps(_mm512_cvtepi32_ps(acc[h][1]), _mm512_set1_ps(s.offset[2 * i + 1]));
    const __m512 a = _mm512_mul_ps(st, _mm512_fmadd_ps(d1, _mm512_set1_ps(s.qscale[2 * i + 1]),
                                                       _mm512_mul_ps(d0, _mm512_set1_ps(s.qscale[2 * i]))));
    score = _mm512_fmadd_ps(_mm512_set1_ps(s.w[i]), _mm512_max_ps(a, _mm512_setzero_ps()), score);
    size = _mm512_fmadd_ps(_mm512_set1_ps(std::fabs(s.w[i])), _mm512_abs_ps(a), size);
  }
}

// Bounds of the 16 keys of one group (rows [C][16][4], scale and residual [16]), stored for the
// lanes in `m` at lower[0..], upper[0..].
VNNI_TARGET void group_bounds(const Screen& s, const uint8_t* group, const at::BFloat16* scale,
                              const float* residual, float* lower, float* upper, __mmask16 m) {
  const __m512 st = load16(scale, 0xffff);
  __m512 score = _mm512_setzero_ps(), size = _mm512_setzero_ps();
  int64_t h = 0;
  for (; h + 4 <= s.H; h += 4) group_heads<4>(s, group, st, h, score, size);
  for (; h < s.H; ++h) group_heads<1>(s, group, st, h, score, size);
  __m512 err = _mm512_fmadd_ps(_mm512_loadu_ps(residual), _mm512_set1_ps(s.c1), _mm512_set1_ps(s.c2));
  err = _mm512_mul_ps(_mm512_fmadd_ps(size, _mm512_set1_ps(s.rel), err), _mm512_set1_ps(kSlack));
  store16(lower, _mm512_sub_ps(score, err), m);
  store16(upper, _mm512_add_ps(score, err), m);
}

// Positions off the 16-slot grid: their n <= 16 slots copied into one group of their own first, so
// every key's bounds come from the same arithmetic, whatever the block layout.
struct Gathered {
  std::vector<uint8_t> storage;
  uint8_t* rows;                 // 64-byte aligned [C][16][4]
  at::BFloat16 scale[16];
  float residual[16];

  explicit Gathered(int64_t C) : storage(C * 64 + 64) {
    rows = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
  }

  void fill(const Screen& s, const int64_t* slots, int64_t n) {
    for (int64_t j = 0; j < 16; ++j) {
      const int64_t slot = slots[std::min(j, n - 1)];   // lanes past n repeat the last slot
      const uint8_t* src = s.rows + (slot / 16) * s.C * 64 + (slot % 16) * 4;
      for (int64_t c = 0; c < s.C; ++c) std::memcpy(rows + c * 64 + j * 4, src + c * 64, 4);
      scale[j] = s.scale[slot];
      residual[j] = s.residual[slot];
    }
  }
};

// The sketch of one key (deepseek/model/indexer.py, `sketch_rows`): its entries as bf16 values,
// scale 2^(floor(log2 max|k|) - 6) (so the largest entry maps into [64, 128]), int8 entries
// round(k / scale) (ties to even) clamped to +-127, and the residual ||k - scale * row|| rounded up.
// 16 entries at a time. k / scale is k times 1 / scale (both powers of two: the same rounding of
// the same real number); k - scale * row is exact in fp32 (Sterbenz: the two are within a factor 2,
// or row is 0), its square exact in fp64, and the fp64 sum's rounding (~2^-46 relative) is far
// inside the final 2^-16 margin.
template <typename T>
float sketch_key(const T* k, int64_t Di, int8_t* row, at::BFloat16* scale) {
  __m512 top = _mm512_setzero_ps();
  for (int64_t d = 0; d < Di; d += 16)
    top = _mm512_max_ps(top, _mm512_abs_ps(round_to<at::BFloat16>(load16(k + d, tail16(Di - d)))));
  int e = 0;
  std::frexp(std::max(_mm512_reduce_max_ps(top), std::ldexp(1.0f, -100)), &e);   // top in [2^(e-1), 2^e)
  const float s = std::ldexp(1.0f, e - 7);
  const __m512 sv = _mm512_set1_ps(s), inv = _mm512_set1_ps(std::ldexp(1.0f, 7 - e)),
               lim = _mm512_set1_ps(127.0f);
  __m512d lost = _mm512_setzero_pd();
  for (int64_t d = 0; d < Di; d += 16) {
    const __mmask16 m = tail16(Di - d);
    const __m512 v = round_to<at::BFloat16>(load16(k + d, m));
    const __m512 r = _mm512_min_ps(_mm512_max_ps(_mm512_roundscale_ps(_mm512_mul_ps(v, inv),
                                                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                                                 _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
    _mm_mask_storeu_epi8(row + d, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r)));
    const __m512 miss = _mm512_sub_ps(v, _mm512_mul_ps(r, sv));
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(miss)),
                  hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(miss), 1)));
    lost = _mm512_add_pd(lost, _mm512_add_pd(_mm512_mul_pd(lo, lo), _mm512_mul_pd(hi, hi)));
  }
  *scale = at::BFloat16(s);
  return static_cast<float>(std::sqrt(_mm512_reduce_add_pd(lost))) * (1.0f + 1.0f / 65536);
}

template <typename F>
void each_key(const at::Tensor& keys, const F& one) {
  TORCH_CHECK(keys.dim() == 2 && keys.stride(1) == 1 && (keys.scalar_type() == at::kBFloat16 || keys.scalar_type() == at::kFloat),
              "key sketch: keys must be [N, Di] bf16 or fp32 with contiguous rows, got ", keys.sizes());
  const int64_t N = keys.size(0), Di = keys.size(1);
  if (keys.scalar_type() == at::kBFloat16) {
    for (int64_t i = 0; i < N; ++i) one(i, [&](int8_t* row, at::BFloat16* scale) {
      return sketch_key(keys.data_ptr<at::BFloat16>() + i * keys.stride(0), Di, row, scale); });
  } else {
    for (int64_t i = 0; i < N; ++i) one(i, [&](int8_t* row, at::BFloat16* scale) {
      return sketch_key(keys.data_ptr<float>() + i * keys.stride(0), Di, row, scale); });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> key_sketch(const at::Tensor& keys) {
  TORCH_CHECK(keys.dim() == 2, "key_sketch: keys must be [N, Di], got ", keys.sizes());
  const int64_t N = keys.size(0), Di = keys.size(1);
  at::Tensor rows = at::empty({N, Di}, keys.options().dtype(at::kChar));
  at::Tensor scale = at::empty({N}, keys.options().dtype(at::kBFloat16));
  at::Tensor residual = at::empty({N}, keys.options().dtype(at::kFloat));
  each_key(keys, [&](int64_t i, const auto& sketch) {
    residual.data_ptr<float>()[i] = sketch(rows.data_ptr<int8_t>() + i * Di, scale.data_ptr<at::BFloat16>() + i);
  });
  return {rows, scale, residual};
}

void store_key_sketch(const at::Tensor& keys, const at::Tensor& slots, const at::Tensor& rows, const at::Tensor& scale,
                      const at::Tensor& residual) {
  const int64_t N = keys.size(0), Di = keys.size(1), C = Di / 4;
  TORCH_CHECK(rows.dim() == 4 && rows.size(1) == C && rows.size(2) == 16 && rows.size(3) == 4 && Di % 4 == 0 &&
                  rows.scalar_type() == at::kByte && rows.is_contiguous(),
              "store_key_sketch: rows must be contiguous uint8 [G, Di/4, 16, 4], got ", rows.sizes());
  const int64_t S = 16 * rows.size(0);
  TORCH_CHECK(scale.scalar_type() == at::kBFloat16 && scale.is_contiguous() && scale.numel() == S &&
                  residual.scalar_type() == at::kFloat && residual.is_contiguous() && residual.numel() == S,
              "store_key_sketch: scale [16 G] bf16 and residual [16 G] fp32, contiguous");
  const at::Tensor sl = slots.to(at::kLong).contiguous();
  TORCH_CHECK(sl.dim() == 1 && sl.numel() == N, "store_key_sketch: one slot per key");
  const int64_t* sp = sl.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i) TORCH_CHECK(sp[i] >= 0 && sp[i] < S, "store_key_sketch: slot ", sp[i], " out of range");
  std::vector<int8_t> row(Di);
  uint8_t* base = rows.data_ptr<uint8_t>();
  each_key(keys, [&](int64_t i, const auto& sketch) {
    const int64_t slot = sp[i];
    residual.data_ptr<float>()[slot] = sketch(row.data(), scale.data_ptr<at::BFloat16>() + slot);
    uint8_t* dst = base + (slot / 16) * C * 64 + (slot % 16) * 4;
    for (int64_t c = 0; c < C; ++c) {     // 4 entries, offset by 128 (the sign bit flipped), as one word
      uint32_t word;
      std::memcpy(&word, row.data() + 4 * c, 4);
      word ^= 0x80808080u;
      std::memcpy(dst + c * 64, &word, 4);
    }
  });
}

at::Tensor sketch_bounds(const at::Tensor& rows, const at::Tensor& scale, const at::Tensor& residual,
                         const at::Tensor& slots, const at::Tensor& q, const at::Tensor& w, double key_norm) {
  TORCH_CHECK(rows.dim() == 4 && rows.size(2) == 16 && rows.size(3) == 4 && rows.scalar_type() == at::kByte &&
                  rows.is_contiguous() && reinterpret_cast<uintptr_t>(rows.data_ptr()) % 64 == 0,
              "sketch_bounds: rows must be 64-byte aligned contiguous uint8 [G, Di/4, 16, 4], got ", rows.sizes());
  const int64_t G = rows.size(0), C = rows.size(1);
  TORCH_CHECK(scale.scalar_type() == at::kBFloat16 && scale.is_contiguous() && scale.numel() == 16 * G,
              "sketch_bounds: scale must be contiguous bf16 [16 G]");
  TORCH_CHECK(residual.scalar_type() == at::kFloat && residual.is_contiguous() && residual.numel() == 16 * G,
              "sketch_bounds: residual must be contiguous fp32 [16 G]");
  TORCH_CHECK(slots.dim() == 1 && slots.scalar_type() == at::kLong && slots.is_contiguous(),
              "sketch_bounds: slots must be contiguous int64 [T]");
  TORCH_CHECK(q.dim() == 2 && q.size(1) == 4 * C && q.scalar_type() == at::kFloat && q.is_contiguous(),
              "sketch_bounds: q must be contiguous fp32 [H, Di], got ", q.sizes());
  const int64_t H = q.size(0);
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == H,
              "sketch_bounds: w must be contiguous fp32 [H]");
  const int64_t T = slots.numel();
  const int64_t* sp = slots.data_ptr<int64_t>();

  Screen s{rows.data_ptr<uint8_t>(), scale.data_ptr<at::BFloat16>(), residual.data_ptr<float>(), C, H, {}, {},
           w.data_ptr<float>(), {}, 0, 0, 0};
  split_query(s, q.data_ptr<float>(), 4 * C, key_norm);
  at::Tensor out = at::empty({2, T}, residual.options());
  float* lower = out.data_ptr<float>();
  float* upper = lower + T;
  const int64_t chunks = (T + 15) / 16;
  // A grain of 256 chunks (4096 keys, ~0.5 MB of rows): threads join only for long contexts.
  at::parallel_for(0, chunks, 256, [&](int64_t c0, int64_t c1) {
    Gathered gathered(C);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t t = 16 * c, n = std::min<int64_t>(16, T - t);
      if (t + kAhead * 16 < T) {   // rows on their way (a scattered block table defeats the hardware's guess)
        const int64_t slot = sp[t + kAhead * 16];
        const char* next = reinterpret_cast<const char*>(s.rows + (slot / 16) * C * 64);
        for (int64_t b = 0; b < C * 64; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(s.scale + slot), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(s.residual + slot), _MM_HINT_T0);
      }
      const int64_t first = sp[t];
      bool grid = first % 16 == 0;
      for (int64_t j = 0; j < n; ++j) {   // each slot checked as its chunk is read: no pass of its own
        TORCH_CHECK(sp[t + j] >= 0 && sp[t + j] < 16 * G, "sketch_bounds: slot ", sp[t + j], " outside the sketch's ",
                    16 * G);
        grid = grid && sp[t + j] == first + j;
      }
      if (grid) {
        group_bounds(s, s.rows + (first / 16) * C * 64, s.scale + first, s.residual + first, lower + t, upper + t,
                     tail16(n));
      } else {
        gathered.fill(s, sp + t, n);
        group_bounds(s, gathered.rows, gathered.scale, gathered.residual, lower + t, upper + t, tail16(n));
      }
    }
  });
  return out;
}

at::Tensor screen_candidates(const at::Tensor& bounds, int64_t k) {
  TORCH_CHECK(bounds.dim() == 2 && bounds.size(0) == 2 && bounds.scalar_type() == at::kFloat && bounds.is_contiguous(),
              "screen_candidates: bounds must be contiguous fp32 [2, T]");
  const int64_t T = bounds.size(1);
  const float* lower = bounds.data_ptr<float>();
  const float* upper = lower + T;
  const int64_t block = T / (8 * std::max<int64_t>(k, 1));
  std::vector<float> top;
  auto value = [](float v) { return v == v ? v : -std::numeric_limits<float>::infinity(); };   // NaN: no floor
  if (block < 2) {
    top.resize(T);
    for (int64_t t = 0; t < T; ++t) top[t] = value(lower[t]);
  } else {
    top.resize(T / block);
    for (size_t i = 0; i < top.size(); ++i) {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < block; ++j) m = std::max(m, value(lower[i * block + j]));
      top[i] = m;
    }
  }
  TORCH_CHECK(k >= 1 && k <= static_cast<int64_t>(top.size()), "screen_candidates: k = ", k, " of ", top.size());
  std::nth_element(top.begin(), top.begin() + (k - 1), top.end(), std::greater<float>());
  const __m512 floor = _mm512_set1_ps(top[k - 1]);
  std::vector<int64_t> picked;
  picked.reserve(4 * k);
  for (int64_t t = 0; t < T; t += 16) {   // upper >= floor, or NaN: a candidate
    __mmask16 hit = _mm512_mask_cmp_ps_mask(tail16(T - t), _mm512_maskz_loadu_ps(tail16(T - t), upper + t), floor,
                                            _CMP_NLT_UQ);
    for (; hit; hit &= hit - 1) picked.push_back(t + __builtin_ctz(hit));
  }
  at::Tensor out = at::empty({static_cast<int64_t>(picked.size())}, bounds.options().dtype(at::kLong));
  std::copy(picked.begin(), picked.end(), out.data_ptr<int64_t>());
  return out;
}

bool int8_dot() { return __builtin_cpu_supports("avx512vnni"); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(deepseek_kernels, m) {
  m.def("int8_dot() -> bool", &int8_dot);
  m.def("sketch_bounds(Tensor rows, Tensor scale, Tensor residual, Tensor slots, Tensor q, Tensor w, "
        "float key_norm) -> Tensor");
  m.def("screen_candidates(Tensor bounds, int k) -> Tensor");
  m.def("key_sketch(Tensor keys) -> (Tensor, Tensor, Tensor)");
  m.def("store_key_sketch(Tensor keys, Tensor slots, Tensor(a!) rows, Tensor(b!) scale, Tensor(c!) residual) -> ()");
}
TORCH_LIBRARY_IMPL(deepseek_kernels, CPU, m) {
  m.impl("sketch_bounds", &sketch_bounds);
  m.impl("screen_candidates", &screen_candidates);
  m.impl("key_sketch", &key_sketch);
  m.impl("store_key_sketch", &store_key_sketch);
}
