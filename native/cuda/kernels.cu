// kernels.cu — the CUDA backend's device code, fp32, one extern "C" kernel per op (or op phase) of the Backend
// seam; semantics are exactly cpu/ops.hpp's (shapes, accumulate vs overwrite). Compiled by nvcc into a fatbin
// (sm_80/86/89/90 + PTX) that backend_cuda.cpp loads with the driver API, so the host side links no CUDA library.
//
// STATUS: compiled, run under cuemu (the kernels as C++ on the CPU), NOT yet run on a GPU. `test_cuda` (op parity vs the CPU backend) validates every kernel on a
// GPU server (bench/gpu.sh); until it has passed there, treat these as unverified.
//
// Conventions
//  - Sizes are long long (int64) on the host side of every launch; float scalars are float; flags are int.
//  - Reductions are deterministic: every output element is reduced by one thread/warp/block in a fixed order
//    (no float atomics), so a CUDA run is reproducible for a given device.
//  - Attention never materialises a T×T matrix: one warp per query (forward, dq) or per key (dk/dv), with an
//    online softmax in the forward and the saved lse in the backward (flash-attention's maths, simple schedule;
//    tensor-core tiling is the next step, docs/cuda.md).
typedef long long ll;

#include "../cpu/half.hpp"  // bf16/fp16 rounding, bit-identical to the CPU backend's
#include "mt.hpp"              // the multi-tensor table

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif
namespace wm = nvcuda::wmma;

#define GRID_STRIDE(i, n) for (ll i = (ll)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (ll)blockDim.x * gridDim.x)

namespace {

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Σ v over a block of ≤ 256 threads (a power of two) in double, in a fixed tree (deterministic); every thread gets it.
__device__ double block_sum_d256(double v) {
  __shared__ double sh[256];
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  const double t = sh[0];
  __syncthreads();  // sh is reused by the next call
  return t;
}

// Block-wide sum for blockDim.x a multiple of 32 (≤ 1024); every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float sh[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    float t = lane < nw ? sh[lane] : 0.0f;
    t = warp_sum(t);
    if (lane == 0) total = t;
  }
  __syncthreads();
  return total;
}

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// engine/rng.hpp uniform01, bit for bit.
__device__ __forceinline__ float uniform01(unsigned long long stream, unsigned long long index) {
  return (float)(mix64(stream ^ mix64(index)) >> 40) * (1.0f / 16777216.0f);
}

constexpr int kMaxHdPerLane = 8;  // attention: head_dim ≤ 256 (32 lanes × 8)

// ---- 4-bit weights (QLoRA; format and exact decoding in cpu/q4.hpp) ----------------------------------------------------
// The 16 code values, the same fp32 literals as cpu/q4.cpp kNF4 / kFP4 (test_cuda checks every value bit for bit).
__constant__ float kQ4Nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                                 -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                 0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                                 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
__constant__ float kQ4Fp4[16] = {0.0f, 0.0625f / 12.0f, 8.0f / 12.0f, 1.0f, 4.0f / 12.0f, 6.0f / 12.0f, 2.0f / 12.0f,
                                 3.0f / 12.0f, -0.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -1.0f, -4.0f / 12.0f, -6.0f / 12.0f,
                                 -2.0f / 12.0f, -3.0f / 12.0f};

constexpr int kQ4Tile = 64;   // C tile: 64 rows (M) × 64 columns (N)
constexpr int kQ4TileK = 32;  // K slice per step
constexpr int kQ4Threads = 256;  // 16 × 16 threads, each 4 × 4 outputs (rows ty + 16u, columns tx + 16v)

// cpu/q4.hpp q4_block_scale: absmax[b], or code2[qabsmax[b]]·absmax2[b/256] + offset as two rounded fp32 operations
// (never an fma, so it is the CPU's value bit for bit).
__device__ __forceinline__ float q4_scale(const float *absmax, const unsigned char *qabsmax, const float *absmax2,
                                          const float *code2, float offset, ll b) {
  if (!qabsmax) return absmax[b];
  return __fadd_rn(__fmul_rn(code2[qabsmax[b]], absmax2[b >> 8]), offset);
}

// C[M,N] (+)= A[M,K]·op(W) with W 4-bit, decoded tile by tile into shared memory (never in full):
//   NN false: op(W) = Wᵀ, W [N,K] (element (n,k) at flat index n·K + k);  NN true: W [K,N] (k·N + n).
// Per K step the block decodes the scales its W slice needs once (each W row of the slice spans ≤ 64 consecutive
// elements, so at most two 64-element blocks: the first and the next), then every thread decodes its elements
// (byte idx/2, high nibble for even idx) as code[q]·scale. Global loads are coalesced: a warp reads one row of A's
// slice (32 floats) and 32 consecutive elements (16–17 consecutive bytes) of one W row.
template <bool NN>
__device__ void q4_gemm(const float *A, const unsigned char *packed, const float *absmax, const unsigned char *qabsmax,
                        const float *absmax2, const float *code2, float offset, int type, float *C, ll M, ll N, ll K,
                        int acc) {
  __shared__ float As[kQ4TileK][kQ4Tile + 1];  // [k][m]
  __shared__ float Ws[kQ4TileK][kQ4Tile + 1];  // [k][n]
  __shared__ float code[16];
  __shared__ float scl[kQ4Tile][2];  // per W row of the slice: scales of its first block and the next
  __shared__ ll blk0[kQ4Tile];       // its first block
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const ll m0 = (ll)blockIdx.y * kQ4Tile, n0 = (ll)blockIdx.x * kQ4Tile;
  const ll nblocks = (N * K + 63) >> 6;
  if (tid < 16) code[tid] = type == 2 ? kQ4Fp4[tid] : kQ4Nf4[tid];
  float s[4][4];
#pragma unroll
  for (int u = 0; u < 4; ++u)
#pragma unroll
    for (int v = 0; v < 4; ++v) s[u][v] = 0.0f;
  for (ll k0 = 0; k0 < K; k0 += kQ4TileK) {
    // scales of this slice: NT rows are n0…n0+63 (k0…k0+31 of each), NN rows are k0…k0+31 (n0…n0+63 of each)
    const int rows = NN ? kQ4TileK : kQ4Tile;
    if (tid < 2 * rows) {
      const int i = tid >> 1, h = tid & 1;
      const ll r = (NN ? k0 : n0) + i;
      if (r < (NN ? K : N)) {
        const ll b0 = (NN ? r * N + n0 : r * K + k0) >> 6, b = b0 + h;
        scl[i][h] = b < nblocks ? q4_scale(absmax, qabsmax, absmax2, code2, offset, b) : 0.0f;
        if (h == 0) blk0[i] = b0;
      }
    }
#pragma unroll
    for (int e0 = 0; e0 < kQ4Tile * kQ4TileK; e0 += kQ4Threads) {  // A slice [64 m][32 k]
      const int e = e0 + tid, i = e >> 5, j = e & 31;
      const ll m = m0 + i, k = k0 + j;
      As[j][i] = (m < M && k < K) ? A[m * K + k] : 0.0f;
    }
    __syncthreads();  // scales (and, the first time, the code table) are visible
#pragma unroll
    for (int e0 = 0; e0 < kQ4Tile * kQ4TileK; e0 += kQ4Threads) {  // W slice → Ws[32 k][64 n]
      const int e = e0 + tid;
      const int j = NN ? e >> 6 : e & 31, i = NN ? e & 63 : e >> 5;  // k and n within the slice
      const ll k = k0 + j, n = n0 + i;
      float w = 0.0f;
      if (k < K && n < N) {
        const ll idx = NN ? k * N + n : n * K + k;
        const unsigned byte = packed[idx >> 1];
        const unsigned q = (idx & 1) ? (byte & 15u) : (byte >> 4);
        const int row = NN ? j : i;
        w = code[q] * scl[row][(idx >> 6) - blk0[row]];
      }
      Ws[j][i] = w;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kQ4TileK; ++kk) {
      float a[4], w[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) a[u] = As[kk][ty + 16 * u];
#pragma unroll
      for (int v = 0; v < 4; ++v) w[v] = Ws[kk][tx + 16 * v];
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int v = 0; v < 4; ++v) s[u][v] += a[u] * w[v];
    }
    __syncthreads();  // before the next slice overwrites As / Ws / scl
  }
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const ll m = m0 + ty + 16 * u;
    if (m >= M) continue;
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const ll n = n0 + tx + 16 * v;
      if (n < N) C[m * N + n] = acc ? C[m * N + n] + s[u][v] : s[u][v];
    }
  }
}

}  // namespace

extern "C" {

// ---- GEMM fallback (used when cuBLAS is not loadable) ------------------------------------------------------------
// C[M,N] (+)= Σ_k A(m,k)·B(k,n), A(m,k) = A[m·sam + k·sak], B(k,n) = B[k·sbk + n·sbn]. 16×16 tiles in shared memory.
__global__ void k_gemm(const float *A, const float *B, float *C, ll M, ll N, ll K, ll sam, ll sak, ll sbk, ll sbn,
                       int acc) {
  __shared__ float As[16][17], Bs[16][17];
  const ll m = (ll)blockIdx.y * 16 + threadIdx.y, n = (ll)blockIdx.x * 16 + threadIdx.x;
  float s = 0.0f;
  for (ll k0 = 0; k0 < K; k0 += 16) {
    const ll am = (ll)blockIdx.y * 16 + threadIdx.y, ak = k0 + threadIdx.x;
    As[threadIdx.y][threadIdx.x] = (am < M && ak < K) ? A[am * sam + ak * sak] : 0.0f;
    const ll bk = k0 + threadIdx.y, bn = (ll)blockIdx.x * 16 + threadIdx.x;
    Bs[threadIdx.y][threadIdx.x] = (bk < K && bn < N) ? B[bk * sbk + bn * sbn] : 0.0f;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 16; ++kk) s += As[threadIdx.y][kk] * Bs[kk][threadIdx.x];
    __syncthreads();
  }
  if (m < M && n < N) C[m * N + n] = acc ? C[m * N + n] + s : s;
}

// ---- 16-bit weights (mixed precision) ---------------------------------------------------------------------------
// y = x rounded to bf16 (type 1) or fp16 (type 2): the A operand of a 16-bit tensor-core GEMM (cublasGemmEx).
__global__ void k_to_half(const float *x, unsigned short *y, ll n, int type) {
  GRID_STRIDE(i, n) y[i] = llmt::to_half(x[i], type);
}
// y = x rounded to bf16/fp16 and back (fp32): the inputs of the fp32 attention kernels when the tensor-core ones do
// not apply (Backend::attention_*_lp keeps its rounding semantics for every head_dim)
__global__ void k_round_half(const float *x, float *y, ll n, int type) {
  GRID_STRIDE(i, n) y[i] = llmt::from_half(llmt::to_half(x[i], type), type);
}
// Own GEMM when cuBLAS is missing: as k_gemm with B 16-bit and A rounded to B's type on load.
__global__ void k_gemm_half(const float *A, const unsigned short *B, float *C, ll M, ll N, ll K, ll sam, ll sak, ll sbk,
                            ll sbn, int acc, int type) {
  __shared__ float As[16][17], Bs[16][17];
  const ll m = (ll)blockIdx.y * 16 + threadIdx.y, n = (ll)blockIdx.x * 16 + threadIdx.x;
  float s = 0.0f;
  for (ll k0 = 0; k0 < K; k0 += 16) {
    const ll am = (ll)blockIdx.y * 16 + threadIdx.y, ak = k0 + threadIdx.x;
    As[threadIdx.y][threadIdx.x] = (am < M && ak < K) ? llmt::from_half(llmt::to_half(A[am * sam + ak * sak], type), type) : 0.0f;
    const ll bk = k0 + threadIdx.y, bn = (ll)blockIdx.x * 16 + threadIdx.x;
    Bs[threadIdx.y][threadIdx.x] = (bk < K && bn < N) ? llmt::from_half(B[bk * sbk + bn * sbn], type) : 0.0f;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 16; ++kk) s += As[threadIdx.y][kk] * Bs[kk][threadIdx.x];
    __syncthreads();
  }
  if (m < M && n < N) C[m * N + n] = acc ? C[m * N + n] + s : s;
}

