// 2-D convolution for the CPU backend (NCHW input, OIHW filters, stride, zero padding). Float on
// AVX2 runs direct register-blocked kernels (no im2col matrix); double, other ISAs and the
// shapes those kernels do not cover run im2col + OpenBLAS gemm.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kernels/cpu.h"
#include "kernels/parallel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define RF_CONV_AVX2 1
#else
#define RF_CONV_AVX2 0
#endif

namespace rf::kernels::cpu {

namespace {

void check_geom(const ConvGeom& g) { check_conv_geom(g); }

// 64-byte alignment keeps each 16-float row of the packed operands inside one cache line.
template <class T>
struct AlignedAlloc {
  using value_type = T;
  AlignedAlloc() = default;
  template <class U>
  AlignedAlloc(const AlignedAlloc<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const AlignedAlloc<U>&) const { return true; }
};

// Grow-only per-thread scratch, so steady-state training never allocates. Tag separates buffers
// that are live at the same time.
template <class T, int Tag>
T* scratch(i64 n) {
  thread_local std::vector<T, AlignedAlloc<T>> buf;
  if (static_cast<i64>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// ---------------------------------------------------------------------------------------------
// Portable path: im2col / col2im around gemm.

// col[(c R + r) S + s][p Q + q] = x[c][p sh - ph + r][q sw - pw + s], zero outside the image.
template <class T>
void im2col(const T* x, T* col, const ConvGeom& g) {
  const i64 PQ = g.P * g.Q;
  for (i64 c = 0; c < g.C; ++c)
    for (i64 r = 0; r < g.R; ++r)
      for (i64 s = 0; s < g.S; ++s) {
        T* dst = col + ((c * g.R + r) * g.S + s) * PQ;
        // Output columns whose input column lies inside the image: q in [q0, q1).
        const i64 off = s - g.pad_w;
        const i64 q1 = g.W - off > 0 ? std::min(g.Q, (g.W - off - 1) / g.stride_w + 1) : 0;
        const i64 q0 = std::min(q1, off >= 0 ? i64(0) : (-off + g.stride_w - 1) / g.stride_w);
        for (i64 p = 0; p < g.P; ++p, dst += g.Q) {
          const i64 ih = p * g.stride_h - g.pad_h + r;
          if (ih < 0 || ih >= g.H) {
            std::fill(dst, dst + g.Q, T(0));
            continue;
          }
          const T* src = x + (c * g.H + ih) * g.W + off;
          std::fill(dst, dst + q0, T(0));
          if (g.stride_w == 1) {
            std::memcpy(dst + q0, src + q0, (q1 - q0) * sizeof(T));
          } else {
            for (i64 q = q0; q < q1; ++q) dst[q] = src[q * g.stride_w];
          }
          std::fill(dst + q1, dst + g.Q, T(0));
        }
      }
}

// dx[c][ih][iw] += col[...]: the adjoint of im2col (overlapping windows accumulate).
template <class T>
void col2im(const T* col, T* dx, const ConvGeom& g) {
  const i64 PQ = g.P * g.Q;
  for (i64 c = 0; c < g.C; ++c)
    for (i64 r = 0; r < g.R; ++r)
      for (i64 s = 0; s < g.S; ++s) {
        const T* src = col + ((c * g.R + r) * g.S + s) * PQ;
        const i64 off = s - g.pad_w;
        const i64 q1 = g.W - off > 0 ? std::min(g.Q, (g.W - off - 1) / g.stride_w + 1) : 0;
        const i64 q0 = std::min(q1, off >= 0 ? i64(0) : (-off + g.stride_w - 1) / g.stride_w);
        for (i64 p = 0; p < g.P; ++p, src += g.Q) {
          const i64 ih = p * g.stride_h - g.pad_h + r;
          if (ih < 0 || ih >= g.H) continue;
          T* dst = dx + (c * g.H + ih) * g.W + off;
          if (g.stride_w == 1) {
            for (i64 q = q0; q < q1; ++q) dst[q] += src[q];
          } else {
            for (i64 q = q0; q < q1; ++q) dst[q * g.stride_w] += src[q];
          }
        }
      }
}

// A 1x1, stride-1, unpadded convolution's column matrix is the image itself.
bool im2col_is_identity(const ConvGeom& g) {
  return g.R == 1 && g.S == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0;
}

// The im2col paths loop over images serially: each gemm is big enough for OpenBLAS to thread
// it, and calling a threaded OpenBLAS from several OpenMP threads at once oversubscribes the
// cores (measured: 5x slower with 2+2 threads on 2 cores).
template <class T>
void conv2d_im2col(const T* x, const T* w, T* y, const ConvGeom& g) {
  const i64 PQ = g.P * g.Q, CRS = g.C * g.R * g.S, CHW = g.C * g.H * g.W;
  const bool identity = im2col_is_identity(g);
  for (i64 n = 0; n < g.N; ++n) {
    const T* col = x + n * CHW;
    if (!identity) {
      T* buf = scratch<T, 0>(CRS * PQ);
      im2col(x + n * CHW, buf, g);
      col = buf;
    }
    gemm<T>(false, false, g.K, PQ, CRS, T(1), w, CRS, col, PQ, T(0), y + n * g.K * PQ, PQ);
  }
}

template <class T>
void conv2d_grad_input_im2col(const T* dy, const T* w, T* dx, const ConvGeom& g) {
  const i64 PQ = g.P * g.Q, CRS = g.C * g.R * g.S, CHW = g.C * g.H * g.W;
  for (i64 n = 0; n < g.N; ++n) {
    if (im2col_is_identity(g)) {
      gemm<T>(true, false, CRS, PQ, g.K, T(1), w, CRS, dy + n * g.K * PQ, PQ, T(0), dx + n * CHW, PQ);
      continue;
    }
    T* col = scratch<T, 0>(CRS * PQ);
    gemm<T>(true, false, CRS, PQ, g.K, T(1), w, CRS, dy + n * g.K * PQ, PQ, T(0), col, PQ);
    std::fill(dx + n * CHW, dx + (n + 1) * CHW, T(0));
    col2im(col, dx + n * CHW, g);
  }
}

template <class T>
void conv2d_grad_filter_im2col(const T* x, const T* dy, T* dw, const ConvGeom& g) {
  const i64 PQ = g.P * g.Q, CRS = g.C * g.R * g.S, CHW = g.C * g.H * g.W;
  if (g.N == 0) {
    std::fill(dw, dw + g.K * CRS, T(0));
    return;
  }
  const bool identity = im2col_is_identity(g);
  T* buf = identity ? nullptr : scratch<T, 0>(CRS * PQ);
  for (i64 n = 0; n < g.N; ++n) {
    const T* col = x + n * CHW;
    if (!identity) {
      im2col(x + n * CHW, buf, g);
      col = buf;
    }
    gemm<T>(false, true, g.K, CRS, PQ, T(1), dy + n * g.K * PQ, PQ, col, PQ, n == 0 ? T(0) : T(1), dw, CRS);
  }
}

#if RF_CONV_AVX2
// ---------------------------------------------------------------------------------------------
// AVX2 direct path (float). All three convolutions are one "gather-gemm":
//   out[j][k] (+)= sum_t a[t][k] * b0[joff[j] + toff[t]]
// with k vectorized and b read by broadcasts from a zero-padded image, so no im2col matrix is
// ever written. Forward: j = output pixel, t = (c,r,s), a = the filters. grad_filter: j = (c,r,s),
// t = output pixel, a = dY. grad_input (stride 1): the forward of dY with flipped filters whose
// in/out channels are swapped.
//
// a is packed in column blocks: lanes [k0, k0 + w) form a [T][w] row-major array at a + k0 T,
// with w = 16, except 8 for a last block when the lane count ka (K rounded up to 8) is an odd
// multiple of 8. The kernel then streams a contiguously (measured 4-12% faster on the CNN's
// second layer than reading 16-lane slices of [T][ka] rows).

i64 round8(i64 v) { return (v + 7) / 8 * 8; }

// out[j][8v + l] (+)= sum_t a[t lda + 8v + l] * b[j][toff[t]] for j < NP, v < NV. NP x NV
// accumulators (12 for 6x2) stay in registers: 12 FMAs per 2 vector loads and 6 broadcasts.
template <int NP, int NV>
inline void micro(const float* a, i64 lda, const float* const* b, const int32_t* toff, i64 T, float* out,
                  i64 ldo, bool accumulate) {
  __m256 acc[NP][NV];
  for (int j = 0; j < NP; ++j)
    for (int v = 0; v < NV; ++v) acc[j][v] = accumulate ? _mm256_loadu_ps(out + j * ldo + 8 * v) : _mm256_setzero_ps();
  const float* bp[NP];
  for (int j = 0; j < NP; ++j) bp[j] = b[j];
  for (i64 t = 0; t < T; ++t, a += lda) {
    const i64 o = toff[t];
    __m256 av[NV];
    for (int v = 0; v < NV; ++v) av[v] = _mm256_load_ps(a + 8 * v);
    for (int j = 0; j < NP; ++j) {
      const __m256 bj = _mm256_broadcast_ss(bp[j] + o);
      for (int v = 0; v < NV; ++v) acc[j][v] = _mm256_fmadd_ps(av[v], bj, acc[j][v]);
    }
  }
  for (int j = 0; j < NP; ++j)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + j * ldo + 8 * v, acc[j][v]);
}

// One column block of the gather-gemm (a: its packed [T][8 NV] array; out: its first lane, rows
// ldo apart) over all J rows, NP rows at a time. A short last group runs on a stack tile with
// its missing rows aliased to a real one.
template <int NP, int NV>
void gather_gemm_block(const float* a, const float* b0, const int32_t* joff, i64 J, const int32_t* toff, i64 T,
                       float* out, i64 ldo, bool accumulate) {
  const float* bp[NP];
  for (i64 j0 = 0; j0 < J; j0 += NP) {
    const i64 nj = std::min<i64>(NP, J - j0);
    for (int i = 0; i < NP; ++i) bp[i] = b0 + joff[j0 + std::min<i64>(i, nj - 1)];
    float* o = out + j0 * ldo;
    if (nj == NP) {
      micro<NP, NV>(a, 8 * NV, bp, toff, T, o, ldo, accumulate);
    } else {
      alignas(32) float tile[NP * 8 * NV];
      if (accumulate)
        for (i64 i = 0; i < nj; ++i) std::memcpy(tile + i * 8 * NV, o + i * ldo, sizeof(float) * 8 * NV);
      micro<NP, NV>(a, 8 * NV, bp, toff, T, tile, 8 * NV, accumulate);
      for (i64 i = 0; i < nj; ++i) std::memcpy(o + i * ldo, tile + i * 8 * NV, sizeof(float) * 8 * NV);
    }
  }
}

// Lane width of the packed block that starts at lane k0 (see the layout above).
inline i64 block_width(i64 ka, i64 k0) { return ka - k0 >= 16 ? 16 : 8; }

// out[J][ka] (+)= gather-gemm with a packed; ka is a multiple of 8, a and out 32-byte aligned.
void gather_gemm(const float* a, i64 ka, const float* b0, const int32_t* joff, i64 J, const int32_t* toff, i64 T,
                 float* out, bool accumulate) {
  for (i64 k0 = 0; k0 < ka; k0 += block_width(ka, k0)) {
    if (block_width(ka, k0) == 16)
      gather_gemm_block<6, 2>(a + k0 * T, b0, joff, J, toff, T, out + k0, ka, accumulate);
    else
      gather_gemm_block<12, 1>(a + k0 * T, b0, joff, J, toff, T, out + k0, ka, accumulate);
  }
}

// The identity epilogue of the transposes below: the value stored in d's row i, as computed.
struct NoEpilogue {
  __m256 operator()(__m256 v, i64) const { return v; }
  float operator()(float v, i64) const { return v; }
};

// conv2d_bias's epilogue: + b[row], then ReLU when asked (max(v, 0) maps NaN and -0 to +0, as
// ReluF's v > 0 ? v : 0 does), the same two operations bias_add(_relu) would run after.
struct BiasEpilogue {
  const float* b;
  bool relu;
  __m256 operator()(__m256 v, i64 row) const {
    v = _mm256_add_ps(v, _mm256_set1_ps(b[row]));
    return relu ? _mm256_max_ps(v, _mm256_setzero_ps()) : v;
  }
  float operator()(float v, i64 row) const {
    v += b[row];
    return relu ? (v > 0.f ? v : 0.f) : v;
  }
};

// d rows are source columns c0 + 0..7: epi(v, c0 + i) is what row i stores.
template <class Epi>
inline void transpose8x8(const float* s, i64 lds, float* d, i64 ldd, i64 c0, const Epi& epi) {
  __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + lds), r2 = _mm256_loadu_ps(s + 2 * lds),
         r3 = _mm256_loadu_ps(s + 3 * lds), r4 = _mm256_loadu_ps(s + 4 * lds), r5 = _mm256_loadu_ps(s + 5 * lds),
         r6 = _mm256_loadu_ps(s + 6 * lds), r7 = _mm256_loadu_ps(s + 7 * lds);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
         t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
         t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  r0 = _mm256_shuffle_ps(t0, t2, 0x44), r1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  r2 = _mm256_shuffle_ps(t1, t3, 0x44), r3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  r4 = _mm256_shuffle_ps(t4, t6, 0x44), r5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  r6 = _mm256_shuffle_ps(t5, t7, 0x44), r7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(d, epi(_mm256_permute2f128_ps(r0, r4, 0x20), c0));
  _mm256_storeu_ps(d + ldd, epi(_mm256_permute2f128_ps(r1, r5, 0x20), c0 + 1));
  _mm256_storeu_ps(d + 2 * ldd, epi(_mm256_permute2f128_ps(r2, r6, 0x20), c0 + 2));
  _mm256_storeu_ps(d + 3 * ldd, epi(_mm256_permute2f128_ps(r3, r7, 0x20), c0 + 3));
  _mm256_storeu_ps(d + 4 * ldd, epi(_mm256_permute2f128_ps(r0, r4, 0x31), c0 + 4));
  _mm256_storeu_ps(d + 5 * ldd, epi(_mm256_permute2f128_ps(r1, r5, 0x31), c0 + 5));
  _mm256_storeu_ps(d + 6 * ldd, epi(_mm256_permute2f128_ps(r2, r6, 0x31), c0 + 6));
  _mm256_storeu_ps(d + 7 * ldd, epi(_mm256_permute2f128_ps(r3, r7, 0x31), c0 + 7));
}

// d[c][r] = epi(s[r][c], c) for r < rows, c < cols.
template <class Epi = NoEpilogue>
void transpose(const float* s, i64 rows, i64 cols, i64 lds, float* d, i64 ldd, const Epi& epi = {}) {
  i64 r = 0;
  for (; r + 8 <= rows; r += 8) {
    i64 c = 0;
    for (; c + 8 <= cols; c += 8) transpose8x8(s + r * lds + c, lds, d + c * ldd + r, ldd, c, epi);
    for (; c < cols; ++c)
      for (i64 i = 0; i < 8; ++i) d[c * ldd + r + i] = epi(s[(r + i) * lds + c], c);
  }
  for (; r < rows; ++r)
    for (i64 c = 0; c < cols; ++c) d[c * ldd + r] = epi(s[r * lds + c], c);
}

// a (packed as above, ka = round8(K) lanes) from src[k][t] (rows lds apart): a[t][k] = src[k][t],
// zero in the lanes k >= K.
void pack_transposed(const float* src, i64 K, i64 T, i64 lds, float* a) {
  const i64 ka = round8(K);
  for (i64 k0 = 0; k0 < ka; k0 += block_width(ka, k0)) {
    const i64 bw = block_width(ka, k0), rows = std::min(bw, K - k0);
    float* blk = a + k0 * T;
    transpose(src + k0 * lds, rows, T, lds, blk, bw);
    if (rows < bw)
      for (i64 t = 0; t < T; ++t) std::fill(blk + t * bw + rows, blk + (t + 1) * bw, 0.f);
  }
}

// xp[c][Hp][Wp] = x[c][H][W] placed at (ph, pw) in zeros.
void pad_image(const float* x, i64 C, i64 H, i64 W, i64 ph, i64 pw, float* xp, i64 Hp, i64 Wp) {
  for (i64 c = 0; c < C; ++c) {
    float* dc = xp + c * Hp * Wp;
    std::fill(dc, dc + ph * Wp, 0.f);
    for (i64 h = 0; h < H; ++h) {
      float* d = dc + (ph + h) * Wp;
      std::fill(d, d + pw, 0.f);
      std::memcpy(d + pw, x + (c * H + h) * W, sizeof(float) * W);
      std::fill(d + pw + W, d + Wp, 0.f);
    }
    std::fill(dc + (ph + H) * Wp, dc + Hp * Wp, 0.f);
  }
}

// Offsets into a padded [C][Hp][Wp] image: taps (c,r,s) and output pixels (p,q) with strides.
void tap_offsets(i64 C, i64 R, i64 S, i64 Hp, i64 Wp, int32_t* off) {
  for (i64 c = 0; c < C; ++c)
    for (i64 r = 0; r < R; ++r)
      for (i64 s = 0; s < S; ++s) *off++ = static_cast<int32_t>((c * Hp + r) * Wp + s);
}
void pixel_offsets(i64 P, i64 Q, i64 sh, i64 sw, i64 Wp, int32_t* off) {
  for (i64 p = 0; p < P; ++p)
    for (i64 q = 0; q < Q; ++q) *off++ = static_cast<int32_t>(p * sh * Wp + q * sw);
}

// Int32 offsets and the padded images must fit; beyond that the portable path runs. The
// callers also require the vectorized channel count (K, or C for grad_input) to be >= 8: below
// that most of each 8-lane vector would be zero padding and im2col + gemm is faster.
bool direct_ok(const ConvGeom& g) {
  const i64 big = i64(1) << 30;
  return g.C * (g.H + 2 * g.pad_h) * (g.W + 2 * g.pad_w) < big && g.K * (g.P + 2 * g.R) * (g.Q + 2 * g.S) < big;
}

// bias: null, or conv2d_bias's bias (then ReLU when relu), added as the result is transposed out.
void conv2d_direct(const float* x, const float* w, float* y, const ConvGeom& g, const float* bias = nullptr,
                   bool relu = false) {
  const i64 CRS = g.C * g.R * g.S, PQ = g.P * g.Q, CHW = g.C * g.H * g.W, Kp = round8(g.K);
  const i64 Hp = g.H + 2 * g.pad_h, Wp = g.W + 2 * g.pad_w;
  float* wt = scratch<float, 1>(CRS * Kp);  // a[crs][k] = w[k][crs]
  pack_transposed(w, g.K, CRS, CRS, wt);
  int32_t* toff = scratch<int32_t, 2>(CRS);
  int32_t* joff = scratch<int32_t, 3>(PQ);
  tap_offsets(g.C, g.R, g.S, Hp, Wp, toff);
  pixel_offsets(g.P, g.Q, g.stride_h, g.stride_w, Wp, joff);
  // Images are independent outputs; each is far above the cost of starting a thread team.
  parallel_range(g.N, 1, [&](i64 n0, i64 n1) {
    float* xp = scratch<float, 4>(g.C * Hp * Wp);
    float* yt = scratch<float, 5>(PQ * Kp);
    for (i64 n = n0; n < n1; ++n) {
      pad_image(x + n * CHW, g.C, g.H, g.W, g.pad_h, g.pad_w, xp, Hp, Wp);
      gather_gemm(wt, Kp, xp, joff, PQ, toff, CRS, yt, false);
      if (bias)
        transpose(yt, PQ, g.K, Kp, y + n * g.K * PQ, PQ, BiasEpilogue{bias, relu});
      else
        transpose(yt, PQ, g.K, Kp, y + n * g.K * PQ, PQ);
    }
  });
}

// Stride 1 and pad < filter size only: dx is then the stride-1 forward of dY padded by
// R-1-pad with the filters flipped and their in/out channels swapped.
void conv2d_grad_input_direct(const float* dy, const float* w, float* dx, const ConvGeom& g) {
  const i64 KRS = g.K * g.R * g.S, RS = g.R * g.S, PQ = g.P * g.Q, HW = g.H * g.W, Cp = round8(g.C);
  const i64 ph = g.R - 1 - g.pad_h, pw = g.S - 1 - g.pad_w, Pp = g.P + 2 * ph, Qp = g.Q + 2 * pw;
  // a[(k, r', s')][c] = w[k][c][R-1-r'][S-1-s'], packed.
  float* wt = scratch<float, 1>(KRS * Cp);
  for (i64 c0 = 0; c0 < Cp; c0 += block_width(Cp, c0)) {
    const i64 bw = block_width(Cp, c0);
    float* blk = wt + c0 * KRS;
    for (i64 k = 0; k < g.K; ++k)
      for (i64 rs = 0; rs < RS; ++rs) {
        float* d = blk + (k * RS + rs) * bw;
        for (i64 l = 0; l < bw; ++l)
          d[l] = c0 + l < g.C ? w[(k * g.C + c0 + l) * RS + (RS - 1 - rs)] : 0.f;
      }
  }
  int32_t* toff = scratch<int32_t, 2>(KRS);
  int32_t* joff = scratch<int32_t, 3>(HW);
  tap_offsets(g.K, g.R, g.S, Pp, Qp, toff);
  pixel_offsets(g.H, g.W, 1, 1, Qp, joff);
  parallel_range(g.N, 1, [&](i64 n0, i64 n1) {
    float* dyp = scratch<float, 4>(g.K * Pp * Qp);
    float* dxt = scratch<float, 5>(HW * Cp);
    for (i64 n = n0; n < n1; ++n) {
      pad_image(dy + n * g.K * PQ, g.K, g.P, g.Q, ph, pw, dyp, Pp, Qp);
      gather_gemm(wt, Cp, dyp, joff, HW, toff, KRS, dxt, false);
      transpose(dxt, HW, g.C, Cp, dx + n * g.C * HW, HW);
    }
  });
}

void conv2d_grad_filter_direct(const float* x, const float* dy, float* dw, const ConvGeom& g) {
  const i64 CRS = g.C * g.R * g.S, PQ = g.P * g.Q, CHW = g.C * g.H * g.W, Kp = round8(g.K);
  const i64 Hp = g.H + 2 * g.pad_h, Wp = g.W + 2 * g.pad_w, XP = g.C * Hp * Wp, DYT = PQ * Kp;
  int32_t* joff = scratch<int32_t, 2>(CRS);
  int32_t* toff = scratch<int32_t, 3>(PQ);
  tap_offsets(g.C, g.R, g.S, Hp, Wp, joff);
  pixel_offsets(g.P, g.Q, g.stride_h, g.stride_w, Wp, toff);
  float* acc = scratch<float, 1>(CRS * Kp);  // dW^T[crs][k]
  std::fill(acc, acc + CRS * Kp, 0.f);
  // Threads split the taps (the outputs), never the images: every dW element then sums the
  // images in the same order whatever the thread count. The images are prepared a chunk at a
  // time so that the threads share one padded copy of each.
  const int nt = omp_in_parallel() ? 1 : max_threads();
  const i64 chunk = nt > 1 ? std::min<i64>(g.N, 2 * nt) : 1;
  float* xps = scratch<float, 4>(chunk * XP);
  float* dyts = scratch<float, 5>(chunk * DYT);
  for (i64 c0 = 0; c0 < g.N; c0 += chunk) {
    const i64 nb = std::min(chunk, g.N - c0);
    parallel_range(nb, 1, [&](i64 b0, i64 b1) {
      for (i64 b = b0; b < b1; ++b) {
        pad_image(x + (c0 + b) * CHW, g.C, g.H, g.W, g.pad_h, g.pad_w, xps + b * XP, Hp, Wp);
        pack_transposed(dy + (c0 + b) * g.K * PQ, g.K, PQ, PQ, dyts + b * DYT);  // a[pixel][k]
      }
    });
    parallel_range(CRS, 24, [&](i64 j0, i64 j1) {
      for (i64 b = 0; b < nb; ++b)
        gather_gemm(dyts + b * DYT, Kp, xps + b * XP, joff + j0, j1 - j0, toff, PQ, acc + j0 * Kp, true);
    });
  }
  transpose(acc, CRS, g.K, Kp, dw, CRS);
}
#endif  // RF_CONV_AVX2

}  // namespace

template <class T>
void conv2d(const T* x, const T* w, T* y, const ConvGeom& g) {
  check_geom(g);
#if RF_CONV_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (direct_ok(g) && g.K >= 8) return conv2d_direct(x, w, y, g);
  }
#endif
  conv2d_im2col(x, w, y, g);
}

