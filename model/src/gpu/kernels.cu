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

// Programmatic dependent launch (sm_90): a kernel waits for the previous one's completion and
// memory before it touches any data (wait), and lets the next one in the stream be scheduled
// before it finishes (launch_dependents); with the PDL attribute (Gpu::pdl) launch latency and a
// block's start-up overlap the previous kernel's tail. Without the attribute both are no-ops.
// A kernel triggers only after its wait, so at most one kernel's blocks wait resident behind the
// running one (triggering first let any number of later kernels' blocks queue up, each holding
// shared memory). Most start with PDL_ENTRY(): wait, then trigger. The decode layer's kernels
// trigger later, once their own blocks are past the part that needs the SM most (the GEMVs after
// staging their rows, the attention after its key loop, the routing after its dot products), and
// read what is constant before they wait: the attention reads its metadata and block tables (the
// FP8 GEMVs no longer copy their first weight steps there: those copies delayed the row loads
// after the wait, see load_row). Graphs are captured with PDL only where
// Gpu::pdl_graphs (small batches, GpuModel::pdl_graph_batch): with trigger-at-entry it was slower
// or no faster in every measurement (runs 40-43; run 53: batch 1 7.05 against 6.81 ms).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_TRIGGER() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define PDL_TRIGGER()
#define PDL_WAIT()
#endif
#define PDL_ENTRY() \
  do {              \
    PDL_WAIT();     \
    PDL_TRIGGER();  \
  } while (0)