// ---- bias, element-wise -------------------------------------------------------------------------------------------
__global__ void k_add_bias(float *y, const float *b, ll rows, ll cols) {
  GRID_STRIDE(i, rows * cols) y[i] += b[i % cols];
}
// db[c] += Σ_r dy[r,c] (one thread per column, rows in order).
__global__ void k_col_sum(const float *dy, float *db, ll rows, ll cols) {
  GRID_STRIDE(c, cols) {
    float s = 0.0f;
    for (ll r = 0; r < rows; ++r) s += dy[r * cols + c];
    db[c] += s;
  }
}
__global__ void k_add(float *out, const float *a, const float *b, const float *c, ll n) {
  GRID_STRIDE(i, n) out[i] = c ? a[i] + b[i] + c[i] : a[i] + b[i];
}
// out [cols, rows] (+)= in [rows, cols]ᵀ, one thread per output element (coalesced writes)
__global__ void k_transpose(const float *in, float *out, ll rows, ll cols, int acc) {
  GRID_STRIDE(i, rows * cols) {
    const ll c = i / rows, r = i % rows;
    const float v = in[r * cols + c];
    out[i] = acc ? out[i] + v : v;
  }
}
__global__ void k_axpby(float *out, float alpha, const float *a, float beta, const float *b, ll n) {
  GRID_STRIDE(i, n) out[i] = alpha * a[i] + beta * b[i];
}
// DoRA: one thread per output row j (see Backend::dora_scale)
__global__ void k_dora_scale(const float *wn2, const float *WAt, const float *B, const float *G, const float *m, float s,
                             float *g, float *inv_n, ll out, ll r) {
  GRID_STRIDE(j, out) {
    const float *b = B + j * r;
    double d = 0.0, q = 0.0;
    for (ll k = 0; k < r; ++k) {
      d += (double)b[k] * WAt[k * out + j];
      double gb = 0.0;
      for (ll l = 0; l < r; ++l) gb += (double)G[k * r + l] * b[l];
      q += b[k] * gb;
    }
    double n2 = (double)wn2[j] + 2.0 * s * d + (double)s * s * q;
    const double n = sqrt(n2 > 0.0 ? n2 : 0.0);
    g[j] = (float)(m[j] / n);
    inv_n[j] = (float)(1.0 / n);
  }
}
__global__ void k_scale_cols(float *y, const float *x, const float *g, float offset, int keep, ll N, ll C) {
  GRID_STRIDE(i, N * C) {
    const float v = (g[i % C] + offset) * x[i];
    y[i] = keep ? y[i] + v : v;
  }
}
// dm[j] += inv_n[j]·Σ_n dy[n,j]·z[n,j] (one thread per column, rows in order)
__global__ void k_col_dot(const float *dy, const float *z, const float *inv_n, float *dm, ll N, ll C) {
  GRID_STRIDE(c, C) {
    float acc = 0.0f;
    for (ll n = 0; n < N; ++n) acc += dy[n * C + c] * z[n * C + c];
    dm[c] += inv_n[c] * acc;
  }
}
__global__ void k_scale(float *x, float s, ll n) {
  GRID_STRIDE(i, n) x[i] *= s;
}
__global__ void k_split_cols(float *fused, float *a, float *b, ll N, ll wa, ll wb, int merge) {
  const ll W = wa + wb;
  GRID_STRIDE(i, N * W) {
    const ll n = i / W, c = i % W;
    float *sep = c < wa ? a + n * wa + c : b + n * wb + (c - wa);
    if (merge) fused[i] = *sep;
    else *sep = fused[i];
  }
}
// layout: 0 Blocks [Q|K|V], 1 PerHead [q_h,k_h,v_h], 2 Grouped per kv group [q×r, k, v] (backend.hpp QkvSplit order)
__global__ void k_qkv_split(float *fused, float *q, float *k, float *v, ll N, ll nh, ll nkv, ll hd, int layout,
                            int merge) {
  const ll qd = nh * hd, kvd = nkv * hd, W = qd + 2 * kvd;
  GRID_STRIDE(i, N * W) {
    const ll n = i / W, c = i % W;
    float *sep;
    if (layout == 0) {
      sep = c < qd ? q + n * qd + c : c < qd + kvd ? k + n * kvd + (c - qd) : v + n * kvd + (c - qd - kvd);
    } else if (layout == 2) {
      const ll r = nh / nkv, gw = (r + 2) * hd, g = c / gw, o = c % gw;
      sep = o < r * hd ? q + n * qd + g * r * hd + o : o < (r + 1) * hd ? k + n * kvd + g * hd + (o - r * hd)
                                                                         : v + n * kvd + g * hd + (o - (r + 1) * hd);
    } else {
      const ll h = c / (3 * hd), o = c % (3 * hd);
      sep = o < hd ? q + n * qd + h * hd + o : o < 2 * hd ? k + n * kvd + h * hd + (o - hd) : v + n * kvd + h * hd + (o - 2 * hd);
    }
    if (merge) fused[i] = *sep;
    else *sep = fused[i];
  }
}
__global__ void k_uniform_noise(float *x, ll n, float mag, unsigned long long stream) {
  GRID_STRIDE(i, n) x[i] += mag * (2.0f * uniform01(stream, (unsigned long long)i) - 1.0f);
}
__global__ void k_dropout_fwd(const float *x, float *out, ll n, float p, unsigned long long stream) {
  const float keep = 1.0f / (1.0f - p);
  GRID_STRIDE(i, n) out[i] = uniform01(stream, (unsigned long long)i) < p ? 0.0f : x[i] * keep;
}
__global__ void k_dropout_bwd(const float *dy, float *dx, ll n, float p, unsigned long long stream) {
  const float keep = 1.0f / (1.0f - p);
  GRID_STRIDE(i, n) if (!(uniform01(stream, (unsigned long long)i) < p)) dx[i] += dy[i] * keep;
}

