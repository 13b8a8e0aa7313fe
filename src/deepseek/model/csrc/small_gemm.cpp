// Products with a few rows of x: the GEMMs of a decode step (see deepseek/model/kernels.py).
//
// small_gemm(x, wt):    y = x @ wt,    x [M, K], wt [K, N] (e.g. a Linear weight [N, K] held
//                       column-major). Every output is one fp32 fused-multiply-add chain over
//                       k = 0..K-1; tiles of 4 rows x 64 columns keep 16 accumulators in registers
//                       and load each weight row segment once per tile.
// small_gemm_nt(x, w):  y = x @ w^T,  x [M, K], w [N, K] (e.g. cached attention rows). Each output
//                       is 16 fp32 lane sums over k, then a fixed tree; tiles of 4 x 4 outputs.
//
// Both also take a leading batch dim on x and the matrix alike. Tensors are float32 or bfloat16
// (bf16 widens to fp32 exactly); y has x's dtype. No output depends on M or on the other rows of
// the call, so a sequence's result is the same whatever shares its batch. The matrix's rows must be
// contiguous; above kMaxRows rows of x, or otherwise, the call is at::matmul's. With bf16 x and a
// bf16 matrix, CPUs with AVX512-BF16 sum pairs of products per instruction (see tile_bf16).

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <atomic>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "vec.h"

namespace {

constexpr int64_t kMaxRows = 32;
// Above this many partial sums (128 KB) a block walk would spill them from L2: the k loop runs whole.
constexpr int64_t kPartLimit = 32768;
// Multiply-adds (about 2-4 us) below which a parallel region costs more than it saves.
constexpr int64_t kParallelWork = 131072;
constexpr int kRows = 4;                  // rows of x per tile
constexpr int kVecs = 4;                  // 16-float vectors per tile: 64 output columns
constexpr int64_t kCols = 16 * kVecs;

// f(std::integral_constant<int, R>(), m) for each tile of R rows of x, from row m: kRows at a time,
// then the 1-3 left over. (The tile kernels take R as a template argument: their accumulators are
// registers.)
template <typename F>
inline void row_tiles(int64_t M, const F& f) {
  int64_t m = 0;
  for (; m + kRows <= M; m += kRows) f(std::integral_constant<int, kRows>(), m);
  switch (M - m) {
    case 3: f(std::integral_constant<int, 3>(), m); break;
    case 2: f(std::integral_constant<int, 2>(), m); break;
    case 1: f(std::integral_constant<int, 1>(), m); break;
    default: break;
  }
}

// rows x 64 columns of y over k in [k0, k1): x is fp32 [rows, K] (row stride K); wt, part and y are
// offset to the tile's first column. The sums start at 0 (k0 == 0) or from the fp32 partial sums in
// `part`, and end in `part`, or, for the last k (k1 == K), in y. Either way each output is one fma
// chain over k in order.
template <int R, typename TW, typename TY>
inline void tile(const float* x, int64_t K, int64_t k0, int64_t k1, const TW* wt, int64_t ldw, float* part,
                 int64_t ldp, TY* y, int64_t ldy, const __mmask16* mask) {
  __m512 acc[R][kVecs];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < kVecs; ++j)
      acc[r][j] = k0 == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask[j], part + r * ldp + 16 * j);
  for (int64_t k = k0; k < k1; ++k) {
    __m512 w[kVecs];
#pragma GCC unroll 4
    for (int j = 0; j < kVecs; ++j) w[j] = load16(wt + k * ldw + 16 * j, mask[j]);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(x[r * K + k]);
#pragma GCC unroll 4
      for (int j = 0; j < kVecs; ++j) acc[r][j] = _mm512_fmadd_ps(a, w[j], acc[r][j]);
    }
  }
  if (k1 == K) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < kVecs; ++j) store16(y + r * ldy + 16 * j, acc[r][j], mask[j]);
  } else {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < kVecs; ++j) _mm512_mask_storeu_ps(part + r * ldp + 16 * j, mask[j], acc[r][j]);
  }
}

// All M rows of one 64-column tile of y, over k in [k0, k1); `part` is offset to the tile's partial
// sums, rows ldp floats apart.
template <typename TW, typename TY>
void columns(const float* x, int64_t M, int64_t K, int64_t k0, int64_t k1, const TW* wt, int64_t ldw,
             float* part, int64_t ldp, TY* y, int64_t N, int64_t n0) {
  __mmask16 mask[kVecs];
  for (int j = 0; j < kVecs; ++j) mask[j] = tail16(N - n0 - 16 * j);
  row_tiles(M, [&](auto rows, int64_t m) {
    tile<decltype(rows)::value>(x + m * K, K, k0, k1, wt + n0, ldw, part + m * ldp, ldp, y + m * N + n0, N, mask);
  });
}