template <class T>
void conv2d_bias(const T* x, const T* w, const T* b, bool relu, T* y, const ConvGeom& g) {
  check_geom(g);
#if RF_CONV_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (direct_ok(g) && g.K >= 8) return conv2d_direct(x, w, y, g, b, relu);
  }
#endif
  conv2d_im2col(x, w, y, g);
  if (relu)
    bias_add_relu(y, b, y, g.N, g.K, g.P * g.Q);
  else
    bias_add(y, b, y, g.N, g.K, g.P * g.Q);
}

template <class T>
void conv2d_grad_input(const T* dy, const T* w, T* dx, const ConvGeom& g) {
  check_geom(g);
#if RF_CONV_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (direct_ok(g) && g.C >= 8 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h < g.R && g.pad_w < g.S)
      return conv2d_grad_input_direct(dy, w, dx, g);
  }
#endif
  conv2d_grad_input_im2col(dy, w, dx, g);
}

template <class T>
void conv2d_grad_filter(const T* x, const T* dy, T* dw, const ConvGeom& g) {
  check_geom(g);
#if RF_CONV_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (direct_ok(g) && g.K >= 8) return conv2d_grad_filter_direct(x, dy, dw, g);
  }
#endif
  conv2d_grad_filter_im2col(x, dy, dw, g);
}

template void conv2d<float>(const float*, const float*, float*, const ConvGeom&);
template void conv2d<double>(const double*, const double*, double*, const ConvGeom&);
template void conv2d_bias<float>(const float*, const float*, const float*, bool, float*, const ConvGeom&);
template void conv2d_bias<double>(const double*, const double*, const double*, bool, double*, const ConvGeom&);
template void conv2d_grad_input<float>(const float*, const float*, float*, const ConvGeom&);
template void conv2d_grad_input<double>(const double*, const double*, double*, const ConvGeom&);
template void conv2d_grad_filter<float>(const float*, const float*, float*, const ConvGeom&);
template void conv2d_grad_filter<double>(const double*, const double*, double*, const ConvGeom&);

}  // namespace rf::kernels::cpu