// ---- normalisation (one block per row; weight gradients one thread per column) ---------------------------------------
__global__ void k_rms_fwd(const float *x, const float *w, float *y, float *rstd, ll rows, ll cols, float eps) {
  const ll r = blockIdx.x;
  const float *xr = x + r * cols;
  float s = 0.0f;
  for (ll c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c] * xr[c];
  s = block_sum(s);
  const float rs = 1.0f / sqrtf(s / (float)cols + eps);
  if (rstd && threadIdx.x == 0) rstd[r] = rs;
  for (ll c = threadIdx.x; c < cols; c += blockDim.x) y[r * cols + c] = w ? w[c] * (xr[c] * rs) : xr[c] * rs;
}
// dx = r·g − r³/cols·Σ(g⊙x)·x, g = w⊙dy (dx may alias dy: each thread reads its dy[c] before writing dx[c]).
__global__ void k_rms_bwd(const float *dy, const float *x, const float *w, const float *rstd, float *dx, ll rows,
                          ll cols) {
  const ll r = blockIdx.x;
  const float *xr = x + r * cols, *dyr = dy + r * cols;
  const float rs = rstd[r];
  float s = 0.0f;
  for (ll c = threadIdx.x; c < cols; c += blockDim.x) s += (w ? w[c] * dyr[c] : dyr[c]) * xr[c];
  s = block_sum(s);
  const float coef = rs * rs * rs * s / (float)cols;
  for (ll c = threadIdx.x; c < cols; c += blockDim.x) {
    const float g = w ? w[c] * dyr[c] : dyr[c];
    dx[r * cols + c] = rs * g - coef * xr[c];
  }
}
__global__ void k_rms_dw(const float *dy, const float *x, const float *rstd, float *dw, ll rows, ll cols) {
  GRID_STRIDE(c, cols) {
    float s = 0.0f;
    for (ll r = 0; r < rows; ++r) s += dy[r * cols + c] * (x[r * cols + c] * rstd[r]);
    dw[c] += s;
  }
}
__global__ void k_ln_fwd(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd, ll rows,
                         ll cols, float eps) {
  const ll r = blockIdx.x;
  const float *xr = x + r * cols;
  float s = 0.0f;
  for (ll c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
  const float mu = block_sum(s) / (float)cols;
  float v = 0.0f;
  for (ll c = threadIdx.x; c < cols; c += blockDim.x) v += (xr[c] - mu) * (xr[c] - mu);
  const float rs = 1.0f / sqrtf(block_sum(v) / (float)cols + eps);
  if (threadIdx.x == 0) {
    if (mean) mean[r] = mu;
    if (rstd) rstd[r] = rs;
  }
  for (ll c = threadIdx.x; c < cols; c += blockDim.x) {
    const float xh = (xr[c] - mu) * rs;
    y[r * cols + c] = (w ? xh * w[c] : xh) + (b ? b[c] : 0.0f);
  }
}
// dx = r·(g − mean(g) − x̂·mean(g⊙x̂)), g = w⊙dy.
__global__ void k_ln_bwd(const float *dy, const float *x, const float *w, const float *mean, const float *rstd, float *dx,
                         ll rows, ll cols) {
  const ll r = blockIdx.x;
  const float *xr = x + r * cols, *dyr = dy + r * cols;
  const float mu = mean[r], rs = rstd[r];
  float sg = 0.0f, sgx = 0.0f;
  for (ll c = threadIdx.x; c < cols; c += blockDim.x) {
    const float g = w ? w[c] * dyr[c] : dyr[c];
    sg += g;
    sgx += g * ((xr[c] - mu) * rs);
  }
  const float mg = block_sum(sg) / (float)cols;
  const float mgx = block_sum(sgx) / (float)cols;
  for (ll c = threadIdx.x; c < cols; c += blockDim.x) {
    const float g = w ? w[c] * dyr[c] : dyr[c];
    const float xh = (xr[c] - mu) * rs;
    dx[r * cols + c] = rs * (g - mg - xh * mgx);
  }
}
__global__ void k_ln_dwdb(const float *dy, const float *x, const float *mean, const float *rstd, float *dw, float *db,
                          ll rows, ll cols) {
  GRID_STRIDE(c, cols) {
    float sw = 0.0f, sb = 0.0f;
    for (ll r = 0; r < rows; ++r) {
      const float d = dy[r * cols + c];
      sw += d * ((x[r * cols + c] - mean[r]) * rstd[r]);
      sb += d;
    }
    if (dw) dw[c] += sw;
    if (db) db[c] += sb;
  }
}

// ---- RoPE (both layouts), in place; sign −1 is the backward -----------------------------------------------------------
__global__ void k_rope(float *x, const int *pos, const float *inv_freq, ll rows, ll heads, ll head_dim, ll half,
                       float pos_scale, float sign, int interleaved) {
  GRID_STRIDE(idx, rows * heads * half) {
    const ll i = idx % half, rh = idx / half, r = rh / heads;
    const float t = (float)pos[r] * pos_scale;
    const float ang = t * inv_freq[i];
    float sn, cs;
    sincosf(ang, &sn, &cs);
    sn *= sign;
    float *xh = x + rh * head_dim;
    const ll i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + half;
    const float a = xh[i1], b = xh[i2];
    xh[i1] = a * cs - b * sn;
    xh[i2] = b * cs + a * sn;
  }
}

// ---- activations ------------------------------------------------------------------------------------------------------
__global__ void k_swiglu_fwd(const float *gate, const float *up, float *out, ll n) {
  GRID_STRIDE(i, n) {
    const float g = gate[i];
    out[i] = (g / (1.0f + expf(-g))) * up[i];
  }
}
__global__ void k_swiglu_bwd(const float *dout, const float *gate, const float *up, float *dgate, float *dup, ll n) {
  GRID_STRIDE(i, n) {
    const float g = gate[i], u = up[i], d = dout[i];
    const float sg = 1.0f / (1.0f + expf(-g));
    dgate[i] = d * u * (sg * (1.0f + g * (1.0f - sg)));
    dup[i] = d * (g * sg);
  }
}
// kind 0: erf (exact), 1: tanh approximation (as cpu/ops.cpp)
__global__ void k_gelu_fwd(const float *x, float *y, ll n, int kind) {
  GRID_STRIDE(i, n) {
    const float v = x[i];
    if (kind == 0) y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    else y[i] = v / (1.0f + expf(-2.0f * (0.7978845608028654f * (v + 0.044715f * v * v * v))));
  }
}
__global__ void k_gelu_bwd(const float *dy, const float *x, float *dx, ll n, int kind) {
  GRID_STRIDE(i, n) {
    const float v = x[i];
    if (kind == 0) {
      const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
      const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
      dx[i] = dy[i] * (cdf + v * pdf);
    } else {
      const float c = 0.7978845608028654f, a = 0.044715f;
      const float sg = 1.0f / (1.0f + expf(-2.0f * c * (v + a * v * v * v)));
      dx[i] = dy[i] * (sg + 2.0f * v * sg * (1.0f - sg) * c * (1.0f + 3.0f * a * v * v));
    }
  }
}

// ---- attention --------------------------------------------------------------------------------------------------------
// q row (b,i,h) at ((b·T + i)·nh + h)·hd; k/v row (b,j,g) at ((b·T + j)·nkv + g)·hd; lse at (b·nh + h)·T + i.
// Key j is visible to query i iff j ≤ max(i, P−1) and j ≥ seg_start[b·T+i] (P = prefix[b] or 0; seg 0 if absent).
// Scores s = scale·q·k + alibi[h]·j.

// One warp per (b, h, i), i fastest so a block's warps share K/V rows in L2.
__global__ void k_attn_fwd(const float *q, const float *k, const float *v, float *out, float *lse, ll B, ll T, ll nh,
                           ll nkv, ll hd, float scale, const int *seg_start, const float *alibi, const int *prefix) {
  const ll warp = ((ll)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= B * nh * T) return;
  const ll i = warp % T, h = (warp / T) % nh, b = warp / (T * nh), g = h / (nh / nkv);
  const ll P = prefix ? min((ll)prefix[b], T) : 0;
  const ll last = max(i, P - 1), first = seg_start ? (ll)seg_start[b * T + i] : 0;
  const float slope = alibi ? alibi[h] : 0.0f;
  float qv[kMaxHdPerLane], acc[kMaxHdPerLane];
  const float *qi = q + ((b * T + i) * nh + h) * hd;
#pragma unroll
  for (int e = 0; e < kMaxHdPerLane; ++e) {
    const ll d = lane + 32 * e;
    qv[e] = d < hd ? qi[d] : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (ll j = first; j <= last; ++j) {
    const float *kj = k + ((b * T + j) * nkv + g) * hd;
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxHdPerLane; ++e) {
      const ll d = lane + 32 * e;
      if (d < hd) s += qv[e] * kj[d];
    }
    s = warp_sum(s) * scale + slope * (float)j;
    const float mn = fmaxf(m, s);
    const float alpha = expf(m - mn), p = expf(s - mn);
    l = l * alpha + p;
    const float *vj = v + ((b * T + j) * nkv + g) * hd;
#pragma unroll
    for (int e = 0; e < kMaxHdPerLane; ++e) {
      const ll d = lane + 32 * e;
      if (d < hd) acc[e] = acc[e] * alpha + p * vj[d];
    }
    m = mn;
  }
  float *oi = out + ((b * T + i) * nh + h) * hd;
  const float inv = 1.0f / l;
#pragma unroll
  for (int e = 0; e < kMaxHdPerLane; ++e) {
    const ll d = lane + 32 * e;
    if (d < hd) oi[d] = acc[e] * inv;
  }
  if (lane == 0) lse[(b * nh + h) * T + i] = m + logf(l);
}

// D[(b·T+i)·nh+h] = dout_i·out_i (one warp per query row).
__global__ void k_attn_delta(const float *dout, const float *out, float *D, ll rows, ll hd) {
  const ll r = ((ll)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  float s = 0.0f;
  for (ll d = lane; d < hd; d += 32) s += dout[r * hd + d] * out[r * hd + d];
  s = warp_sum(s);
  if (lane == 0) D[r] = s;
}

// dq_i = scale·Σ_j P_ij(dP_ij − D_i)·k_j, one warp per (b, h, i), keys in order.
__global__ void k_attn_bwd_dq(const float *dout, const float *q, const float *k, const float *v, const float *lse,
                              const float *D, float *dq, ll B, ll T, ll nh, ll nkv, ll hd, float scale,
                              const int *seg_start, const float *alibi, const int *prefix) {
  const ll warp = ((ll)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= B * nh * T) return;
  const ll i = warp % T, h = (warp / T) % nh, b = warp / (T * nh), g = h / (nh / nkv);
  const ll P = prefix ? min((ll)prefix[b], T) : 0;
  const ll last = max(i, P - 1), first = seg_start ? (ll)seg_start[b * T + i] : 0;
  const float slope = alibi ? alibi[h] : 0.0f;
  const ll row = (b * T + i) * nh + h;
  const float L = lse[(b * nh + h) * T + i], Di = D[row];
  float qv[kMaxHdPerLane], dov[kMaxHdPerLane], acc[kMaxHdPerLane];
#pragma unroll
  for (int e = 0; e < kMaxHdPerLane; ++e) {
    const ll d = lane + 32 * e;
    qv[e] = d < hd ? q[row * hd + d] : 0.0f;
    dov[e] = d < hd ? dout[row * hd + d] : 0.0f;
    acc[e] = 0.0f;
  }
  for (ll j = first; j <= last; ++j) {
    const float *kj = k + ((b * T + j) * nkv + g) * hd, *vj = v + ((b * T + j) * nkv + g) * hd;
    float s = 0.0f, dp = 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxHdPerLane; ++e) {
      const ll d = lane + 32 * e;
      if (d < hd) {
        s += qv[e] * kj[d];
        dp += dov[e] * vj[d];
      }
    }
    s = warp_sum(s) * scale + slope * (float)j;
    dp = warp_sum(dp);
    const float ds = expf(s - L) * (dp - Di);
#pragma unroll
    for (int e = 0; e < kMaxHdPerLane; ++e) {
      const ll d = lane + 32 * e;
      if (d < hd) acc[e] += ds * kj[d];
    }
  }
#pragma unroll
  for (int e = 0; e < kMaxHdPerLane; ++e) {
    const ll d = lane + 32 * e;
    if (d < hd) dq[row * hd + d] = acc[e] * scale;
  }
}

// dk_j = scale·Σ_(h in group, i) dS_ij q_i, dv_j = Σ P_ij dout_i; one warp per (b, g, j), heads then queries in order.
__global__ void k_attn_bwd_dkdv(const float *dout, const float *q, const float *k, const float *v, const float *lse,
                                const float *D, float *dk, float *dv, ll B, ll T, ll nh, ll nkv, ll hd, float scale,
                                const int *seg_start, const float *alibi, const int *prefix) {
  const ll warp = ((ll)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= B * nkv * T) return;
  const ll j = warp % T, g = (warp / T) % nkv, b = warp / (T * nkv), group = nh / nkv;
  const ll P = prefix ? min((ll)prefix[b], T) : 0;
  const ll krow = (b * T + j) * nkv + g;
  float kv_[kMaxHdPerLane], vv[kMaxHdPerLane], ak[kMaxHdPerLane], av[kMaxHdPerLane];
#pragma unroll
  for (int e = 0; e < kMaxHdPerLane; ++e) {
    const ll d = lane + 32 * e;
    kv_[e] = d < hd ? k[krow * hd + d] : 0.0f;
    vv[e] = d < hd ? v[krow * hd + d] : 0.0f;
    ak[e] = av[e] = 0.0f;
  }
  const ll i0 = j < P ? 0 : j;
  for (ll hh = 0; hh < group; ++hh) {
    const ll h = g * group + hh;
    const float slope = alibi ? alibi[h] : 0.0f;
    for (ll i = i0; i < T; ++i) {
      if (seg_start && j < (ll)seg_start[b * T + i]) break;  // (seg_start never decreases along a row)
      if (j > max(i, P - 1)) continue;
      const ll row = (b * T + i) * nh + h;
      const float *qi = q + row * hd, *doi = dout + row * hd;
      float s = 0.0f, dp = 0.0f;
#pragma unroll
      for (int e = 0; e < kMaxHdPerLane; ++e) {
        const ll d = lane + 32 * e;
        if (d < hd) {
          s += qi[d] * kv_[e];
          dp += doi[d] * vv[e];
        }
      }
      s = warp_sum(s) * scale + slope * (float)j;
      dp = warp_sum(dp);
      const float p = expf(s - lse[(b * nh + h) * T + i]);
      const float ds = p * (dp - D[row]);
#pragma unroll
      for (int e = 0; e < kMaxHdPerLane; ++e) {
        const ll d = lane + 32 * e;
        if (d < hd) {
          ak[e] += ds * qi[d];
          av[e] += p * doi[d];
        }
      }
    }
  }
#pragma unroll
  for (int e = 0; e < kMaxHdPerLane; ++e) {
    const ll d = lane + 32 * e;
    if (d < hd) {
      dk[krow * hd + d] = ak[e] * scale;
      dv[krow * hd + d] = av[e];
    }
  }
}

// KV-cache decoding: queries q[n,nh,hd] at positions p0+i attend to cache rows 0…min(max(p0+i, prefix−1), p0+n−1)
// (from p0+i−window+1 on when window > 0: sliding-window attention).
__global__ void k_attn_cached(const float *q, const float *kc, const float *vc, float *out, ll p0, ll n, ll nh, ll nkv,
                              ll hd, float scale, const float *alibi, ll prefix, ll window) {
  const ll warp = ((ll)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= n * nh) return;
  const ll i = warp / nh, h = warp % nh, g = h / (nh / nkv), qd = nh * hd, kvd = nkv * hd;
  const ll last = min(max(p0 + i, prefix - 1), p0 + n - 1), first = window > 0 ? max(0LL, p0 + i - window + 1) : 0LL;
  const float slope = alibi ? alibi[h] : 0.0f;
  float qv[kMaxHdPerLane], acc[kMaxHdPerLane];
#pragma unroll
  for (int e = 0; e < kMaxHdPerLane; ++e) {
    const ll d = lane + 32 * e;
    qv[e] = d < hd ? q[i * qd + h * hd + d] : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (ll j = first; j <= last; ++j) {
    const float *kj = kc + j * kvd + g * hd, *vj = vc + j * kvd + g * hd;
    float s = 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxHdPerLane; ++e) {
      const ll d = lane + 32 * e;
      if (d < hd) s += qv[e] * kj[d];
    }
    s = warp_sum(s) * scale + slope * (float)j;
    const float mn = fmaxf(m, s);
    const float alpha = expf(m - mn), p = expf(s - mn);
    l = l * alpha + p;
#pragma unroll
    for (int e = 0; e < kMaxHdPerLane; ++e) {
      const ll d = lane + 32 * e;
      if (d < hd) acc[e] = acc[e] * alpha + p * vj[d];
    }
    m = mn;
  }
  const float inv = 1.0f / l;
#pragma unroll
  for (int e = 0; e < kMaxHdPerLane; ++e) {
    const ll d = lane + 32 * e;
    if (d < hd) out[i * qd + h * hd + d] = acc[e] * inv;
  }
}

// ---- cross-entropy: online log-sum-exp per row (one block per row, one pass over the logits) ---------------------------
// lse[r] = log Σ exp(x); loss[r] = lse − x[t] (double) for t ≥ 0, else 0. Probabilities are never stored.
__global__ void k_ce_fwd(const float *logits, const int *targets, float *lse, double *loss, ll N, ll V) {
  const ll r = blockIdx.x;
  const float *xr = logits + r * V;
  float m = -INFINITY, s = 0.0f, nanflag = 0.0f;
  for (ll c = threadIdx.x; c < V; c += blockDim.x) {
    const float x = xr[c];
    nanflag += x * 0.0f;
    if (x > m) {
      s = s * expf(m - x) + 1.0f;
      m = x;
    } else if (m > -INFINITY) {
      s += expf(x - m);
    }
  }
  __shared__ float sm[1024], ss[1024];
  sm[threadIdx.x] = m;
  ss[threadIdx.x] = s;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) {
      const float m1 = sm[threadIdx.x], m2 = sm[threadIdx.x + o];
      const float mm = fmaxf(m1, m2);
      const float s1 = m1 == -INFINITY ? 0.0f : ss[threadIdx.x] * expf(m1 - mm);
      const float s2 = m2 == -INFINITY ? 0.0f : ss[threadIdx.x + o] * expf(m2 - mm);
      sm[threadIdx.x] = mm;
      ss[threadIdx.x] = s1 + s2;
    }
    __syncthreads();
  }
  const float nf = block_sum(nanflag);
  if (threadIdx.x == 0) {
    float mm = sm[0];
    if (!(mm > -INFINITY)) mm = 0.0f;
    const float l = mm + logf(ss[0]) + nf;
    lse[r] = l;
    const int t = targets[r];
    loss[r] = t >= 0 ? (double)l - (double)xr[t] : 0.0;
  }
}
// The loss of one logits chunk into two device scalars (Backend::cross_entropy_forward_acc): one block of 256 threads,
// thread i sums the counted rows of its fixed slice [N·i/256, N·(i+1)/256) in row order, then a fixed tree in shared
// memory; acc = (accumulate ? acc : 0) + chunk sum. Deterministic, no atomics; the host downloads acc once per call.
__global__ void k_ce_acc(const double *loss, const int *targets, ll N, double *loss_acc, long long *count_acc,
                         int accumulate) {
  const ll lo = N * threadIdx.x / blockDim.x, hi = N * (threadIdx.x + 1) / blockDim.x;
  double s = 0.0;
  long long c = 0;
  for (ll r = lo; r < hi; ++r)
    if (targets[r] >= 0) {
      s += loss[r];
      ++c;
    }
  __shared__ double sl[256];
  __shared__ long long sc[256];
  sl[threadIdx.x] = s;
  sc[threadIdx.x] = c;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) {
      sl[threadIdx.x] += sl[threadIdx.x + o];
      sc[threadIdx.x] += sc[threadIdx.x + o];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    loss_acc[0] = (accumulate ? loss_acc[0] : 0.0) + sl[0];
    count_acc[0] = (accumulate ? count_acc[0] : 0) + sc[0];
  }
}
// dlogits = scale·(softmax − onehot) for counted rows, 0 for ignored rows; dlogits may alias logits.
__global__ void k_ce_bwd(const float *logits, const int *targets, const float *lse, float *dlogits, ll N, ll V,
                         float scale) {
  GRID_STRIDE(i, N * V) {
    const ll r = i / V, c = i % V;
    const int t = targets[r];
    if (t < 0) {
      dlogits[i] = 0.0f;
    } else {
      const float p = expf(logits[i] - lse[r]);
      dlogits[i] = c == t ? scale * (p - 1.0f) : scale * p;
    }
  }
}

