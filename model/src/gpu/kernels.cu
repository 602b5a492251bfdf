// glmfleet GPU kernels: compiled at run time by NVRTC for the device in hand (sm_89 or newer: FP8 mma).
// No CUDA headers are included (NVRTC ships none of ours): bf16 and e4m3 are handled as raw bits with
// PTX conversions. Every kernel has a plain-burn twin on the CPU and a parity test (model/tests/gpu.rs).
//
// Conventions: activations and the residual stream are f32; KV cache bf16 [slots, kv_heads, head_dim];
// GEMM operands are bytes (bf16 or e4m3), weights [N, Kp] row-major with K padded to 16 elements.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define FMT_F32 0
#define FMT_BF16 1
#define FMT_FP8 2
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float bf2f(u16 v) { return __uint_as_float(((u32)v) << 16); }

__device__ __forceinline__ u16 f2bf(float f) {
  u32 u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return (u16)(u >> 16);
}

// Round to nearest even, saturating at +-448 (as torch casts to float8_e4m3fn).
__device__ __forceinline__ u8 f2e4m3(float x) {
  u16 r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(x));
  return (u8)(r & 0xff);
}

__device__ __forceinline__ float e4m3_to_f(u8 b) {
  u16 in = b;
  u32 h2;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(in));
  u16 h = (u16)(h2 & 0xffff);
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Arg-max across a warp; ties go to the lower index.
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, v, o);
    int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ov > v || (ov == v && oi < i)) {
      v = ov;
      i = oi;
    }
  }
}

__device__ float block_sum(float v, float* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = 0.f;
  for (int i = 0; i < nw; i++) r += sh[i];
  return r;
}

__device__ float block_max(float v, float* sh) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = sh[0];
  for (int i = 1; i < nw; i++) r = fmaxf(r, sh[i]);
  return r;
}

__device__ __forceinline__ u64 splitmix(u64 z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in (0, 1) from a counter: 24 random bits, centred.
__device__ __forceinline__ float uniform01(u64 seed, u64 i) {
  u64 h = splitmix(seed ^ splitmix(i));
  return ((float)(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// ---------------------------------------------------------------------------------------------
// Embedding: x[t] = table[tokens[t]] (bf16 -> f32).
extern "C" __global__ void embed_rows(const u16* table, const int* tokens, float* x, int H) {
  int t = blockIdx.x;
  const u16* row = table + (size_t)tokens[t] * H;
  float* o = x + (size_t)t * H;
#pragma unroll 4
  for (int j = threadIdx.x; j < H; j += blockDim.x) o[j] = bf2f(row[j]);
}

// ---------------------------------------------------------------------------------------------
// MTP draft input (glm.md §3.2): out[t] = [RMSNorm(embed[tokens[t]]) * enorm | RMSNorm(h) * hnorm],
// f32 with row stride 2H, where h is verified[src[t]] for src[t] >= 0 (the target's final-normed
// hidden state) and kept[-src[t] - 1] otherwise (a row kept from an earlier step).
extern "C" __global__ void mtp_input(const u16* embed, const int* tokens, const float* verified,
                                     const float* kept, const int* src, const float* enorm,
                                     const float* hnorm, float eps, float* out, int H) {
  __shared__ float sh[32];
  int t = blockIdx.x;
  const u16* er = embed + (size_t)tokens[t] * H;
  int s = src[t];
  const float* hr = s >= 0 ? verified + (size_t)s * H : kept + (size_t)(-s - 1) * H;
  float se = 0.f, sv = 0.f;
#pragma unroll 4
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    float e = bf2f(er[j]), v = hr[j];
    se += e * e;
    sv += v * v;
  }
  se = block_sum(se, sh);
  sv = block_sum(sv, sh);
  float re = rsqrtf(se / (float)H + eps), rv = rsqrtf(sv / (float)H + eps);
  float* o = out + (size_t)t * 2 * H;
#pragma unroll 4
  for (int j = threadIdx.x; j < H; j += blockDim.x) {
    o[j] = bf2f(er[j]) * re * enorm[j];
    o[H + j] = hr[j] * rv * hnorm[j];
  }
}

// Row copies for the MTP's kept hidden states: dst[dst_rows[i]] = a[src[i]] for src[i] >= 0, else
// b[-src[i] - 1]; one block per row.
extern "C" __global__ void copy_rows(const float* a, const float* b, const int* src, float* dst,
                                     const int* dst_rows, int H) {
  int i = blockIdx.x, s = src[i];
  const float* r = s >= 0 ? a + (size_t)s * H : b + (size_t)(-s - 1) * H;
  float* o = dst + (size_t)dst_rows[i] * H;
#pragma unroll 4
  for (int j = threadIdx.x; j < H; j += blockDim.x) o[j] = r[j];
}

// ---------------------------------------------------------------------------------------------
// Row preparation for a GEMM (or the router): one block per output row r, reading input row
// rows ? rows[r] : r. in_mode 0: x; 1: RMSNorm(x) * w; 2: silu(x[j]) * x[j + up_off].
// Output fmt F32 / BF16 / FP8 with one scale per `group` columns (scales[r * ngroups + g],
// s = max|v| / 448 clamped at 1e-12, q = e4m3(v / s)). Columns K..out_ld are zeroed.
extern "C" __global__ void prep_rows(const float* x, int ldx, const int* rows, int K, int in_mode,
                                     const float* w, float eps, int up_off, int fmt, void* out,
                                     int out_ld, float* scales, int group) {
  __shared__ float sh[32];
  int r = blockIdx.x;
  int src = rows ? rows[r] : r;
  const float* xr = x + (size_t)src * ldx;
  float rs = 1.f;
  if (in_mode == 1) {
    float ss = 0.f;
#pragma unroll 4
    for (int j = threadIdx.x; j < K; j += blockDim.x) {
      float v = xr[j];
      ss += v * v;
    }
    ss = block_sum(ss, sh);
    rs = rsqrtf(ss / (float)K + eps);
  }
#define PREP_VAL(j) \
  (in_mode == 1 ? xr[j] * rs * w[j] : (in_mode == 2 ? silu(xr[j]) * xr[(j) + up_off] : xr[j]))
  if (fmt == FMT_F32) {
    float* o = (float*)out + (size_t)r * out_ld;
#pragma unroll 4
    for (int j = threadIdx.x; j < out_ld; j += blockDim.x) o[j] = j < K ? PREP_VAL(j) : 0.f;
    return;
  }
  if (fmt == FMT_BF16) {
    u16* o = (u16*)out + (size_t)r * out_ld;
#pragma unroll 4
    for (int j = threadIdx.x; j < out_ld; j += blockDim.x) o[j] = j < K ? f2bf(PREP_VAL(j)) : 0;
    return;
  }
  u8* o = (u8*)out + (size_t)r * out_ld;
  int ng = (K + group - 1) / group;
  if (ng == 1) {  // one scale per row: the whole block finds the row's max
    float am = 0.f;
#pragma unroll 4
    for (int j = threadIdx.x; j < K; j += blockDim.x) am = fmaxf(am, fabsf(PREP_VAL(j)));
    am = block_max(am, sh);
    float s = fmaxf(am / 448.0f, 1e-12f);
#pragma unroll 4
    for (int j = threadIdx.x; j < K; j += blockDim.x) o[j] = f2e4m3(PREP_VAL(j) / s);
    if (threadIdx.x == 0) scales[r] = s;
    for (int j = K + threadIdx.x; j < out_ld; j += blockDim.x) o[j] = 0;
    return;
  }
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int g = wid; g < ng; g += nw) {
    int c0 = g * group, c1 = min(c0 + group, K);
    float am = 0.f;
    for (int j = c0 + lane; j < c1; j += 32) am = fmaxf(am, fabsf(PREP_VAL(j)));
    am = warp_max(am);
    float s = fmaxf(am / 448.0f, 1e-12f);
    for (int j = c0 + lane; j < c1; j += 32) o[j] = f2e4m3(PREP_VAL(j) / s);
    if (lane == 0) scales[(size_t)r * ng + g] = s;
  }
  for (int j = K + threadIdx.x; j < out_ld; j += blockDim.x) o[j] = 0;
#undef PREP_VAL
}

// ---------------------------------------------------------------------------------------------
// GEMM on tensor cores: C[m, n] = sum_k A[m, k] W[n, k], with A and W as bytes:
//   FP8: e4m3 x e4m3 via mma.m16n8k32, scales per (row, K group) for A and per channel (smode 1) or
//        per [bn_blk x bk_blk] block (smode 2) for W;
//   BF16: bf16 x bf16 via mma.m16n8k16, no scales (smode 0).
// Grouped (MoE) when `tiles` is given: tile y is (group g, first row m0) for rows < offsets[g + 1],
// and W / sw advance by the group strides. Grid: (row tiles, N / 128, K splits) dense,
// (N / 128, tiles) grouped; split results are atomically added.
// omode 0: store f32 (+ bias), 1: add into f32, 2: store bf16.
#define BN 128
#define BKB 128
#define RS (BKB + 16)

__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  int n = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(n));
}