// Step timeline (builds with GLMFLEET_TRACE defined only: GLMFLEET_TRACE=1 at run time; nothing is
// compiled in otherwise). A kernel's warps keep up to TRACE_MARKS %globaltimer marks in registers
// (mark 0 at TRACE_DECL, then TRACE_MARK(1..7); helpers called by a kernel take its Trace through
// TRACE_PARAM / TRACE_ARG and mark with TRACE_MARK_P) and write them as one record when done
// (TRACE_FLUSH: one atomic a warp, after its last mark), for `gpu_perf --trace-step` and
// ops/perf/trace_summary.py: where a kernel's time goes (block start-up, row staging, the main
// loop, the tail). A record: marks[TRACE_MARKS], then tag | warp << 16 | SM << 24 | linear
// block << 32 (unset marks are 0).
#ifdef GLMFLEET_TRACE
#define TRACE_CAP (1 << 19)
#define TRACE_MARKS 8
__device__ u64 g_trace[TRACE_CAP][TRACE_MARKS + 1];
__device__ u32 g_trace_n;
__device__ __forceinline__ u64 gtime() {
  u64 t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
struct Trace {
  u64 ts[TRACE_MARKS];
  int tag;
  __device__ explicit Trace(int tag_) : tag(tag_) {
    ts[0] = gtime();
#pragma unroll
    for (int j = 1; j < TRACE_MARKS; j++) ts[j] = 0;
  }
  __device__ void flush() {
    if ((threadIdx.x & 31) != 0) return;
    u32 sm, i = atomicAdd(&g_trace_n, 1u);
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    if (i >= TRACE_CAP) return;
    u64 blk = blockIdx.x + (u64)gridDim.x * (blockIdx.y + (u64)gridDim.y * blockIdx.z);
    for (int j = 0; j < TRACE_MARKS; j++) g_trace[i][j] = ts[j];
    g_trace[i][TRACE_MARKS] = (u64)tag | (u64)(threadIdx.x >> 5) << 16 | (u64)sm << 24 | blk << 32;
  }
};
#define TRACE_DECL(tag) Trace trace_(tag)
#define TRACE_MARK(p) (trace_.ts[p] = gtime())
#define TRACE_FLUSH() trace_.flush()
#define TRACE_PARAM , Trace *trace_p
#define TRACE_ARG , &trace_
#define TRACE_NONE , nullptr
#define TRACE_MARK_P(p) (trace_p ? (void)(trace_p->ts[p] = gtime()) : (void)0)
#else
#define TRACE_DECL(tag) (void)0
#define TRACE_MARK(p) (void)0
#define TRACE_FLUSH() (void)0
#define TRACE_PARAM
#define TRACE_ARG
#define TRACE_NONE
#define TRACE_MARK_P(p) (void)0
#endif
// Trace tags (ops/perf/trace_summary.py names them)
#define TAG_GEMV 1
#define TAG_ROPE 2
#define TAG_ATTN 3
#define TAG_ROUTE 4
#define TAG_MOE_GU 5
#define TAG_MOE_DN 6
#define TAG_GEMV_ROUTE 7
#define TAG_MOE_GU_ROUTE 8

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

// The scale of an e4m3 group whose largest magnitude is `amax` (every quantizing kernel uses it, so
// the GEMV's activations round exactly as prep_rows' do).
__device__ __forceinline__ float e4m3_scale(float amax) { return fmaxf(amax / 448.0f, 1e-12f); }
// Activation scales of a K-column row rounded per `group` columns (one when the group spans it).
__device__ __forceinline__ int act_groups(int K, int group) {
  return group >= K ? 1 : (K + group - 1) / group;
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
  PDL_ENTRY();
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
  PDL_ENTRY();
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
  PDL_ENTRY();
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
  PDL_ENTRY();
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
  int ng = act_groups(K, group);
  if (ng == 1) {  // one scale per row: the whole block finds the row's max
    float am = 0.f;
#pragma unroll 4
    for (int j = threadIdx.x; j < K; j += blockDim.x) am = fmaxf(am, fabsf(PREP_VAL(j)));
    am = block_max(am, sh);
    float s = e4m3_scale(am);
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
    float s = e4m3_scale(am);
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

// A float read through L2 (not L1: it may have been written by another block of this kernel).
__device__ __forceinline__ float ld_cg(const float* p) {
  float v;
  asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}

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
  PDL_ENTRY();
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
  PDL_ENTRY();
  gemm_impl<16, true>(GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(256) gemm_fp8_m64(GEMM_ARGS) {
  PDL_ENTRY();
  gemm_impl<64, true>(GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(256) gemm_bf16_m16(GEMM_ARGS) {
  PDL_ENTRY();
  gemm_impl<16, false>(GEMM_PASS);
}
extern "C" __global__ void __launch_bounds__(256) gemm_bf16_m64(GEMM_ARGS) {
  PDL_ENTRY();
  gemm_impl<64, false>(GEMM_PASS);
}

// ---------------------------------------------------------------------------------------------
// Partial NeoX RoPE: dims j and j + rot / 2 (j < rot / 2) of a q or k head turn by pos * theta^(-2j
// / rot). Its cos and sin, for rope_kv and the QKV GEMV's epilogue alike.
__device__ __forceinline__ void rope_cs(float p, int j, int rot, float theta, float& c,
                                        float& s) {
  float a = p * (1.0f / powf(theta, (float)(2 * j) / (float)rot));
  c = cosf(a);
  s = sinf(a);
}

// "Paired" rotary dims (GpuLayer::qkv_paired): the QKV weight's first rot rows of each q and k head
// are stored so that a 16-row chunk of the GEMV holds 8 rotary pairs, dim j at row r and its
// partner j + rot / 2 at row r + 8 (rot a multiple of 16). The row where head dim j is stored.
__device__ __forceinline__ int rope_row(int j, int rot) {
  int half = rot / 2, hi = j >= half, i = hi ? j - half : j;
  return j < rot ? (i >> 3) * 16 + hi * 8 + (i & 7) : j;
}

// Where q, k and v of a step go: q [T, nh * d] f32; k and v to the caches [slots, nkv, d] at
// slots[t] (skipped when < 0), BF16, or E4M3 with unit scale when kv_fp8 (vLLM's fp8 KV cache
// without calibrated scales). Passed by value from the host (gpu/rope.rs QkvOut).
struct QkvOut {
  const int* pos;
  const int* slots;
  float* q;
  void* kc;
  void* vc;
  int nh, nkv, d, rot, kv_fp8;
  float theta;
};

// Head dim j of token t's head hi of kind 0 (q), 1 (k) or 2 (v), value v.
__device__ __forceinline__ void qkv_put(const QkvOut& o, int kind, int t, int hi, int j, float v) {
  if (kind == 0) {
    o.q[((size_t)t * o.nh + hi) * o.d + j] = v;
    return;
  }
  int slot = o.slots[t];
  if (slot < 0) return;
  size_t i = ((size_t)slot * o.nkv + hi) * o.d + j;
  void* c = kind == 1 ? o.kc : o.vc;
  if (o.kv_fp8)
    ((u8*)c)[i] = f2e4m3(v);
  else
    ((u16*)c)[i] = f2bf(v);
}

// QK-norm (optional), partial NeoX RoPE and the KV-cache write. qkv [T, ldq] f32 holds q at column
// 0, k at k_off, v at v_off (rotary dims paired, rope_row, when `paired`). One warp per (token,
// head) over q, k and v heads (qkv_put).
extern "C" __global__ void rope_kv(const float* qkv, int ldq, int k_off, int v_off, QkvOut o,
                                   const float* qn, const float* kn, float eps, int paired) {
  TRACE_DECL(TAG_ROPE);
  PDL_ENTRY();
  extern __shared__ float hbuf[];
  int nh = o.nh, nkv = o.nkv, d = o.d, rot = o.rot;
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
  if (kind == 2) {
    for (int j = lane; j < d; j += 32) qkv_put(o, 2, t, hi, j, src[j]);
    return;
  }
  for (int j = lane; j < d; j += 32) hb[j] = src[paired ? rope_row(j, rot) : j];
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
  float p = (float)o.pos[t];
  float outv[8];
#pragma unroll
  for (int i = 0; i < 8; i++) {
    int j = lane + 32 * i;
    if (j >= d) break;
    float v = hb[j];
    if (j < rot) {
      float c, s;
      rope_cs(p, j < half ? j : j - half, rot, o.theta, c, s);
      v = j < half ? hb[j] * c - hb[j + half] * s : hb[j] * c + hb[j - half] * s;
    }
    outv[i] = v;
  }
#pragma unroll
  for (int i = 0; i < 8; i++) {
    int j = lane + 32 * i;
    if (j >= d) break;
    qkv_put(o, kind, t, hi, j, outv[i]);
  }
  TRACE_MARK(1);
  TRACE_FLUSH();
}

// Two floats read through L2 (8-byte aligned).
__device__ __forceinline__ float2 ld_cg2(const float* p) {
  float2 v;
  asm volatile("ld.global.cg.v2.f32 {%0,%1}, [%2];" : "=f"(v.x), "=f"(v.y) : "l"(p));
  return v;
}

// Merges the key splits of attn_* for the (row, head) pairs m0, m0 + mstep, ... below mend (at most
// MERGE_P of them) of a (tile, kv head) whose splits are at pb, by one warp: out = sum_s exp(m_s -
// M) O_s / sum_s exp(m_s - M) l_s, written to out + o_of(m). The pairs' loads are in flight
// together (a dependent L2 round trip costs about a µs at batch 1): every split's (m, l) of every
// pair (a lane a split, nsplit <= 32) with the first 64 head dims (2 per lane) of every split
// (nsplit <= 16) and pair, then the next 64 dims. (One pair at a time, three in series in the
// last block, made a 7.4 µs tail, run 63.) Read through L2: the splits were written by other
// blocks.
#define MERGE_P 3

// Where the attention's output of (row, head) pair m of a (tile, kv head) goes: G query heads a
// KV head, the tile's rows from row0.
__device__ __forceinline__ float* attn_out_row(float* out, int row0, int m, int G, int nh,
                                               int kvh, int D) {
  return out + ((size_t)(row0 + m / G) * nh + kvh * G + m % G) * D;
}

template <typename OutOf>
__device__ void attn_merge(const float* pb, int m0, int mstep, int mend, int nsplit, int D,
                           OutOf o_of) {
  int lane = threadIdx.x & 31;
  float f[MERGE_P], L[MERGE_P];
  float2 v[MERGE_P][16];
  // the pairs' 64-dim slices from d0 of all splits, all in flight
  auto load = [&](int d0) {
    int d = d0 + 2 * lane;
#pragma unroll
    for (int p = 0; p < MERGE_P; p++) {
      int m = m0 + p * mstep;
#pragma unroll
      for (int sp = 0; sp < 16; sp++)
        v[p][sp] = (m < mend && sp < nsplit && d < D)
                       ? ld_cg2(pb + ((size_t)sp * 64 + m) * (D + 2) + d)
                       : make_float2(0.f, 0.f);
    }
  };
#pragma unroll
  for (int p = 0; p < MERGE_P; p++) {
    int m = m0 + p * mstep;
    bool ok = m < mend && lane < nsplit;
    const float* e = pb + ((size_t)lane * 64 + (ok ? m : 0)) * (D + 2) + D;
    f[p] = ok ? ld_cg(e) : NEG_INF;
    L[p] = ok ? ld_cg(e + 1) : 0.f;
  }
  // one copy of the loads' code (it is cold in the last block of every layer): the first slice's
  // loads go out in the loop's first pass, with the (m, l) loads still in flight (one round trip
  // to L2 fewer than after them)
#pragma unroll 1
  for (int d0 = 0; d0 < D; d0 += 64) {
    int d = d0 + 2 * lane;
    float2 a[MERGE_P];
    load(d0);
    if (d0 == 0)
#pragma unroll
      for (int p = 0; p < MERGE_P; p++) {
        float mx = warp_max(f[p]);
        f[p] = f[p] == NEG_INF ? 0.f : __expf(f[p] - mx);
        L[p] = warp_sum(L[p] * f[p]);
      }
#pragma unroll
    for (int p = 0; p < MERGE_P; p++) a[p] = make_float2(0.f, 0.f);
#pragma unroll
    for (int p = 0; p < MERGE_P; p++)
#pragma unroll
      for (int sp = 0; sp < 16; sp++) {
        float fs = __shfl_sync(0xffffffffu, f[p], sp);
        a[p].x += fs * v[p][sp].x;
        a[p].y += fs * v[p][sp].y;
      }
#pragma unroll
    for (int p = 0; p < MERGE_P; p++) {
      int m = m0 + p * mstep;
      if (m >= mend || d >= D) continue;
      float inv = L[p] > 0.f ? 1.f / L[p] : 0.f;
      *(float2*)(o_of(m) + d) = make_float2(a[p].x * inv, a[p].y * inv);
    }
  }
}

// Every block of the thread-block cluster has written what it shares (release), and can read the
// others' (acquire).
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;" ::: "memory");
}

// attn_merge of pair m by one warp for the blocks of a thread-block cluster (attn_impl's cl):
// split sp's (O, m, l) of the pair lies in the shared memory of the cluster's block of rank sp, at
// cb + m (D + 2) floats (cb: the address in the shared window, the same in every block); read
// after the cluster's barrier. The same sums in the same order as attn_merge.
template <typename OutOf>
__device__ void attn_merge_cluster(u32 cb, int m, int nsplit, int D, OutOf o_of) {
  int lane = threadIdx.x & 31;
  auto ld = [&](int sp, int off) {  // floats off, off + 1 of split sp's row of the pair
    u32 a;
    float2 v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
                 : "=r"(a)
                 : "r"(cb + (u32)((m * (D + 2) + off) * 4)), "r"(sp));
    asm volatile("ld.shared::cluster.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "r"(a));
    return v;
  };
  float2 ml = lane < nsplit ? ld(lane, D) : make_float2(NEG_INF, 0.f);
  float mx = warp_max(ml.x);
  float f = ml.x == NEG_INF ? 0.f : __expf(ml.x - mx);
  float L = warp_sum(ml.y * f);
  float inv = L > 0.f ? 1.f / L : 0.f;
  for (int d0 = 0; d0 < D; d0 += 64) {  // every lane at every shuffle (D 32: half the lanes idle)
    int d = d0 + 2 * lane;
    float2 v[16];
#pragma unroll
    for (int sp = 0; sp < 16; sp++)
      v[sp] = sp < nsplit && d < D ? ld(sp, d) : make_float2(0.f, 0.f);
    float2 a = make_float2(0.f, 0.f);
#pragma unroll
    for (int sp = 0; sp < 16; sp++) {
      float fs = __shfl_sync(0xffffffffu, f, sp);
      a.x += fs * v[sp].x;
      a.y += fs * v[sp].y;
    }
    if (d < D) *(float2*)(o_of(m) + d) = make_float2(a.x * inv, a.y * inv);
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
// (flash-decoding): with part != 0 each split writes its (m, l, O); with `done` the last split
// block of a (tile, kv head) to finish (a counter per pair, left at zero) merges them into out
// (attn_merge), else attn_combine does. With cl (BF16 caches), the z blocks of a (tile, kv head)
// are one thread-block cluster: the splits stay in their blocks' shared memory and every block
// merges a share of the pairs from all of them after the cluster's barrier (attn_merge_cluster).
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
                                          int bs, float* out, float* part, int* done, int nh,
                                          int nkv, float scale, int cl) {
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
  TRACE_DECL(TAG_ATTN);
  int tile = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z, nsplit = gridDim.z;
  if (tile >= *ntiles) return;
  int row0 = tiles[2 * tile], nrows = tiles[2 * tile + 1];
  int G = nh / nkv;
  int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
  int s = row_seq[row0];
  if (s < 0) {  // a padding row of a graph bucket: attends to nothing
    PDL_WAIT();
    if (split == 0) {  // the row's G heads of this KV head, consecutive
      float* o = attn_out_row(out, row0, 0, G, nh, kvh, D);
      for (int i = tid; i < G * D; i += blockDim.x) o[i] = 0.f;
    }
    return;
  }
  // where (row, head) pair m of the tile puts its output, and where this block puts its split's
  // (O, m, l) of pair m (D + 2 floats)
  // (cl: in shared memory, past the four-warp merge's sO, sM, sL; BF16 caches only: with it the
  // FP8 kernels spilled)
  if (F8) cl = 0;
  auto out_row = [&](int m) { return attn_out_row(out, row0, m, G, nh, kvh, D); };
  constexpr int SO = D + 8;  // the four-warp merge's row stride (floats): conflict-free stores
  float* cpart = (float*)smem + 4 * 16 * SO + 128;
  auto part_row = [&](int m) {
    if (cl) return cpart + (size_t)m * (D + 2);
    return part + ((((size_t)tile * nkv + kvh) * nsplit + split) * 64 + m) * (D + 2);
  };
  // the last of the pair's split blocks to get here merges the splits, a warp per MERGE_P (row,
  // head) pairs (a block-wide merge, (m, l) of all pairs first, then 4 outputs a thread over all
  // splits, was slower: 30.8 against 23.4 µs at batch 1, run 47)
  // cl: the grid's z blocks of a (tile, kv head) are one thread-block cluster, which keeps the
  // splits in shared memory and merges them there: every block its share of the pairs, a warp a
  // pair (12 of 16 blocks at batch 1), with no count and no round trip to L2. (Storing each split
  // into the shared memory of the block that merges its pair, one barrier fewer, was slower: the
  // merge 2.4 -> 1.5 µs, the stores 0.4 -> 1.0, and with the barrier each block passes before
  // storing into another, the first key tile landed 9 µs after the PDL wait; batch 1 5.02-5.06
  // against 4.74-4.76 ms, run 125.)
  __shared__ int last;
  auto merge_splits = [&]() {
    if (cl) {
      cluster_sync();
      int nw = blockDim.x >> 5;
      for (int m = split * nw + warp; m < nrows * G; m += nsplit * nw)
        attn_merge_cluster(smem_addr(cpart), m, nsplit, D, out_row);
      cluster_sync();  // the others' reads of this block's splits are done before it leaves
      return;
    }
    __threadfence();  // this block's split before its count
    __syncthreads();
    int* cnt = done + (size_t)tile * nkv + kvh;
    if (tid == 0) last = atomicAdd(cnt, 1) == nsplit - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (tid == 0) *cnt = 0;
    const float* pb = part + ((size_t)tile * nkv + kvh) * nsplit * 64 * (D + 2);
    int nw = blockDim.x >> 5;
    for (int m = warp; m < nrows * G; m += MERGE_P * nw)
      attn_merge(pb, m, nw, nrows * G, nsplit, D, out_row);
  };
  int nkeys = pos[row0 + nrows - 1] + 1;
  int nkt = (nkeys + KT - 1) / KT;
  int per = (nkt + nsplit - 1) / nsplit;
  int kt0 = split * per, kt1 = min(nkt, kt0 + per);
  // decode over several key tiles: every warp holds the same <= 16 pairs and takes a quarter of
  // each tile, and the block merges the four warps' states. With one tile (batch 1 at 1,024 keys:
  // 16 splits of one tile) warp 0 takes the whole tile and writes its state itself: that merge
  // was 3.9 µs of the attention's 12 at batch 1 (run 72's timeline), and with the split's merge
  // as it is now 5.57-5.62 against 5.45-5.48 ms a step (run 85). Warp 0 taking the tile a
  // quarter at a time (a quarter of the code) spilled the kernel: 5.79 ms. The four warps taking
  // the lone tile of a cluster's block, with the merge below, were 6% slower still (runs 124,
  // 126: the first tile landed 8.4 against 2.9 µs after the wait); its outputs also differed from
  // warp 0's by rel L2 2.6e-3 (each warp rounds P to 16 bits against its own 16 keys' maximum),
  // past the cluster parity test's 1e-4, which compares the same arithmetic merged two ways.
  bool wsplit = nrows * G <= 16 && kt1 - kt0 > 1;
  int mA = (wsplit ? 0 : warp) * 16 + gid, mB = mA + 8;
  int rA = mA / G, rB = mB / G;
  bool vA = rA < nrows, vB = rB < nrows;
  int posA = vA ? pos[row0 + rA] : -1, posB = vB ? pos[row0 + rB] : -1;
  // warps whose 16 (row, head) pairs are all past the tile's rows only help load K/V (in decode,
  // G = 12 real pairs leave three of the four warps idle)
  bool active = wsplit || (warp * 16) / G < nrows;
  const float* qA = q + ((size_t)(row0 + rA) * nh + kvh * G + mA % G) * D;
  const float* qB = q + ((size_t)(row0 + rB) * nh + kvh * G + mB % G) * D;
  u32 qf[D / 16][4];  // loaded after PDL_WAIT (rope_kv writes q)
  float o[D / 8][4];
#pragma unroll
  for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
    for (int i = 0; i < 4; i++) o[dt][i] = 0.f;
  float mrow[2] = {NEG_INF, NEG_INF}, lrow[2] = {0.f, 0.f};
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
  // The step's metadata (tiles, positions, block tables) was written before the step: read
  // before PDL_WAIT. q and the newest key (rope_kv's) only after it. (Copying the first tile's
  // older keys before the wait too took the copies out of the batch-1 timeline, 2.7 -> 1.5 µs,
  // but not the attention's end, and eager attention at batch 2-256 was 7-14% slower: runs 75-77;
  // the older keys of a cluster's blocks alone, batch 1 +1.6%, run 125.)
  int blk[PASSES];
  if (kt0 < kt1) blocks_of(kt0, blk);
  TRACE_MARK(1);
  PDL_WAIT();
  TRACE_MARK(2);
  if (kt0 < kt1) {
    issue(0, kt0, blk);
    if (kt0 + 1 < kt1) blocks_of(kt0 + 1, blk);
  }
#pragma unroll
  for (int ks = 0; ks < D / 16; ks++) {
    int c = ks * 16 + tig * 2;
    qf[ks][0] = vA ? pack16<F16>(qA[c] * scale, qA[c + 1] * scale) : 0u;
    qf[ks][1] = vB ? pack16<F16>(qB[c] * scale, qB[c + 1] * scale) : 0u;
    qf[ks][2] = vA ? pack16<F16>(qA[c + 8] * scale, qA[c + 9] * scale) : 0u;
    qf[ks][3] = vB ? pack16<F16>(qB[c + 8] * scale, qB[c + 9] * scale) : 0u;
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
    if (kt == kt0) TRACE_MARK(3);
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
  TRACE_MARK(4);
  // the next kernel's blocks may come in during the writes and the split merge (triggering at
  // the first tile or at exit was no faster, run 83)
  PDL_TRIGGER();
  TRACE_MARK(5);
  // merge the four warps' states (the stages are free once every copy has landed): a thread four
  // head dims of a pair at a time, from rows padded to D + 8 floats so the warps' stores hit
  // distinct banks (a value a thread from unpadded rows, 8-way conflicts, was 0.2-1.0% slower at
  // batch 2-64, run 126)
  if (wsplit) {
    asm volatile("cp.async.wait_group 0;");
    __syncthreads();
    float* sO = (float*)smem;
    float* sM = sO + 4 * 16 * SO;
    float* sL = sM + 64;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
      for (int i = 0; i < 4; i++)
        sO[(warp * 16 + gid + (i >> 1) * 8) * SO + dt * 8 + tig * 2 + (i & 1)] = o[dt][i];
    if (tig == 0) {
      sM[warp * 16 + gid] = mrow[0];
      sM[warp * 16 + gid + 8] = mrow[1];
      sL[warp * 16 + gid] = lrow[0];
      sL[warp * 16 + gid + 8] = lrow[1];
    }
    __syncthreads();
    for (int idx = tid; idx < nrows * G * (D / 4); idx += blockDim.x) {
      int m = idx / (D / 4), d = idx % (D / 4) * 4;
      float M = fmaxf(fmaxf(sM[m], sM[16 + m]), fmaxf(sM[32 + m], sM[48 + m]));
      float L = 0.f;
      float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
      if (M != NEG_INF)
#pragma unroll
        for (int w = 0; w < 4; w++) {
          float mw = sM[w * 16 + m];
          if (mw == NEG_INF) continue;
          float f = __expf(mw - M);
          L += sL[w * 16 + m] * f;
          float4 v = *(const float4*)(sO + (w * 16 + m) * SO + d);
          a = make_float4(a.x + v.x * f, a.y + v.y * f, a.z + v.z * f, a.w + v.w * f);
        }
      if (part) {
        float* pb = part_row(m);
        *(float2*)(pb + d) = make_float2(a.x, a.y);
        *(float2*)(pb + d + 2) = make_float2(a.z, a.w);
        if (d == 0) {
          pb[D] = M;
          pb[D + 1] = L;
        }
      } else {
        float4 r = L > 0.f ? make_float4(a.x / L, a.y / L, a.z / L, a.w / L)
                           : make_float4(0.f, 0.f, 0.f, 0.f);
        *(float4*)(out_row(m) + d) = r;
      }
    }
    TRACE_MARK(6);
    if (cl || (part && done)) merge_splits();
    TRACE_MARK(7);
    TRACE_FLUSH();
    return;
  }
  // Each of the lane's two rows as D / 8 float2 stores from one base pointer (dims 8 dt + 2 tig,
  // + 1), behind one branch a row: this epilogue's code is cold at every layer, and unrolled as 64
  // scalar stores, each with its own address and checks, the warps took 3.6 µs through it at
  // batch 1 (run 82's timeline), three of the four with nothing to store.
#pragma unroll
  for (int h = 0; h < 2; h++) {
    if (!(h ? vB : vA)) continue;
    int m = h ? mB : mA;
    float* dst = part ? part_row(m) : out_row(m);
    float l = lrow[h];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
      float a = o[dt][2 * h], b = o[dt][2 * h + 1];
      if (!part) {
        a = l > 0.f ? a / l : 0.f;
        b = l > 0.f ? b / l : 0.f;
      }
      *(float2*)(dst + dt * 8 + tig * 2) = make_float2(a, b);
    }
    if (part && tig == 0) {
      dst[D] = mrow[h];
      dst[D + 1] = l;
    }
  }
  TRACE_MARK(6);
  if (cl || (part && done)) merge_splits();
  TRACE_MARK(7);
  TRACE_FLUSH();
}

// attn_d{32,64,128} over a BF16 cache; attn_f8_d{32,64,128} over an FP8 one, widened to bf16 (three
// conversions a value), and attn_f8h_d{32,64,128} widened to f16 (half a conversion a value, f16
// mma). Separate kernels, so each keeps its own register budget. (attn_d*_cl instantiated for
// cluster launches, without the global-memory merge, measured the same: 116 against 167 KB of
// code at D 128, batch 1 -0.3% / 0.0%, run 111.)
#define ATTN_ARGS                                                                              \
  const float *q, const void *kc, const void *vc, const int *tiles, const int *ntiles,         \
      const int *row_seq, const int *pos, const int *btab, const int *btab_stride, int bs,     \
      float *out, float *part, int *done, int nh, int nkv, float scale, int cl
#define ATTN_PASS                                                                             \
  kc, vc, q, tiles, ntiles, row_seq, pos, btab, btab_stride, bs, out, part, done, nh, nkv, scale, \
      cl
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

// Merges the key splits of attn_* when the attention kernel does not (no `done` counters: tiles of
// several rows, where its last block's four warps would merge 24 or more pairs in series: the MTP
// verify step at batch 1 took 9.48 against 9.10 ms, run 46). A warp per (row, head) pair
// (attn_merge).
// Grid (tiles, kv heads, 8): the z blocks of a (tile, kv head) share its pairs.
extern "C" __global__ void attn_combine(const float* part, const int* tiles, const int* ntiles,
                                        const int* row_seq, int nsplit, float* out, int nh,
                                        int nkv, int D) {
  PDL_ENTRY();
  int tile = blockIdx.x, kvh = blockIdx.y;
  if (tile >= *ntiles) return;
  int row0 = tiles[2 * tile], nrows = tiles[2 * tile + 1];
  if (row_seq[row0] < 0) return;
  int G = nh / nkv;
  int warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const float* pb = part + ((size_t)tile * nkv + kvh) * nsplit * 64 * (D + 2);
  auto o_of = [&](int m) { return attn_out_row(out, row0, m, G, nh, kvh, D); };
  int step = nw * gridDim.z;
  for (int m = blockIdx.z * nw + warp; m < nrows * G; m += MERGE_P * step)
    attn_merge(pb, m, step, nrows * G, nsplit, D, o_of);
}

// ---------------------------------------------------------------------------------------------
// MoE router logits in f32: out[t, e] = xn[t] . gw[e]. Grid (tokens / 8, experts), 128 threads:
// the block's threads split the hidden dim, 16 bytes per load (H % 4 == 0), for 8 tokens at once.
extern "C" __global__ void router_logits(const float* xn, const float* gw, float* out, int T, int E,
                                         int H) {
  PDL_ENTRY();
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
  PDL_ENTRY();
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

// Routing of tokens [t0, t1) (at most TOPK_TOKENS) by the whole block: sigmoid scores, selection
// by score + correction bias within the best `tg` of `ng` groups (group score: sum of its two best
// biased scores; ng <= 32), top-k (k <= 32), weights = unbiased scores (normalised when `norm`)
// times `rscale`; ties go to the lower index. Every (token, expert) pair is ranked by one thread
// against all E scores in shared memory (and every (token, group) pair the same way), so the
// latency is one pass over E values, not k rounds of warp arg-max (a warp's 8 rounds for one
// token took 5.4 µs in moe_route's last block, run 69's timeline). The logits are read through
// L2 (moe_route reads other blocks' results). Scratch sh: TOPK_TOKENS * (2 E + 64) floats
// (topk_smem in engine.rs). Ends with a barrier (the scratch is reused by the next call).
#define TOPK_TOKENS 8
// Whether value u at index j ranks above value v at index i (higher first, ties to the lower index).
__device__ __forceinline__ int ranks_above(float u, int j, float v, int i) {
  return (u > v) | ((u == v) & (j < i));
}
// The rank of value v at index i among c [E] (how many rank above it); c 16-byte aligned.
__device__ __forceinline__ int rank_in(const float* c, int E, float v, int i) {
  int r = 0;
  if ((E & 3) == 0) {  // 16-byte loads
#pragma unroll 4
    for (int j = 0; j < E; j += 4) {
      float4 u = *(const float4*)(c + j);
      r += ranks_above(u.x, j, v, i) + ranks_above(u.y, j + 1, v, i) +
           ranks_above(u.z, j + 2, v, i) + ranks_above(u.w, j + 3, v, i);
    }
  } else {
    for (int j = 0; j < E; j++) r += ranks_above(c[j], j, v, i);
  }
  return r;
}
// The weight of the pick of rank r among the k picks' scores pw: normalised by their sum (in
// rank order, as the reference adds them) when norm, then scaled.
__device__ __forceinline__ float pick_weight(const float* pw, int r, int k, int norm,
                                             float rscale) {
  float w = pw[r];
  if (norm) {
    float sum = 0.f;
    for (int q = 0; q < k; q++) sum += pw[q];
    w /= (sum + 1e-20f);
  }
  return w * rscale;
}
__device__ void topk_block(const float* logits, const float* bias, int t0, int t1, int E, int k,
                           int ng, int tg, int norm, float rscale, int* ids, float* wts,
                           float* sh TRACE_PARAM) {
  int nt = t1 - t0, tid = threadIdx.x, bd = blockDim.x;
  float* sc = sh;                             // [nt][E] scores
  float* ch = sc + TOPK_TOKENS * E;           // [nt][E] biased scores, dropped groups at -inf
  float* gs = ch + TOPK_TOKENS * E;           // [nt][32] group scores, then the picks' scores
  int* pick = (int*)(gs + TOPK_TOKENS * 32);  // [nt][32] the experts by rank
  // the logits TOPK_U a thread at a time in flight (one after another, 8 tokens' scores took
  // 4.3 µs at batch 8, run 76's timeline)
  constexpr int TOPK_U = 8;
  for (int i0 = tid; i0 < nt * E; i0 += TOPK_U * bd) {
    float lg[TOPK_U];
#pragma unroll
    for (int u = 0; u < TOPK_U; u++) {
      int i = i0 + u * bd, t = i / E;
      lg[u] = i < nt * E ? ld_cg(logits + (size_t)(t0 + t) * E + (i - t * E)) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < TOPK_U; u++) {
      int i = i0 + u * bd, e = i % E;
      if (i >= nt * E) break;
      float s = 1.0f / (1.0f + expf(-lg[u]));
      sc[i] = s;
      ch[i] = s + bias[e];
    }
  }
  // ranks form a permutation unless scores are NaN: then unranked picks stay in range
  for (int i = tid; i < nt * 32; i += bd) pick[i] = (i & 31) % E;
  __syncthreads();
  TRACE_MARK_P(4);
  if (ng > 1) {
    int per = E / ng;
    for (int i = tid; i < nt * ng; i += bd) {
      int t = i / ng, g = i - t * ng;
      const float* c = ch + t * E + g * per;
      float a = NEG_INF, b = NEG_INF;
      for (int j = 0; j < per; j++) {
        float x = c[j];
        if (x > a) {
          b = a;
          a = x;
        } else if (x > b) {
          b = x;
        }
      }
      gs[t * 32 + g] = a + b;
    }
    __syncthreads();
    for (int i = tid; i < nt * ng; i += bd) {
      int t = i / ng, g = i - t * ng, r = 0;
      float v = gs[t * 32 + g];
      for (int j = 0; j < ng; j++) {
        float u = gs[t * 32 + j];
        r += ranks_above(u, j, v, g);
      }
      if (r >= tg)
        for (int e = g * per; e < (g + 1) * per; e++) ch[t * E + e] = NEG_INF;
    }
    __syncthreads();
  }
  for (int i = tid; i < nt * 32; i += bd) gs[i] = sc[(i >> 5) * E + pick[i]];
  __syncthreads();
  for (int i = tid; i < nt * E; i += bd) {
    int t = i / E, e = i - t * E;
    const float* c = ch + t * E;  // (the rows start 16-byte aligned)
    int r = rank_in(c, E, c[e], e);
    if (r < k) {
      pick[t * 32 + r] = e;
      gs[t * 32 + r] = sc[i];
    }
  }
  __syncthreads();
  for (int i = tid; i < nt * k; i += bd) {
    int t = i / k, r = i - t * k;
    ids[(size_t)(t0 + t) * k + r] = pick[t * 32 + r];
    wts[(size_t)(t0 + t) * k + r] = pick_weight(gs + t * 32, r, k, norm, rscale);
  }
  __syncthreads();
  TRACE_MARK_P(5);
}

// topk_block for one token a block (grid T; dynamic shared memory: its scratch): many tokens rank
// in parallel (8 tokens a block ranked 8 pairs a thread in series: routing at batch 64 took twice
// as long as the warp-per-token top-k before it, run 76).
extern "C" __global__ void moe_topk(const float* logits, const float* bias, int T, int E, int k,
                                    int ng, int tg, int norm, float rscale, int* ids, float* wts) {
  PDL_ENTRY();
  extern __shared__ float tsh[];
  int t = blockIdx.x;
  if (t < T)
    topk_block(logits, bias, t, t + 1, E, k, ng, tg, norm, rscale, ids, wts, tsh TRACE_NONE);
}

// The routing of a decode-size MoE step in one launch, from the residual stream x (T tokens): the
// post-attention RMSNorm folded into the router product, logits[t, e] = rs_t · Σ_h x[t, h] nw[h]
// gw[e, h] with rs_t = rsqrt(mean x[t]² + eps); each block also writes its slice of the normed rows
// xn = x · rs · nw (prep_rows' formula) for the experts; then, in the last block to finish (a
// counter in `done`, left at zero for the next launch), topk_block for every token. It replaces
// prep_rows + router_logits + moe_topk. Grid: E blocks of 128 threads (one expert each); dynamic
// shared memory: topk_block's scratch.
#define ROUTE_C 10  // 16-byte chunks of a row one moe_route thread loads at once (128 threads)
extern "C" __global__ void moe_route(const float* x, int ldx, const float* nw, float eps,
                                     float* xn, const float* gw, float* logits, int T, int E, int H,
                                     const float* bias, int k, int ng, int tg, int norm,
                                     float rscale, int* ids, float* wts, int* done) {
  TRACE_DECL(TAG_ROUTE);
  extern __shared__ float tsh[];
  __shared__ float red[4][8][2];
  __shared__ float rsv[8];
  __shared__ int last;
  int per = (H + gridDim.x - 1) / gridDim.x;  // columns of xn this block writes
  int e = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const float* wr = gw + (size_t)e * H;
  // (the router weights loaded into registers before PDL_WAIT made routing slower at batch 4-8 and
  // no faster at 1: run 70)
  PDL_WAIT();
  for (int t0 = 0; t0 < T; t0 += 8) {
    float acc[8], ss[8];
#pragma unroll
    for (int r = 0; r < 8; r++) acc[r] = ss[r] = 0.f;
    if (T == 1) {
      // one token: all of a thread's 16-byte chunks of the weights and the row loaded at once (H
      // up to 5,120 in one pass); the loop below took four dependent rounds of loads, 5 µs at
      // batch 1 (run 73's timeline). Several rows keep that loop: loaded a row at a time after
      // the weights, the dot products took 15.4 against 9.0 µs at batch 8 (run 76)
      for (int hb = 0; hb < H; hb += 512 * ROUTE_C) {
        float4 wv[ROUTE_C], nv[ROUTE_C], xv[ROUTE_C];
#pragma unroll
        for (int i = 0; i < ROUTE_C; i++) {
          int h = hb + (i * 128 + threadIdx.x) * 4;
          const float4 z4 = make_float4(0.f, 0.f, 0.f, 0.f);
          wv[i] = h < H ? *(const float4*)(wr + h) : z4;
          nv[i] = h < H ? *(const float4*)(nw + h) : z4;
          xv[i] = h < H ? *(const float4*)(x + h) : z4;
        }
#pragma unroll
        for (int i = 0; i < ROUTE_C; i++) {
          float4 w = wv[i], n = nv[i], v = xv[i];
          acc[0] += w.x * n.x * v.x + w.y * n.y * v.y + w.z * n.z * v.z + w.w * n.w * v.w;
          ss[0] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
      }
    } else {
#pragma unroll 2
      for (int h = threadIdx.x * 4; h < H; h += 512) {
        float4 wv = *(const float4*)(wr + h), nv = *(const float4*)(nw + h);
        wv = make_float4(wv.x * nv.x, wv.y * nv.y, wv.z * nv.z, wv.w * nv.w);
#pragma unroll
        for (int r = 0; r < 8; r++) {
          if (t0 + r < T) {
            float4 xv = *(const float4*)(x + (size_t)(t0 + r) * ldx + h);
            acc[r] += wv.x * xv.x + wv.y * xv.y + wv.z * xv.z + wv.w * xv.w;
            ss[r] += xv.x * xv.x + xv.y * xv.y + xv.z * xv.z + xv.w * xv.w;
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 8; r++) {
      float a = warp_sum(acc[r]), b = warp_sum(ss[r]);
      if (lane == 0) {
        red[warp][r][0] = a;
        red[warp][r][1] = b;
      }
    }
    __syncthreads();
    int r = threadIdx.x;
    if (r < 8 && t0 + r < T) {
      float a = red[0][r][0] + red[1][r][0] + red[2][r][0] + red[3][r][0];
      float b = red[0][r][1] + red[1][r][1] + red[2][r][1] + red[3][r][1];
      float rs = rsqrtf(b / (float)H + eps);
      logits[(size_t)(t0 + r) * E + e] = a * rs;
      rsv[r] = rs;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 8 * per; i += blockDim.x) {
      int rr = i / per, h = e * per + i % per;
      if (t0 + rr < T && h < H)
        xn[(size_t)(t0 + rr) * ldx + h] = x[(size_t)(t0 + rr) * ldx + h] * rsv[rr] * nw[h];
    }
    __syncthreads();
  }
  TRACE_MARK(1);
  PDL_TRIGGER();  // the next kernel's blocks may come in during the last block's top-k
  TRACE_MARK(2);
  __threadfence();  // this block's logits before its count
  if (threadIdx.x == 0) last = atomicAdd(done, 1) == (int)gridDim.x - 1;
  __syncthreads();
  if (!last) {
    TRACE_FLUSH();
    return;
  }
  TRACE_MARK(3);
  __threadfence();  // every block's logits (read through L2) after their counts
  if (threadIdx.x == 0) *done = 0;
  for (int t0 = 0; t0 < T; t0 += TOPK_TOKENS)
    topk_block(logits, bias, t0, min(T, t0 + TOPK_TOKENS), E, k, ng, tg, norm, rscale, ids, wts,
               tsh TRACE_ARG);
  TRACE_FLUSH();
}

// Expert-sorted layout of the A = T * k assignments, on the device (no host round trip): counts,
// offsets[E + 1], perm_src[pos] = token of the assignment at sorted position pos, inv[i] = sorted
// position of assignment i, and the GEMM tiles (expert, first row) of BM rows each.
extern "C" __global__ void moe_plan(const int* ids, int A, int E, int k, int BM, int* offsets,
                                    int* perm_src, int* inv, int* tiles, int* ntiles) {
  PDL_ENTRY();
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
  PDL_ENTRY();
  int t = blockIdx.x, h = blockIdx.y * blockDim.x + threadIdx.x;
  if (h >= H) return;
  float s = 0.f;
#pragma unroll 8
  for (int j = 0; j < k; j++)
    s += wts[(size_t)t * k + j] * y[(size_t)inv[(size_t)t * k + j] * ldy + h];
  x[(size_t)t * H + h] += s;
}

// ---------------------------------------------------------------------------------------------
// GEMVs for decode-size batches: y[r, c] = sum_k a[r, k] W[c, k] over a few rows. The tensor-core
// GEMM above stages W tiles through shared memory for 16 or 64 rows and needs a prep_rows launch
// before it; here each block prepares its input rows itself (prep_rows' modes: RMSNorm, SiLU·up;
// then rounded as the GEMM's operands are) and streams the weights once from global memory (FP8:
// through a small cp.async ring per warp, BF16: into registers), so a linear layer is one launch.
// The numerics are the GEMM's up to the order of f32 sums.
//   FP8 weights: the rows are quantized to e4m3 exactly as prep_rows does (per row and K group),
//     held as f16 (e4m3 values are exact in f16), and multiplied on tensor cores by f16 mma
//     m16n8k16 with the weights as the A operand (16 channels) and the rows as B (8 tokens),
//     widened e4m3x2 -> f16x2 by one cvt each. A lane (g, t) loads 16 weight bytes of rows c0 + g
//     and c0 + g + 8, bytes 16t..16t+15 of a 64-byte K step; four mmas take bytes 4j..4j+3 as their
//     k 2t, 2t+1 | 8+2t, 9+2t, and the token rows' values are picked to match. Products of e4m3
//     values are exact and summed in f32: the FP8 GEMM's numerics. Up to 8 rows cost the same
//     weight traffic. (Scalar widening ran at about 2 TB/s, compute-bound (run 34);
//     so did e4m3 mma.sync, which sm_90 runs as conversions plus f16 mmas (run 36's SASS).)
//   BF16 weights: f32 FMAs on widened bf16 (a shift) against rows rounded to bf16, up to 4 rows.
#define GEMV_CH 4  // bf16: channels a warp computes together, sharing each activation load

__device__ __forceinline__ uint4 ldg_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// An e4m3 value as f16 bits (exact).
__device__ __forceinline__ u16 e4m3_f16(u8 b) {
  u32 h2;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"((u16)b));
  return (u16)(h2 & 0xffff);
}

// Four values v / s as e4m3 (rounded as f2e4m3) widened to f16 bits, in order: two conversions
// of each kind where f2e4m3 and e4m3_f16 take four.
__device__ __forceinline__ uint2 quant4(float4 v, float s) {
  u16 lo, hi;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(v.y / s), "f"(v.x / s));
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(v.w / s), "f"(v.z / s));
  uint2 r;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r.x) : "h"(lo));
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r.y) : "h"(hi));
  return r;
}

__device__ __forceinline__ float amax4(float4 v) {
  return fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
}

// Columns [c0, c1) of a staged row xf (final values; c0, c1 multiples of 4) quantized by one warp
// to e4m3 values as f16 bits in q, with their scale in *sc: 16-byte loads and two-value
// conversions (scalar loops made the row staging a quarter of the MoE down GEMV, run 59).
__device__ void quant_cols_warp(const float* xf, int c0, int c1, u16* q, float* sc) {
  int lane = threadIdx.x & 31;
  float am = 0.f;
  for (int j = c0 + 4 * lane; j < c1; j += 128) am = fmaxf(am, amax4(*(const float4*)(xf + j)));
  float s = e4m3_scale(warp_max(am));
  for (int j = c0 + 4 * lane; j < c1; j += 128)
    *(uint2*)(q + j) = quant4(*(const float4*)(xf + j), s);
  if (lane == 0) *sc = s;
}

// A warp's FP8 weight bytes, streamed through shared memory: cp.async copies (L2 only) of its 16
// channels' K steps of FP8V_W bytes run FP8V_D - 1 steps ahead of the mma loop, in a ring of
// FP8V_D slots [16 rows][FP8V_W bytes]. Each copy instruction of the warp reads whole
// FP8V_W-byte runs of rows (32 lanes x 16 bytes: 512 / FP8V_W rows), so DRAM sees whole L2 lines.
// (Loading each lane's own mma fragment from global memory read 8 rows x 64 bytes per instruction,
// half lines: about 2 TB/s in the model, run 42/43.) The lanes read other lanes' bytes, so a slot
// is read after cp.async.wait_group and __syncwarp, and rewritten after the next __syncwarp; a
// row's 16-byte chunks are XOR-swizzled by the row's parity, so the fragment loads (rows g, g + 1
// in one phase) hit distinct banks. The steps run over `nchunks` chunks of 16 channels (c0 =
// cfirst + i * cstride), steps [s0, s1) of each, as one pipeline: a chunk's first copies are in
// flight during the previous chunk's last steps.
// At batch 1 (`once`: the dense GEMVs of one row, one token's experts; it also picks how many
// steps start() copies, FP8V_EARLY) the weights are copied with an L2 evict-first policy, so they
// do not push out what the step reads again soon: activations, the KV cache, metadata, the
// attention's split results and the kernels' own code. Without it every layer's 265 MB of weights
// flushed the 50 MB L2, and batch 1 took 6.24-6.29 against 5.94-5.99 ms (run 71, two processes
// on one machine; GLMFLEET_L2_HINT=0 builds without the hint); the attention's timeline went
// 20.7 -> 15.7 µs a layer (runs 67, 69).
// One ring a warp: FP8V_RING bytes of shared memory (FP8V_RING_BYTES in gemv.rs). 256-byte steps
// with 3 slots were slower for the dense GEMV (run 45: QKV 31.4 against 23.8 µs in the model,
// one block an SM), and so were at batch 1 (ops/perf/2026-11-30-gpu-weight-ring.md): 8 slots for
// the O projection (run 98, loop no shorter), the steps as 64-byte bulk copies (run 99, twice as
// slow) and as 16-row tensor-map boxes (run 102, loops 15-20% longer).
#define FP8V_W 128  // bytes of a row per step (a multiple of 64)
#define FP8V_D 4    // ring slots a warp
// Steps start() copies for one row or token (FP8V_EARLY) and for several (FP8V_EARLY_SEVERAL);
// the first take() copies the rest. One token's GEMVs lose when their copies wait for the
// rounding (batch 1: 5.30-5.41 ms with 0-1 steps early against 5.18-5.21 with 3), the
// several-token MoE GEMVs win (with 1: batch 2 8.37 against 8.49-8.52, batch 8 18.69-18.73
// against 18.92-19.00; run 100).
#ifndef FP8V_EARLY
#define FP8V_EARLY (FP8V_D - 1)
#endif
#ifndef FP8V_EARLY_SEVERAL
#define FP8V_EARLY_SEVERAL 1
#endif
static_assert(FP8V_EARLY <= FP8V_D - 1 && FP8V_EARLY_SEVERAL <= FP8V_D - 1,
              "a step copied before its slot is read would overwrite it");
#define FP8V_SLOT (16 * FP8V_W)
#define FP8V_RING (FP8V_D * FP8V_SLOT)
// A chunk is 16 weight rows from its first channel; with pair_off, 8 channels' rows and the rows
// pair_off past them (an expert's gate and up rows of the same channels: moe_gemv_impl's paired
// gate|up), the mma's rows 8-15. Rows of channels at or past n_end read as zeros.
struct Fp8vStream {
  u8* ring;
  const u8* W;
  size_t ldw;
  int n_end, kp, s0, s1, cstride, nchunks, pair_off;
  int ic, is, ichunk;  // the next step to copy: chunk index ichunk (channels from ic), step is
  int issued, taken, early;  // early: steps start() copies
  bool once;                 // copies with an L2 evict-first policy (pol)
  u64 pol;

  __device__ Fp8vStream(u8* ring_, const u8* W_, size_t ldw_, int n_end_, int kp_, int s0_,
                        int s1_, int cfirst, int cstride_, int nchunks_, bool once_,
                        int pair_off_ = 0)
      : ring(ring_), W(W_), ldw(ldw_), n_end(n_end_), kp(kp_), s0(s0_), s1(s1_),
        cstride(cstride_), nchunks(nchunks_), pair_off(pair_off_), ic(cfirst), is(s0_),
        ichunk(s1_ > s0_ ? 0 : nchunks_), issued(0), taken(0),
        early(once_ ? FP8V_EARLY : FP8V_EARLY_SEVERAL), once(once_) {
#ifdef GLMFLEET_NO_L2_HINT
    once = false;
#endif
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  }

  // Copies the next step into its slot (nothing past the last chunk), as one commit group.
  __device__ __forceinline__ void issue() {
    int lane = threadIdx.x & 31;
    if (ichunk < nchunks) {
      u32 slot = smem_addr(ring + (issued % FP8V_D) * FP8V_SLOT);
#pragma unroll
      for (int it = 0; it < FP8V_W / 32; it++) {
        int i = it * 32 + lane, r = i / (FP8V_W / 16), c = i % (FP8V_W / 16);
        int n = ic + (pair_off ? r & 7 : r);  // the row's channel
        int kb = is * FP8V_W + c * 16, row = n + (pair_off && r >= 8 ? pair_off : 0);
        bool ok = kb < kp && n < n_end;
        const u8* src = W + (ok ? (size_t)row * ldw + kb : 0);
        u32 dst = slot + r * FP8V_W + ((c ^ ((r & 1) << 2)) << 4);
        if (once)
          asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;" ::"r"(
                           dst),
                       "l"(src), "r"(ok ? 16 : 0), "l"(pol)
                       : "memory");
        else
          asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                       "r"(ok ? 16 : 0)
                       : "memory");
      }
      if (++is == s1) {
        is = s0;
        ic += cstride;
        ichunk++;
      }
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
    issued++;
  }

  // The first `early` steps: called once the staged rows' loads have landed (load_row,
  // stage_swiglu_warp), so they stream in while the rows are rounded.
  __device__ void start() {
    for (int i = 0; i < early; i++) issue();
  }

  // The slot of the next step, its bytes visible to the whole warp; the ring topped up to
  // FP8V_D - 1 steps ahead of it (one step, once start's are out).
  __device__ __forceinline__ const u8* take() {
    __syncwarp();  // every lane is done with the slot the copy below rewrites
    do
      issue();
    while (issued < taken + FP8V_D);
    asm volatile("cp.async.wait_group %0;" ::"n"(FP8V_D - 1) : "memory");
    __syncwarp();
    return ring + (taken++ % FP8V_D) * FP8V_SLOT;
  }
};

// One input row prepared by the whole block, in two calls, so a caller can start its weight
// stream in between (its copies then stream in while the row is rounded; issued before the row's
// loads, 32-108 KB of copies an SM sat ahead of them in the SM's queue to memory, and loading the
// row took 2.2-4.9 µs where it takes about 0.5 a pass without them: run 72's timeline).
// load_row: the row (SiLU·up applied for in_mode 2) and the norm weight (in_mode 1) read with
// 16-byte loads, 12 a thread in flight (one pass for K <= 12,288 at 256 threads: a pass a dependent
// round trip to L2), into shared scratch xf / wf [K]; returns the thread's share of the sum of
// squares (for in_mode 1). Ends with a barrier.
// round_row: the norm, the scales and the rounding, from shared memory. Output: e4m3 values (as
// f16 bits) q [kp] and one scale per `group` columns in sc, as prep_rows makes them, when
// group > 0 (a multiple of 4); else f32 rounded to bf16 in xs [kp] (xs may be xf). Ends with a
// barrier.
// K, up_off and the row start are multiples of 4 floats.
#define ROW_NB 12  // 16-byte loads a thread has in flight in load_row
__device__ __forceinline__ float load_row(const float* __restrict__ xr, int K, int in_mode,
                                          const float* __restrict__ w, int up_off, float* xf,
                                          float* wf) {
  int tid = threadIdx.x, bd = blockDim.x;
  const float4 z4 = make_float4(0.f, 0.f, 0.f, 0.f);
  constexpr int H = ROW_NB / 2;
  int per = in_mode == 0 ? ROW_NB : H;  // row chunks a pass (modes 1, 2: then as many of w / up)
  float ss = 0.f;
  for (int base = 0; base < K; base += 4 * bd * per) {
    float4 a[ROW_NB];
#pragma unroll
    for (int i = 0; i < ROW_NB; i++) {
      bool second = in_mode != 0 && i >= H;  // the norm weight's or the up half's chunk
      int j = base + 4 * ((second ? i - H : i) * bd + tid);
      const float* src = !second ? xr + j : (in_mode == 1 ? w + j : xr + j + up_off);
      a[i] = j < K ? *(const float4*)src : z4;
    }
#pragma unroll
    for (int c = 0; c < ROW_NB; c++) {
      if (c >= per) break;
      int j = base + 4 * (c * bd + tid);
      if (j >= K) continue;
      float4 v = a[c];
      if (in_mode == 2) {
        float4 u = a[c < H ? c + H : c];
        v = make_float4(silu(v.x) * u.x, silu(v.y) * u.y, silu(v.z) * u.z, silu(v.w) * u.w);
      }
      ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      *(float4*)(xf + j) = v;
      if (in_mode == 1) *(float4*)(wf + j) = a[c < H ? c + H : c];
    }
  }
  __syncthreads();
  return ss;
}

// The row xf [K] times rs and the norm weight wf, in place, this thread's 16-byte chunks
// (xf[j] rs wf[j]: the products every kernel's RMSNorm forms).
__device__ __forceinline__ void norm_in_place(float* xf, const float* wf, int K, float rs) {
  for (int j = 4 * threadIdx.x; j < K; j += 4 * blockDim.x) {
    float4 v = *(const float4*)(xf + j), w4 = *(const float4*)(wf + j);
    *(float4*)(xf + j) =
        make_float4(v.x * rs * w4.x, v.y * rs * w4.y, v.z * rs * w4.z, v.w * rs * w4.w);
  }
}

__device__ __forceinline__ void round_row(float ss, int K, int kp, int in_mode, float eps,
                                          int group, float* xf, const float* wf, u16* q,
                                          float* sc, float* xs, float* red) {
  int tid = threadIdx.x, bd = blockDim.x;
  float rs = 1.f;
  if (in_mode == 1) rs = rsqrtf(block_sum(ss, red) / (float)K + eps);
#define ROW_VAL(j) (in_mode == 1 ? xf[j] * rs * wf[j] : xf[j])
  if (group <= 0) {
    for (int j = tid; j < kp; j += bd) xs[j] = j < K ? bf2f(f2bf(ROW_VAL(j))) : 0.f;
    __syncthreads();
    return;
  }
#undef ROW_VAL
  // the norm applied in place first (the same products as ROW_VAL), so the values are final
  if (in_mode == 1) {
    norm_in_place(xf, wf, K, rs);
    __syncthreads();
  }
  int ng = act_groups(K, group);
  if (ng == 1) {
    float am = 0.f;
    for (int j = 4 * tid; j < K; j += 4 * bd) am = fmaxf(am, amax4(*(const float4*)(xf + j)));
    float s = e4m3_scale(block_max(am, red));
    for (int j = 4 * tid; j < K; j += 4 * bd)
      *(uint2*)(q + j) = quant4(*(const float4*)(xf + j), s);
    if (tid == 0) sc[0] = s;
  } else {
    int wid = tid >> 5, nw = bd >> 5;
    for (int g = wid; g < ng; g += nw)
      quant_cols_warp(xf, g * group, min(g * group + group, K), q, sc + g);
  }
  for (int j = K + tid; j < kp; j += bd) q[j] = 0;
  __syncthreads();
}

// load_row then round_row, for callers with no weight stream to start.
__device__ void stage_row(const float* __restrict__ xr, int K, int kp, int in_mode,
                          const float* __restrict__ w, float eps, int up_off, int group, float* xf,
                          float* wf, u16* q, float* sc, float* xs, float* red) {
  float ss = load_row(xr, K, in_mode, w, up_off, xf, wf);
  round_row(ss, K, kp, in_mode, eps, group, xf, wf, q, sc, xs, red);
}

// One SiLU·up row (a MoE slot's gate|up output; up_off 0: SiLU·up itself, as the paired
// gate|up writes it) quantized to e4m3 by one warp, the same way: 16-byte loads into the warp's
// scratch xf [K] first, then the scales and bytes from there; the warp's weight stream ws starts
// once the loads have landed. A lane has 12 loads in flight with up_off 0, 1,536 columns (one
// round trip to L2 for GLM-4.5-Air's 1,408 and GLM-4.5's 1,536), else 8 of each half. (Rounding
// that row from registers instead of shared memory measured the same: 3.1 against 3.4 µs of
// loads and staging at batch 1, run 89.)
__device__ __forceinline__ void stage_swiglu_warp(const float* __restrict__ xr, int K, int kp,
                                                  int up_off, int group, float* xf, u16* q,
                                                  float* sc, Fp8vStream& ws TRACE_PARAM) {
  int lane = threadIdx.x & 31;
  const float4 z4 = make_float4(0.f, 0.f, 0.f, 0.f);
  constexpr int NL = 8, PL = 12;  // 16-byte loads a lane has in flight: of a and u, of a plain row
  if (up_off == 0) {
    for (int base = 0; base < K; base += PL * 128) {
      float4 a[PL];
#pragma unroll
      for (int i = 0; i < PL; i++) {
        int j = base + 4 * (i * 32 + lane);
        a[i] = j < K ? *(const float4*)(xr + j) : z4;
      }
#pragma unroll
      for (int i = 0; i < PL; i++) {
        int j = base + 4 * (i * 32 + lane);
        if (j < K) *(float4*)(xf + j) = a[i];
      }
    }
  } else {
    for (int base = 0; base < K; base += NL * 128) {
      float4 a[NL], u[NL];
#pragma unroll
      for (int i = 0; i < NL; i++) {
        int j = base + 4 * (i * 32 + lane);
        a[i] = j < K ? *(const float4*)(xr + j) : z4;
        u[i] = j < K ? *(const float4*)(xr + j + up_off) : z4;
      }
#pragma unroll
      for (int i = 0; i < NL; i++) {
        int j = base + 4 * (i * 32 + lane);
        if (j >= K) continue;
        *(float4*)(xf + j) = make_float4(silu(a[i].x) * u[i].x, silu(a[i].y) * u[i].y,
                                         silu(a[i].z) * u[i].z, silu(a[i].w) * u[i].w);
      }
    }
  }
  __syncwarp();
  TRACE_MARK_P(2);
  ws.start();
  for (int c0 = 0, g = 0; c0 < K; c0 += group, g++)
    quant_cols_warp(xf, c0, min(c0 + group, K), q, sc + g);
  for (int j = K + lane; j < kp; j += 32) q[j] = 0;
  __syncwarp();
}

// The stream's next chunk (the warp's 16 channels from c0) against M <= 8 rows of e4m3 values as
// f16 (ah, stride kp; scales asc, ng per row), over its steps [s0, s1). A step is FP8V_W / 64
// sub-steps of 64 bytes: lane (g, t) takes bytes 16t..16t+15 of a sub-step of rows g and g + 8,
// four mmas. acc gets the mma C fragment (channels c0 + g / c0 + g + 8, rows 2t / 2t + 1): raw sums
// (smode 1, the caller scales) or with the block scales applied (smode 2: spb sub-steps per scale
// block, the range aligned to whole blocks). Channels at or past n_end are not scaled.
__device__ __forceinline__ void fp8v_dots(Fp8vStream& ws, int c0, const u16* ah,
                                          const float* asc, int ng, int M, int smode,
                                          const float* sw, int bn_blk, int spb, float (&acc)[4]) {
  int lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3, kp = ws.kp;
  int nsub = (kp + 63) / 64, sw_off = (gid & 1) << 2;
  float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int i = 0; i < 4; i++) acc[i] = 0.f;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const u16* brow = ah + (size_t)gid * kp + tig * 16;
  bool has_b = gid < M;
  int in_blk = 0;
  for (int st = ws.s0; st < ws.s1; st++) {
    const u8* slot = ws.take();
#pragma unroll
    for (int h = 0; h < FP8V_W / 64; h++) {
      int sub = st * (FP8V_W / 64) + h;
      if (sub >= nsub) break;
      int ch = ((h * 4 + tig) ^ sw_off) << 4;
      uint4 wa = *(const uint4*)(slot + gid * FP8V_W + ch);
      uint4 wb = *(const uint4*)(slot + (gid + 8) * FP8V_W + ch);
      int off = sub * 64;
      uint4 x0 = zero, x1 = zero;
      if (has_b && off + tig * 16 < kp) {
        x0 = *(const uint4*)(brow + off);
        x1 = *(const uint4*)(brow + off + 8);
      }
      u32 xb[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
      u32 q0[4] = {wa.x, wa.y, wa.z, wa.w};
      u32 q1[4] = {wb.x, wb.y, wb.z, wb.w};
#pragma unroll
      for (int q = 0; q < 4; q++) {
        u32 a[4] = {e4m3x2_to_f16x2((u16)q0[q]), e4m3x2_to_f16x2((u16)q1[q]),
                    e4m3x2_to_f16x2((u16)(q0[q] >> 16)), e4m3x2_to_f16x2((u16)(q1[q] >> 16))};
        u32 b[2] = {xb[2 * q], xb[2 * q + 1]};
        mma_f16(part, a, b);
      }
      if (smode == 2 && (++in_blk == spb || sub + 1 == nsub)) {
        int kblk = sub / spb;
        in_blk = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
          // the fragment row's channel, and its weight row (Fp8vStream)
          int n = c0 + gid + (i >= 2 && !ws.pair_off ? 8 : 0), m = tig * 2 + (i & 1);
          int wr = n + (i >= 2 ? ws.pair_off : 0);
          float f = (m < M && n < ws.n_end)
                        ? asc[m * ng + kblk] * sw[(size_t)(wr / bn_blk) * ng + kblk]
                        : 0.f;
          acc[i] += part[i] * f;
          part[i] = 0.f;
        }
      }
    }
  }
  if (smode != 2) {
#pragma unroll
    for (int i = 0; i < 4; i++) acc[i] = part[i];
  }
}

// Steps [s0, s1) of FP8V_W bytes for warp `si` of S splitting nsteps (whole scale blocks each
// when smode 2: bk_blk a multiple of 64 that divides or is divided by FP8V_W).
__device__ __forceinline__ void fp8v_slice(int nsteps, int S, int si, int smode, int bk_blk,
                                           int& s0, int& s1) {
  int per = (nsteps + S - 1) / S;
  if (smode == 2 && bk_blk > FP8V_W) {
    int spb = bk_blk / FP8V_W;
    per = (per + spb - 1) / spb * spb;
  }
  s0 = min(nsteps, si * per);
  s1 = min(nsteps, s0 + per);
}

// The QKV GEMV's epilogue for the chunk of 16 channels from c0 (acc: the mma C fragment, rows
// 2 tig / 2 tig + 1 of channels c0 + gid / c0 + gid + 8): scales and bias, then RoPE and the
// writes (qkv_put). A chunk lies within one head (d a multiple of 16); channels in padding rows
// between or after the parts are dropped.
__device__ __forceinline__ void qkv_chunk(const QkvOut& o, int c0, const float (&acc)[4], int M,
                                          int k_off, int v_off, int smode,
                                          const float* asc, int ng, const float* sw,
                                          const float* bias) {
  int lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
  int kind = 0, off = 0, heads = o.nh;
  if (c0 >= v_off) {
    kind = 2;
    off = v_off;
    heads = o.nkv;
  } else if (c0 >= k_off) {
    kind = 1;
    off = k_off;
    heads = o.nkv;
  }
  int hi = (c0 - off) / o.d, l0 = (c0 - off) % o.d;
  if (hi >= heads) return;
  bool rot = kind < 2 && l0 < o.rot;
  // a rotary chunk holds dims i (row gid) and i + rot / 2 (row gid + 8); else dims l0 + row
  int j0 = rot ? (l0 >> 4) * 8 + gid : l0 + gid, j1 = rot ? j0 + o.rot / 2 : j0 + 8;
#pragma unroll
  for (int h = 0; h < 2; h++) {
    int m = tig * 2 + h;
    if (m >= M) continue;
    float v[2];
#pragma unroll
    for (int u = 0; u < 2; u++) {
      int n = c0 + gid + 8 * u;
      v[u] = acc[h + 2 * u];
      if (smode == 1) v[u] *= asc[m * ng] * sw[n];
      if (bias) v[u] += bias[n];
    }
    if (rot) {
      float c, s;
      rope_cs((float)o.pos[m], j0, o.rot, o.theta, c, s);
      float a = v[0];
      v[0] = a * c - v[1] * s;
      v[1] = v[1] * c + a * s;
    }
    qkv_put(o, kind, m, hi, j0, v[0]);
    qkv_put(o, kind, m, hi, j1, v[1]);
  }
}

// A MoE layer's routing of one token, split between its O GEMV (gemv_fp8_route_*) and its MoE
// gate|up GEMV (moe_gemv_fp8_flat_route_*), with no launch of its own. The O GEMV's blocks add
// their channels of the attention's output to the residual stream x, and the router's product
// over those channels is theirs to take too: each block adds its partial logits,
// sum_{h in its channels} gw[e, h] nw[h] x[h] (moe_route's products), to acc[e] in 2^-32 fixed
// point (64-bit integer atomics: the sum does not depend on the order the blocks come in, so
// routing stays deterministic). Every gate|up block then loads x with the norm weight (as its
// staging would), computes rs = rsqrt(mean x^2 + eps) from them, scales acc into logits and ranks
// the experts itself (topk_one), and stages the normed row x rs nw for its slots. Its block 0
// writes ids and wts (for the down kernel); the last of its blocks to have read acc zeroes it
// (and the count `done`) for the next layer. That takes moe_route's launch, its wait for the O
// GEMV, its reads of x and its last block's round trips off a batch-1 layer's critical path (its
// dots took 15.7 µs, mostly waiting, run 115's timeline). (The O GEMV's last block summing the
// blocks' partials and ranking them was slower than moe_route: its tail took 10 µs and batch 1
// 5.22 against 5.02 ms, run 117.)
struct RouteArgs {
  const float* gw;          // [E][H] router weights (H: the O GEMV's N)
  const float* nw;          // [H] post-attention RMSNorm weight
  const float* bias;        // [E] score correction
  unsigned long long* acc;  // [E] the logits' sums before the norm's scale (zero between layers)
  int* ids;
  float* wts;
  int* done;  // gate|up blocks that have read acc (zero between launches)
  float eps, rscale;
  int E, k, norm;  // (no expert groups: topk_one)
};
#define ROUTE_FIX 4294967296.0f  // 2^32: acc's fixed point

// Before the PDL wait (constant data): this block's columns of gw and nw into rs_ ([E + 1][cb +
// 4] floats: a row padded 16 bytes, conflict-free float4 reads a thread a row) by cp.async (one
// commit group, the block's oldest: the weight ring's first wait_group takes it along), and the
// new x's columns (cb + 4 floats after them) zeroed (channels past N stay 0).
__device__ __forceinline__ void route_prefetch(const RouteArgs& ra, float* rs_, int c_base,
                                               int g16, int nch, int cstride, int N) {
  int cb = nch * g16, st = cb + 4, q4 = cb / 4;
  for (int i = threadIdx.x; i < (ra.E + 1) * q4; i += blockDim.x) {
    int e = i / q4, c = 4 * (i - e * q4), ch = c / g16;
    int h = c_base + ch * cstride + c % g16;
    bool ok = h < N;
    const float* src = e < ra.E ? ra.gw + (size_t)e * N + h : ra.nw + h;
    cp_async16(rs_ + e * st + c, ok ? src : ra.nw, ok);
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
  float* xo = rs_ + (ra.E + 1) * st;
  for (int i = threadIdx.x; i < cb; i += blockDim.x) xo[i] = 0.f;
}

// After the O GEMV's loop (xo holds the block's new x values, in its channel order): the block's
// partial logits added to acc.
__device__ __forceinline__ void route_partials(const RouteArgs& ra, const float* rs_, int cb) {
  int E = ra.E, st = cb + 4;
  asm volatile("cp.async.wait_all;" ::: "memory");
  __syncthreads();  // the copies of every thread, and every warp's xo
  const float* nwl = rs_ + E * st;
  const float* xo = nwl + st;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    float a = 0.f;
    for (int c = 0; c < cb; c += 4) {
      float4 v = *(const float4*)(xo + c), w = *(const float4*)(rs_ + e * st + c),
             n = *(const float4*)(nwl + c);
      a += w.x * n.x * v.x + w.y * n.y * v.y + w.z * n.z * v.z + w.w * n.w * v.w;
    }
    a = fminf(fmaxf(a, -0x1p30f), 0x1p30f);  // (the fixed point's range)
    atomicAdd(ra.acc + e, (unsigned long long)llrintf(a * ROUTE_FIX));
  }
}

// A unsigned 64-bit value read through L2.
__device__ __forceinline__ unsigned long long ld_cg_u64(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.global.cg.u64 %0, [%1];" : "=l"(v) : "l"(p));
  return v;
}

// topk_block for one token without expert groups (ng 1, as GLM-4.x routes), in a few KB of code:
// the general one is most of the routing kernels' SASS (moe_route 55 KB), fetched cold once a
// layer by every block, and ranking one token with it took 2.9 µs in the gate|up (run 121's
// timeline). The same scores, ranks (ties to the lower index), weights and defaults. lg [E]
// (shared), E a multiple of 4; sh: 2 E + 32 floats; ids, wts [k].
__device__ __noinline__ void topk_one(const float* lg, const float* bias, int E, int k, int norm,
                                      float rscale, int* ids, float* wts, float* sh) {
  int tid = threadIdx.x, bd = blockDim.x;
  float *sc = sh, *ch = sh + E, *ps = ch + E;  // scores, biased scores, the picks' scores
  for (int e = tid; e < E; e += bd) {
    float s = 1.0f / (1.0f + expf(-lg[e]));
    sc[e] = s;
    ch[e] = s + bias[e];
    if (e < k) {  // ranks form a permutation unless scores are NaN: then picks stay in range
      ids[e] = e;
      ps[e] = s;
    }
  }
  __syncthreads();
  for (int e = tid; e < E; e += bd) {
    int r = rank_in(ch, E, ch[e], e);
    if (r < k) {
      ids[r] = e;
      ps[r] = sc[e];
    }
  }
  __syncthreads();
  if (tid < k) wts[tid] = pick_weight(ps, tid, k, norm, rscale);
  __syncthreads();
}

// The gate|up side (moe_gemv_impl with ROUTE, one token, blockDim >= E), after route_prefetch:
// loads acc and the row x into xf, norms the row in place with the norm weight in wf (round_row's
// products; its rounding then takes it as plain, mode 0), and ranks the experts into sids / swts
// (shared) from the logits acc rs (tsh: the logits, then topk_one's scratch; bsh: the score
// bias); block 0 writes them to ids / wts. The count in `done` comes after the kernel's loop
// (route_release): its atomic's round trip would hold every thread at topk_one's first barrier.
__device__ void route_topk(const RouteArgs& ra, const float* x, int K, float* xf, const float* wf,
                           const float* bsh, float* tsh, int* sids, float* swts,
                           float* red TRACE_PARAM) {
  int tid = threadIdx.x, E = ra.E;
  unsigned long long a = tid < E ? ld_cg_u64(ra.acc + tid) : 0ull;
  asm volatile("cp.async.wait_all;" ::: "memory");  // this thread's copies of wf (load_row's
                                                     // barrier then shows everyone's)
  float ss = load_row(x, K, 0, 0, 0, xf, 0);
  TRACE_MARK_P(2);
  float rs = rsqrtf(block_sum(ss, red) / (float)K + ra.eps);  // as round_row computes it
  if (tid < E) tsh[tid] = (float)((double)(long long)a / (double)ROUTE_FIX) * rs;
  norm_in_place(xf, wf, K, rs);
  __syncthreads();
  TRACE_MARK_P(3);
  topk_one(tsh, bsh, E, ra.k, ra.norm, ra.rscale, sids, swts, tsh + E);
  if (blockIdx.x == 0 && tid < ra.k) {
    ra.ids[tid] = sids[tid];
    ra.wts[tid] = swts[tid];
  }
}

// Before the gate|up's PDL wait (constant data): the norm weight into wf [K] by cp.async (the
// block's only copies until route_topk waits for them), the score bias into bsh [E]. (Loaded after
// the wait, from DRAM, they were on the critical path: 2.5 µs to the row loaded, 3.3 to the
// experts ranked, run 119's timeline.)
__device__ __forceinline__ void route_prefetch_gu(const RouteArgs& ra, int K, float* wf,
                                                  float* bsh) {
  for (int j = 4 * threadIdx.x; j < K; j += 4 * blockDim.x) cp_async16(wf + j, ra.nw + j, true);
  asm volatile("cp.async.commit_group;" ::: "memory");
  for (int e = threadIdx.x; e < ra.E; e += blockDim.x) bsh[e] = ra.bias[e];
}

// The last of the gate|up's blocks to count itself (every block read acc long before: its
// loop is done) zeroes acc and the count for the next layer.
__device__ __forceinline__ void route_release(const RouteArgs& ra) {
  if (threadIdx.x == 0 && atomicAdd(ra.done, 1) == (int)gridDim.x - 1) {
    *ra.done = 0;
    for (int e = 0; e < ra.E; e++) ra.acc[e] = 0ull;
  }
}

// Dense FP8 GEMV: out[r, c] (= or += by omode 0 / 1) for M <= 8 rows (gathered through `rows`
// when non-null) prepared by in_mode, plus bias. A block's 8 warps are 8 / S channel groups of 16,
// each group's K split over S warps (few channels, long K: enough blocks to fill the GPU); block b
// takes the block-sized chunks b, b + grid, ... of the N / (16 * 8 / S). bk_blk a multiple of 64
// (smode 2). Dynamic shared memory: the weight rings (8 * FP8V_RING), M * kp f16
// (rows) + M * ng floats (scales, 4-aligned) + K floats of scratch (2 K for in_mode 1).
// QKV (gemv_fp8_qkv): the QKV projection of M tokens with rope_kv's work as its epilogue, q at
// column 0, k at k_off, v at v_off, rotary dims paired (rope_row): a lane's fragment holds both
// dims of a rotary pair for its two rows, so it turns them and puts q, k and v where rope_kv would
// (qkv_put; out, ldc and omode unused).
#define GEMV_FP8_ARGS                                                                          \
  const float *__restrict__ x, int ldx, const int *__restrict__ rows, int M, int K, int kp,     \
      int in_mode, const float *__restrict__ nw, float eps, int up_off, int group,             \
      const u8 *__restrict__ W, int ldw, const float *__restrict__ sw, int smode, int bn_blk,   \
      int bk_blk, const float *__restrict__ bias, int N, int S, float *__restrict__ out, int ldc, \
      int omode
#define GEMV_FP8_PASS                                                                       \
  x, ldx, rows, M, K, kp, in_mode, nw, eps, up_off, group, W, ldw, sw, smode, bn_blk, bk_blk, \
      bias, N, S, out, ldc, omode
// Kernels instantiated per path (the FP8 GEMVs per input mode and scale format) hold only that
// path's code: the arguments an instantiation fixes are overwritten with constants.
// GLMFLEET_GENERIC builds every instantiation with all the paths, as one kernel was before (an A/B
// baseline).
#ifdef GLMFLEET_GENERIC
#define PATHS_FIXED false
#else
#define PATHS_FIXED true
#endif
// Instantiated per input mode IN and scale format BLK (GEMV_FP8_KERNEL; PATHS_FIXED). Batch 1
// moved 1.5-4.5% with code compiled in that it never ran, and 16-27% of the GEMVs' stall samples
// waited on the instruction fetch (runs 104-107, ops/perf/2026-11-30-gpu-code-layout.md); with
// the paths fixed (these and the MoE GEMVs') batch 1-8 took 2.0-4.7% less than with all of them,
// and those stalls 2% (runs 109-111, ops/perf/2026-12-01-gpu-kernel-instantiations.md).
// BLK false: per-channel weight scales (smode 1) and one activation scale a row (group K); true:
// block scales (smode 2), activation scales per `group` columns.
// ROUTE (gemv_fp8_route_*): one plain row added to out (x), with the MoE routing as its epilogue
// (RouteArgs; ra unused otherwise).
template <bool QKV, int IN, bool BLK, bool ROUTE = false>
__device__ __forceinline__ void gemv_fp8_impl(GEMV_FP8_ARGS, const QkvOut& qo, int k_off,
                                              int v_off, const RouteArgs& ra) {
  TRACE_DECL(ROUTE ? TAG_GEMV_ROUTE : TAG_GEMV);
  if (PATHS_FIXED) {
    in_mode = IN;
    smode = BLK ? 2 : 1;
    if (!BLK) group = K;
  }
  if (ROUTE) {  // the one way it is launched (gemv_route_launch)
    M = 1;
    rows = nullptr;
    omode = 1;
  }
  extern __shared__ __align__(16) u8 fsm[];
  __shared__ float red[32];
  __shared__ float4 kred[8][32];
  int ng = act_groups(K, group);  // (per-channel instantiations: group K, so 1)
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gid = lane >> 2, tig = lane & 3;
  u16* aq = (u16*)(fsm + 8 * FP8V_RING);
  float* asc = (float*)((u8*)aq + ((2 * M * kp + 15) & ~15));
  float* xf = asc + ((M * ng + 3) & ~3);
  float* wf = xf + K;
  int G = 8 / S, si = warp % S;
  int chunks = ((N + 15) / 16 + G - 1) / G;
  int nch = (chunks - 1 - (int)blockIdx.x) / (int)gridDim.x + 1;  // grid <= chunks: >= 1
  int cfirst = (blockIdx.x * G + warp / S) * 16, cstride = gridDim.x * G * 16;
  int nsteps = (kp + FP8V_W - 1) / FP8V_W, s0, s1;
  fp8v_slice(nsteps, S, si, smode, bk_blk, s0, s1);
  // evict-first copies at one row only (at 2-8 rows they measured 0.5-1% slower, run 71)
  Fp8vStream ws(fsm + warp * FP8V_RING, W, ldw, N, kp, s0, s1, cfirst, cstride, nch, M == 1);
  float* rs_ = xf + K;  // ROUTE: its scratch (in_mode 0: no norm weight)
  if (ROUTE) route_prefetch(ra, rs_, blockIdx.x * G * 16, G * 16, nch, cstride, N);
  PDL_WAIT();
  TRACE_MARK(1);
  for (int r = 0; r < M; r++) {
    const float* xr = x + (size_t)(rows ? rows[r] : r) * ldx;
    float ss = load_row(xr, K, in_mode, nw, up_off, xf, wf);
    TRACE_MARK(2);
    // once the row's loads have landed (load_row); once the rows were staged, batch 1 took
    // 5.60-5.66 against 5.45-5.50 ms (run 85)
    if (r == 0) ws.start();
    round_row(ss, K, kp, in_mode, eps, group, xf, wf, aq + (size_t)r * kp, asc + r * ng, 0, red);
  }
  TRACE_MARK(3);
  PDL_TRIGGER();  // the next kernel's blocks may come in (and copy constant data) during the loop
  TRACE_MARK(4);
  for (int ch = 0; ch < nch; ch++) {
    int c0 = cfirst + ch * cstride;
    float acc[4];
    fp8v_dots(ws, c0, aq, asc, ng, M, smode, sw, bn_blk, bk_blk / 64, acc);
    if (S > 1) {
      kred[warp][lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      __syncthreads();
      if (si == 0)
        for (int o = 1; o < S; o++) {
          float4 t = kred[warp + o][lane];
          acc[0] += t.x;
          acc[1] += t.y;
          acc[2] += t.z;
          acc[3] += t.w;
        }
      __syncthreads();  // kred is rewritten for the next chunk
      if (si != 0) continue;
    }
    if (QKV) {
      qkv_chunk(qo, c0, acc, M, k_off, v_off, smode, asc, ng, sw, bias);
    } else {
#pragma unroll
      for (int i = 0; i < 4; i++) {
        int n = c0 + gid + (i >= 2 ? 8 : 0), m = tig * 2 + (i & 1);
        if (m >= M || n >= N) continue;
        float v = acc[i];
        if (smode == 1) v *= asc[m * ng] * sw[n];
        if (bias) v += bias[n];
        float* o = out + (size_t)m * ldc + n;
        if (ROUTE) {  // the new x, also kept for the routing's products
          float nv = *o + v;
          *o = nv;
          rs_[(ra.E + 1) * (nch * G * 16 + 4) + ch * G * 16 + (warp / S) * 16 + (n - c0)] = nv;
        } else if (omode == 1) {
          *o += v;
        } else {
          *o = v;
        }
      }
    }
  }
  TRACE_MARK(5);
  if (ROUTE) route_partials(ra, rs_, nch * G * 16);
  TRACE_FLUSH();
}

// gemv_fp8_{c,b}{0,1,2}: per-channel (c) or block (b) scales, input mode 0-2 (the host picks,
// gemv.rs); the QKV GEMV for normed rows (mode 1) only, the one it is used for.
#define GEMV_FP8_KERNEL(NAME, IN, BLK)                                       \
  extern "C" __global__ void __launch_bounds__(256, 2) NAME(GEMV_FP8_ARGS) { \
    gemv_fp8_impl<false, IN, BLK>(GEMV_FP8_PASS, QkvOut{}, 0, 0, RouteArgs{}); \
  }
GEMV_FP8_KERNEL(gemv_fp8_c0, 0, false)
GEMV_FP8_KERNEL(gemv_fp8_c1, 1, false)
GEMV_FP8_KERNEL(gemv_fp8_c2, 2, false)
GEMV_FP8_KERNEL(gemv_fp8_b0, 0, true)
GEMV_FP8_KERNEL(gemv_fp8_b1, 1, true)
GEMV_FP8_KERNEL(gemv_fp8_b2, 2, true)
#define GEMV_FP8_QKV_KERNEL(NAME, BLK)                                                   \
  extern "C" __global__ void __launch_bounds__(256, 2)                                   \
      NAME(GEMV_FP8_ARGS, QkvOut qo, int k_off, int v_off) {                             \
    gemv_fp8_impl<true, 1, BLK>(GEMV_FP8_PASS, qo, k_off, v_off, RouteArgs{});           \
  }
GEMV_FP8_QKV_KERNEL(gemv_fp8_qkv_c1, false)
GEMV_FP8_QKV_KERNEL(gemv_fp8_qkv_b1, true)
// gemv_fp8_route_{c,b}: the O GEMV of one token adding the router's products (route_partials)
#define GEMV_FP8_ROUTE_KERNEL(NAME, BLK)                                                 \
  extern "C" __global__ void __launch_bounds__(256, 2) NAME(GEMV_FP8_ARGS, RouteArgs ra) { \
    gemv_fp8_impl<false, 0, BLK, true>(GEMV_FP8_PASS, QkvOut{}, 0, 0, ra);               \
  }
GEMV_FP8_ROUTE_KERNEL(gemv_fp8_route_c, false)
GEMV_FP8_ROUTE_KERNEL(gemv_fp8_route_b, true)

// 8 bf16 of a 16-byte chunk as f32.
__device__ __forceinline__ void bf16_chunk(uint4 v, float* f) {
  u32 u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}

// Dot products of GEMV_CH bf16 weight rows (channels c0.., first `nc` real) with MR staged rows
// (xs, stride kp), warp-reduced into acc.
template <int MR>
__device__ __forceinline__ void bf16_dots(const u8* __restrict__ W, size_t ldw, int c0, int nc,
                                          const float* xs, int kp, float (&acc)[GEMV_CH][MR]) {
  constexpr int SLAB = MR >= 3 ? 2 : 4;  // 16-byte chunks per lane and channel in flight
  int lane = threadIdx.x & 31, nch = kp / 8;
#pragma unroll
  for (int ch = 0; ch < GEMV_CH; ch++)
#pragma unroll
    for (int r = 0; r < MR; r++) acc[ch][r] = 0.f;
  for (int s0 = 0; s0 < nch; s0 += 32 * SLAB) {
    uint4 wv[GEMV_CH][SLAB];
#pragma unroll
    for (int ch = 0; ch < GEMV_CH; ch++)
#pragma unroll
      for (int j = 0; j < SLAB; j++) {
        int ci = s0 + j * 32 + lane;
        wv[ch][j] = (ch < nc && ci < nch) ? ldg_stream(W + (size_t)(c0 + ch) * ldw + ci * 16)
                                         : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
    for (int j = 0; j < SLAB; j++) {
      int ci = s0 + j * 32 + lane;
      if (ci >= nch) continue;
      float xv[MR][8];
#pragma unroll
      for (int r = 0; r < MR; r++) {
        const float4* p = (const float4*)(xs + (size_t)r * kp + ci * 8);
        float4 t0 = p[0], t1 = p[1];
        xv[r][0] = t0.x, xv[r][1] = t0.y, xv[r][2] = t0.z, xv[r][3] = t0.w;
        xv[r][4] = t1.x, xv[r][5] = t1.y, xv[r][6] = t1.z, xv[r][7] = t1.w;
      }
#pragma unroll
      for (int ch = 0; ch < GEMV_CH; ch++) {
        float wf[8];
        bf16_chunk(wv[ch][j], wf);
#pragma unroll
        for (int r = 0; r < MR; r++)
#pragma unroll
          for (int e = 0; e < 8; e++) acc[ch][r] = fmaf(xv[r][e], wf[e], acc[ch][r]);
      }
    }
  }
#pragma unroll
  for (int ch = 0; ch < GEMV_CH; ch++)
#pragma unroll
    for (int r = 0; r < MR; r++) acc[ch][r] = warp_sum(acc[ch][r]);
}

// Dense BF16 GEMV over MR rows (the FP8 kernel's arguments less the quantization's). Grid: N / cpb
// blocks of 256 threads; dynamic shared memory MR * kp floats (+ K for in_mode 1).
template <int MR>
__device__ void gemv_bf16_impl(const float* __restrict__ x, int ldx, const int* __restrict__ rows,
                               int K, int kp, int in_mode, const float* __restrict__ nw, float eps,
                               int up_off, const u8* __restrict__ W, int ldw,
                               const float* __restrict__ bias, int N, int cpb,
                               float* __restrict__ out, int ldc, int omode) {
  extern __shared__ __align__(16) float gxs[];
  __shared__ float red[32];
  for (int r = 0; r < MR; r++) {
    const float* xr = x + (size_t)(rows ? rows[r] : r) * ldx;
    float* xs = gxs + r * kp;
    stage_row(xr, K, kp, in_mode, nw, eps, up_off, 0, xs, gxs + MR * kp, 0, 0, xs, red);
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  int cb = blockIdx.x * cpb, ce = min(N, cb + cpb);
  for (int c0 = cb + warp * GEMV_CH; c0 < ce; c0 += nwarps * GEMV_CH) {
    float acc[GEMV_CH][MR];
    bf16_dots<MR>(W, ldw, c0, min(GEMV_CH, ce - c0), gxs, kp, acc);
#pragma unroll
    for (int ch = 0; ch < GEMV_CH; ch++)
#pragma unroll
      for (int r = 0; r < MR; r++) {
        int c = c0 + ch;
        if (lane != ((ch * MR + r) & 31) || c >= ce) continue;
        float v = acc[ch][r];
        if (bias) v += bias[c];
        float* o = out + (size_t)r * ldc + c;
        if (omode == 1)
          *o += v;
        else
          *o = v;
      }
  }
}

#define GEMV_BF16_ARGS                                                                        \
  const float *x, int ldx, const int *rows, int K, int kp, int in_mode, const float *nw,      \
      float eps, int up_off, const u8 *W, int ldw, const float *bias, int N, int cpb, float *out, \
      int ldc, int omode
#define GEMV_BF16_KERNEL(MR)                                                                  \
  extern "C" __global__ void __launch_bounds__(256) gemv_bf16_##MR(GEMV_BF16_ARGS) {          \
    PDL_ENTRY();                                                                                \
    gemv_bf16_impl<MR>(x, ldx, rows, K, kp, in_mode, nw, eps, up_off, W, ldw, bias, N, cpb, out, \
                       ldc, omode);                                                           \
  }
GEMV_BF16_KERNEL(1)
GEMV_BF16_KERNEL(2)
GEMV_BF16_KERNEL(3)
GEMV_BF16_KERNEL(4)

// MoE experts for decode-size batches: one block per (slice of cpb channels, token), warp j on
// slot j of the token (its j-th routed expert; warp k the shared expert when Wsh is given, with
// the same shapes and format). No plan, no gathered copy, no combine launch.
// down 0 (gate|up): the token's normed row x[tok] is staged once for all warps; slot j writes
//   out[tok * k + j] and the shared expert out[T * k + tok] (row stride ldo). GU (FP8 gate|up
//   alone: moe_gemv_fp8_gu, moe_gemv_fp8_flat) with up_off
//   (the up rows' offset, N / 2): "paired", a chunk is 8 channels' gate and up rows (one mma's
//   16 rows, Fp8vStream::pair_off) and the slot writes SiLU(gate)·up, up_off columns, so the
//   down kernel loads half the row and no SiLU (its row load took 3.8 µs at batch 1, run 83).
// down 1: slot j stages its own row of x (the gate|up output, rows numbered as above) as
//   SiLU(gate)·x[+up_off] (up_off 0: as it is); the block then adds sum_j wts[tok, j] * y_j (+ the
//   shared y) to out[tok] (moe_combine fused, no atomics: one block owns each output element).
// FP8: cpb a multiple of a chunk's output columns (16; 8 paired), rows staged as e4m3 values in
// f16 + scales, the weights streamed through a ring per warp (Fp8vStream); BF16: rows as f32.
// FLAT (FP8 gate|up, one token: moe_gemv_fp8_flat): warp w of block b takes unit b * warps + w of
// the token's slots x chunks (slot-major; warps past the last unit idle), so the
// host can size blocks to give every SM the same number of units (GLM-4.5-Air: 9 x 176 = 1,584 =
// 132 SMs x 12 warps). Slot-per-warp blocks of 16 channels put 176 blocks on 132 SMs, whose doubly
// loaded SMs finished 8 µs after the rest (run 59's timeline).
// Dynamic shared memory: (FP8) slots weight rings of FP8V_RING bytes, the
// staged rows (down ? slots : 1) and their scales, slots * cpb floats, then (FP8) K floats of
// staging scratch per staged row.
// ROUTE (moe_gemv_fp8_flat_route_*: FP8 gate|up, flat, one token): x is the residual stream, and
// the block routes the token itself (route_topk; ids and wts are written, not read), then stages
// x normed. Its scratch past the staging's K floats: K floats (the norm weight), then
// route_topk's: the logits and topk_one's scratch (3 E + 32 floats), 32 ids, 32 weights and the
// score bias (E floats).
template <bool FP8, bool FLAT, bool GU, bool BLK, bool SILU = false, bool ROUTE = false>
__device__ void moe_gemv_impl(const float* __restrict__ x, int ldx, int T, int k,
                              const int* __restrict__ ids, const float* __restrict__ wts, int K,
                              int kp, int up_off, int group, const u8* __restrict__ W,
                              long long w_gstride, int ldw, const float* __restrict__ sw,
                              long long sw_gstride, const u8* __restrict__ Wsh,
                              const float* __restrict__ swsh, int smode, int bn_blk, int bk_blk,
                              int N, int cpb, float* __restrict__ out, int ldo, int down,
                              const RouteArgs& ra) {
  // FP8: gate|up (GU) and down are separate kernels, each without the other's paths
  if (GU) down = 0;
  else if (FP8) down = 1;
  if (FP8 && PATHS_FIXED) {  // the scale format as gemv_fp8_impl's BLK
    smode = BLK ? 2 : 1;
    if (!BLK) group = K;
    if (!GU && !SILU) up_off = 0;  // FP8 down: its rows SiLU·up already (paired gate|up)
  }
  TRACE_DECL(ROUTE ? TAG_MOE_GU_ROUTE : TAG_MOE_GU + down);
  // ROUTE: marks 1-3 are the wait's end and route_topk's, mark 4 the experts known, then the
  // kernel's own 3-5 are 5-7 (its 2, the row loaded, is route_topk's)
#define GU_MARK(p) TRACE_MARK(!ROUTE ? (p) : (p) == 1 ? 4 : (p) + 2)
  extern __shared__ __align__(16) u8 msm[];
  __shared__ float red[32];
  int tok = blockIdx.y, lane = threadIdx.x & 31, j = threadIdx.x >> 5;
  int slots = blockDim.x >> 5, nrows = down ? slots : 1;  // (FLAT: warps, not slots)
  bool paired = GU && up_off > 0;  // (with the down paths compiled in it spilled)
  int nout = paired ? up_off : N, cw = paired ? 8 : 16;  // output columns, columns a chunk
  int cb = blockIdx.x * cpb, ce = min(nout, cb + cpb);
  if (FLAT) {
    int nchunk = (nout + cw - 1) / cw, u = blockIdx.x * slots + j;
    j = u / nchunk;
    cb = (u % nchunk) * cw;
    ce = min(nout, cb + cw);
    if (j >= k + (Wsh ? 1 : 0)) {  // idle: no weights, but at the block's barriers
      j = 0;
      ce = cb;
    }
  }
  bool shared = Wsh && j == k;
  int row = shared ? T * k + tok : tok * k + j;
  int ng = FP8 ? act_groups(K, group) : 0;
  size_t row_bytes = FP8 ? kp * 2 : kp * 4;
  u8* ring = msm + (threadIdx.x >> 5) * FP8V_RING;  // FP8: the weight rings come first
  u8* rows_s = msm + (FP8 ? slots * FP8V_RING : 0);
  float* sc_s = (float*)(rows_s + ((nrows * row_bytes + 15) & ~(size_t)15));
  float* part = sc_s + ((nrows * ng + 3) & ~3);
  float* xf = part + slots * cpb;  // FP8: staging scratch, K floats per staged row
  float* tsh = xf + 2 * K;
  int* sids = (int*)(tsh + 3 * ra.E + 32);
  float* bsh = (float*)(sids + 64);
  if (ROUTE) route_prefetch_gu(ra, K, xf + K, bsh);
  PDL_WAIT();  // the expert ids (ROUTE: acc and the row) come from the previous kernels
  if (ROUTE) TRACE_MARK(1);
  if (ROUTE)  // the row is loaded and normed here
    route_topk(ra, x + (size_t)tok * ldx, K, xf, xf + K, bsh, tsh, sids, (float*)(sids + 32),
               red TRACE_ARG);
  const u8* Wj = W;
  const float* swj = sw;
  if (shared) {
    Wj = Wsh;
    swj = swsh;
  } else {
    int e = ROUTE ? sids[j] : ids[(size_t)tok * k + j];
    Wj += (long long)e * w_gstride;
    if (sw) swj += (long long)e * sw_gstride;
  }
  int srow = down ? j : 0;
  u8* my_row = rows_s + srow * row_bytes;
  u16* my_q = (u16*)my_row;
  if (FP8) {
    int nsteps = (kp + FP8V_W - 1) / FP8V_W, gid = lane >> 2, tig = lane & 3;
    // one token reads each expert's weights once; several share the experts they pick (and all
    // the shared one), whose weights L2 then keeps for the next token's blocks (evict-first
    // copies, and evict-normal ones too, made batch 4-8 slower: runs 69, 70)
    Fp8vStream ws(ring, Wj, ldw, ce, kp, 0, nsteps, cb, cw, (ce - cb + cw - 1) / cw, T == 1,
                  paired ? up_off : 0);
    GU_MARK(1);
    if (down)  // each warp starts its stream once its own row's loads have landed
      stage_swiglu_warp(x + (size_t)row * ldx, K, kp, up_off, group, xf + (size_t)j * K, my_q,
                        sc_s + j * ng, ws TRACE_ARG);
    else {
      // (ROUTE: the row is loaded and normed already)
      float ss = ROUTE ? 0.f : load_row(x + (size_t)tok * ldx, K, 0, 0, 0, xf, 0);
      if (!ROUTE) GU_MARK(2);
      ws.start();  // once the row's loads have landed
      round_row(ss, K, kp, 0, 0.f, group, xf, 0, my_q, sc_s, 0, red);
    }
    const float* my_sc = sc_s + srow * ng;
    GU_MARK(3);
    PDL_TRIGGER();  // the next kernel's blocks may come in during the loop
    GU_MARK(4);
    for (int c0 = cb; c0 < ce; c0 += cw) {
      float acc[4];
      fp8v_dots(ws, c0, my_q, my_sc, ng, 1, smode, swj, bn_blk, bk_blk / 64, acc);
      if (tig != 0) continue;
      if (paired) {  // acc[0] channel c0 + gid's gate, acc[2] its up (the row's only token)
        int n = c0 + gid;
        if (n >= ce) continue;
        float gt = acc[0], up = acc[2];
        if (smode == 1) {
          gt *= my_sc[0] * swj[n];
          up *= my_sc[0] * swj[n + up_off];
        }
        out[(size_t)row * ldo + n] = silu(gt) * up;
        continue;
      }
#pragma unroll
      for (int i = 0; i < 4; i += 2) {
        int n = c0 + gid + (i >= 2 ? 8 : 0);
        if (n >= ce) continue;
        float v = acc[i];
        if (smode == 1) v *= my_sc[0] * swj[n];
        if (down)
          part[j * cpb + (n - cb)] = v;
        else
          out[(size_t)row * ldo + n] = v;
      }
    }
  } else {
    float* xs = (float*)my_row;
    GU_MARK(1);
    PDL_TRIGGER();
    GU_MARK(4);
    if (down) {
      const float* xr = x + (size_t)row * ldx;
      for (int c = lane; c < kp; c += 32)
        xs[c] = c < K ? bf2f(f2bf(silu(xr[c]) * xr[c + up_off])) : 0.f;
      __syncwarp();
    } else {
      stage_row(x + (size_t)tok * ldx, K, kp, 0, 0, 0.f, 0, 0, xs, 0, 0, 0, xs, red);
    }
    for (int c0 = cb; c0 < ce; c0 += GEMV_CH) {
      float acc[GEMV_CH][1];
      bf16_dots<1>(Wj, ldw, c0, min(GEMV_CH, ce - c0), xs, kp, acc);
#pragma unroll
      for (int ch = 0; ch < GEMV_CH; ch++) {
        int c = c0 + ch;
        if (lane != ch || c >= ce) continue;
        if (down)
          part[j * cpb + (c - cb)] = acc[ch][0];
        else
          out[(size_t)row * ldo + c] = acc[ch][0];
      }
    }
  }
  GU_MARK(5);
  if (!down) {
    if (ROUTE) route_release(ra);
    TRACE_FLUSH();
    return;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < ce - cb; c += blockDim.x) {
    float s = 0.f;
    for (int i = 0; i < k; i++) s += wts[(size_t)tok * k + i] * part[i * cpb + c];
    if (slots > k) s += part[k * cpb + c];
    out[(size_t)tok * ldo + cb + c] += s;
  }
  TRACE_FLUSH();
#undef GU_MARK
}

#define MOE_GEMV_THREADS 288
#define MOE_GEMV_ARGS                                                                          \
  const float *x, int ldx, int T, int k, const int *ids, const float *wts, int K, int kp,      \
      int up_off, int group, const u8 *W, long long w_gstride, int ldw, const float *sw,       \
      long long sw_gstride, const u8 *Wsh, const float *swsh, int smode, int bn_blk, int bk_blk, \
      int N, int cpb, float *out, int ldo, int down
#define MOE_GEMV_PASS                                                                        \
  x, ldx, T, k, ids, wts, K, kp, up_off, group, W, w_gstride, ldw, sw, sw_gstride, Wsh, swsh, \
      smode, bn_blk, bk_blk, N, cpb, out, ldo, down
// Two blocks per SM for k = 8 routed + 1 shared (GLM-4.x): 288 threads (the host checks). Each FP8
// kernel per scale format, _c per-channel and _b block (gemv_fp8_impl's BLK). FP8 down alone (at 96
// registers, with gate|up's paths in it spilled), on SiLU·up rows (paired gate|up) or, _silu,
// applying SiLU·up itself (up_off given: 42 against 28 KB of code, 96 against 64 registers);
// gate|up alone (paired when up_off is given); flat: gate|up of one token, units of (slot, chunk)
// spread evenly over up to 16 warps a block.
#define MOE_GEMV_FP8_KERNEL(NAME, THREADS, BPS, FLAT, GU, BLK, SILU)                  \
  extern "C" __global__ void __launch_bounds__(THREADS, BPS) NAME(MOE_GEMV_ARGS) {    \
    moe_gemv_impl<true, FLAT, GU, BLK, SILU>(MOE_GEMV_PASS, RouteArgs{});             \
  }
MOE_GEMV_FP8_KERNEL(moe_gemv_fp8_dn_c, MOE_GEMV_THREADS, 2, false, false, false, false)
MOE_GEMV_FP8_KERNEL(moe_gemv_fp8_dn_b, MOE_GEMV_THREADS, 2, false, false, true, false)
MOE_GEMV_FP8_KERNEL(moe_gemv_fp8_dn_c_silu, MOE_GEMV_THREADS, 2, false, false, false, true)
MOE_GEMV_FP8_KERNEL(moe_gemv_fp8_dn_b_silu, MOE_GEMV_THREADS, 2, false, false, true, true)
MOE_GEMV_FP8_KERNEL(moe_gemv_fp8_gu_c, MOE_GEMV_THREADS, 2, false, true, false, false)
MOE_GEMV_FP8_KERNEL(moe_gemv_fp8_gu_b, MOE_GEMV_THREADS, 2, false, true, true, false)
MOE_GEMV_FP8_KERNEL(moe_gemv_fp8_flat_c, 512, 1, true, true, false, false)
MOE_GEMV_FP8_KERNEL(moe_gemv_fp8_flat_b, 512, 1, true, true, true, false)
// flat gate|up routing its token (RouteArgs)
#define MOE_GEMV_ROUTE_KERNEL(NAME, BLK)                                                    \
  extern "C" __global__ void __launch_bounds__(512, 1) NAME(MOE_GEMV_ARGS, RouteArgs ra) { \
    moe_gemv_impl<true, true, true, BLK, false, true>(MOE_GEMV_PASS, ra);                 \
  }
MOE_GEMV_ROUTE_KERNEL(moe_gemv_fp8_flat_route_c, false)
MOE_GEMV_ROUTE_KERNEL(moe_gemv_fp8_flat_route_b, true)
extern "C" __global__ void __launch_bounds__(MOE_GEMV_THREADS, 2) moe_gemv_bf16(MOE_GEMV_ARGS) {
  moe_gemv_impl<false, false, false, false>(MOE_GEMV_PASS, RouteArgs{});
}

// ---------------------------------------------------------------------------------------------
// Sampling: temperature 0 -> arg-max; otherwise arg-max of logit / T + Gumbel noise (an exact
// sample from softmax(logit / T)), the noise a counter-based hash of (seed, token). Ties -> lower id.
// Two kernels: sample_part's grid (rows, SAMPLE_SPLITS) each take a slice of the vocabulary and
// write their best (value, id); sample_rows merges a row's slices with one warp.
#define SAMPLE_SPLITS 64
extern "C" __global__ void sample_part(const float* logits, int V, int valid, const float* temps,
                                       const u64* seeds, const float* thr, float* pv, int* pi) {
  PDL_ENTRY();
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
  PDL_ENTRY();
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
  PDL_ENTRY();
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
  PDL_ENTRY();
  for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    w[i] = f2e4m3((uniform01(seed, i) * 2.f - 1.f) * 448.f);
}

extern "C" __global__ void fill_bf16(u16* w, u64 n, u64 seed, float amp) {
  PDL_ENTRY();
  for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    w[i] = f2bf((uniform01(seed, i) * 2.f - 1.f) * amp);
}

extern "C" __global__ void fill_f32_rand(float* w, u64 n, u64 seed, float amp) {
  PDL_ENTRY();
  for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    w[i] = (uniform01(seed, i) * 2.f - 1.f) * amp;
}

extern "C" __global__ void fill_f32(float* w, u64 n, float v) {
  PDL_ENTRY();
  for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
    w[i] = v;
}