// ---- embedding ------------------------------------------------------------------------------------------------------------
__global__ void k_embed_fwd(const float *table, const int *ids, float *out, ll N, ll H) {
  GRID_STRIDE(i, N * H) out[i] = table[(ll)ids[i / H] * H + i % H];
}
// a 16-bit frozen table (mixed precision): widened to fp32, exact
__global__ void k_embed_fwd_half(const unsigned short *table, const int *ids, float *out, ll N, ll H, int type) {
  GRID_STRIDE(i, N * H) out[i] = llmt::from_half(table[(ll)ids[i / H] * H + i % H], type);
}
// dtable[ids[n]] += dout[n]: one thread per column, rows in order (deterministic, no atomics).
__global__ void k_embed_bwd(const float *dout, const int *ids, float *dtable, ll N, ll H) {
  GRID_STRIDE(c, H) {
    for (ll r = 0; r < N; ++r) dtable[(ll)ids[r] * H + c] += dout[r * H + c];
  }
}

// ---- optimizer, reductions ----------------------------------------------------------------------------------------------
__global__ void k_adamw(float *p, const float *g, float *m, float *v, ll n, float beta1, float beta2, float omb1,
                        float omb2, float eps, float decay, float step_size, float bc2_sqrt) {
  GRID_STRIDE(i, n) {
    const float gi = g[i];
    const float mi = beta1 * m[i] + omb1 * gi;
    const float vi = beta2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
  }
}
// part[block] = Σ x² over the block's fixed slice, in double (host sums the parts in order).
__global__ void k_sumsq(const float *x, ll n, double *part) {
  const ll nb = gridDim.x, lo = n * blockIdx.x / nb, hi = n * (blockIdx.x + 1) / nb;
  double s = 0.0;
  for (ll i = lo + threadIdx.x; i < hi; i += blockDim.x) s += (double)x[i] * (double)x[i];
  s = block_sum_d256(s);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// acc[0] += Σ part[0..nb) in order (one thread: the partial sums of k_sumsq; keeps the global norm on the device)
__global__ void k_sumsq_acc(const double *part, int nb, double *acc) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double t = 0.0;
  for (int i = 0; i < nb; ++i) t += part[i];
  acc[0] += t;
}
__global__ void k_fill(float *x, float v, ll n) {
  GRID_STRIDE(i, n) x[i] = v;
}

// ---- multi-tensor ops: one launch over many tensors (the optimizer step's per-parameter ops) ---------------------------
// Block c handles chunk c of the table's concatenated chunks: entry i covers chunks [chunk0_i, chunk0_{i+1}), the chunk
// [lo, hi) of its tensor. Element by element the same arithmetic as the single-tensor kernels.
__device__ __forceinline__ int mt_entry(const llmt::MtSlot *t, int T, ll c) {
  int lo = 0, hi = T - 1;  // the last entry whose chunk0 <= c
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (t[mid].chunk0 <= c) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
#define MT_CHUNK_RANGE(t, T, s, lo, hi)                                     \
  const ll c_ = (ll)blockIdx.x + (ll)blockIdx.y * gridDim.x;              \
  const llmt::MtSlot s = t[mt_entry(t, T, c_)];                          \
  const ll lo = (c_ - s.chunk0) * llmt::kMtChunk;                        \
  const ll hi = lo + llmt::kMtChunk < s.n ? lo + llmt::kMtChunk : s.n;    \
  if (lo >= s.n) return; /* a block past the last chunk (2-D grids) */

// k_adamw on every entry; decay_on for entries with decay, 1 for the others (weight_decay 0, as adamw_step gives)
__global__ void k_mt_adamw(const llmt::MtSlot *t, int T, float beta1, float beta2, float omb1, float omb2, float eps,
                           float decay_on, float step_size, float bc2_sqrt) {
  MT_CHUNK_RANGE(t, T, s, lo, hi)
  const float decay = s.decay ? decay_on : 1.0f;
  for (ll i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float gi = s.g[i];
    const float mi = beta1 * s.m[i] + omb1 * gi;
    const float vi = beta2 * s.v[i] + omb2 * gi * gi;
    s.m[i] = mi;
    s.v[i] = vi;
    s.w[i] = s.w[i] * decay - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
  }
}
// part[c] = Σ g² over chunk c, in double (256 threads; k_sumsq_acc then adds the parts in chunk order)
__global__ void k_mt_sumsq(const llmt::MtSlot *t, int T, double *part) {
  MT_CHUNK_RANGE(t, T, s, lo, hi)
  double acc = 0.0;
  for (ll i = lo + threadIdx.x; i < hi; i += blockDim.x) acc += (double)s.g[i] * (double)s.g[i];
  acc = block_sum_d256(acc);
  if (threadIdx.x == 0) part[c_] = acc;
}
// g = g·sc (sc != 0) or g = 0 (zero != 0)
__global__ void k_mt_scale(const llmt::MtSlot *t, int T, float sc, int zero) {
  MT_CHUNK_RANGE(t, T, s, lo, hi)
  for (ll i = lo + threadIdx.x; i < hi; i += blockDim.x) s.g[i] = zero ? 0.0f : s.g[i] * sc;
}
// k_sumsq_acc over more parts than an int block count: acc[0] += Σ part[0..nb) in order
__global__ void k_mt_sumsq_acc(const double *part, ll nb, double *acc) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double t = 0.0;
  for (ll i = 0; i < nb; ++i) t += part[i];
  acc[0] += t;
}

// ---- 4-bit base weights (QLoRA): GEMMs that decode the weight per tile (q4_gemm above) -----------------------------------
// Launch: grid (ceil(N/64), ceil(M/64)), 256 threads. type: 1 NF4, 2 FP4. absmax null ⇔ nested (qabsmax, absmax2, code2).
// C[M,N] (+)= A[M,K]·Wᵀ, W [N,K] (the forward).
__global__ void k_gemm_q4_nt(const float *A, const unsigned char *packed, const float *absmax, const unsigned char *qabsmax,
                             const float *absmax2, const float *code2, float offset, int type, float *C, ll M, ll N, ll K,
                             int acc) {
  q4_gemm<false>(A, packed, absmax, qabsmax, absmax2, code2, offset, type, C, M, N, K, acc);
}
// C[M,N] (+)= A[M,K]·W, W [K,N] (the input gradient).
__global__ void k_gemm_q4_nn(const float *A, const unsigned char *packed, const float *absmax, const unsigned char *qabsmax,
                             const float *absmax2, const float *code2, float offset, int type, float *C, ll M, ll N, ll K,
                             int acc) {
  q4_gemm<true>(A, packed, absmax, qabsmax, absmax2, code2, offset, type, C, M, N, K, acc);
}

}  // extern "C"

// ---- tensor-core attention (mixed-precision runs: Backend::attention_*_lp) -----------------------------------------
// The flash-attention schedule on WMMA 16×16×16 tiles: q, k, v (and dout) rounded to TT (bf16 or fp16), products on
// tensor cores with fp32 accumulation; masks, softmax statistics and the online rescaling in fp32; the probabilities
// (and dS) rounded to TT for their products, as FlashAttention-2 does. Blocks of 64 threads = 2 warps × 16 rows,
// key/query tiles of 32. No T×T matrix; deterministic (each output tile accumulated by one warp in a fixed order, no
// atomics); the masks of k_attn_fwd (causal, packed segments, prefix-LM, ALiBi). head_dim 64 or 128 (else the host
// uses the fp32 kernels). Shared memory stays under the 48 KB static limit.
namespace {
template <class TT> __device__ __forceinline__ TT to_tt(float v);
template <> __device__ __forceinline__ __nv_bfloat16 to_tt<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half to_tt<__half>(float v) { return __float2half_rn(v); }

constexpr int kTc = 32;  // rows (queries or keys) per block: 2 warps × 16

// rows [r0, r0+ROWS) of a strided fp32 tensor → TT tile [ROWS][LD], rows ≥ T zeros; four floats per load when the
// rows are 16-byte aligned (HD and the stride are multiples of 4: the base decides, uniformly for the block)
template <class TT, int HD, int LD, int ROWS>
__device__ __forceinline__ void stage_rows4(TT *dst, const float *base, ll r0, ll T, ll stride) {
  if ((reinterpret_cast<unsigned long long>(base) & 15ull) == 0 && (stride & 3) == 0) {
    for (int idx = threadIdx.x; idx < ROWS * HD / 4; idx += blockDim.x) {
      const int r = idx / (HD / 4), d = (idx % (HD / 4)) * 4;
      const ll row = r0 + r;
      const float4 x = row < T ? *reinterpret_cast<const float4 *>(base + row * stride + d) : make_float4(0.f, 0.f, 0.f, 0.f);
      TT *o = dst + r * LD + d;
      o[0] = to_tt<TT>(x.x);
      o[1] = to_tt<TT>(x.y);
      o[2] = to_tt<TT>(x.z);
      o[3] = to_tt<TT>(x.w);
    }
    return;
  }
  for (int idx = threadIdx.x; idx < ROWS * HD; idx += blockDim.x) {
    const int r = idx / HD, d = idx % HD;
    const ll row = r0 + r;
    dst[r * LD + d] = to_tt<TT>(row < T ? base[row * stride + d] : 0.0f);
  }
}

// true in every lane when v is true in any lane of the warp
__device__ __forceinline__ bool warp_any(bool v) {
  int x = v ? 1 : 0;
  for (int o = 16; o > 0; o >>= 1) x |= __shfl_xor_sync(0xffffffffu, x, o);
  return x != 0;
}

// acc[16×16·nt] (+)= A(16×K from a 16-bit row-major tile at a, ldm lda) · B where B's element (kk, n) is at
// b[n·ldb + kk] (col_major: B = Xᵀ of a row-major X tile) — the "· Xᵀ" products (scores, dP)
template <class TT, int K>
__device__ __forceinline__ void mma_abt(float *out, int ldo, const wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> *af,
                                        const TT *x, int ldx) {
  for (int nt = 0; nt < 2; ++nt) {
    wm::fragment<wm::accumulator, 16, 16, 16, float> acc;
    wm::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < K / 16; ++kk) {
      wm::fragment<wm::matrix_b, 16, 16, 16, TT, wm::col_major> bf;
      wm::load_matrix_sync(bf, x + nt * 16 * ldx + kk * 16, ldx);
      wm::mma_sync(acc, af[kk], bf, acc);
    }
    wm::store_matrix_sync(out + nt * 16, acc, ldo, wm::mem_row_major);
  }
}