__device__ __forceinline__ void ldsm_x4(u32* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void cp_async8(void* smem, const void* gmem, bool pred) {
  int n = pred ? 8 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(n));
}

__device__ __forceinline__ void ldsm_x4_trans(u32* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void mma_fp8(float* c, const u32* a, const u32* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_bf16(float* c, const u32* a, const u32* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <int BM, bool FP8>
__device__ __forceinline__ void gemm_impl(
    const u8* __restrict__ A, int lda, const float* __restrict__ sa, int sa_ld,
    const u8* __restrict__ W, long long w_gstride, int ldw, const float* __restrict__ sw,
    long long sw_gstride, int smode, int bn_blk, int bk_blk, const int* __restrict__ tiles,
    const int* __restrict__ ntiles, const int* __restrict__ offsets, int M, int N, int Kb,
    int split_tiles, const float* __restrict__ bias, void* C, int ldc, int omode) {
  constexpr int MT = (BM == 16) ? 1 : 2;
  constexpr int WARPS_M = BM / (16 * MT);
  constexpr int WARPS_N = 8 / WARPS_M;
  constexpr int WN = BN / WARPS_N;
  constexpr int NT = WN / 8;
  extern __shared__ __align__(16) u8 smem[];
  u8* sA = smem;
  u8* sW = smem + 2 * BM * RS;

  int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int wm = warp / WARPS_N, wn = warp % WARPS_N;
  int gid = lane >> 2, tig = lane & 3;
  // Dense: row tiles vary fastest, so the row tiles of one weight slice run together and share it
  // in L2. Grouped: N tiles vary fastest (grid (N / 128, tiles)), so an expert's slices stream
  // together and the launch's many empty tiles retire in bulk.
  int n0 = (tiles ? blockIdx.x : blockIdx.y) * BN;
  int m0, m_end, g = 0;
  if (tiles) {
    if ((int)blockIdx.y >= *ntiles) return;
    g = tiles[2 * blockIdx.y];
    m0 = tiles[2 * blockIdx.y + 1];
    m_end = offsets[g + 1];
  } else {
    m0 = blockIdx.x * BM;
    m_end = M;
    if (m0 >= M) return;
  }
  W += (long long)g * w_gstride;
  if (sw) sw += (long long)g * sw_gstride;
  int nkt = (Kb + BKB - 1) / BKB;
  int kt0 = blockIdx.z * split_tiles, kt1 = min(nkt, kt0 + split_tiles);
  if (kt0 >= kt1) return;

  float acc[MT][NT][4];
  float part[MT][NT][4];
#pragma unroll
  for (int a = 0; a < MT; a++)
#pragma unroll
    for (int b = 0; b < NT; b++)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        acc[a][b][i] = 0.f;
        part[a][b][i] = 0.f;
      }

  auto load = [&](int stage, int kt) {
    int kbase = kt * BKB;
    u8* a_s = sA + stage * BM * RS;
    u8* w_s = sW + stage * BN * RS;
    for (int c = tid; c < BM * 8; c += 256) {
      int row = c >> 3, ch = c & 7;
      int gr = m0 + row, k = kbase + ch * 16;
      bool p = gr < m_end && k < Kb;
      const u8* src = p ? A + (size_t)gr * lda + k : A;
      cp_async16(a_s + row * RS + ch * 16, src, p);
    }
    for (int c = tid; c < BN * 8; c += 256) {
      int row = c >> 3, ch = c & 7;
      int gn = n0 + row, k = kbase + ch * 16;
      bool p = gn < N && k < Kb;
      const u8* src = p ? W + (size_t)gn * ldw + k : W;
      cp_async16(w_s + row * RS + ch * 16, src, p);
    }
  };

  load(0, kt0);
  asm volatile("cp.async.commit_group;");
  for (int kt = kt0; kt < kt1; kt++) {
    int st = (kt - kt0) & 1;
    if (kt + 1 < kt1) load(st ^ 1, kt + 1);
    asm volatile("cp.async.commit_group;");
    asm volatile("cp.async.wait_group 1;");
    __syncthreads();
    const u8* a_s = sA + st * BM * RS;
    const u8* w_s = sW + st * BN * RS;
#pragma unroll
    for (int kk = 0; kk < BKB; kk += 32) {
      // fragments by ldmatrix.x4 (8x8 b16 matrices = 8 rows x 16 bytes, for e4m3 and bf16 alike):
      // A: rows +0 / +8 by bytes +0 / +16; W: two n-tiles, each by bytes +0 / +16
      u32 af[MT][4], bfr[NT][2];
      int lr = lane & 7, lq = lane >> 3;
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        int r = wm * (MT * 16) + mt * 16 + lr + (lq & 1) * 8;
        ldsm_x4(af[mt], a_s + r * RS + kk + (lq >> 1) * 16);
      }
#pragma unroll
      for (int nt = 0; nt < NT; nt += 2) {
        int c = wn * WN + nt * 8 + lr + (lq >> 1) * 8;
        u32 t[4];
        ldsm_x4(t, w_s + c * RS + kk + (lq & 1) * 16);
        bfr[nt][0] = t[0];
        bfr[nt][1] = t[1];
        bfr[nt + 1][0] = t[2];
        bfr[nt + 1][1] = t[3];
      }
      if (smode == 2) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
          for (int nt = 0; nt < NT; nt++) mma_fp8(part[mt][nt], af[mt], bfr[nt]);
        int kbyte = kt * BKB + kk;
        if (kbyte < Kb && ((kbyte + 32) % bk_blk == 0 || kbyte + 32 >= Kb)) {
          int kb = kbyte / bk_blk;
#pragma unroll
          for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
              for (int i = 0; i < 4; i++) {
                int r = m0 + wm * (MT * 16) + mt * 16 + gid + (i >= 2 ? 8 : 0);
                int c = n0 + wn * WN + nt * 8 + tig * 2 + (i & 1);
                float s = (r < m_end && c < N)
                              ? sa[(size_t)r * sa_ld + kb] * sw[(size_t)(c / bn_blk) * sa_ld + kb]
                              : 0.f;
                acc[mt][nt][i] += part[mt][nt][i] * s;
                part[mt][nt][i] = 0.f;
              }
        }
      } else {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
          for (int nt = 0; nt < NT; nt++) {
            if (FP8)
              mma_fp8(acc[mt][nt], af[mt], bfr[nt]);
            else
              mma_bf16(acc[mt][nt], af[mt], bfr[nt]);
          }
      }
    }
    __syncthreads();
  }

  bool split = gridDim.z > 1;
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        int r = m0 + wm * (MT * 16) + mt * 16 + gid + (i >= 2 ? 8 : 0);
        int c = n0 + wn * WN + nt * 8 + tig * 2 + (i & 1);
        if (r >= m_end || c >= N) continue;
        float v = acc[mt][nt][i];
        if (smode == 1) v *= sa[(size_t)r * sa_ld] * sw[c];
        if (bias && blockIdx.z == 0) v += bias[c];
        size_t o = (size_t)r * ldc + c;
        if (omode == 2) {
          ((u16*)C)[o] = f2bf(v);
        } else if (split) {
          atomicAdd(&((float*)C)[o], v);
        } else if (omode == 1) {
          ((float*)C)[o] += v;
        } else {
          ((float*)C)[o] = v;
        }
      }
}