// one(b) for each product b of a batch: side by side (each then on one thread) once there are enough
// of them and enough work (`work` multiply-adds in all), else one after another.
template <typename F>
inline void each_product(int64_t batch, int64_t work, const F& one) {
  if (batch >= at::get_num_threads() && work >= at::get_num_threads() * kParallelWork)
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) { for (int64_t b = b0; b < b1; ++b) one(b); });
  else
    for (int64_t b = 0; b < batch; ++b) one(b);
}

// Threads split the n column groups of a product (`cols` columns each) only when every thread then
// gets kParallelWork multiply-adds or more: below that, waking a thread costs what it saves.
template <typename F>
inline void split_columns(int64_t n, int64_t M, int64_t K, int64_t cols, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kParallelWork / std::max<int64_t>(1, M * K * cols));
  if (n < 2 * grain) f(int64_t{0}, n);
  else at::parallel_for(0, n, grain, f);
}

// y [M, N] = x [M, K] (fp32, row stride K) @ wt (rows of stride ldw). Threads split the columns.
// Each thread walks its tiles kBlock weight rows at a time: a wide matrix is then read row after row
// (one tile's rows alone lie a page or more apart, which defeats the prefetcher), and partial sums
// wait in an fp32 buffer between blocks.
template <typename TW, typename TY>
void gemm_rows(const float* x, int64_t M, int64_t K, const TW* wt, int64_t ldw, TY* y, int64_t N) {
  const int64_t kBlock = M * N > kPartLimit ? K : 32;
  split_columns((N + kCols - 1) / kCols, M, K, kCols, [&](int64_t t0, int64_t t1) {
    const int64_t ldp = (t1 - t0) * kCols;
    const std::unique_ptr<float[]> part(K > kBlock ? new float[M * ldp] : nullptr);   // this thread's
    for (int64_t k0 = 0; k0 < K; k0 += kBlock)
      for (int64_t t = t0; t < t1; ++t)
        columns(x, M, K, k0, std::min(K, k0 + kBlock), wt, ldw, part.get() + (t - t0) * kCols, ldp, y, N, t * kCols);
  });
}

// bf16 x bf16, where the CPU has AVX512-BF16: vdpbf16ps multiplies pairs of bf16 (exactly, in fp32)
// and adds both products to an fp32 accumulator, 32 multiply-adds per instruction where an fp32 fma
// does 16, and without widening the weight first. x is passed as pairs: pair p of row m holds the
// bits of x[m][2p] and x[m][2p+1] (vec.h bf16_pairs). The weight keeps its layout:
// rows k and k+1 of a 32-column segment are interleaved in registers (vpunpck{l,h}wd), which puts
// each 128-bit lane's columns 0-3 in one vector and 4-7 in the other; the final store puts them
// back in order. Each output is still one fp32 sum over k in a fixed order (pairs in k order), so no
// row depends on the others; the sums differ from the fma chain's only in rounding order.
// R rows x 64 columns over pairs [p0, p1); `part` holds the raw (lane-ordered) partial sums of each
// row, ldp floats apart; `last` stores the sums in column order to y instead.
template <int R, typename TY>
BF16_TARGET inline void tile_bf16(const uint32_t* xp, int64_t P, int64_t p0, int64_t p1, int64_t K,
                                  const uint16_t* wt, int64_t ldw, float* part, int64_t ldp, TY* y, int64_t ldy,
                                  const __mmask32* m32, const __mmask16* m16, bool last) {
  __m512 acc[R][kVecs];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < kVecs; ++j) acc[r][j] = p0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(part + r * ldp + 16 * j);
  const int64_t full = std::min(p1, K / 2);       // pairs with both rows inside the matrix
  int64_t p = p0;
  if (m32[1] == __mmask32(0xffffffffu)) {         // a whole 64-column tile: plain loads
    for (; p < full; ++p) {
      const uint16_t* w0 = wt + 2 * p * ldw;
      pair_step<R>(acc, xp, P, p, _mm512_loadu_si512(w0), _mm512_loadu_si512(w0 + 32), _mm512_loadu_si512(w0 + ldw),
           _mm512_loadu_si512(w0 + ldw + 32));
    }
  }
  for (; p < full; ++p) {
    const uint16_t* w0 = wt + 2 * p * ldw;
    pair_step<R>(acc, xp, P, p, _mm512_maskz_loadu_epi16(m32[0], w0), _mm512_maskz_loadu_epi16(m32[1], w0 + 32),
         _mm512_maskz_loadu_epi16(m32[0], w0 + ldw), _mm512_maskz_loadu_epi16(m32[1], w0 + ldw + 32));
  }
  if (p < p1) {                                   // odd K: the last row pairs with zeros
    const uint16_t* w0 = wt + 2 * p * ldw;
    const __m512i zero = _mm512_setzero_si512();
    pair_step<R>(acc, xp, P, p, _mm512_maskz_loadu_epi16(m32[0], w0), _mm512_maskz_loadu_epi16(m32[1], w0 + 32), zero, zero);
  }
  if (!last) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < kVecs; ++j) _mm512_storeu_ps(part + r * ldp + 16 * j, acc[r][j]);
    return;
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) store_pair_sums(acc[r], y + r * ldy, m16);
}

