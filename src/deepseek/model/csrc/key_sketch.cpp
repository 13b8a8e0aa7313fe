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
// Per key the kernel returns score -/+ err, where
//     score = sum_h w[h] * relu(a[h, t])
//     err   = (residual_t * c1 + c2 + rel * sum_h |w[h]| * |a[h, t]|) * (1 + 2^-10)
// with c1, c2, rel from the caller's error analysis (indexer.py).

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
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
  const int32_t* q;             // [H][2][C]: 4 bytes of int8 query parts each
  const float* qscale;          // [H][2]
  const float* w;               // [H]
  std::vector<float> offset;    // [H][2]: 128 * sum of that part's bytes
  float c1, c2, rel;
};

constexpr float kSlack = 1.0f + 1.0f / 1024;

// NH heads from h0 of one whole group: adds w * relu(a) and |w| * |a| into score and size.
template <int NH>
VNNI_TARGET __attribute__((always_inline)) inline void group_heads(const Screen& s, const uint8_t* group,
                                                                   __m512 st, int64_t h0, __m512& score,
                                                                   __m512& size) {
  __m512i acc[NH][2];
#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h) acc[h][0] = acc[h][1] = _mm512_setzero_si512();
  const int32_t* q = s.q + h0 * 2 * s.C;
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

at::Tensor sketch_bounds(const at::Tensor& rows, const at::Tensor& scale, const at::Tensor& residual,
                         const at::Tensor& slots, const at::Tensor& q, const at::Tensor& qscale, const at::Tensor& w,
                         double c1, double c2, double rel) {
  TORCH_CHECK(rows.dim() == 4 && rows.size(2) == 16 && rows.size(3) == 4 && rows.scalar_type() == at::kByte &&
                  rows.is_contiguous() && reinterpret_cast<uintptr_t>(rows.data_ptr()) % 64 == 0,
              "sketch_bounds: rows must be 64-byte aligned contiguous uint8 [G, Di/4, 16, 4], got ", rows.sizes());
  const int64_t G = rows.size(0), C = rows.size(1), H = q.size(0);
  TORCH_CHECK(scale.scalar_type() == at::kBFloat16 && scale.is_contiguous() && scale.numel() == 16 * G,
              "sketch_bounds: scale must be contiguous bf16 [16 G]");
  TORCH_CHECK(residual.scalar_type() == at::kFloat && residual.is_contiguous() && residual.numel() == 16 * G,
              "sketch_bounds: residual must be contiguous fp32 [16 G]");
  TORCH_CHECK(slots.dim() == 1 && slots.scalar_type() == at::kLong && slots.is_contiguous(),
              "sketch_bounds: slots must be contiguous int64 [T]");
  TORCH_CHECK(q.dim() == 3 && q.size(1) == 2 && q.size(2) == C && q.scalar_type() == at::kInt && q.is_contiguous(),
              "sketch_bounds: q must be contiguous int32 [H, 2, Di/4], got ", q.sizes());
  TORCH_CHECK(qscale.scalar_type() == at::kFloat && qscale.is_contiguous() && qscale.numel() == 2 * H &&
                  w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == H,
              "sketch_bounds: qscale [H, 2] and w [H] must be contiguous fp32");
  const int64_t T = slots.numel();
  const int64_t* sp = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t)
    TORCH_CHECK(sp[t] >= 0 && sp[t] < 16 * G, "sketch_bounds: slot ", sp[t], " outside the sketch's ", 16 * G);

  Screen s{rows.data_ptr<uint8_t>(), scale.data_ptr<at::BFloat16>(), residual.data_ptr<float>(), C, H,
           q.data_ptr<int32_t>(), qscale.data_ptr<float>(), w.data_ptr<float>(), std::vector<float>(2 * H),
           static_cast<float>(c1), static_cast<float>(c2), static_cast<float>(rel)};
  for (int64_t i = 0; i < 2 * H; ++i) {
    const int8_t* b = reinterpret_cast<const int8_t*>(s.q + i * C);
    int32_t sum = 0;
    for (int64_t d = 0; d < 4 * C; ++d) sum += b[d];
    s.offset[i] = static_cast<float>(128 * sum);   // exact: |128 sum| < 2^24
  }
  at::Tensor out = at::empty({2, T}, residual.options());
  float* lower = out.data_ptr<float>();
  float* upper = lower + T;
  const int64_t chunks = (T + 15) / 16;
  // A grain of 256 chunks (4096 keys, ~0.5 MB of rows): threads join only for long contexts.
  at::parallel_for(0, chunks, 256, [&](int64_t c0, int64_t c1_) {
    Gathered gathered(C);
    for (int64_t c = c0; c < c1_; ++c) {
      const int64_t t = 16 * c, n = std::min<int64_t>(16, T - t);
      const int64_t first = sp[t];
      bool grid = first % 16 == 0;
      for (int64_t j = 1; grid && j < n; ++j) grid = sp[t + j] == first + j;
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

bool int8_dot() { return __builtin_cpu_supports("avx512vnni"); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(deepseek_kernels, m) {
  m.def("int8_dot() -> bool", &int8_dot);
  m.def("sketch_bounds(Tensor rows, Tensor scale, Tensor residual, Tensor slots, Tensor q, Tensor qscale, "
        "Tensor w, float c1, float c2, float rel) -> Tensor");
}
TORCH_LIBRARY_IMPL(deepseek_kernels, CPU, m) { m.impl("sketch_bounds", &sketch_bounds); }