// acc[nt] += A (16×32, 16-bit row-major at a, lda) · X (32×HD row-major at x, ldx), for every 16-column tile nt
template <class TT, int HD>
__device__ __forceinline__ void mma_ax(wm::fragment<wm::accumulator, 16, 16, 16, float> *acc, const TT *a, int lda, const TT *x,
                                       int ldx) {
  for (int kk = 0; kk < 2; ++kk) {
    wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> af;
    wm::load_matrix_sync(af, a + kk * 16, lda);
    for (int nt = 0; nt < HD / 16; ++nt) {
      wm::fragment<wm::matrix_b, 16, 16, 16, TT, wm::row_major> bf;
      wm::load_matrix_sync(bf, x + kk * 16 * ldx + nt * 16, ldx);
      wm::mma_sync(acc[nt], af, bf, acc[nt]);
    }
  }
}

// range[0..1] = the first and last key any query row [i0, i0+rows) of batch row b can see (the block's key loop)
__device__ __forceinline__ void tc_key_range(ll *range, ll b, ll i0, ll rows, ll T, ll P, const int *seg_start) {
  ll lo = T, hi = -1;
  for (ll ii = i0; ii < min(i0 + rows, T); ++ii) {
    lo = min(lo, seg_start ? (ll)seg_start[b * T + ii] : 0LL);
    hi = max(hi, min(max(ii, P - 1), T - 1));
  }
  range[0] = lo;
  range[1] = hi;
}

// Where a thread of a query-row kernel (the forward, dQ) stands: batch row b, head h and its KV group g, the block's
// first query row i0 (the last block of rows first: causal rows grow), the lane's row i (r: its row among the warp's
// 16, half: which 16 columns of a tile it handles), the prefix length P and the head's ALiBi slope.
struct TcRows {
  ll b, h, g, i0, P, i;
  int warp, r, half;
  float slope;
  __device__ TcRows(ll rows, ll T, ll nh, ll nkv, const int *prefix, const float *alibi)
      : b(blockIdx.z), h(blockIdx.y), g(h / (nh / nkv)), i0((ll)(gridDim.x - 1 - blockIdx.x) * rows),
        P(prefix ? min((ll)prefix[b], T) : 0), i(0), warp(int(threadIdx.x >> 5)), r(int(threadIdx.x & 31) >> 1),
        half(int(threadIdx.x & 1)), slope(alibi ? alibi[h] : 0.0f) {
    i = i0 + warp * 16 + r;
  }
};

// Accumulator tile f (16×16, this warp's) times sc into dst[0..8) for lane (r, half) — row r, columns half·8… of the
// tile — when ok, through the warp's fp32 scratch Sw (ldm 36: a fragment's rows cannot be addressed in registers).
__device__ __forceinline__ void store_rows(float *Sw, const wm::fragment<wm::accumulator, 16, 16, 16, float> &f, float *dst,
                                           float sc, bool ok, int r, int half) {
  wm::store_matrix_sync(Sw, f, 36, wm::mem_row_major);
  __syncwarp();
  if (ok)
    for (int c = 0; c < 8; ++c) dst[c] = Sw[r * 36 + half * 8 + c] * sc;
  __syncwarp();
}

// The scores of one key tile for a warp's 16 query rows: S = Q·Kᵀ on tensor cores, then lane (r, half)'s 16 of row r
// scaled, ALiBi-biased and masked (−∞) into sv; returns the row's max (both lanes of the row).
template <class TT, int HD>
__device__ __forceinline__ float scores_tile(const wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> *qf,
                                             const TT *Ks, float *Sw, float *sv, ll j0, ll first, ll last, ll T, float scale,
                                             float slope, int r, int half) {
  constexpr int LD = HD + 8, LDS = 36;
  mma_abt<TT, HD>(Sw, LDS, qf, Ks, LD);  // S = Q·Kᵀ (16 × 32 per warp)
  __syncwarp();
  float mx = -INFINITY;
  for (int c = 0; c < 16; ++c) {
    const ll j = j0 + half * 16 + c;
    const bool vis = j < T && j >= first && j <= last;
    sv[c] = vis ? Sw[r * LDS + half * 16 + c] * scale + slope * (float)j : -INFINITY;
    mx = fmaxf(mx, sv[c]);
  }
  return fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
}

// One key tile of dQ for a warp's 16 query rows (qf, df: their Q and dO fragments; Ks, Vs: the tile): S = Q·Kᵀ and
// dP = dO·Vᵀ on tensor cores, dS = P(dP − D) rounded to TT, dQ += dS·K. Lane (r, half): row r, 16 columns.
template <class TT, int HD>
__device__ __forceinline__ void dq_tile(const wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> *qf,
                                        const wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> *df, const TT *Ks,
                                        const TT *Vs, float *Sw, float *dPw, TT *dSw,
                                        wm::fragment<wm::accumulator, 16, 16, 16, float> *acc, ll j0, ll first, ll last, ll T,
                                        float scale, float slope, float Li, float Di, int r, int half) {
  constexpr int LD = HD + 8, LDS = 36, LDP = 40;
  mma_abt<TT, HD>(Sw, LDS, qf, Ks, LD);   // S = Q·Kᵀ
  mma_abt<TT, HD>(dPw, LDS, df, Vs, LD);  // dP = dO·Vᵀ
  __syncwarp();
  for (int c = 0; c < 16; ++c) {
    const int cc = half * 16 + c;
    const ll j = j0 + cc;
    const bool vis = j < T && j >= first && j <= last;
    const float p = vis ? expf(Sw[r * LDS + cc] * scale + slope * (float)j - Li) : 0.0f;
    dSw[r * LDP + cc] = to_tt<TT>(p * (dPw[r * LDS + cc] - Di));
  }
  __syncwarp();
  mma_ax<TT, HD>(acc, dSw, LDP, Ks, LD);  // dQ += dS·K
}

// A query tile [i0, i0+32) of head h for dK/dV: Q and dO rounded into Qs, dOs, the rows' lse and D into Ls, Ds.
template <class TT, int HD>
__device__ __forceinline__ void dkdv_stage(TT *Qs, TT *dOs, float *Ls, float *Ds, const float *q, const float *dout,
                                           const float *lse, const float *D, ll b, ll h, ll i0, ll T, ll nh) {
  constexpr int LD = HD + 8;
  stage_rows4<TT, HD, LD, kTc>(Qs, q + (b * T * nh + h) * HD, i0, T, nh * HD);
  stage_rows4<TT, HD, LD, kTc>(dOs, dout + (b * T * nh + h) * HD, i0, T, nh * HD);
  if (threadIdx.x < kTc) {
    const ll ii = i0 + threadIdx.x;
    Ls[threadIdx.x] = ii < T ? lse[(b * nh + h) * T + ii] : 0.0f;
    Ds[threadIdx.x] = ii < T ? D[(b * T + ii) * nh + h] : 0.0f;
  }
}

// One staged query tile of dK/dV for a warp's 16 keys (kf, vf: their K and V fragments; j: the lane's key): Sᵀ = K·Qᵀ,
// dPᵀ = V·dOᵀ, P and dS rounded to TT, dV += Pᵀ·dO, dK += dSᵀ·Q.
template <class TT, int HD>
__device__ __forceinline__ void dkdv_tile(const wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> *kf,
                                          const wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> *vf, const TT *Qs,
                                          const TT *dOs, const float *Ls, const float *Ds, float *Sw, float *dPw, TT *Ptw,
                                          TT *dStw, wm::fragment<wm::accumulator, 16, 16, 16, float> *dkf,
                                          wm::fragment<wm::accumulator, 16, 16, 16, float> *dvf, ll b, ll i0, ll j, ll T, ll P,
                                          const int *seg_start, float scale, float slope, int r, int half) {
  constexpr int LD = HD + 8, LDS = 36, LDP = 40;
  mma_abt<TT, HD>(Sw, LDS, kf, Qs, LD);    // Sᵀ = K·Qᵀ (16 keys × 32 queries per warp)
  mma_abt<TT, HD>(dPw, LDS, vf, dOs, LD);  // dPᵀ = V·dOᵀ
  __syncwarp();
  for (int c = 0; c < 16; ++c) {
    const int cc = half * 16 + c;
    const ll i = i0 + cc;
    const bool vis = j < T && i < T && j <= max(i, P - 1) && (!seg_start || j >= (ll)seg_start[b * T + i]);
    const float p = vis ? expf(Sw[r * LDS + cc] * scale + slope * (float)j - Ls[cc]) : 0.0f;
    Ptw[r * LDP + cc] = to_tt<TT>(p);
    dStw[r * LDP + cc] = to_tt<TT>(p * (dPw[r * LDS + cc] - Ds[cc]));
  }
  __syncwarp();
  mma_ax<TT, HD>(dvf, Ptw, LDP, dOs, LD);  // dV += Pᵀ·dO
  mma_ax<TT, HD>(dkf, dStw, LDP, Qs, LD);  // dK += dSᵀ·Q
}

