// ops.hpp — the CPU backend's kernels: fp32, row-major, multi-threaded. These are the reference every
// other backend (CUDA) is checked against, and each forward has its backward here.
//
// Conventions
//  - Shapes in comments: x[N,K] means N rows of K contiguous floats.
//  - Backward functions ACCUMULATE into parameter gradients (dw, db, dW: `+=`) and OVERWRITE input
//    gradients (dx) unless the name or comment says otherwise, like llm.c.
//  - Nothing allocates per call except where stated; nothing throws; no globals but the thread count.
//  - Results are deterministic for a given thread count: each output element is reduced by one thread
//    in a fixed order (so a CPU run is bit-reproducible).
#pragma once

#include <cstdint>
#include <functional>

namespace llmt::cpu {

// ---- threads ---------------------------------------------------------------------------------------
/** Worker threads used by every kernel (default: hardware concurrency, or LLMT_NUM_THREADS). */
void set_num_threads(int n);
int num_threads();
/** Splits [0, n) into contiguous chunks run on the pool; fn(begin, end). Blocks until all are done. */
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)> &fn);

// ---- matrix products ---------------------------------------------------------------------------------
// "nt": C[M,N] (+)= A[M,K] · B[N,K]ᵀ      (y = x·Wᵀ with W stored [out,in], as nn.Linear)
void matmul_nt(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate);
// "nn": C[M,N] (+)= A[M,K] · B[K,N]       (dx = dy·W)
void matmul_nn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate);
// "tn": C[M,N] (+)= A[K,M]ᵀ · B[K,N]      (dW = dyᵀ·x: A = dy[K=rows, M=out], B = x[rows, N=in])
void matmul_tn(const float *A, const float *B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate);

// The same with B given by a decoder instead of fp32 memory (4-bit weights, cpu/q4.hpp): the GEMM decodes B
// into its packed panel (at most kKC×kNC floats per thread), so B never exists in fp32; bit-identical to the
// plain call on the decoded matrix. fn(ctx, begin, n, out) writes elements [begin, begin+n) of B's flat
// row-major storage ([N,K] for nt, [K,N] for nn) as fp32; it runs on the worker threads.
struct BDecoder {
  void (*fn)(const void *ctx, int64_t begin, int64_t n, float *out);
  const void *ctx;
};
void matmul_nt_dec(const float *A, const BDecoder &B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate);
void matmul_nn_dec(const float *A, const BDecoder &B, float *C, int64_t M, int64_t N, int64_t K, bool accumulate);

// y[rows,cols] += b[cols]
void add_bias(float *y, const float *b, int64_t rows, int64_t cols);
// db[cols] += Σ_rows dy[rows,cols]
void bias_backward(const float *dy, float *db, int64_t rows, int64_t cols);

// ---- normalisation -------------------------------------------------------------------------------------
// RMSNorm (LLaMA): y = w ⊙ x · rsqrt(mean(x²) + eps). Saves rstd[rows].
void rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, int64_t rows, int64_t cols, float eps);
// dx overwritten; dw accumulated (may be null when the weight is frozen).
void rmsnorm_backward(const float *dy, const float *x, const float *w, const float *rstd, float *dx, float *dw,
                      int64_t rows, int64_t cols);
// LayerNorm (torch.nn.LayerNorm, biased variance): y = (x − mean)·rstd ⊙ w + b. Saves mean, rstd[rows].
void layernorm_forward(const float *x, const float *w, const float *b, float *y, float *mean, float *rstd,
                       int64_t rows, int64_t cols, float eps);
// dx overwritten; dw, db accumulated (either may be null).
void layernorm_backward(const float *dy, const float *x, const float *w, const float *mean, const float *rstd,
                        float *dx, float *dw, float *db, int64_t rows, int64_t cols);

// ---- rotary embeddings ------------------------------------------------------------------------------------
// Half-split ("NeoX") RoPE in place on x[rows, heads, head_dim], rotating the first rot_dims of each head
// (pairs (i, i + rot_dims/2)), dims rot_dims..head_dim untouched. Angle for row r, pair i:
// pos[r] · pos_scale · inv_freq[i], computed in fp32 as HF does (t = pos·pos_scale in fp32, then t·inv_freq).
// inv_freq has rot_dims/2 entries. pos_scale is 1/factor for linear rope_scaling, else 1.
// interleaved (ChatGLM2): pairs (2i, 2i+1) instead: (x₀cos − x₁sin, x₁cos + x₀sin), angle pos·inv_freq[i].
// ChatGLM-6B's 2-D RoPE is two calls: x with rot_dims = head_dim/2, then x + head_dim/2 (same head_dim stride).
void rope_forward(float *x, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads,
                  int64_t head_dim, int64_t rot_dims, float pos_scale, bool interleaved = false);
// The backward of rope_forward, in place on dx (rotation by the negative angle).
void rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int64_t rows, int64_t heads,
                   int64_t head_dim, int64_t rot_dims, float pos_scale, bool interleaved = false);

// ---- activations ---------------------------------------------------------------------------------------------
// SwiGLU: out[n] = silu(gate[n]) · up[n]
void swiglu_forward(const float *gate, const float *up, float *out, int64_t n);
// dgate, dup overwritten; they may be gate and up themselves (element-wise: each element is read before it is written).
void swiglu_backward(const float *dout, const float *gate, const float *up, float *dgate, float *dup, int64_t n);