// Epilogue of the cuBLASLt path (gpu/blaslt.rs): out[r, c] (= or +=) t[r, c] * sa[r] * sw[c] + bias[c],
// t [M, N] f32 as cuBLASLt wrote it (unit scales). Grid (M, N / 256). sa == 0: no scales.
extern "C" __global__ void scale_out(const float* t, int M, int N, const float* sa, const float* sw,
                                     const float* bias, float* out, int ldc, int omode) {
  int r = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= N) return;
  float v = t[(size_t)r * N + c];
  if (sa) v *= sa[r] * sw[c];
  if (bias) v += bias[c];
  size_t o = (size_t)r * ldc + c;
  if (omode == 1)
    out[o] += v;
  else
    out[o] = v;
}

#define GEMM_ARGS                                                                               \
  const u8 *A, int lda, const float *sa, int sa_ld, const u8 *W, long long w_gstride, int ldw,  \
      const float *sw, long long sw_gstride, int smode, int bn_blk, int bk_blk, const int *tiles, \
      const int *ntiles, const int *offsets, int M, int N, int Kb, int split_tiles,             \
      const float *bias, void *C, int ldc, int omode
#define GEMM_PASS                                                                             \
  A, lda, sa, sa_ld, W, w_gstride, ldw, sw, sw_gstride, smode, bn_blk, bk_blk, tiles, ntiles, \
      offsets, M, N, Kb, split_tiles, bias, C, ldc, omode