template <class TT, int HD>
__device__ void attn_fwd_tc(const float *q, const float *k, const float *v, float *out, float *lse, ll T, ll nh, ll nkv,
                            float scale, const int *seg_start, const float *alibi, const int *prefix) {
  constexpr int LD = HD + 8, LDS = 36, LDP = 40, LDO = HD + 4, NT = HD / 16;
  __shared__ __align__(32) TT Ks[kTc * LD];
  __shared__ __align__(32) TT Vs[kTc * LD];
  __shared__ __align__(32) float Ss[2 * 16 * LDS];
  __shared__ __align__(32) TT Ps[2 * 16 * LDP];
  __shared__ __align__(32) float Os[2 * 16 * LDO];
  __shared__ ll range[2];
  const ll b = blockIdx.z, h = blockIdx.y, i0 = (ll)blockIdx.x * kTc, g = h / (nh / nkv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
  const ll P = prefix ? min((ll)prefix[b], T) : 0, i = i0 + warp * 16 + r;
  const float slope = alibi ? alibi[h] : 0.0f;
  const float *qb = q + (b * T * nh + h) * HD, *kb = k + (b * T * nkv + g) * HD, *vb = v + (b * T * nkv + g) * HD;
  if (threadIdx.x == 0) tc_key_range(range, b, i0, kTc, T, P, seg_start);
  stage_rows4<TT, HD, LD, kTc>(Ks, qb, i0, T, nh * HD);
  __syncthreads();
  wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> qf[NT];
  for (int kk = 0; kk < NT; ++kk) wm::load_matrix_sync(qf[kk], Ks + warp * 16 * LD + kk * 16, LD);
  __syncthreads();
  float o[HD / 2];
  for (int d = 0; d < HD / 2; ++d) o[d] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const ll first = (i < T && seg_start) ? (ll)seg_start[b * T + i] : 0, last = i < T ? max(i, P - 1) : -1;
  float *Sw = Ss + warp * 16 * LDS, *Ow = Os + warp * 16 * LDO;
  TT *Pw = Ps + warp * 16 * LDP;
  for (ll j0 = range[0] / kTc * kTc; j0 <= range[1]; j0 += kTc) {
    stage_rows4<TT, HD, LD, kTc>(Ks, kb, j0, T, nkv * HD);
    stage_rows4<TT, HD, LD, kTc>(Vs, vb, j0, T, nkv * HD);
    __syncthreads();
    float sv[16];
    const float mx = scores_tile<TT, HD>(qf, Ks, Sw, sv, j0, first, last, T, scale, slope, r, half);
    const float mn = fmaxf(m, mx);
    const float alpha = mn == -INFINITY ? 1.0f : expf(m - mn);
    float rs = 0.0f;
    for (int c = 0; c < 16; ++c) {
      const float p = sv[c] == -INFINITY ? 0.0f : expf(sv[c] - mn);
      rs += p;
      Pw[r * LDP + half * 16 + c] = to_tt<TT>(p);
    }
    rs += __shfl_xor_sync(0xffffffffu, rs, 1);
    l = l * alpha + rs;
    m = mn;
    for (int d = 0; d < HD / 2; ++d) o[d] *= alpha;
    __syncwarp();
    wm::fragment<wm::accumulator, 16, 16, 16, float> pv[NT];  // P·V for this key tile
    for (int nt = 0; nt < NT; ++nt) wm::fill_fragment(pv[nt], 0.0f);
    mma_ax<TT, HD>(pv, Pw, LDP, Vs, LD);
    for (int nt = 0; nt < NT; ++nt) wm::store_matrix_sync(Ow + nt * 16, pv[nt], LDO, wm::mem_row_major);
    __syncwarp();
    for (int d = 0; d < HD / 2; ++d) o[d] += Ow[r * LDO + half * (HD / 2) + d];
    __syncthreads();
  }
  if (i < T) {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float *oi = out + ((b * T + i) * nh + h) * HD + half * (HD / 2);
    for (int d = 0; d < HD / 2; ++d) oi[d] = o[d] * inv;
    if (half == 0) lse[(b * nh + h) * T + i] = m + logf(l);
  }
}

// The forward with 4 warps × 16 query rows per block (64 rows: each staged key/value tile serves twice the rows of
// attn_fwd_tc) and the output accumulated in WMMA fragments across key tiles. A fragment's rows cannot be addressed,
// so the online softmax rescales lazily: each row's reference max m moves only when a tile's score exceeds it by more
// than kLazy (FlashAttention-4's trick; p = exp(s − m) ≤ e^kLazy, well inside fp16 and bf16), and only then does the
// warp round-trip its accumulators through shared memory to rescale them — rare after the first tiles, where v1 did it
// for every tile. The last row block starts first (causal: the longest rows). Same masks and outputs as attn_fwd_tc;
// lse = m + log(l) with the m used.
constexpr int kTc4Rows = 64;
constexpr float kLazy = 8.0f;
template <class TT, int HD>
__device__ void attn_fwd_tc4(const float *q, const float *k, const float *v, float *out, float *lse, ll T, ll nh, ll nkv,
                             float scale, const int *seg_start, const float *alibi, const int *prefix) {
  constexpr int LD = HD + 8, LDS = 36, LDP = 40, NT = HD / 16, W = kTc4Rows / 16;
  static_assert(kTc4Rows * LD <= 2 * kTc * LD, "the query tile is staged where the key and value tiles go");
  __shared__ __align__(32) TT KVs[2 * kTc * LD];  // the query tile first, then per step the key and value tiles
  __shared__ __align__(32) float Ss[W * 16 * LDS];
  __shared__ __align__(32) TT Ps[W * 16 * LDP];
  __shared__ ll range[2];
  TT *Ks = KVs, *Vs = KVs + kTc * LD;
  const TcRows at(kTc4Rows, T, nh, nkv, prefix, alibi);
  const ll b = at.b, h = at.h, g = at.g, i0 = at.i0, P = at.P, i = at.i;
  const int warp = at.warp, r = at.r, half = at.half;
  const float slope = at.slope;
  const float *qb = q + (b * T * nh + h) * HD, *kb = k + (b * T * nkv + g) * HD, *vb = v + (b * T * nkv + g) * HD;
  if (threadIdx.x == 0) tc_key_range(range, b, i0, kTc4Rows, T, P, seg_start);
  stage_rows4<TT, HD, LD, kTc4Rows>(KVs, qb, i0, T, nh * HD);
  __syncthreads();
  wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> qf[NT];
  for (int kk = 0; kk < NT; ++kk) wm::load_matrix_sync(qf[kk], KVs + warp * 16 * LD + kk * 16, LD);
  __syncthreads();
  wm::fragment<wm::accumulator, 16, 16, 16, float> of[NT];
  for (int nt = 0; nt < NT; ++nt) wm::fill_fragment(of[nt], 0.0f);
  float m = -INFINITY, l = 0.0f;
  const ll first = (i < T && seg_start) ? (ll)seg_start[b * T + i] : 0, last = i < T ? max(i, P - 1) : -1;
  float *Sw = Ss + warp * 16 * LDS;
  TT *Pw = Ps + warp * 16 * LDP;
  // of[nt] rows ·= f(row) through the warp's score scratch (16×16 at a time); every lane of row r holds its factor
  auto rescale = [&](int nt, float f) {
    wm::store_matrix_sync(Sw, of[nt], LDS, wm::mem_row_major);
    __syncwarp();
    for (int c = 0; c < 8; ++c) Sw[r * LDS + half * 8 + c] *= f;
    __syncwarp();
    wm::load_matrix_sync(of[nt], Sw, LDS, wm::mem_row_major);
    __syncwarp();  // every lane has loaded before the scratch is written again
  };
  for (ll j0 = range[0] / kTc * kTc; j0 <= range[1]; j0 += kTc) {
    stage_rows4<TT, HD, LD, kTc>(Ks, kb, j0, T, nkv * HD);
    stage_rows4<TT, HD, LD, kTc>(Vs, vb, j0, T, nkv * HD);
    __syncthreads();
    const bool warp_sees = warp_any(i < T && j0 <= last && j0 + kTc > first);
    if (warp_sees) {  // (uniform in the warp; a warp whose rows see none of this tile skips it)
      float sv[16];
      const float mx = scores_tile<TT, HD>(qf, Ks, Sw, sv, j0, first, last, T, scale, slope, r, half);
      __syncwarp();  // every lane has read its scores: the scratch may be reused
      const bool up = mx > m + kLazy;  // (m = −∞: any visible score)
      if (warp_any(up)) {
        const float mn = up ? mx : m;
        const float alpha = up && m != -INFINITY ? expf(m - mn) : 1.0f;
        l *= alpha;
        if (warp_any(alpha != 1.0f))
          for (int nt = 0; nt < NT; ++nt) rescale(nt, alpha);
        m = mn;
      }
      float rs = 0.0f;
      for (int c = 0; c < 16; ++c) {
        const float p = sv[c] == -INFINITY ? 0.0f : expf(sv[c] - m);
        rs += p;
        Pw[r * LDP + half * 16 + c] = to_tt<TT>(p);
      }
      rs += __shfl_xor_sync(0xffffffffu, rs, 1);
      l += rs;
      __syncwarp();
      mma_ax<TT, HD>(of, Pw, LDP, Vs, LD);  // O += P·V
    }
    __syncthreads();
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  float *oi = out + ((b * T + min(i, T - 1)) * nh + h) * HD + half * 8;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) store_rows(Sw, of[nt], oi + nt * 16, inv, i < T, r, half);
  if (i < T && half == 0) lse[(b * nh + h) * T + i] = m + logf(l);
}

// dq_i = scale·Σ_j P_ij(dP_ij − D_i)·k_j with W warps × 16 query rows per block (v2: 4, so each staged key/value tile
// serves 64 rows; v1: 2), key tiles of 32 in order, longest causal rows first, tiles none of a warp's rows sees
// skipped by that warp.
template <class TT, int HD, int W>
__device__ void attn_bwd_dq_tcw(const float *dout, const float *q, const float *k, const float *v, const float *lse,
                                const float *D, float *dq, ll T, ll nh, ll nkv, float scale, const int *seg_start,
                                const float *alibi, const int *prefix) {
  constexpr int LD = HD + 8, LDS = 36, LDP = 40, NT = HD / 16, ROWS = 16 * W;
  static_assert(ROWS <= 2 * kTc, "the query and dout tiles are staged where the key and value tiles go");
  __shared__ __align__(32) TT KVs[2 * kTc * LD];  // the query tile, then the dout tile, then per step K and V
  __shared__ __align__(32) float Ss[W * 16 * LDS];
  __shared__ __align__(32) float dPs[W * 16 * LDS];
  __shared__ __align__(32) TT dSs[W * 16 * LDP];
  __shared__ ll range[2];
  TT *Ks = KVs, *Vs = KVs + kTc * LD;
  const TcRows at(ROWS, T, nh, nkv, prefix, alibi);
  const ll b = at.b, h = at.h, g = at.g, i0 = at.i0, P = at.P, i = at.i;
  const int warp = at.warp, r = at.r, half = at.half;
  const float slope = at.slope;
  const float *kb = k + (b * T * nkv + g) * HD, *vb = v + (b * T * nkv + g) * HD;
  if (threadIdx.x == 0) tc_key_range(range, b, i0, ROWS, T, P, seg_start);
  wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> qf[NT], df[NT];
  stage_rows4<TT, HD, LD, ROWS>(KVs, q + (b * T * nh + h) * HD, i0, T, nh * HD);
  __syncthreads();
  for (int kk = 0; kk < NT; ++kk) wm::load_matrix_sync(qf[kk], KVs + warp * 16 * LD + kk * 16, LD);
  __syncthreads();
  stage_rows4<TT, HD, LD, ROWS>(KVs, dout + (b * T * nh + h) * HD, i0, T, nh * HD);
  __syncthreads();
  for (int kk = 0; kk < NT; ++kk) wm::load_matrix_sync(df[kk], KVs + warp * 16 * LD + kk * 16, LD);
  __syncthreads();
  wm::fragment<wm::accumulator, 16, 16, 16, float> acc[NT];
  for (int nt = 0; nt < NT; ++nt) wm::fill_fragment(acc[nt], 0.0f);
  const float Li = i < T ? lse[(b * nh + h) * T + i] : 0.0f, Di = i < T ? D[(b * T + i) * nh + h] : 0.0f;
  const ll first = (i < T && seg_start) ? (ll)seg_start[b * T + i] : 0, last = i < T ? max(i, P - 1) : -1;
  float *Sw = Ss + warp * 16 * LDS, *dPw = dPs + warp * 16 * LDS;
  TT *dSw = dSs + warp * 16 * LDP;
  for (ll j0 = range[0] / kTc * kTc; j0 <= range[1]; j0 += kTc) {
    stage_rows4<TT, HD, LD, kTc>(Ks, kb, j0, T, nkv * HD);
    stage_rows4<TT, HD, LD, kTc>(Vs, vb, j0, T, nkv * HD);
    __syncthreads();
    if (warp_any(i < T && j0 <= last && j0 + kTc > first))
      dq_tile<TT, HD>(qf, df, Ks, Vs, Sw, dPw, dSw, acc, j0, first, last, T, scale, slope, Li, Di, r, half);
    __syncthreads();
  }
  float *di = dq + ((b * T + min(i, T - 1)) * nh + h) * HD + half * 8;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) store_rows(Sw, acc[nt], di + nt * 16, scale, i < T, r, half);
}