enum class Gelu { Erf, Tanh };  // Erf: torch exact GELU; Tanh: 0.5x(1+tanh(0.7978845608·(x+0.044715x³)))
void gelu_forward(const float *x, float *y, int64_t n, Gelu kind);
// dx overwritten; it may be x itself (element-wise).
void gelu_backward(const float *dy, const float *x, float *dx, int64_t n, Gelu kind);

// ---- attention ------------------------------------------------------------------------------------------------
// Causal softmax attention with grouped KV heads (GQA/MQA), never materialising more than one tile of scores
// (96 queries × 64 keys) per thread; the operands are packed once per call (scratch of the size of k and v, and of
// q and dout in the backward). q[B,T,nh,hd], k,v[B,T,nkv,hd] (nh % nkv == 0; kv head g serves query heads
// g·(nh/nkv) …), out[B,T,nh,hd]; s = scale·q·kᵀ, key j visible to query i iff j ≤ i. Saves lse[B,nh,T]
// (log-sum-exp of the scaled scores) for the backward. A query's results depend on its own row only (not on T,
// B or the thread count), bit for bit.
// seg_start (optional, [B·T]): packed rows — key j is visible to query i only if also j ≥ seg_start[b·T+i]
// (the index, within the row, where query i's sample begins; with a sliding window W the model passes
// max(that, i − W + 1)). Never decreasing along a row (the CUDA backward stops at the first query past a key).
// Null: plain causal attention.
// alibi (optional, [nh]): ALiBi slopes; s_ij = scale·q_i·k_j + alibi[h]·j (j = key index in the row, not
// scaled — BLOOM's baddbmm, Baichuan-13B's mask; shift-invariant per query, so packed rows need no offset).
// prefix (optional, [B]): prefix-LM (ChatGLM-6B): keys j < prefix[b] are visible to every query of row b,
// also later ones (bidirectional prefix); not combined with seg_start.
void attention_forward(const float *q, const float *k, const float *v, float *out, float *lse, int64_t B, int64_t T,
                       int64_t nh, int64_t nkv, int64_t hd, float scale, const int32_t *seg_start = nullptr,
                       const float *alibi = nullptr, const int32_t *prefix = nullptr);
// dq, dk, dv overwritten. Recomputes the probabilities from q, k and lse.
void attention_backward(const float *dout, const float *q, const float *k, const float *v, const float *out,
                        const float *lse, float *dq, float *dk, float *dv, int64_t B, int64_t T, int64_t nh,
                        int64_t nkv, int64_t hd, float scale, const int32_t *seg_start = nullptr,
                        const float *alibi = nullptr, const int32_t *prefix = nullptr);
// One decoding chunk against a KV cache: queries q[n, nh, hd] at positions p0…p0+n−1 attend to cache rows
// 0…max(own position, prefix−1) of kc, vc [capacity, nkv, hd]; out[n, nh, hd]. alibi as above (j = cache row).
// window > 0 (sliding-window attention, Mistral v0.1 / Qwen2): a query at position p sees rows p−window+1…p only.
void attention_cached(const float *q, const float *kc, const float *vc, float *out, int64_t p0, int64_t n,
                      int64_t nh, int64_t nkv, int64_t hd, float scale, const float *alibi = nullptr,
                      int64_t prefix = 0, int64_t window = 0);

// ---- loss ---------------------------------------------------------------------------------------------------
// Cross-entropy over logits[N,V] against targets[N] (targets < 0 are ignored, e.g. −100).
// Returns the SUM of −log softmax(logits)[target] over the counted rows (double accumulation) and writes
// lse[N] (log-sum-exp per row) for the backward. *count receives the number of counted rows.
double cross_entropy_forward(const float *logits, const int32_t *targets, float *lse, int64_t N, int64_t V,
                             int64_t *count);
// dlogits[N,V] = scale · (softmax(logits) − onehot(target)) for counted rows, 0 for ignored rows (overwritten).
void cross_entropy_backward(const float *logits, const int32_t *targets, const float *lse, float *dlogits, int64_t N,
                            int64_t V, float scale);

// ---- embedding ------------------------------------------------------------------------------------------------
// out[N,H] = table[ids[n]]. ids must be in [0, V) (checked by the caller).
void embedding_forward(const float *table, const int32_t *ids, float *out, int64_t N, int64_t H);
// dtable[ids[n]] += dout[n] (deterministic order).
void embedding_backward(const float *dout, const int32_t *ids, float *dtable, int64_t N, int64_t H, int64_t V);

// ---- optimizer ------------------------------------------------------------------------------------------------
// torch.optim.AdamW, one step (step ≥ 1, counted before this call's update):
//   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
//   p ← p − (lr / (1 − β1^step)) · m / (sqrt(v) / sqrt(1 − β2^step) + eps)
void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1, float beta2, float eps,
                float weight_decay, int64_t step);

// ---- reductions ------------------------------------------------------------------------------------------------
// Σ x² in double (for the global gradient norm).
double sum_squares(const float *x, int64_t n);
// x *= s
void scale_inplace(float *x, float s, int64_t n);
// *acc += sum_squares(x, n) (acc: one double in backend memory; the global gradient norm downloads it once)
void sum_squares_acc(const float *x, int64_t n, double *acc);

// ---- memory ------------------------------------------------------------------------------------------------------
// x[i] = value
void fill(float *x, float value, int64_t n);
// dst[i] = src[i] (non-overlapping)
void copy(float *dst, const float *src, int64_t n);
// out [cols, rows] (+)= in [rows, cols]ᵀ
void transpose(const float *in, float *out, int64_t rows, int64_t cols, bool acc);

}  // namespace llmt::cpu