template <typename TY>
BF16_TARGET void columns_bf16(const uint32_t* xp, int64_t ldx, int64_t M, int64_t K, int64_t p0, int64_t p1,
                              const uint16_t* wt, int64_t ldw, float* part, int64_t ldp, TY* y, int64_t N, int64_t n0) {
  __mmask16 m16[kVecs];
  __mmask32 m32[2];
  for (int j = 0; j < kVecs; ++j) m16[j] = tail16(N - n0 - 16 * j);
  for (int h = 0; h < 2; ++h) m32[h] = tail32(N - n0 - 32 * h);
  const bool last = 2 * p1 >= K;
  row_tiles(M, [&](auto rows, int64_t m) {
    tile_bf16<decltype(rows)::value>(xp + m * ldx, ldx, p0, p1, K, wt + n0, ldw, part + m * ldp, ldp, y + m * N + n0, N,
                                     m32, m16, last);
  });
}

// gemm_rows with bf16 x (as pairs, rows ldx pairs apart) and a bf16 matrix; the same walk over
// blocks of weight rows.
template <typename TY>
void gemm_rows_bf16(const uint32_t* xp, int64_t ldx, int64_t M, int64_t K, const at::BFloat16* wt, int64_t ldw, TY* y,
                    int64_t N) {
  const int64_t P = (K + 1) / 2, tiles = (N + kCols - 1) / kCols;
  const int64_t kPairs = M * N > kPartLimit ? P : 16;
  const uint16_t* w = reinterpret_cast<const uint16_t*>(wt);
  split_columns(tiles, M, K, kCols, [&](int64_t t0, int64_t t1) {
    const int64_t ldp = (t1 - t0) * kCols;
    const std::unique_ptr<float[]> part(P > kPairs ? new float[M * ldp] : nullptr);   // this thread's
    for (int64_t p0 = 0; p0 < P; p0 += kPairs)
      for (int64_t t = t0; t < t1; ++t)
        columns_bf16(xp, ldx, M, K, p0, std::min(P, p0 + kPairs), w, ldw, part.get() + (t - t0) * kCols, ldp, y, N,
                     t * kCols);
  });
}

// Packed bf16 matrices (kernels.pack): wt [K, N] held for the pair products as [T, P, W, 2], where
// W (64, 32 or 16) divides N into T tiles of W columns, P = ceil(K / 2), and element [t][p][c][j] is
// wt[2p + j][tW + c] (0 past K). A tile is one block of memory read front to back, and one pair row
// of it (2W values, W/16 vectors) is what vdpbf16ps takes with a broadcast pair of x: no shuffles,
// and the sums come out in column order. Each output is the same sum as in tile_bf16 (pairs in k
// order, from 0), so the bits are those of the unpacked pair path. Any number of rows.
constexpr int64_t kRowBlock = 64;         // rows of x per walk over the tiles (stays in L2)

// R rows x 16V columns of y over all P pairs of one tile w.
template <int R, int V, typename TY>
BF16_TARGET inline void packed_tile(const uint32_t* xp, int64_t ldx, int64_t P, const uint16_t* w, TY* y, int64_t ldy) {
  __m512 acc[R][V];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < P; ++p) {
    __m512bh wv[V];
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + (p * V + j) * 32);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[r * ldx + p]));
#pragma GCC unroll 4
      for (int j = 0; j < V; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], a, wv[j]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < V; ++j) store16(y + r * ldy + 16 * j, acc[r][j], __mmask16(0xffff));
}

template <int V, typename TY>
void packed_rows(const uint32_t* xp, int64_t ldx, int64_t M, int64_t P, const uint16_t* w, TY* y, int64_t ldy) {
  row_tiles(M, [&](auto rows, int64_t m) {
    packed_tile<decltype(rows)::value, V>(xp + m * ldx, ldx, P, w, y + m * ldy, ldy);
  });
}