// dk_j = scale·Σ_(h in group, i) dS_ij q_i, dv_j = Σ P_ij dout_i with W warps × 16 keys per block (v2: 4, so each
// staged query/dout tile serves 64 keys; v1: 2): heads of the group, then query tiles of 32 in order; a warp skips the
// query tiles none of its keys is visible to.
template <class TT, int HD, int W>
__device__ void attn_bwd_dkdv_tcw(const float *dout, const float *q, const float *k, const float *v, const float *lse,
                                  const float *D, float *dk, float *dv, ll T, ll nh, ll nkv, float scale,
                                  const int *seg_start, const float *alibi, const int *prefix) {
  constexpr int LD = HD + 8, LDS = 36, LDP = 40, NT = HD / 16, ROWS = 16 * W;
  static_assert(ROWS <= 2 * kTc, "the key and value tiles are staged where the query and dout tiles go");
  __shared__ __align__(32) TT QDs[2 * kTc * LD];  // the key tile, then the value tile, then per step Q and dO
  __shared__ __align__(32) float Ss[W * 16 * LDS];
  __shared__ __align__(32) float dPs[W * 16 * LDS];
  __shared__ __align__(32) TT Pts[W * 16 * LDP];
  __shared__ __align__(32) TT dSts[W * 16 * LDP];
  __shared__ float Ls[kTc], Ds[kTc];
  TT *Qs = QDs, *dOs = QDs + kTc * LD;
  const ll b = blockIdx.z, g = blockIdx.y, j0 = (ll)blockIdx.x * ROWS, group = nh / nkv;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 1, half = lane & 1;
  const ll P = prefix ? min((ll)prefix[b], T) : 0, j = j0 + warp * 16 + r, jw = j0 + warp * 16;
  const float *kb = k + (b * T * nkv + g) * HD, *vb = v + (b * T * nkv + g) * HD;
  wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> kf[NT], vf[NT];
  stage_rows4<TT, HD, LD, ROWS>(QDs, kb, j0, T, nkv * HD);
  __syncthreads();
  for (int kk = 0; kk < NT; ++kk) wm::load_matrix_sync(kf[kk], QDs + warp * 16 * LD + kk * 16, LD);
  __syncthreads();
  stage_rows4<TT, HD, LD, ROWS>(QDs, vb, j0, T, nkv * HD);
  __syncthreads();
  for (int kk = 0; kk < NT; ++kk) wm::load_matrix_sync(vf[kk], QDs + warp * 16 * LD + kk * 16, LD);
  __syncthreads();
  wm::fragment<wm::accumulator, 16, 16, 16, float> dkf[NT], dvf[NT];
  for (int nt = 0; nt < NT; ++nt) {
    wm::fill_fragment(dkf[nt], 0.0f);
    wm::fill_fragment(dvf[nt], 0.0f);
  }
  float *Sw = Ss + warp * 16 * LDS, *dPw = dPs + warp * 16 * LDS;
  TT *Ptw = Pts + warp * 16 * LDP, *dStw = dSts + warp * 16 * LDP;
  const ll qlo = j0 < P ? 0 : j0;  // causal: only queries at or after the block's first key (all under a prefix)
  for (ll hh = 0; hh < group; ++hh) {
    const ll h = g * group + hh;
    const float slope = alibi ? alibi[h] : 0.0f;
    for (ll i0 = qlo / kTc * kTc; i0 < T; i0 += kTc) {
      // seg_start never decreases along a row (packed samples in order, a sliding window): once the tile's first query
      // starts past the block's last key, no later query sees any of its keys (block-uniform: before any barrier)
      if (seg_start && (ll)seg_start[b * T + i0] >= j0 + ROWS) break;
      dkdv_stage<TT, HD>(Qs, dOs, Ls, Ds, q, dout, lse, D, b, h, i0, T, nh);
      __syncthreads();
      // the warp's keys [jw, jw+16) see none of queries [i0, i0+32) when all of them are later (and past the prefix)
      // or beyond T
      if (jw < T && !(i0 + kTc <= jw && jw >= P))
        dkdv_tile<TT, HD>(kf, vf, Qs, dOs, Ls, Ds, Sw, dPw, Ptw, dStw, dkf, dvf, b, i0, j, T, P, seg_start, scale, slope, r, half);
      __syncthreads();
    }
  }
  // (each accumulator array indexed by constants only: a selected `pass ? dvf : dkf` would put both in local memory)
  const ll o = ((b * T + min(j, T - 1)) * nkv + g) * HD + half * 8;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) store_rows(Sw, dkf[nt], dk + o + nt * 16, scale, j < T, r, half);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) store_rows(Sw, dvf[nt], dv + o + nt * 16, 1.0f, j < T, r, half);
}
}  // namespace

extern "C" {
#define LLMT_TC_FWD_ARGS                                                                                            \
  const float *q, const float *k, const float *v, float *out, float *lse, ll T, ll nh, ll nkv, float scale,        \
      const int *seg_start, const float *alibi, const int *prefix
#define LLMT_TC_FWD_PASS q, k, v, out, lse, T, nh, nkv, scale, seg_start, alibi, prefix
#define LLMT_TC_DQ_ARGS                                                                                             \
  const float *dout, const float *q, const float *k, const float *v, const float *lse, const float *D, float *dq,   \
      ll T, ll nh, ll nkv, float scale, const int *seg_start, const float *alibi, const int *prefix
#define LLMT_TC_DQ_PASS dout, q, k, v, lse, D, dq, T, nh, nkv, scale, seg_start, alibi, prefix
#define LLMT_TC_DKDV_ARGS                                                                                           \
  const float *dout, const float *q, const float *k, const float *v, const float *lse, const float *D, float *dk,   \
      float *dv, ll T, ll nh, ll nkv, float scale, const int *seg_start, const float *alibi, const int *prefix
#define LLMT_TC_DKDV_PASS dout, q, k, v, lse, D, dk, dv, T, nh, nkv, scale, seg_start, alibi, prefix
__global__ void k_attn_fwd_tc_bf16_64(LLMT_TC_FWD_ARGS) { attn_fwd_tc<__nv_bfloat16, 64>(LLMT_TC_FWD_PASS); }
__global__ void k_attn_fwd_tc_bf16_128(LLMT_TC_FWD_ARGS) { attn_fwd_tc<__nv_bfloat16, 128>(LLMT_TC_FWD_PASS); }
__global__ void k_attn_fwd_tc_f16_64(LLMT_TC_FWD_ARGS) { attn_fwd_tc<__half, 64>(LLMT_TC_FWD_PASS); }
__global__ void k_attn_fwd_tc_f16_128(LLMT_TC_FWD_ARGS) { attn_fwd_tc<__half, 128>(LLMT_TC_FWD_PASS); }
__global__ void k_attn_fwd_tc4_bf16_64(LLMT_TC_FWD_ARGS) { attn_fwd_tc4<__nv_bfloat16, 64>(LLMT_TC_FWD_PASS); }
__global__ void k_attn_fwd_tc4_bf16_128(LLMT_TC_FWD_ARGS) { attn_fwd_tc4<__nv_bfloat16, 128>(LLMT_TC_FWD_PASS); }
__global__ void k_attn_fwd_tc4_f16_64(LLMT_TC_FWD_ARGS) { attn_fwd_tc4<__half, 64>(LLMT_TC_FWD_PASS); }
__global__ void k_attn_fwd_tc4_f16_128(LLMT_TC_FWD_ARGS) { attn_fwd_tc4<__half, 128>(LLMT_TC_FWD_PASS); }
__global__ void k_attn_dq_tc4_bf16_64(LLMT_TC_DQ_ARGS) { attn_bwd_dq_tcw<__nv_bfloat16, 64, 4>(LLMT_TC_DQ_PASS); }
__global__ void k_attn_dq_tc4_bf16_128(LLMT_TC_DQ_ARGS) { attn_bwd_dq_tcw<__nv_bfloat16, 128, 4>(LLMT_TC_DQ_PASS); }
__global__ void k_attn_dq_tc4_f16_64(LLMT_TC_DQ_ARGS) { attn_bwd_dq_tcw<__half, 64, 4>(LLMT_TC_DQ_PASS); }
__global__ void k_attn_dq_tc4_f16_128(LLMT_TC_DQ_ARGS) { attn_bwd_dq_tcw<__half, 128, 4>(LLMT_TC_DQ_PASS); }
__global__ void k_attn_dkdv_tc4_bf16_64(LLMT_TC_DKDV_ARGS) { attn_bwd_dkdv_tcw<__nv_bfloat16, 64, 4>(LLMT_TC_DKDV_PASS); }
__global__ void k_attn_dkdv_tc4_bf16_128(LLMT_TC_DKDV_ARGS) { attn_bwd_dkdv_tcw<__nv_bfloat16, 128, 4>(LLMT_TC_DKDV_PASS); }
__global__ void k_attn_dkdv_tc4_f16_64(LLMT_TC_DKDV_ARGS) { attn_bwd_dkdv_tcw<__half, 64, 4>(LLMT_TC_DKDV_PASS); }
__global__ void k_attn_dkdv_tc4_f16_128(LLMT_TC_DKDV_ARGS) { attn_bwd_dkdv_tcw<__half, 128, 4>(LLMT_TC_DKDV_PASS); }
__global__ void k_attn_dq_tc_bf16_64(LLMT_TC_DQ_ARGS) { attn_bwd_dq_tcw<__nv_bfloat16, 64, 2>(LLMT_TC_DQ_PASS); }
__global__ void k_attn_dq_tc_bf16_128(LLMT_TC_DQ_ARGS) { attn_bwd_dq_tcw<__nv_bfloat16, 128, 2>(LLMT_TC_DQ_PASS); }
__global__ void k_attn_dq_tc_f16_64(LLMT_TC_DQ_ARGS) { attn_bwd_dq_tcw<__half, 64, 2>(LLMT_TC_DQ_PASS); }
__global__ void k_attn_dq_tc_f16_128(LLMT_TC_DQ_ARGS) { attn_bwd_dq_tcw<__half, 128, 2>(LLMT_TC_DQ_PASS); }
__global__ void k_attn_dkdv_tc_bf16_64(LLMT_TC_DKDV_ARGS) { attn_bwd_dkdv_tcw<__nv_bfloat16, 64, 2>(LLMT_TC_DKDV_PASS); }
__global__ void k_attn_dkdv_tc_bf16_128(LLMT_TC_DKDV_ARGS) { attn_bwd_dkdv_tcw<__nv_bfloat16, 128, 2>(LLMT_TC_DKDV_PASS); }
__global__ void k_attn_dkdv_tc_f16_64(LLMT_TC_DKDV_ARGS) { attn_bwd_dkdv_tcw<__half, 64, 2>(LLMT_TC_DKDV_PASS); }
__global__ void k_attn_dkdv_tc_f16_128(LLMT_TC_DKDV_ARGS) { attn_bwd_dkdv_tcw<__half, 128, 2>(LLMT_TC_DKDV_PASS); }
}  // extern "C"