extern "C" __global__ void __launch_bounds__(256) gemm_fp8_m16(GEMM_ARGS) {
  gemm_impl<16, true>(GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(256) gemm_fp8_m64(GEMM_ARGS) {
  gemm_impl<64, true>(GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(256) gemm_bf16_m16(GEMM_ARGS) {
  gemm_impl<16, false>(GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(256) gemm_bf16_m64(GEMM_ARGS) {
  gemm_impl<64, false>(GEMM_PASS);
}

// ---------------------------------------------------------------------------------------------
// QK-norm (optional), partial NeoX RoPE and the KV-cache write (BF16, or E4M3 with unit scale when
// kv_fp8, as vLLM's fp8 KV cache without calibrated scales). qkv [T, ldq] f32 holds q at column 0,
// k at k_off, v at v_off. One warp per (token, head) over q, k and v heads; q goes to q_out
// [T, nh * d]; k and v to the caches at slots[t] (skipped when < 0).
extern "C" __global__ void rope_kv(const float* qkv, int ldq, int k_off, int v_off, const int* pos,
                                   const int* slots, const float* qn, const float* kn, float eps,
                                   float* q_out, void* kc, void* vc, int nh, int nkv, int d, int rot,
                                   float theta, int kv_fp8) {
  extern __shared__ float hbuf[];
  int t = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int head = blockIdx.y * 8 + warp;
  if (head >= nh + 2 * nkv) return;
  float* hb = hbuf + warp * d;
  const float* src;
  int kind, hi;
  if (head < nh) {
    kind = 0;
    hi = head;
    src = qkv + (size_t)t * ldq + hi * d;
  } else if (head < nh + nkv) {
    kind = 1;
    hi = head - nh;
    src = qkv + (size_t)t * ldq + k_off + hi * d;
  } else {
    kind = 2;
    hi = head - nh - nkv;
    src = qkv + (size_t)t * ldq + v_off + hi * d;
  }
  int slot = slots[t];
  if (kind == 2) {
    if (slot >= 0)
      for (int j = lane; j < d; j += 32) {
        size_t o = ((size_t)slot * nkv + hi) * d + j;
        if (kv_fp8)
          ((u8*)vc)[o] = f2e4m3(src[j]);
        else
          ((u16*)vc)[o] = f2bf(src[j]);
      }
    return;
  }
  for (int j = lane; j < d; j += 32) hb[j] = src[j];
  __syncwarp();
  const float* nw = kind == 0 ? qn : kn;
  if (nw) {
    float ss = 0.f;
    for (int j = lane; j < d; j += 32) ss += hb[j] * hb[j];
    ss = warp_sum(ss);
    float r = rsqrtf(ss / (float)d + eps);
    __syncwarp();
    for (int j = lane; j < d; j += 32) hb[j] = hb[j] * r * nw[j];
    __syncwarp();
  }
  int half = rot / 2;
  float p = (float)pos[t];
  float outv[8];
#pragma unroll
  for (int i = 0; i < 8; i++) {
    int j = lane + 32 * i;
    if (j >= d) break;
    float v = hb[j];
    if (j < rot) {
      int fi = j < half ? j : j - half;
      float inv = 1.0f / powf(theta, (float)(2 * fi) / (float)rot);
      float a = p * inv;
      float c = cosf(a), s = sinf(a);
      v = j < half ? hb[j] * c - hb[j + half] * s : hb[j] * c + hb[j - half] * s;
    }
    outv[i] = v;
  }
#pragma unroll
  for (int i = 0; i < 8; i++) {
    int j = lane + 32 * i;
    if (j >= d) break;
    if (kind == 0) {
      q_out[((size_t)t * nh + hi) * d + j] = outv[i];
    } else if (slot >= 0) {
      size_t o = ((size_t)slot * nkv + hi) * d + j;
      if (kv_fp8)
        ((u8*)kc)[o] = f2e4m3(outv[i]);
      else
        ((u16*)kc)[o] = f2bf(outv[i]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Paged GQA attention on tensor cores (FlashAttention-2 style), prefill and decode alike. A block
// takes one KV head and a tile of up to QR = 64 / G consecutive query rows of one sequence: the
// tile's (row, query head) pairs are the 64 rows of the M dimension (4 warps x 16), so the group's
// heads share every K/V load. Keys stream from the paged cache 64 at a time through a two-stage
// cp.async pipeline (the next tile's block-table entries are read a tile ahead, so no load waits on
// another); K and V keep their cache layout in shared memory and V reaches the PV mma through
// ldmatrix.trans. An FP8 cache lands as bytes and is widened to bf16 (or, attn_f8h_*, to f16, two
// values per cvt; e4m3 is exact in both) by the thread that fetched it. S = Q K^T and O += P V are
// mma.m16n8k16 (bf16, or f16 after an f16 widening) with f32 accumulation and an online softmax in
// registers; causality per row (key position <= the row's position). When the tile has at most 16
// (row, head) pairs (decode: one row of G heads) the four warps instead take 16 keys of each tile
// each, with their own softmax state, merged through shared memory at the end, so no warp idles.
// blockIdx.z splits the keys
// (flash-decoding): with part != 0 each split writes its (m, l, O) and attn_combine merges them.
// Dynamic shared memory: attn_smem(D) bytes (device.rs).
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
  return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16);
}

// Two floats as f16 (round to nearest), `lo` in the low half.
__device__ __forceinline__ u32 pack_f16(float lo, float hi) {
  u32 r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// Two e4m3 bytes (the low byte first in memory) as two f16, the low byte's in the low half: exact.
__device__ __forceinline__ u32 e4m3x2_to_f16x2(u16 two) {
  u32 r;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r) : "h"(two));
  return r;
}

__device__ __forceinline__ void mma_f16(float* c, const u32* a, const u32* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The attention's 16-bit operands: f16 when the KV cache is FP8 (e4m3 widens to f16 exactly, two
// values per instruction), bf16 otherwise (the cache's own type).
template <bool F16>
__device__ __forceinline__ u32 pack16(float lo, float hi) {
  return F16 ? pack_f16(lo, hi) : pack_bf16(lo, hi);
}

template <bool F16>
__device__ __forceinline__ void mma16(float* c, const u32* a, const u32* b) {
  if (F16)
    mma_f16(c, a, b);
  else
    mma_bf16(c, a, b);
}

template <int N>
struct IntC {
  static constexpr int v = N;
};

template <int D, bool F8, bool F16>
__device__ __forceinline__ void attn_impl(const void* kc_, const void* vc_, const float* q,
                                          const int* tiles, const int* ntiles, const int* row_seq,
                                          const int* pos, const int* btab, const int* btab_stride,
                                          int bs, float* out, float* part, int nh, int nkv,
                                          float scale) {
  constexpr int KT = 64;
  constexpr int KS = D + 8;        // bf16 row stride (elements): 16-byte rows, conflict-free
  constexpr int K8 = D + 16;       // fp8 row stride (bytes)
  constexpr int CPK = D / 8;       // 8-element chunks per key row
  constexpr int KPP = 128 / CPK;   // key rows one pass of the block covers
  constexpr int PASSES = KT / KPP;
  extern __shared__ __align__(16) u8 smem[];
  // bf16: stage s = K [KT][KS], V [KT][KS] u16. fp8: two raw stages of K, V [KT][K8] bytes,
  // then one K, V pair they are widened into: f16 when F16 (every mma operand is then f16), else
  // bf16.
  constexpr int STAGE16 = 2 * KT * KS * 2, STAGE8 = 2 * KT * K8;
  int tile = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
  if (tile >= *ntiles) return;
  int row0 = tiles[2 * tile], nrows = tiles[2 * tile + 1];
  int G = nh / nkv;
  int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
  int s = row_seq[row0];
  if (s < 0) {  // a padding row of a graph bucket: attends to nothing
    if (split == 0)
      for (int i = tid; i < G * D; i += blockDim.x) out[((size_t)row0 * nh + kvh * G) * D + i] = 0.f;
    return;
  }
  // decode: every warp holds the same <= 16 pairs and takes a quarter of each key tile
  bool wsplit = nrows * G <= 16;
  int mA = (wsplit ? 0 : warp) * 16 + gid, mB = mA + 8;
  int rA = mA / G, rB = mB / G;
  bool vA = rA < nrows, vB = rB < nrows;
  int posA = vA ? pos[row0 + rA] : -1, posB = vB ? pos[row0 + rB] : -1;
  // warps whose 16 (row, head) pairs are all past the tile's rows only help load K/V (in decode,
  // G = 12 real pairs leave three of the four warps idle)
  bool active = wsplit || (warp * 16) / G < nrows;
  const float* qA = q + ((size_t)(row0 + rA) * nh + kvh * G + mA % G) * D;
  const float* qB = q + ((size_t)(row0 + rB) * nh + kvh * G + mB % G) * D;
  u32 qf[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++) {
    int c = ks * 16 + tig * 2;
    qf[ks][0] = vA ? pack16<F16>(qA[c] * scale, qA[c + 1] * scale) : 0u;
    qf[ks][1] = vB ? pack16<F16>(qB[c] * scale, qB[c + 1] * scale) : 0u;
    qf[ks][2] = vA ? pack16<F16>(qA[c + 8] * scale, qA[c + 9] * scale) : 0u;
    qf[ks][3] = vB ? pack16<F16>(qB[c + 8] * scale, qB[c + 9] * scale) : 0u;
  }
  float o[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
    for (int i = 0; i < 4; i++) o[dt][i] = 0.f;
  float mrow[2] = {NEG_INF, NEG_INF}, lrow[2] = {0.f, 0.f};
  int nkeys = pos[row0 + nrows - 1] + 1;
  int nkt = (nkeys + KT - 1) / KT;
  int per = (nkt + nsplit - 1) / nsplit;
  int kt0 = split * per, kt1 = min(nkt, kt0 + per);
  const int* bt = btab + (size_t)s * (*btab_stride);
  int ch = tid % CPK, j0 = tid / CPK;
  // this thread's block ids for each of its PASSES keys of a tile (-1 past the end), read a tile
  // ahead of use so the cp.async addresses never wait on a load
  auto blocks_of = [&](int kt, int* r) {
#pragma unroll
    for (int i = 0; i < PASSES; i++) {
      int p = kt * KT + j0 + KPP * i;
      r[i] = p < nkeys ? bt[p / bs] : -1;
    }
  };
  auto issue = [&](int st, int kt, const int* r) {
#pragma unroll
    for (int i = 0; i < PASSES; i++) {
      int j = j0 + KPP * i, p = kt * KT + j;
      bool ok = r[i] >= 0;
      size_t off = ok ? ((size_t)(r[i] * bs + p % bs) * nkv + kvh) * D + ch * 8 : 0;
      if (F8) {
        u8* b = smem + st * STAGE8;
        cp_async8(b + j * K8 + ch * 8, (const u8*)kc_ + off, ok);
        cp_async8(b + KT * K8 + j * K8 + ch * 8, (const u8*)vc_ + off, ok);
      } else {
        u16* b = (u16*)(smem + st * STAGE16);
        cp_async16(b + j * KS + ch * 8, (const u16*)kc_ + off, ok);
        cp_async16(b + KT * KS + j * KS + ch * 8, (const u16*)vc_ + off, ok);
      }
    }
    asm volatile("cp.async.commit_group;");
  };
  // One key tile's S = Q K^T, online softmax and O += P V for this warp: NTL 8-key column tiles
  // from key k0 of the tile (all of it, or the warp's quarter in decode).
  auto key_tile = [&](auto ntl, const u16* Ks, const u16* Vs, int kt, int k0) {
    constexpr int NTL = decltype(ntl)::v;
    float sc[NTL][4];
#pragma unroll
    for (int nt = 0; nt < NTL; nt++) {
#pragma unroll
      for (int i = 0; i < 4; i++) sc[nt][i] = 0.f;
#pragma unroll
      for (int ks = 0; ks < D / 16; ks++) {
        const u16* kr = Ks + (k0 + nt * 8 + gid) * KS + ks * 16 + tig * 2;
        u32 b[2] = {*(const u32*)kr, *(const u32*)(kr + 8)};
        mma16<F16>(sc[nt], qf[ks], b);
      }
    }
    float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
    for (int nt = 0; nt < NTL; nt++)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        int key = kt * KT + k0 + nt * 8 + tig * 2 + (i & 1);
        if (key > (i < 2 ? posA : posB)) sc[nt][i] = NEG_INF;
        mx[i >> 1] = fmaxf(mx[i >> 1], sc[nt][i]);
      }
    float corr[2], rs[2] = {0.f, 0.f};
#pragma unroll
    for (int h = 0; h < 2; h++) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      corr[h] = mx[h] == NEG_INF ? 1.f : __expf(mrow[h] - mx[h]);
    }
#pragma unroll
    for (int nt = 0; nt < NTL; nt++)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        int h = i >> 1;
        float p = mx[h] == NEG_INF ? 0.f : __expf(sc[nt][i] - mx[h]);
        sc[nt][i] = p;
        rs[h] += p;
      }
#pragma unroll
    for (int h = 0; h < 2; h++) {
      rs[h] += __shfl_xor_sync(0xffffffffu, rs[h], 1);
      rs[h] += __shfl_xor_sync(0xffffffffu, rs[h], 2);
      lrow[h] = lrow[h] * corr[h] + rs[h];
      mrow[h] = mx[h];
    }
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
      o[dt][0] *= corr[0];
      o[dt][1] *= corr[0];
      o[dt][2] *= corr[1];
      o[dt][3] *= corr[1];
    }
#pragma unroll
    for (int kk = 0; kk < NTL / 2; kk++) {
      u32 pa[4] = {pack16<F16>(sc[2 * kk][0], sc[2 * kk][1]),
                   pack16<F16>(sc[2 * kk][2], sc[2 * kk][3]),
                   pack16<F16>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                   pack16<F16>(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
      // V rows kk*16 .. +15 (keys) as the B operand, two 8-wide dim tiles per ldmatrix.x4.trans
      const u16* vrow = Vs + (k0 + kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * KS + (lane >> 4) * 8;
#pragma unroll
      for (int dp = 0; dp < D / 16; dp++) {
        u32 b[4];
        ldsm_x4_trans(b, vrow + dp * 16);
        mma16<F16>(o[2 * dp], pa, b);
        mma16<F16>(o[2 * dp + 1], pa, b + 2);
      }
    }
  };
  int blk[PASSES];
  if (kt0 < kt1) {
    blocks_of(kt0, blk);
    issue(0, kt0, blk);
    if (kt0 + 1 < kt1) blocks_of(kt0 + 1, blk);
  }
  for (int kt = kt0; kt < kt1; kt++) {
    int st = (kt - kt0) & 1;
    __syncthreads();  // every warp is done with the stage the next tile overwrites
    if (kt + 1 < kt1) {
      issue(st ^ 1, kt + 1, blk);
      if (kt + 2 < kt1) blocks_of(kt + 2, blk);
      asm volatile("cp.async.wait_group 1;");
    } else {
      asm volatile("cp.async.wait_group 0;");
    }
    const u16* Ks;
    if (F8) {  // widen this thread's own chunks (visible to it after the wait)
      const u8* b = smem + st * STAGE8;
      u16* w = (u16*)(smem + 2 * STAGE8);
#pragma unroll
      for (int i = 0; i < PASSES; i++) {
        int j = j0 + KPP * i;
#pragma unroll
        for (int kv = 0; kv < 2; kv++) {
          uint2 raw = *(const uint2*)(b + kv * KT * K8 + j * K8 + ch * 8);
          const u16* rp = (const u16*)&raw;
          uint4 wv;
          u32* ww = (u32*)&wv;
#pragma unroll
          for (int e = 0; e < 4; e++)
            ww[e] = F16 ? e4m3x2_to_f16x2(rp[e])
                        : pack_bf16(e4m3_to_f((u8)(rp[e] & 0xff)), e4m3_to_f((u8)(rp[e] >> 8)));
          *(uint4*)(w + kv * KT * KS + j * KS + ch * 8) = wv;
        }
      }
      Ks = w;
    } else {
      Ks = (const u16*)(smem + st * STAGE16);
    }
    __syncthreads();
    if (!active) continue;
    if (wsplit)
      key_tile(IntC<2>(), Ks, Ks + KT * KS, kt, warp * 16);
    else
      key_tile(IntC<KT / 8>(), Ks, Ks + KT * KS, kt, 0);
  }
  if (wsplit) {  // merge the four warps' states (the stages are free once every copy has landed)
    asm volatile("cp.async.wait_group 0;");
    __syncthreads();
    float* sO = (float*)smem;
    float* sM = sO + 4 * 16 * D;
    float* sL = sM + 64;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
      for (int i = 0; i < 4; i++)
        sO[(warp * 16 + gid + (i >> 1) * 8) * D + dt * 8 + tig * 2 + (i & 1)] = o[dt][i];
    if (tig == 0) {
      sM[warp * 16 + gid] = mrow[0];
      sM[warp * 16 + gid + 8] = mrow[1];
      sL[warp * 16 + gid] = lrow[0];
      sL[warp * 16 + gid + 8] = lrow[1];
    }
    __syncthreads();
    for (int idx = tid; idx < nrows * G * D; idx += blockDim.x) {
      int m = idx / D, dim = idx % D;
      float M = fmaxf(fmaxf(sM[m], sM[16 + m]), fmaxf(sM[32 + m], sM[48 + m]));
      float L = 0.f, a = 0.f;
      if (M != NEG_INF)
#pragma unroll
        for (int w = 0; w < 4; w++) {
          float mw = sM[w * 16 + m];
          if (mw == NEG_INF) continue;
          float f = __expf(mw - M);
          L += sL[w * 16 + m] * f;
          a += sO[(w * 16 + m) * D + dim] * f;
        }
      if (part) {
        float* pb = part + ((((size_t)tile * nkv + kvh) * nsplit + split) * 64 + m) * (D + 2);
        pb[dim] = a;
        if (dim == 0) {
          pb[D] = M;
          pb[D + 1] = L;
        }
      } else {
        out[((size_t)(row0 + m / G) * nh + kvh * G + m % G) * D + dim] = L > 0.f ? a / L : 0.f;
      }
    }
    return;
  }
#pragma unroll
  for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
    for (int i = 0; i < 4; i++) {
      int h = i >> 1;
      if (!(h ? vB : vA)) continue;
      int m = h ? mB : mA;
      int dim = dt * 8 + tig * 2 + (i & 1);
      if (part) {
        float* pb = part + ((((size_t)tile * nkv + kvh) * nsplit + split) * 64 + m) * (D + 2);
        pb[dim] = o[dt][i];
        if (dt == 0 && tig == 0 && (i & 1) == 0) {
          pb[D] = mrow[h];
          pb[D + 1] = lrow[h];
        }
      } else {
        out[((size_t)(row0 + m / G) * nh + kvh * G + m % G) * D + dim] =
            lrow[h] > 0.f ? o[dt][i] / lrow[h] : 0.f;
      }
    }
}

// attn_d{32,64,128} over a BF16 cache; attn_f8_d{32,64,128} over an FP8 one, widened to bf16 (three
// conversions a value), and attn_f8h_d{32,64,128} widened to f16 (half a conversion a value, f16
// mma). Separate kernels, so each keeps its own register budget.
#define ATTN_ARGS                                                                              \
  const float *q, const void *kc, const void *vc, const int *tiles, const int *ntiles,         \
      const int *row_seq, const int *pos, const int *btab, const int *btab_stride, int bs,     \
      float *out, float *part, int nh, int nkv, float scale
#define ATTN_PASS kc, vc, q, tiles, ntiles, row_seq, pos, btab, btab_stride, bs, out, part, nh, nkv, scale
#define ATTN_KERNELS(D)                                                                        \
  extern "C" __global__ void __launch_bounds__(128) attn_d##D(ATTN_ARGS) {                     \
    attn_impl<D, false, false>(ATTN_PASS);                                                     \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(128) attn_f8_d##D(ATTN_ARGS) {                  \
    attn_impl<D, true, false>(ATTN_PASS);                                                      \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(128) attn_f8h_d##D(ATTN_ARGS) {                 \
    attn_impl<D, true, true>(ATTN_PASS);                                                       \
  }
ATTN_KERNELS(32)
ATTN_KERNELS(64)
ATTN_KERNELS(128)

// Merges the key splits of attn_*: out = sum_s exp(m_s - M) O_s / sum_s exp(m_s - M) l_s. A warp per
// (row, head) pair: its lanes first hold the splits' (m, l) (nsplit <= 32), then the head dims.
// Grid (tiles, kv heads, 8): the z blocks of a (tile, kv head) share its pairs, so that a
// decode tile (one row, G pairs) spreads over G warps of several blocks rather than looping in 8.
extern "C" __global__ void attn_combine(const float* part, const int* tiles, const int* ntiles,
                                        const int* row_seq, int nsplit, float* out, int nh,
                                        int nkv, int D) {
  int tile = blockIdx.x, kvh = blockIdx.y;
  if (tile >= *ntiles) return;
  int row0 = tiles[2 * tile], nrows = tiles[2 * tile + 1];
  if (row_seq[row0] < 0) return;
  int G = nh / nkv;
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  const float* pb = part + ((size_t)tile * nkv + kvh) * nsplit * 64 * (D + 2);
  for (int m = blockIdx.z * nw + warp; m < nrows * G; m += nw * gridDim.z) {
    const float* e = pb + ((size_t)lane * 64 + m) * (D + 2);
    float ms = lane < nsplit ? e[D] : NEG_INF;
    float ls = lane < nsplit ? e[D + 1] : 0.f;
    float mx = warp_max(ms);
    float f = ms == NEG_INF ? 0.f : __expf(ms - mx);
    float L = warp_sum(ls * f);
    float* o = out + ((size_t)(row0 + m / G) * nh + kvh * G + m % G) * D;
    for (int dim = lane; dim < D; dim += 32) {
      float a = 0.f;
#pragma unroll 8
      for (int sp = 0; sp < nsplit; sp++)
        a += __shfl_sync(0xffffffffu, f, sp) * pb[((size_t)sp * 64 + m) * (D + 2) + dim];
      o[dim] = L > 0.f ? a / L : 0.f;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// MoE router logits in f32: out[t, e] = xn[t] . gw[e]. Grid (tokens / 8, experts), 128 threads:
// the block's threads split the hidden dim, 16 bytes per load (H % 4 == 0), for 8 tokens at once.
extern "C" __global__ void router_logits(const float* xn, const float* gw, float* out, int T, int E,
                                         int H) {
  __shared__ float red[4][8];
  int t0 = blockIdx.x * 8, e = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float acc[8];
#pragma unroll
  for (int r = 0; r < 8; r++) acc[r] = 0.f;
  const float* wr = gw + (size_t)e * H;
#pragma unroll 4
  for (int h = threadIdx.x * 4; h < H; h += 512) {
    float4 wv = *(const float4*)(wr + h);
#pragma unroll
    for (int r = 0; r < 8; r++) {
      if (t0 + r < T) {
        float4 xv = *(const float4*)(xn + (size_t)(t0 + r) * H + h);
        acc[r] += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 8; r++) {
    float v = warp_sum(acc[r]);
    if (lane == 0) red[warp][r] = v;
  }
  __syncthreads();
  int r = threadIdx.x;
  if (r < 8 && t0 + r < T) out[(size_t)(t0 + r) * E + e] = red[0][r] + red[1][r] + red[2][r] + red[3][r];
}

// Router logits for many tokens (prefill): the same product as router_logits as a tiled f32 GEMM,
// 64 tokens x 64 experts per block and 4 x 4 per thread, so each token row is read E / 64 times
// rather than E times.
#define RG_T 64
#define RG_K 16
extern "C" __global__ void __launch_bounds__(256) router_gemm(const float* xn, const float* gw,
                                                              float* out, int T, int E, int H) {
  __shared__ float xs[RG_K][RG_T + 4];
  __shared__ float ws[RG_K][RG_T + 4];
  int t0 = blockIdx.x * RG_T, e0 = blockIdx.y * RG_T;
  int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0.f;
  for (int k0 = 0; k0 < H; k0 += RG_K) {
    for (int i = threadIdx.x; i < RG_T * RG_K; i += 256) {
      int r = i / RG_K, c = i % RG_K, k = k0 + c;
      int t = t0 + r, e = e0 + r;
      xs[c][r] = (t < T && k < H) ? xn[(size_t)t * H + k] : 0.f;
      ws[c][r] = (e < E && k < H) ? gw[(size_t)e * H + k] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int c = 0; c < RG_K; c++) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        a[i] = xs[c][ty * 4 + i];
        b[i] = ws[c][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++) {
    int t = t0 + ty * 4 + i;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      int e = e0 + tx * 4 + j;
      if (t < T && e < E) out[(size_t)t * E + e] = acc[i][j];
    }
  }
}

// Sigmoid scores, selection by score + correction bias within the best `tg` of `ng` groups (group
// score: sum of its two best biased scores), top-k, weights = unbiased scores (normalised when
// `norm`) times `rscale`. One warp per token; ties go to the lower expert index.
extern "C" __global__ void moe_topk(const float* logits, const float* bias, int T, int E, int k,
                                    int ng, int tg, int norm, float rscale, int* ids, float* wts) {
  extern __shared__ float tsh[];
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int t = blockIdx.x * (blockDim.x >> 5) + warp;
  if (t >= T) return;
  float* sc = tsh + warp * 2 * E;
  float* ch = sc + E;
  for (int e = lane; e < E; e += 32) {
    float s = 1.0f / (1.0f + expf(-logits[(size_t)t * E + e]));
    sc[e] = s;
    ch[e] = s + bias[e];
  }
  __syncwarp();
  if (ng > 1) {
    int per = E / ng;
    float gs = NEG_INF;
    if (lane < ng) {
      float a = NEG_INF, b = NEG_INF;
      for (int j = lane * per; j < (lane + 1) * per; j++) {
        float x = ch[j];
        if (x > a) {
          b = a;
          a = x;
        } else if (x > b) {
          b = x;
        }
      }
      gs = a + b;
    }
    unsigned keep = 0;
    for (int r = 0; r < tg; r++) {
      float v = ((keep >> lane) & 1u) || lane >= ng ? NEG_INF : gs;
      int bi = lane < ng && !((keep >> lane) & 1u) ? lane : 0x7fffffff;
      warp_argmax(v, bi);
      if (bi < ng) keep |= 1u << bi;
    }
    __syncwarp();
    for (int e = lane; e < E; e += 32)
      if (!((keep >> (e / per)) & 1u)) ch[e] = NEG_INF;
    __syncwarp();
  }
  float wsum = 0.f;
  for (int r = 0; r < k; r++) {
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int e = lane; e < E; e += 32) {
      float v = ch[e];
      if (v > bv || (v == bv && e < bi)) {
        bv = v;
        bi = e;
      }
    }
    warp_argmax(bv, bi);
    if (bi >= E) bi = r % E;
    float s = sc[bi];
    if (lane == 0) {
      ids[(size_t)t * k + r] = bi;
      wts[(size_t)t * k + r] = s;
    }
    wsum += s;
    __syncwarp();
    if (lane == 0) ch[bi] = NEG_INF;
    __syncwarp();
  }
  if (lane == 0) {
    for (int r = 0; r < k; r++) {
      float w = wts[(size_t)t * k + r];
      if (norm) w /= (wsum + 1e-20f);
      wts[(size_t)t * k + r] = w * rscale;
    }
  }
}

// Expert-sorted layout of the A = T * k assignments, on the device (no host round trip): counts,
// offsets[E + 1], perm_src[pos] = token of the assignment at sorted position pos, inv[i] = sorted
// position of assignment i, and the GEMM tiles (expert, first row) of BM rows each.
extern "C" __global__ void moe_plan(const int* ids, int A, int E, int k, int BM, int* offsets,
                                    int* perm_src, int* inv, int* tiles, int* ntiles) {
  extern __shared__ int psh[];
  int* cnt = psh;
  int* cur = psh + E;
  int* toff = psh + 2 * E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < A; i += blockDim.x) atomicAdd(&cnt[ids[i]], 1);
  __syncthreads();
  if (threadIdx.x < 32) {  // exclusive scans of the counts and tile counts, 32 experts at a time
    int lane = threadIdx.x, co = 0, ct = 0;
    for (int base = 0; base < E; base += 32) {
      int e = base + lane;
      int c = e < E ? cnt[e] : 0, tc = (c + BM - 1) / BM;
      int so = c, st = tc;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        int a = __shfl_up_sync(0xffffffffu, so, d), b = __shfl_up_sync(0xffffffffu, st, d);
        if (lane >= d) {
          so += a;
          st += b;
        }
      }
      if (e < E) {
        offsets[e] = co + so - c;
        cur[e] = co + so - c;
        toff[e] = ct + st - tc;
      }
      co += __shfl_sync(0xffffffffu, so, 31);
      ct += __shfl_sync(0xffffffffu, st, 31);
    }
    if (lane == 0) {
      offsets[E] = co;
      *ntiles = ct;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int n = (cnt[e] + BM - 1) / BM;
    for (int j = 0; j < n; j++) {
      tiles[2 * (toff[e] + j)] = e;
      tiles[2 * (toff[e] + j) + 1] = cur[e] + j * BM;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < A; i += blockDim.x) {
    int p = atomicAdd(&cur[ids[i]], 1);
    perm_src[p] = i / k;
    inv[i] = p;
  }
}

// x[t] += sum_j wts[t, j] * y[inv[t, j]]. Grid (tokens, H / blockDim): a thread per element.
extern "C" __global__ void moe_combine(const float* y, int ldy, const int* inv, const float* wts,
                                       int k, float* x, int H) {
  int t = blockIdx.x, h = blockIdx.y * blockDim.x + threadIdx.x;
  if (h >= H) return;
  float s = 0.f;
#pragma unroll 8
  for (int j = 0; j < k; j++)
    s += wts[(size_t)t * k + j] * y[(size_t)inv[(size_t)t * k + j] * ldy + h];
  x[(size_t)t * H + h] += s;
}

// ---------------------------------------------------------------------------------------------
// Sampling: temperature 0 -> arg-max; otherwise arg-max of logit / T + Gumbel noise (an exact
// sample from softmax(logit / T)), the noise a counter-based hash of (seed, token). Ties -> lower id.
// Two kernels: sample_part's grid (rows, SAMPLE_SPLITS) each take a slice of the vocabulary and
// write their best (value, id); sample_rows merges a row's slices with one warp.
#define SAMPLE_SPLITS 64
extern "C" __global__ void sample_part(const float* logits, int V, int valid, const float* temps,
                                       const u64* seeds, const float* thr, float* pv, int* pi) {
  __shared__ float sv[32];
  __shared__ int si[32];
  int r = blockIdx.x, sp = blockIdx.y;
  int per = (valid + SAMPLE_SPLITS - 1) / SAMPLE_SPLITS;
  int j0 = sp * per, j1 = min(valid, j0 + per);
  const float* lr = logits + (size_t)r * V;
  float tmp = temps[r];
  u64 seed = seeds[r];
  float th = thr ? thr[r] : NEG_INF;
  float bv = NEG_INF;
  int bi = 0x7fffffff;
#pragma unroll 4
  for (int j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
    float v = lr[j];
    if (!(v >= th)) continue;  // truncated (NaN never qualifies)
    if (tmp > 0.f) v = v / tmp - logf(-logf(uniform01(seed, (u64)j)));
    if (v > bv || (v == bv && j < bi)) {
      bv = v;
      bi = j;
    }
  }
  warp_argmax(bv, bi);
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) {
    sv[w] = bv;
    si[w] = bi;
  }
  __syncthreads();
  if (w == 0) {
    int nw = blockDim.x >> 5;
    bv = lane < nw ? sv[lane] : NEG_INF;
    bi = lane < nw ? si[lane] : 0x7fffffff;
    warp_argmax(bv, bi);
    if (lane == 0) {
      pv[r * SAMPLE_SPLITS + sp] = bv;
      pi[r * SAMPLE_SPLITS + sp] = bi;
    }
  }
}

// Truncation (top-k, top-p, min-p) as one logit threshold per row, for sample_part: its candidates
// are the logits >= thr[r]. One block of THR_THREADS per row; rows that do not truncate get -inf.
// min-p keeps x >= max + T ln(min_p) (the host passes ln(min_p): sample::min_p_log); top-k the k
// largest of those (ties with the k-th kept); top-p, of those, the fewest largest whose weights
// exp((x - max) / T) reach top_p of their sum (less a 1e-6 slack, as the host sampler). The k-th
// value and the top-p crossing are found by radix selection over order-preserving 32-bit keys of
// the logits, 8 bits a pass, with per-warp histograms in shared memory (the first passes put most
// logits in a few bins). Twin: sample::truncation_threshold.
#define THR_THREADS 512
#define THR_WARPS (THR_THREADS / 32)

// Calls f(x) on each of the first `valid` logits of a row, this thread's share. One block per row
// makes every pass latency-bound, so each thread keeps two 16-byte loads in flight (rows that
// are not 16-byte aligned go one logit at a time).
template <typename F>
__device__ __forceinline__ void row_scan(const float* __restrict__ lr, int valid, F f) {
  int n4 = (reinterpret_cast<size_t>(lr) & 15) == 0 ? valid >> 2 : 0;
  const float4* l4 = reinterpret_cast<const float4*>(lr);
  int j = threadIdx.x;
  for (; j + THR_THREADS < n4; j += 2 * THR_THREADS) {
    float4 a = __ldg(l4 + j), b = __ldg(l4 + j + THR_THREADS);
    f(a.x); f(a.y); f(a.z); f(a.w);
    f(b.x); f(b.y); f(b.z); f(b.w);
  }
  if (j < n4) {
    float4 a = __ldg(l4 + j);
    f(a.x); f(a.y); f(a.z); f(a.w);
  }
  for (int t = n4 * 4 + threadIdx.x; t < valid; t += THR_THREADS) f(__ldg(lr + t));
}

__device__ __forceinline__ u32 order_key(float x) {
  u32 b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_float(u32 k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Finds the largest key K such that the candidates (lo <= x, finite) with key >= K hold at least
// `need` (count, or weight when `mass`): four passes over the row, each fixing 8 more bits of K.
// Returns its logit. Every thread gets the result.
__device__ float radix_select(const float* lr, int valid, float lo, float mx, float inv_t, bool mass,
                              float need, float (*hist)[256], float* total, int* pick,
                              float* rest) {
  int w = threadIdx.x >> 5;
  u32 prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < THR_WARPS * 256; i += THR_THREADS) (&hist[0][0])[i] = 0.f;
    __syncthreads();
    row_scan(lr, valid, [&](float x) {
      if (!(x >= lo) || x == NEG_INF) return;
      u32 k = order_key(x);
      if ((k & mask) != prefix) return;
      u32 bin = (k >> shift) & 255;
      if (mass) {
        atomicAdd(&hist[w][bin], expf((x - mx) * inv_t));
      } else {
        // counts: one atomic per bin and warp (the early passes put most logits in a few bins)
        u32 act = __activemask(), same = __match_any_sync(act, bin);
        if ((threadIdx.x & 31) == __ffs(same) - 1) atomicAdd(&hist[w][bin], (float)__popc(same));
      }
    });
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += THR_THREADS) {
      float t = 0.f;
      for (int i = 0; i < THR_WARPS; i++) t += hist[i][b];
      total[b] = t;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      // from the top bin down: the bin where the running amount reaches `need` (or, short of
      // it by rounding, the lowest non-empty bin)
      float cum = 0.f;
      int b = 255, last = -1;
      for (; b >= 0; b--) {
        if (total[b] > 0.f) last = b;
        if (total[b] > 0.f && cum + total[b] >= need) break;
        cum += total[b];
      }
      if (b < 0) b = last < 0 ? 0 : last;
      *pick = b;
      *rest = need - cum;
    }
    __syncthreads();
    prefix |= (u32)*pick << shift;
    mask |= 255u << shift;
    need = *rest;
    __syncthreads();
  }
  return key_float(prefix);
}

extern "C" __global__ void sample_thresh(const float* logits, int V, int valid, const float* temps,
                                         const int* top_k, const float* top_p,
                                         const float* min_p_log, float* thr) {
  __shared__ float hist[THR_WARPS][256];
  __shared__ float total[256];
  __shared__ float red[32];
  __shared__ int pick;
  __shared__ float rest;
  int r = blockIdx.x;
  float t = temps[r], p = top_p[r], mpl = min_p_log[r];
  int k = top_k[r];
  if (!(t > 0.f) || (k <= 0 && !(p < 1.f) && !(mpl > NEG_INF))) {
    if (threadIdx.x == 0) thr[r] = NEG_INF;
    return;
  }
  const float* lr = logits + (size_t)r * V;
  float m = NEG_INF;
  row_scan(lr, valid, [&](float x) { m = fmaxf(m, x); });
  float mx = block_max(m, red);
  float inv_t = 1.f / t;
  float lo = (mpl > NEG_INF && mx > NEG_INF) ? fmaf(t, mpl, mx) : NEG_INF;
  if (mx == NEG_INF) {
    if (threadIdx.x == 0) thr[r] = NEG_INF;
    return;
  }
  if (k > 0) {
    float c = 0.f;
    row_scan(lr, valid, [&](float x) { c += (x >= lo && x != NEG_INF) ? 1.f : 0.f; });
    float n = block_sum(c, red);
    if ((float)k < n) lo = radix_select(lr, valid, lo, mx, inv_t, false, (float)k, hist, total, &pick, &rest);
  }
  if (p < 1.f) {
    float s = 0.f;
    row_scan(lr, valid, [&](float x) {
      if (x >= lo && x != NEG_INF) s += expf((x - mx) * inv_t);
    });
    float sum = block_sum(s, red);
    float need = (float)((double)p * (double)sum * (1.0 - 1e-6));
    lo = fmaxf(lo, radix_select(lr, valid, lo, mx, inv_t, true, need, hist, total, &pick, &rest));
  }
  if (threadIdx.x == 0) thr[r] = lo;
}

extern "C" __global__ void sample_rows(const float* pv, const int* pi, int valid, int* out) {
  int r = blockIdx.x, lane = threadIdx.x;
  float bv = NEG_INF;
  int bi = 0x7fffffff;
  for (int sp = lane; sp < SAMPLE_SPLITS; sp += 32) {
    float v = pv[r * SAMPLE_SPLITS + sp];
    int i = pi[r * SAMPLE_SPLITS + sp];
    if (v > bv || (v == bv && i < bi)) {
      bv = v;
      bi = i;
    }
  }
  warp_argmax(bv, bi);
  if (lane == 0) out[r] = bi < valid ? bi : 0;
}

// ---------------------------------------------------------------------------------------------
// Dummy weights (`--load-format dummy`), generated on the device from a counter-based hash.
extern "C" __global__ void fill_fp8(u8* w, u64 n, u64 seed) {
  for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    w[i] = f2e4m3((uniform01(seed, i) * 2.f - 1.f) * 448.f);
}

extern "C" __global__ void fill_bf16(u16* w, u64 n, u64 seed, float amp) {
  for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    w[i] = f2bf((uniform01(seed, i) * 2.f - 1.f) * amp);
}

extern "C" __global__ void fill_f32_rand(float* w, u64 n, u64 seed, float amp) {
  for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    w[i] = (uniform01(seed, i) * 2.f - 1.f) * amp;
}

extern "C" __global__ void fill_f32(float* w, u64 n, float v) {
  for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    w[i] = v;
}