// y [M, N] = x @ wt: x as pairs (rows ldx pairs apart), wp the packed [T, P, W, 2]. Threads split the
// tiles; each walks its tiles once per block of kRowBlock rows.
template <typename TY>
void packed_product(const uint32_t* xp, int64_t ldx, int64_t M, int64_t P, const uint16_t* wp, int64_t T, int64_t W,
                    TY* y, int64_t N) {
  split_columns(T, M, 2 * P, W, [&](int64_t t0, int64_t t1) {
    for (int64_t m0 = 0; m0 < M; m0 += kRowBlock)
      for (int64_t t = t0; t < t1; ++t) {
        const uint16_t* w = wp + t * P * 2 * W;
        const int64_t rows = std::min(kRowBlock, M - m0);
        TY* yt = y + m0 * N + t * W;
        if (W == 64) packed_rows<4>(xp + m0 * ldx, ldx, rows, P, w, yt, N);
        else if (W == 32) packed_rows<2>(xp + m0 * ldx, ldx, rows, P, w, yt, N);
        else packed_rows<1>(xp + m0 * ldx, ldx, rows, P, w, yt, N);
      }
  });
}

// x's rows [M, K] (strides ldx, kx; bf16) as pairs: in place where they already are, else copied to
// `store`. Returns the pairs and their row stride.
inline std::pair<const uint32_t*, int64_t> pairs_of(const at::BFloat16* x, int64_t M, int64_t K, int64_t ldx, int64_t kx,
                                                    std::vector<uint32_t>& store) {
  if (kx == 1 && K % 2 == 0 && ldx % 2 == 0) return {reinterpret_cast<const uint32_t*>(x), ldx / 2};
  store = bf16_pairs(M, K, [&](int64_t m, int64_t k) { return x[m * ldx + k * kx]; });
  return {store.data(), (K + 1) / 2};
}

// The packed matrix's (T, P, W) after checks against x's depth K.
std::tuple<int64_t, int64_t, int64_t> packed_shape(const at::Tensor& wp, int64_t K, const char* name) {
  TORCH_CHECK(wp.scalar_type() == at::kBFloat16 && wp.is_contiguous() && wp.size(-1) == 2,
              name, ": expected a contiguous packed bf16 matrix [..., T, P, W, 2], got ", wp.sizes());
  const int64_t T = wp.size(-4), P = wp.size(-3), W = wp.size(-2);
  TORCH_CHECK(W == 64 || W == 32 || W == 16, name, ": packed tiles are 64, 32 or 16 columns wide, got ", W);
  TORCH_CHECK(P == (K + 1) / 2, name, ": x has ", K, " columns; the packed matrix ", 2 * P, " rows");
  return {T, P, W};
}

// y = x @ wt for bf16 x [M, K] / [B, M, K] and wt packed [T, P, W, 2] / [B, T, P, W, 2]; y in `yt`.
at::Tensor packed_matmul(const at::Tensor& x, const at::Tensor& wp, at::ScalarType yt) {
  TORCH_CHECK((x.dim() == 2 || x.dim() == 3) && wp.dim() == x.dim() + 2,
              "packed_gemm: expected x [M, K] and a packed [T, P, W, 2], or both batched; got ", x.sizes(), " and ",
              wp.sizes());
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.device().is_cpu() && wp.device().is_cpu(),
              "packed_gemm: bf16 CPU tensors only");
  TORCH_CHECK(bf16_dot_enabled(), "packed_gemm: this CPU has no bf16 pair products (or DEEPSEEK_BF16_DOT=0)");
  const bool batched = x.dim() == 3;
  const int64_t M = x.size(-2), K = x.size(-1), batch = batched ? x.size(0) : 1;
  const auto [T, P, W] = packed_shape(wp, K, "packed_gemm");
  TORCH_CHECK(!batched || wp.size(0) == batch, "packed_gemm: ", batch, " products but ", wp.size(0), " matrices");
  const int64_t N = T * W;
  at::Tensor y = at::empty(batched ? std::vector<int64_t>{batch, M, N} : std::vector<int64_t>{M, N}, x.options().dtype(yt));
  if (K == 0) return y.zero_();
  if (y.numel() == 0) return y;
  const int64_t xb = batched ? x.stride(0) : 0;
  auto each = [&](auto ty) {
    using TY = decltype(ty);
    auto one = [&](int64_t b) {
      std::vector<uint32_t> store;
      const auto [xp, ldx] = pairs_of(x.data_ptr<at::BFloat16>() + b * xb, M, K, x.stride(-2), x.stride(-1), store);
      packed_product(xp, ldx, M, P, reinterpret_cast<const uint16_t*>(wp.data_ptr<at::BFloat16>()) + b * T * P * 2 * W, T,
                     W, y.data_ptr<TY>() + b * M * N, N);
    };
    each_product(batch, batch * M * K * N, one);
  };
  if (yt == at::kFloat) each(float());
  else each(at::BFloat16());
  return y;
}