// ---- 4-bit base weights on tensor cores (mixed-precision QLoRA: Backend::matmul_*_q4_lp) ----------------------------
// C[M,N] (+)= t(A)·op(t(W)), t() = rounding to TT (bf16 or fp16), W 4-bit and decoded per tile into 16-bit shared
// memory inside the GEMM (no full- or half-precision copy of a weight exists), products on WMMA 16×16×16 tiles with
// fp32 accumulation, C fp32. Each weight element is decoded as in q4_gemm (code[q]·scale in fp32, the scale by
// q4_scale: two rounded fp32 operations for nested scales) and then rounded to TT — cpu/q4.hpp q4_dequantize_half.
// Tiles: 128 (M) × 64 (N) of C per block of 256 threads = 8 warps in 4 (M) × 2 (N), each warp 32×32 (2×2 fp32
// accumulators); K in slices of 32. Per slice: A's 128×32 slice is staged fp32 → TT (16-byte loads when aligned), W's
// slice decoded once per block (each thread 8 consecutive elements of one W row: one 32-bit load of 4 bytes and one
// scale when aligned; otherwise element by element with bounds), then 2 k-steps of 2×2 mma per warp. Edges (M, N, K
// not multiples of the tile) are zero-filled. Each C element is accumulated by one warp in a fixed order:
// deterministic. Static shared memory ≈ 25 KB.
// The W slice in shared memory is [row][LDW] with the slice's rows of W: NT (W [N,K]) 64 rows n of 32 k each, read as
// a col_major matrix_b (B(k,n) = W[n,k]); NN (W [K,N]) 32 rows k of 64 n each, read row_major (B(k,n) = W[k,n]).
namespace {
constexpr int kQ4TcM = 128, kQ4TcN = 64, kQ4TcK = 32, kQ4TcThreads = 256;
constexpr int kQ4TcLdA = kQ4TcK + 8;  // 16-bit A tile [128][40] (ldm a multiple of 8)
constexpr int kQ4TcLdC = 20;          // fp32 epilogue staging per warp [16][20] (ldm a multiple of 4)

struct __align__(16) q4_f4 {  // four floats loaded as one 16-byte access
  float x, y, z, w;
};
template <bool NN> struct q4_tc_b { using layout = wm::col_major; };
template <> struct q4_tc_b<true> { using layout = wm::row_major; };

// 4 bytes at p (4-byte aligned) as a little-endian word: byte 0 in bits 0…7
__device__ __forceinline__ unsigned ld_u32(const unsigned char *p) {
#if defined(__CUDACC__)
  return *reinterpret_cast<const unsigned *>(p);
#else
  ::cuemu::align_check(p, 4, "ld_u32");  // cuemu: the GPU's word load faults where misaligned
  unsigned u;
  std::memcpy(&u, p, 4);
  return u;
#endif
}

template <class TT, bool NN>
__device__ void q4_gemm_tc(const float *A, const unsigned char *packed, const float *absmax, const unsigned char *qabsmax,
                           const float *absmax2, const float *code2, float offset, int type, float *C, ll M, ll N, ll K,
                           int acc) {
  constexpr int RW = NN ? kQ4TcK : kQ4TcN;  // rows of W's slice (NT: n, NN: k)
  constexpr int LW = NN ? kQ4TcN : kQ4TcK;  // consecutive elements per row (NT: k, NN: n)
  constexpr int LDW = LW + 8;
  __shared__ __align__(32) TT As[kQ4TcM * kQ4TcLdA];
  __shared__ __align__(32) TT Ws[RW * LDW];
  __shared__ __align__(32) float Cs[8 * 16 * kQ4TcLdC];
  __shared__ float code[16];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wr = warp >> 1, wc = warp & 1;
  const ll m0 = (ll)blockIdx.y * kQ4TcM, n0 = (ll)blockIdx.x * kQ4TcN;
  const ll wrows = NN ? K : N, wlen = NN ? N : K;  // W is [wrows, wlen] row-major
  const bool avec = ((size_t)A & 15) == 0 && (K & 3) == 0, pvec = ((size_t)packed & 3) == 0;
  if (tid < 16) code[tid] = type == 2 ? kQ4Fp4[tid] : kQ4Nf4[tid];
  __syncthreads();  // the code table
  // this thread's W chunk: row r of the slice, elements c…c+7 of it
  const int r = tid / (LW / 8), c = (tid % (LW / 8)) * 8;
  wm::fragment<wm::accumulator, 16, 16, 16, float> cf[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wm::fill_fragment(cf[i][j], 0.0f);
  for (ll k0 = 0; k0 < K; k0 += kQ4TcK) {
    // A slice [128 m][32 k] → TT
    if (avec && m0 + kQ4TcM <= M && k0 + kQ4TcK <= K) {
      for (int e = tid; e < kQ4TcM * kQ4TcK / 4; e += kQ4TcThreads) {
        const int i = e >> 3, j = (e & 7) * 4;
        const q4_f4 v = *reinterpret_cast<const q4_f4 *>(A + (m0 + i) * K + k0 + j);
        TT *d = As + i * kQ4TcLdA + j;
        d[0] = to_tt<TT>(v.x);
        d[1] = to_tt<TT>(v.y);
        d[2] = to_tt<TT>(v.z);
        d[3] = to_tt<TT>(v.w);
      }
    } else {
      for (int e = tid; e < kQ4TcM * kQ4TcK; e += kQ4TcThreads) {
        const int i = e >> 5, j = e & 31;
        const ll m = m0 + i, k = k0 + j;
        As[i * kQ4TcLdA + j] = to_tt<TT>((m < M && k < K) ? A[m * K + k] : 0.0f);
      }
    }
    // W slice: rows (NT: n0…, NN: k0…), columns (NT: k0…, NN: n0…)
    {
      const ll row = (NN ? k0 : n0) + r, col = (NN ? n0 : k0) + c;
      const ll idx = row * wlen + col;  // flat index of the chunk's first element
      TT *d = Ws + r * LDW + c;
      if (pvec && (idx & 7) == 0 && row < wrows && col + 8 <= wlen) {  // 4 aligned bytes, one 64-element block
        const unsigned u = ld_u32(packed + (idx >> 1));
        const float s = q4_scale(absmax, qabsmax, absmax2, code2, offset, idx >> 6);
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          const unsigned byte = (u >> (8 * (q >> 1))) & 255u;
          d[q] = to_tt<TT>(code[(q & 1) ? (byte & 15u) : (byte >> 4)] * s);
        }
      } else {
        for (int q = 0; q < 8; ++q) {
          float w = 0.0f;
          if (row < wrows && col + q < wlen) {
            const ll x = idx + q;
            const unsigned byte = packed[x >> 1];
            w = code[(x & 1) ? (byte & 15u) : (byte >> 4)] * q4_scale(absmax, qabsmax, absmax2, code2, offset, x >> 6);
          }
          d[q] = to_tt<TT>(w);
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kQ4TcK / 16; ++kk) {
      wm::fragment<wm::matrix_a, 16, 16, 16, TT, wm::row_major> af[2];
      wm::fragment<wm::matrix_b, 16, 16, 16, TT, typename q4_tc_b<NN>::layout> bf[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wm::load_matrix_sync(af[i], As + (wr * 32 + i * 16) * kQ4TcLdA + kk * 16, kQ4TcLdA);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int n = wc * 32 + j * 16;
        wm::load_matrix_sync(bf[j], NN ? Ws + kk * 16 * LDW + n : Ws + n * LDW + kk * 16, LDW);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wm::mma_sync(cf[i][j], af[i], bf[j], cf[i][j]);
    }
    __syncthreads();  // before the next slice overwrites As / Ws
  }
  // epilogue: each 16×16 accumulator through the warp's staging tile, 8 elements per lane, bounds-checked
  float *Cw = Cs + warp * 16 * kQ4TcLdC;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wm::store_matrix_sync(Cw, cf[i][j], kQ4TcLdC, wm::mem_row_major);
      __syncwarp();
      for (int q = 0; q < 8; ++q) {
        const int e = lane + 32 * q, rr = e >> 4, cc = e & 15;
        const ll m = m0 + wr * 32 + i * 16 + rr, n = n0 + wc * 32 + j * 16 + cc;
        if (m < M && n < N) {
          const float v = Cw[rr * kQ4TcLdC + cc];
          C[m * N + n] = acc ? C[m * N + n] + v : v;
        }
      }
      __syncwarp();  // before the next store_matrix_sync overwrites the staging tile
    }
}
}  // namespace

extern "C" {
// Launch: grid (ceil(N/64), ceil(M/128)), 256 threads; arguments as k_gemm_q4_nt / k_gemm_q4_nn.
#define LLMT_Q4TC_ARGS                                                                                              \
  const float *A, const unsigned char *packed, const float *absmax, const unsigned char *qabsmax,                   \
      const float *absmax2, const float *code2, float offset, int type, float *C, ll M, ll N, ll K, int acc
#define LLMT_Q4TC_PASS A, packed, absmax, qabsmax, absmax2, code2, offset, type, C, M, N, K, acc
__global__ void k_gemm_q4_nt_tc_bf16(LLMT_Q4TC_ARGS) { q4_gemm_tc<__nv_bfloat16, false>(LLMT_Q4TC_PASS); }
__global__ void k_gemm_q4_nt_tc_f16(LLMT_Q4TC_ARGS) { q4_gemm_tc<__half, false>(LLMT_Q4TC_PASS); }
__global__ void k_gemm_q4_nn_tc_bf16(LLMT_Q4TC_ARGS) { q4_gemm_tc<__nv_bfloat16, true>(LLMT_Q4TC_PASS); }
__global__ void k_gemm_q4_nn_tc_f16(LLMT_Q4TC_ARGS) { q4_gemm_tc<__half, true>(LLMT_Q4TC_PASS); }

// W (4-bit, n elements) → out[i] = code[q_i]·scale rounded to bf16 (half 1) / fp16 (half 2): exactly the tensor-core GEMMs'
// decoding (and the CPU's q4_dequantize_half), for the dequantize-then-cuBLAS path (LLMT_Q4_GEMM=dequant). One thread per
// byte (two elements, never in different 64-element blocks).
// The block rows [r0, r0+rows) × columns [c0, c0+w) of a 4-bit weight of `cols` columns (row-major) into out
// [rows, w]. Eight elements per thread — one 4-byte load, one scale (a 64-element block holds all eight), one 16-byte
// store — when c0, w and cols are multiples of 8 and `out` is 16-byte aligned (uniform for the launch); else one.
__global__ void k_q4_dequant_half(const unsigned char *packed, const float *absmax, const unsigned char *qabsmax,
                                  const float *absmax2, const float *code2, float offset, int type, unsigned short *out,
                                  ll rows, ll w, ll cols, ll r0, ll c0, int half) {
  const float *tab = type == 2 ? kQ4Fp4 : kQ4Nf4;
  if (c0 % 8 == 0 && w % 8 == 0 && cols % 8 == 0 && (reinterpret_cast<unsigned long long>(out) & 15ull) == 0 &&
      (reinterpret_cast<unsigned long long>(packed) & 3ull) == 0) {
    struct __align__(16) H8 {
      unsigned w[4];
    };
    GRID_STRIDE(i, rows * w / 8) {
      const ll o = 8 * i, e = (r0 + o / w) * cols + c0 + o % w;
      const unsigned bytes = ld_u32(packed + e / 2);
      const float s = q4_scale(absmax, qabsmax, absmax2, code2, offset, e >> 6);
      H8 h;
      for (int j = 0; j < 4; ++j) {
        const unsigned byte = (bytes >> (8 * j)) & 255u;  // element e+2j in the high nibble, e+2j+1 in the low one
        h.w[j] = unsigned(llmt::to_half(tab[byte >> 4] * s, half)) | (unsigned(llmt::to_half(tab[byte & 15u] * s, half)) << 16);
      }
      *reinterpret_cast<H8 *>(out + o) = h;
    }
    return;
  }
  GRID_STRIDE(o, rows * w) {
    const ll e = (r0 + o / w) * cols + c0 + o % w;
    const unsigned byte = packed[e / 2];
    out[o] = llmt::to_half(tab[(e & 1) ? (byte & 15u) : (byte >> 4)] * q4_scale(absmax, qabsmax, absmax2, code2, offset, e >> 6), half);
  }
}
}  // extern "C"