// One product of a batch: x [M, K] (strides ldx, kx), the matrix (rows of stride ldw), y [M, N].
struct Problem {
  const void* x;
  int64_t ldx, kx;
  const void* w;
  int64_t ldw;
  void* y;
  int64_t M, K, N;
};

// x once as fp32 (exact), so inner loops broadcast or load it from L1.
template <typename TX>
std::vector<float> widen(const Problem& p) {
  std::vector<float> xf(p.M * p.K);
  const TX* x = static_cast<const TX*>(p.x);
  for (int64_t m = 0; m < p.M; ++m)
    for (int64_t k = 0; k < p.K; ++k) xf[m * p.K + k] = static_cast<float>(x[m * p.ldx + k * p.kx]);
  return xf;
}

template <typename TX, typename TW, typename TY>
void run_nn(const Problem& p) {
  if constexpr (std::is_same_v<TX, at::BFloat16> && std::is_same_v<TW, at::BFloat16>) {
    if (bf16_dot_enabled()) {
      const at::BFloat16* x = static_cast<const at::BFloat16*>(p.x);
      const auto* w = static_cast<const at::BFloat16*>(p.w);
      if (p.kx == 1 && p.K % 2 == 0 && p.ldx % 2 == 0) {   // x's rows are already its pairs
        gemm_rows_bf16(reinterpret_cast<const uint32_t*>(x), p.ldx / 2, p.M, p.K, w, p.ldw, static_cast<TY*>(p.y), p.N);
        return;
      }
      const std::vector<uint32_t> xp = bf16_pairs(p.M, p.K, [&](int64_t m, int64_t k) { return x[m * p.ldx + k * p.kx]; });
      gemm_rows_bf16(xp.data(), (p.K + 1) / 2, p.M, p.K, w, p.ldw, static_cast<TY*>(p.y), p.N);
      return;
    }
  }
  const std::vector<float> xf = widen<TX>(p);
  gemm_rows(xf.data(), p.M, p.K, static_cast<const TW*>(p.w), p.ldw, static_cast<TY*>(p.y), p.N);
}

// R rows x C matrix rows of y = x @ w^T: x fp32 [R, K] (row stride K), w rows of stride ldw.
template <int R, int C, typename TW, typename TY>
inline void dots(const float* x, int64_t K, const TW* w, int64_t ldw, TY* y, int64_t ldy) {
  __m512 acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = tail16(K - k);
    __m512 b[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) b[c] = load16(w + c * ldw + k, m);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_maskz_loadu_ps(m, x + r * K + k);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) y[r * ldy + c] = static_cast<TY>(_mm512_reduce_add_ps(acc[r][c]));
}

template <int C, typename TW, typename TY>
inline void dot_rows(const float* x, int64_t M, int64_t K, const TW* w, int64_t ldw, TY* y, int64_t N) {
  row_tiles(M, [&](auto rows, int64_t m) { dots<decltype(rows)::value, C>(x + m * K, K, w, ldw, y + m * N, N); });
}

template <typename TX, typename TW, typename TY>
void run_nt(const Problem& p) {
  const std::vector<float> xf = widen<TX>(p);
  const TW* w = static_cast<const TW*>(p.w);
  TY* y = static_cast<TY*>(p.y);
  constexpr int64_t C = 4;
  split_columns((p.N + C - 1) / C, p.M, p.K, C, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n = g * C;
      const TW* wn = w + n * p.ldw;
      switch (std::min<int64_t>(C, p.N - n)) {
        case 4: dot_rows<4>(xf.data(), p.M, p.K, wn, p.ldw, y + n, p.N); break;
        case 3: dot_rows<3>(xf.data(), p.M, p.K, wn, p.ldw, y + n, p.N); break;
        case 2: dot_rows<2>(xf.data(), p.M, p.K, wn, p.ldw, y + n, p.N); break;
        default: dot_rows<1>(xf.data(), p.M, p.K, wn, p.ldw, y + n, p.N); break;
      }
    }
  });
}

template <bool NT, typename TX, typename TW, typename TY>
void run(const Problem& p) { NT ? run_nt<TX, TW, TY>(p) : run_nn<TX, TW, TY>(p); }

// y = x @ w (NT: x @ w^T) in `out` (x's dtype, or float32).
template <bool NT>
at::Tensor matmul(const at::Tensor& x, const at::Tensor& w, std::optional<at::ScalarType> out) {
  const char* name = NT ? "small_gemm_nt" : "small_gemm";
  TORCH_CHECK((x.dim() == 2 || x.dim() == 3) && w.dim() == x.dim(),
              name, ": expected x and the matrix both 2-D or both 3-D, got ", x.sizes(), " and ", w.sizes());
  const bool batched = x.dim() == 3;
  const int64_t M = x.size(-2), K = x.size(-1), N = NT ? w.size(-2) : w.size(-1);
  TORCH_CHECK(K == (NT ? w.size(-1) : w.size(-2)) && (!batched || x.size(0) == w.size(0)),
              name, ": shapes ", x.sizes(), " and ", w.sizes(), " do not multiply");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), name, ": CPU tensors only");
  const auto xt = x.scalar_type(), wt = w.scalar_type();
  const auto yt = out.value_or(xt);
  TORCH_CHECK((xt == at::kFloat || xt == at::kBFloat16) && (wt == at::kFloat || wt == at::kBFloat16),
              name, ": float32 or bfloat16 tensors only");
  TORCH_CHECK(yt == xt || yt == at::kFloat, name, ": the result is in x's dtype or float32");
  if (M > kMaxRows || w.stride(-1) != 1 || K == 0) {   // mixed dtypes: in fp32, then the result's
    const auto ct = xt == wt && yt == xt ? xt : at::kFloat;
    const at::Tensor wm = w.to(ct);
    return at::matmul(x.to(ct), NT ? wm.transpose(-1, -2) : wm).to(yt);
  }
  const int64_t batch = batched ? x.size(0) : 1;
  at::Tensor y = at::empty(batched ? std::vector<int64_t>{batch, M, N} : std::vector<int64_t>{M, N},
                           x.options().dtype(yt));
  if (y.numel() == 0) return y;
  const int64_t xb = batched ? x.stride(0) : 0, wb = batched ? w.stride(0) : 0;
  auto each = [&](auto tx, auto tw, auto ty) {
    using TX = decltype(tx);
    using TW = decltype(tw);
    using TY = decltype(ty);
    auto one = [&](int64_t b) {
      run<NT, TX, TW, TY>(Problem{x.data_ptr<TX>() + b * xb, x.stride(-2), x.stride(-1), w.data_ptr<TW>() + b * wb,
                                  w.stride(-2), y.data_ptr<TY>() + b * M * N, M, K, N});
    };
    each_product(batch, batch * M * K * N, one);
  };
  const bool xf = xt == at::kFloat, wf = wt == at::kFloat, yf = yt == at::kFloat;
  if (xf && wf) each(float(), float(), float());
  else if (xf) each(float(), at::BFloat16(), float());
  else if (wf && yf) each(at::BFloat16(), float(), float());
  else if (wf) each(at::BFloat16(), float(), at::BFloat16());
  else if (yf) each(at::BFloat16(), at::BFloat16(), float());
  else each(at::BFloat16(), at::BFloat16(), at::BFloat16());
  return y;
}

// y [M, N] = x [M, K] @ wt for the experts, all in T (rows of x K apart); bf16 takes the pair path.
template <typename T>
void expert_rows(const T* x, int64_t M, int64_t K, const T* wt, int64_t ldw, T* y, int64_t N) {
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    if (bf16_dot_enabled() && K % 2 == 0) {
      gemm_rows_bf16(reinterpret_cast<const uint32_t*>(x), K / 2, M, K, wt, ldw, y, N);
      return;
    }
    std::vector<float> xf(M * K);
    for (int64_t i = 0; i < M * K; ++i) xf[i] = static_cast<float>(x[i]);
    gemm_rows(xf.data(), M, K, wt, ldw, y, N);
  } else {
    gemm_rows(x, M, K, wt, ldw, y, N);
  }
}

// The routed experts of a MoE layer (model/moe.py `grouped_experts`): for each expert, in id order,
// its tokens' rows (in token order) go through gate+up, silu(gate) * up and down, each product
// rounded to x's dtype as F.linear's would be; y[token] += that * the token's routing weight, in
// fp32. So every token's sum runs over its experts in id order, whatever the batch.
// x [N, D]; weights [N, k] fp32; ids [N, k] int64; gate_up [E, 2I, D] and down [E, D, I], each
// matrix column-major (rows of gate_up[e]^T and down[e]^T contiguous), in x's dtype, or both packed
// for the pair products (bf16: gate_up[e]^T and down[e]^T each as kernels.pack lays them out,
// [E, T, P, W, 2]). y [N, D] fp32.
template <typename T>
void experts(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& ids, const at::Tensor& gate_up,
             const at::Tensor& down, at::Tensor& y) {
  const bool packed = gate_up.dim() == 5;
  const int64_t N = x.size(0), D = x.size(1), k = ids.size(1), E = gate_up.size(0);
  const int64_t I = packed ? down.size(2) * 2 : down.size(2);
  // y [M, K'] = x [M, K'] (rows contiguous) @ expert e's gate_up (up = false) or down matrix.
  auto product = [&](bool up, int64_t e, const T* x, int64_t M, int64_t K, T* y, int64_t Ncols) {
    const at::Tensor& m = up ? gate_up : down;
    if constexpr (std::is_same_v<T, at::BFloat16>) {
      if (packed) {
        std::vector<uint32_t> store;
        const auto [xp, ldx] = pairs_of(x, M, K, K, 1, store);
        packed_product(xp, ldx, M, m.size(2), reinterpret_cast<const uint16_t*>(m.data_ptr<T>()) + e * m.stride(0),
                       m.size(1), m.size(3), y, Ncols);
        return;
      }
    }
    for (int64_t r0 = 0; r0 < M; r0 += kMaxRows)            // blocks of rows; a row's result is the same
      expert_rows(x + r0 * K, std::min<int64_t>(kMaxRows, M - r0), K, m.data_ptr<T>() + e * m.stride(0), m.stride(2),
                  y + r0 * Ncols, Ncols);
  };
  const T* xp = x.data_ptr<T>();
  const float* wp = weights.data_ptr<float>();
  const int64_t* ip = ids.data_ptr<int64_t>();
  float* yp = y.data_ptr<float>();
  std::vector<std::vector<std::pair<int64_t, float>>> rows(E);      // expert -> (token, weight)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = ip[n * ids.stride(0) + j * ids.stride(1)];
      TORCH_CHECK(e >= 0 && e < E, "moe_experts: expert id ", e, " out of range");
      rows[e].emplace_back(n, wp[n * weights.stride(0) + j * weights.stride(1)]);
    }
  // Each expert's rows, one after another in expert id order: expert e's start at first[e].
  std::vector<int64_t> first(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) first[e + 1] = first[e] + static_cast<int64_t>(rows[e].size());
  std::vector<T> h2(first[E] * D);
  const int64_t sx0 = x.stride(0), sx1 = x.stride(1);
  auto expert = [&](int64_t e) {       // h2 rows of expert e: down(silu(gate) * up)
    const int64_t c = first[e + 1] - first[e];
    std::vector<T> xe(c * D), h1(c * 2 * I), act(c * I);
    for (int64_t r = 0; r < c; ++r) {       // the expert's token rows, contiguous
      const T* xr = xp + rows[e][r].first * sx0;
      for (int64_t d = 0; d < D; ++d) xe[r * D + d] = xr[d * sx1];
    }
    product(true, e, xe.data(), c, D, h1.data(), 2 * I);
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t r = 0; r < c; ++r)
      for (int64_t i = 0; i < I; i += 16) {
        const __mmask16 m = tail16(I - i);
        const __m512 g = load16(h1.data() + r * 2 * I + i, m), u = load16(h1.data() + r * 2 * I + I + i, m);
        const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        store16(act.data() + r * I + i, _mm512_mul_ps(silu, u), m);   // rounded to x's dtype, as `.to(x.dtype)` is
      }
    T* h2e = h2.data() + first[e] * D;
    product(false, e, act.data(), c, I, h2e, D);
  };
  // Threads take whole experts (their products then run on one thread each) when each thread's
  // share is worth a parallel region: the busiest experts first, each to the least loaded thread.
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && first[E] * 3 * I * D >= threads * kParallelWork) {
    std::vector<int64_t> order(E);
    for (int64_t e = 0; e < E; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rows[a].size() > rows[b].size(); });
    std::vector<std::vector<int64_t>> share(threads);
    std::vector<int64_t> load(threads, 0);
    for (int64_t e : order) {
      if (rows[e].empty()) break;
      const int64_t t = std::min_element(load.begin(), load.end()) - load.begin();
      share[t].push_back(e);
      load[t] += static_cast<int64_t>(rows[e].size());
    }
    at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t e : share[t]) expert(e);
    });
  } else {
    for (int64_t e = 0; e < E; ++e)
      if (!rows[e].empty()) expert(e);
  }
  // y[token] += h2 row * its routing weight, experts in id order.
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = 0; r < first[e + 1] - first[e]; ++r) {
      float* yr = yp + rows[e][r].first * D;
      const T* hr = h2.data() + (first[e] + r) * D;
      const __m512 w = _mm512_set1_ps(rows[e][r].second);
      for (int64_t d = 0; d < D; d += 16) {
        const __mmask16 m = tail16(D - d);
        _mm512_mask_storeu_ps(yr + d, m, _mm512_fmadd_ps(load16(hr + d, m), w, _mm512_maskz_loadu_ps(m, yr + d)));
      }
    }
}

at::Tensor moe_experts(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& ids,
                       const at::Tensor& gate_up, const at::Tensor& down) {
  TORCH_CHECK(x.dim() == 2 && weights.dim() == 2 && ids.sizes() == weights.sizes() && ids.size(0) == x.size(0),
              "moe_experts: expected x [N, D], weights and ids [N, k]");
  if (gate_up.dim() == 5) {      // packed: gate_up^T [D, 2I] and down^T [I, D] per expert
    TORCH_CHECK(down.dim() == 5 && gate_up.size(0) == down.size(0) && x.scalar_type() == at::kBFloat16,
                "moe_experts: packed experts take bf16 x and packed gate_up and down, got ", gate_up.sizes(), " and ",
                down.sizes());
    packed_shape(gate_up, x.size(1), "moe_experts");
    const int64_t inter = down.size(2) * 2;
    TORCH_CHECK(gate_up.size(1) * gate_up.size(3) == 2 * inter && down.size(1) * down.size(3) == x.size(1),
                "moe_experts: packed gate_up ", gate_up.sizes(), " and down ", down.sizes(), " do not fit x ", x.sizes());
    packed_shape(down, inter, "moe_experts");
  } else {
    TORCH_CHECK(gate_up.dim() == 3 && down.dim() == 3 && gate_up.size(0) == down.size(0) &&
                gate_up.size(2) == x.size(1) && down.size(1) == x.size(1) && gate_up.size(1) == 2 * down.size(2),
                "moe_experts: expected gate_up [E, 2I, D] and down [E, D, I], got ", gate_up.sizes(), " and ", down.sizes());
    TORCH_CHECK(gate_up.stride(1) == 1 && down.stride(1) == 1, "moe_experts: expert matrices must be column-major");
  }
  TORCH_CHECK(x.scalar_type() == gate_up.scalar_type() && x.scalar_type() == down.scalar_type() &&
              (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "moe_experts: x and the experts in one dtype, float32 or bfloat16");
  TORCH_CHECK(weights.scalar_type() == at::kFloat && ids.scalar_type() == at::kLong,
              "moe_experts: float32 weights and int64 ids");
  at::Tensor y = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kFloat));
  std::memset(y.data_ptr<float>(), 0, y.numel() * sizeof(float));   // (at::zeros dispatches a fill: ~3x the time)
  if (x.scalar_type() == at::kFloat) experts<float>(x, weights, ids, gate_up, down, y);
  else experts<at::BFloat16>(x, weights, ids, gate_up, down, y);
  return y;
}

at::Tensor small_gemm(const at::Tensor& x, const at::Tensor& wt) { return matmul<false>(x, wt, std::nullopt); }
at::Tensor small_gemm_fp32(const at::Tensor& x, const at::Tensor& wt) { return matmul<false>(x, wt, at::kFloat); }
at::Tensor packed_gemm(const at::Tensor& x, const at::Tensor& wp) { return packed_matmul(x, wp, at::kBFloat16); }
at::Tensor packed_gemm_fp32(const at::Tensor& x, const at::Tensor& wp) { return packed_matmul(x, wp, at::kFloat); }
bool bf16_dot() { return bf16_dot_enabled(); }
// How many threads a parallel region of these kernels really runs on (1 if the build has no OpenMP).
int64_t parallel_threads() {
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) { seen |= uint64_t{1} << (at::get_thread_num() % 64); });
  return __builtin_popcountll(seen.load());
}
at::Tensor small_gemm_nt(const at::Tensor& x, const at::Tensor& w) { return matmul<true>(x, w, std::nullopt); }

}  // namespace

TORCH_LIBRARY(deepseek_kernels, m) {
  // (Separate ops, not an optional dtype argument: inductor's C++ wrapper passes no defaults.)
  m.def("small_gemm(Tensor x, Tensor wt) -> Tensor");
  m.def("small_gemm_fp32(Tensor x, Tensor wt) -> Tensor");
  m.def("small_gemm_nt(Tensor x, Tensor w) -> Tensor");
  m.def("packed_gemm(Tensor x, Tensor wp) -> Tensor");
  m.def("packed_gemm_fp32(Tensor x, Tensor wp) -> Tensor");
  m.def("moe_experts(Tensor x, Tensor weights, Tensor ids, Tensor gate_up, Tensor down) -> Tensor");
  m.def("bf16_dot() -> bool", &bf16_dot);
  m.def("parallel_threads() -> int", &parallel_threads);
}
TORCH_LIBRARY_IMPL(deepseek_kernels, CPU, m) {
  m.impl("small_gemm", &small_gemm);
  m.impl("small_gemm_fp32", &small_gemm_fp32);
  m.impl("small_gemm_nt", &small_gemm_nt);
  m.impl("packed_gemm", &packed_gemm);
  m.impl("packed_gemm_fp32", &packed_gemm_fp32);
  m.impl("moe_experts", &moe_experts);
}
