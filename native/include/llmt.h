/*
 * llmt.h — the LLMs-train engine's C API. This header is the only boundary: the CLI worker
 * (native/cli) and the Node addon (native/addon) include nothing else from the engine.
 *
 * Conventions
 *  - Plain C, `extern "C"`, opaque handles (added by the engine issue), no exceptions across it.
 *  - Every fallible function returns an `llmt_status`. On anything but LLMT_OK, `llmt_last_error()`
 *    returns a message for the calling thread that names what went wrong and, where one exists, a hint
 *    (e.g. "file model.safetensors: tensor 'x' ends past the end of the file (truncated download?)").
 *  - The engine never calls exit()/abort() on bad input: an error is a status code and a message.
 *  - Naming: functions operate on the thing named after `llmt_` (llmt_device_…, llmt_model_…).
 *  - Long operations take an `llmt_abort_fn` (polled; non-zero return stops with LLMT_ERR_ABORTED)
 *    and an `llmt_event_fn` that receives one JSON object per call (the worker's event protocol).
 */
#ifndef LLMT_H
#define LLMT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(LLMT_SHARED)
#  define LLMT_API __declspec(dllexport)
#elif defined(__GNUC__)
#  define LLMT_API __attribute__((visibility("default")))
#else
#  define LLMT_API
#endif

/* Bumped on any incompatible change of this header. */
#define LLMT_API_VERSION 1

/* Status codes. The names returned by llmt_status_name() are the `code` strings of the worker's
 * `error` events (OOM, BAD_INPUT, IO, NAN, CUDA, ...), so the app maps both the same way. */
typedef enum llmt_status {
  LLMT_OK = 0,
  LLMT_ERR_BAD_INPUT = 1,   /* malformed argument, file or config; the message names it */
  LLMT_ERR_IO = 2,          /* cannot read/write a file (missing, permission, disk full) */
  LLMT_ERR_OOM = 3,         /* host or device allocation failed */
  LLMT_ERR_NAN = 4,         /* non-finite loss or gradient */
  LLMT_ERR_CUDA = 5,        /* CUDA driver/runtime/library error */
  LLMT_ERR_UNSUPPORTED = 6, /* valid input this build cannot handle (e.g. unknown model_type) */
  LLMT_ERR_ABORTED = 7,     /* the abort callback asked to stop */
  LLMT_ERR_INTERNAL = 8     /* a bug: please report with the message */
} llmt_status;

/* Callbacks for long operations. `user` is passed back unchanged. */
typedef int (*llmt_abort_fn)(void *user);
typedef void (*llmt_event_fn)(void *user, const char *event_json);

/* Version of the engine library, e.g. "0.1.0". Never NULL. */
LLMT_API const char *llmt_version(void);
/* LLMT_API_VERSION the library was built with. */
LLMT_API int llmt_api_version(void);
/* Stable upper-case name of a status ("OK", "BAD_INPUT", ...). Unknown values give "UNKNOWN". */
LLMT_API const char *llmt_status_name(llmt_status status);
/* Message of the last failed call on this thread; "" if none. Valid until the next call on the thread. */
LLMT_API const char *llmt_last_error(void);
/* Build features as a JSON object, e.g. {"cuda":false,"openmp":true,"simd":"avx2"}. Never NULL. */
LLMT_API const char *llmt_build_info(void);

/* Compute devices. Index 0 is always the CPU; GPUs (CUDA backend) follow. */
typedef enum llmt_device_kind { LLMT_DEVICE_CPU = 0, LLMT_DEVICE_CUDA = 1 } llmt_device_kind;

typedef struct llmt_device_info {
  int index;                /* position in the device list */
  llmt_device_kind kind;
  char name[128];           /* e.g. "CPU (2 threads)" or "NVIDIA H200" */
  uint64_t memory_total;    /* bytes; host RAM for the CPU */
  uint64_t memory_free;     /* bytes available now; 0 if unknown */
  int threads;              /* worker threads the CPU backend uses; 0 for GPUs */
  int utilization;          /* GPU busy percent over NVML's last sample period; -1 if unknown or the CPU */
  int compute_capability;   /* GPUs: major*10 + minor (90 = sm_90); 0 for the CPU */
} llmt_device_info;

/* Number of devices (>= 1): the CPU, then each GPU the NVIDIA driver reports (device index 1 + N is CUDA device N),
 * listed in every build through libcuda/NVML loaded at run time (absent libraries: CPU only). Errors: none today. */
LLMT_API llmt_status llmt_device_count(int *out_count);
/* Fills `out` for device `index`. Errors: LLMT_ERR_BAD_INPUT for a NULL `out` or index out of range. */
LLMT_API llmt_status llmt_device_info_get(int index, llmt_device_info *out);

/* ---- strings returned by the engine ----------------------------------------------------------------- */
/* Frees a string the engine returned through a `char **out_json` parameter. NULL is ignored. */
LLMT_API void llmt_free_string(char *s);

/* ---- threads -------------------------------------------------------------------------------------------- */
/* Worker threads of the CPU backend (default: all cores, or $LLMT_NUM_THREADS). Errors: BAD_INPUT if n < 1. */
LLMT_API llmt_status llmt_set_threads(int n);

/* ---- model folders ------------------------------------------------------------------------------------ */
/* Describes a Hugging Face model folder without loading its weights: JSON with model_type, family,
 * supported (bool) and reason, the parsed config (hidden, layers, heads, kv_heads, vocab, ...), parameter
 * count, on-disk dtypes and the LoRA target module names, and `quantization` ("none", or "nf4"/"fp4" with
 * `double_quant` for a bnb 4-bit checkpoint, whose parameters and dtype are then the weights' logical ones).
 * Validates every safetensors header.
 * Errors: IO (missing folder/files), BAD_INPUT (malformed config or weights). An unsupported model_type is
 * NOT an error here: `supported` is false and `reason` says why. Free *out_json with llmt_free_string. */
LLMT_API llmt_status llmt_model_inspect(const char *dir, char **out_json);

/* Writes a tiny random model of `family` ("llama", "baichuan", "gpt_neox") as an HF folder with a
 * byte-level tokenizer. Errors: UNSUPPORTED (unknown family), IO. */
LLMT_API llmt_status llmt_create_tiny(const char *family, const char *out_dir, uint64_t seed);

/* ---- loaded models ------------------------------------------------------------------------------------ */
typedef struct llmt_model llmt_model;

/* Makes `model` compute on `device`: "cpu" (default), "cuda", "cuda:N" or "auto" (CUDA when usable). "cuda" without a
 * usable GPU keeps the CPU and, when `fallback_note` is not NULL, copies a one-line reason into it (up to
 * note_cap bytes; "" when no fallback happened). The CUDA backend is validated under the cuemu emulator, not yet on a GPU (docs/cuda.md).
 * Errors: BAD_INPUT (malformed device string). */
LLMT_API llmt_status llmt_model_set_device(llmt_model *model, const char *device, char *fallback_note, size_t note_cap);
/* Mixed precision for a loaded model: "bf16" or "fp16" keeps its frozen base weights (block linears, an untied head)
 * as 16-bit values — half their memory — and their GEMMs read the activations rounded to that type with fp32
 * accumulation; LoRA weights stay fp32. "fp32" (the default) changes nothing. Call after loading the adapter.
 * Errors: BAD_INPUT (unknown name, a weight beyond fp16's range), UNSUPPORTED (the backend has no 16-bit GEMM). */
LLMT_API llmt_status llmt_model_set_precision(llmt_model *model, const char *precision);
/* Gradient checkpointing for llmt_model_backward: keep only each block's input and recompute it in the backward
 * (as training.gradient_checkpointing does for jobs). Off by default. on = 2: also keep those inputs in host memory
 * on a device backend (training.offload_checkpoints), uploaded again block by block in the backward. */
LLMT_API llmt_status llmt_model_set_checkpointing(llmt_model *model, int on);
/* Device profile of what the model runs between a start (on = 1) and a stop (on = 0): every kernel, cuBLAS call and
 * copy the backend enqueues is timed on the device (an event pair each: for a profiling run, not a timed one). The stop
 * returns, in *out_json (free with llmt_free_string), {"device", "kernel_ms", "rows": [{"name", "calls", "ms", "flops",
 * "tflops"}]} — rows per kernel name or library call with its shape ("cublasGemmEx bf16 nt 512x4096x4096"), longest
 * first; flops/tflops only for GEMMs (2·M·N·K). out_json may be NULL on start.
 * Errors: UNSUPPORTED (the CPU backend, or a driver without events), BAD_INPUT (a stop without a start). */
LLMT_API llmt_status llmt_model_profile(llmt_model *model, int on, char **out_json);
/* Backends compiled into this library and whether each can run here, as text lines, e.g.
 * "backends: cpu, cuda(sm_80,...)\ncpu: yes\ncuda: no device (libcuda.so.1 not found)". Never NULL. */
LLMT_API const char *llmt_backends_info(void);

/* Loads an HF folder (fp32 on the CPU backend) and, if adapter_dir is not NULL, a PEFT LoRA adapter
 * (applied without merging; its parameters are trainable for llmt_model_grad).
 * Errors: IO, BAD_INPUT (weights/adapter that do not fit, with names), UNSUPPORTED (model_type, adapter kind),
 * OOM. */
LLMT_API llmt_status llmt_model_load(const char *dir, const char *adapter_dir, llmt_model **out);
/* The same with the linear weights of the transformer blocks quantized to 4 bits while loading (QLoRA;
 * bitsandbytes' NF4/FP4 with blocksize 64 and double-quantized scales): quantization is "nf4", "fp4" or
 * "none"/NULL (= llmt_model_load), or a job's object form as JSON text: {"type": "nf4", "double_quant": false}. Embeddings, norms and the LM head stay fp32; the adapter is fp32.
 * Errors: as llmt_model_load, plus BAD_INPUT (unknown quantization), UNSUPPORTED (backend without 4-bit ops). */
/* As llmt_model_load_quantized, with mixed precision applied while the weights stream in: precision "bf16"/"fp16" keeps
 * the frozen base weights (block linears that are not 4-bit, an untied head) only as 16-bit values, so the fp32 model
 * never exists in memory (llmt_model_set_precision after a plain load converts afterwards). NULL or "" = "fp32". */
LLMT_API llmt_status llmt_model_load_mixed(const char *dir, const char *adapter_dir, const char *quantization,
                                          const char *precision, llmt_model **out);
LLMT_API llmt_status llmt_model_load_quantized(const char *dir, const char *adapter_dir, const char *quantization,
                                               llmt_model **out);
/* Quantizes every float tensor of the safetensors file in_path as bitsandbytes' quantize_4bit (blocksize 64;
 * quantization "nf4"/"fp4"; double_quant = compress_statistics) and writes out_path in transformers' bnb 4-bit
 * key layout (docs/formats.md "4-bit tensors"); with_dequantized adds "<name>.dequantized" float32 tensors.
 * Errors: IO, BAD_INPUT. */
LLMT_API llmt_status llmt_quantize_file(const char *in_path, const char *out_path, const char *quantization,
                                        int double_quant, int with_dequantized);
/* Writes out_dir as a bitsandbytes 4-bit checkpoint of the HF model folder dir, as transformers' save_pretrained
 * of a load_in_4bit model does: the block linears 4-bit ("nf4"/"fp4"; double_quant = bnb_4bit_use_double_quant)
 * in the key layout above, every other tensor unchanged, config.json with "quantization_config", the tokenizer
 * files copied. llmt_model_load* read such a folder as stored (no re-quantization). Streams the input one tensor
 * at a time. Errors: IO, BAD_INPUT (out_dir is dir or holds other weights; dir already quantized), UNSUPPORTED. */
LLMT_API llmt_status llmt_quantize_model(const char *dir, const char *out_dir, const char *quantization, int double_quant);
LLMT_API void llmt_model_free(llmt_model *model);
/* JSON: {model_type, vocab, hidden, layers, parameters, trainable, adapter, eos_ids, bos_id, pad_id, device (the backend's
 * name: "cpu", "cuda:0"), device_memory {allocated, peak_allocated, reserved, peak_reserved} (its allocator's bytes; 0
 * on the CPU)}. */
LLMT_API llmt_status llmt_model_info(llmt_model *model, char **out_json);

/* Forward pass, no dropout. ids and labels are [batch * seq] row-major; labels may be NULL (no loss) and use
 * -100 for ignored positions (HF semantics: the model shifts them). logits_out, if not NULL, receives
 * [batch * seq * vocab] floats. *loss_out receives the mean token loss (NaN when no token counts) and
 * *tokens_out the number of counted tokens; either may be NULL.
 * Errors: BAD_INPUT (ids outside the vocabulary, bad shape), NAN (non-finite loss). */
LLMT_API llmt_status llmt_model_forward(llmt_model *model, const int32_t *ids, const int32_t *labels, int64_t batch,
                                        int64_t seq, float *logits_out, double *loss_out, int64_t *tokens_out);

/* Forward + backward of the mean token loss, no dropout: gradients of the trainable parameters are zeroed,
 * then computed (kept inside the model; used by llmt_model_grad and benchmarks). Errors: as llmt_model_grad. */
LLMT_API llmt_status llmt_model_backward(llmt_model *model, const int32_t *ids, const int32_t *labels, int64_t batch,
                                         int64_t seq, double *loss_out);

/* Gradients of the mean token loss with respect to every adapter parameter (LoRA A/B, modules_to_save),
 * no dropout, written as float32 to a safetensors file at out_path keyed by PEFT's names.
 * Errors: BAD_INPUT (no adapter loaded, no labelled token), IO, NAN. */
LLMT_API llmt_status llmt_model_grad(llmt_model *model, const int32_t *ids, const int32_t *labels, int64_t batch,
                                     int64_t seq, const char *out_path, double *loss_out);

/* Generates after `prompt` (n tokens). params_json (may be NULL): {"max_new_tokens", "do_sample", "temperature",
 * "top_k", "top_p", "repetition_penalty", "seed", "stop_ids": [...]}; defaults are the seed project's
 * (temperature 0.001, top_k 30, top_p 0.85, repetition_penalty 1.2, max_new_tokens 512) and the model's eos.
 * on_token (may be NULL) receives {"token": id, "index": i} per generated token; abort (may be NULL) is polled
 * before each token. Up to out_cap ids are copied to out_ids; *out_n receives the number generated.
 * Errors: BAD_INPUT, ABORTED (the tokens generated so far are still returned). */
LLMT_API llmt_status llmt_model_generate(llmt_model *model, const int32_t *prompt, int64_t n, const char *params_json,
                                         llmt_event_fn on_token, llmt_abort_fn abort, void *user, int32_t *out_ids,
                                         int64_t out_cap, int64_t *out_n);

/* Generates after n_prompts prompts at once (batched): `prompts` holds their ids back to back, lengths[r] the
 * length of prompt r (>= 1). params_json as llmt_model_generate, plus "seeds": [...] (one per prompt; default: every
 * row uses "seed"). One forward per step over every unfinished sequence (own KV cache and positions each, no
 * padding); each row stops at its own stop id or max_new_tokens, the processors apply per row with its own RNG. Row
 * r's ids equal llmt_model_generate on prompt r alone with seed seeds[r], bit for bit. on_token (may be NULL)
 * receives {"row": r, "token": id, "index": i}; abort (may be NULL) is polled after each token. out_ids is
 * [n_prompts * out_cap] (row r at r * out_cap, up to out_cap ids each); out_n[n_prompts] receives the counts.
 * Errors: BAD_INPUT, ABORTED (the tokens generated so far are still returned). */
LLMT_API llmt_status llmt_model_generate_batch(llmt_model *model, const int32_t *prompts, const int64_t *lengths,
                                               int64_t n_prompts, const char *params_json, llmt_event_fn on_token,
                                               llmt_abort_fn abort, void *user, int32_t *out_ids, int64_t out_cap,
                                               int64_t *out_n);

/* Evaluation loss on a tokenized dataset (a .tok file, or a JSON tokens file {"input_ids","labels"}), no dropout,
 * computed exactly as a training job's eval (engine/evaluate.hpp): batches of batch_size consecutive samples,
 * right-padded; loss = summed token cross-entropies / scored tokens (labels != -100, shifted). For the same file and
 * eval_batch_size = batch_size, `loss` is bit-identical to the job's eval_loss. on_event (may be NULL) receives
 * {"event":"progress","done":samples,"total":samples} after each batch; abort (may be NULL) is polled after each
 * batch. *out_json receives {"loss","tokens","samples","perplexity"}; free it with llmt_free_string.
 * Errors: IO, BAD_INPUT (bad file, ids beyond the vocabulary, batch_size < 1, no scored token), UNSUPPORTED
 * (packed rows for ChatGLM-6B), NAN, ABORTED. */
LLMT_API llmt_status llmt_model_eval_loss(llmt_model *model, const char *tok_path, int64_t batch_size, llmt_event_fn on_event,
                                         llmt_abort_fn abort, void *user, char **out_json);

/* ---- model manager: conversion and merging (see engine/modelops.hpp) --------------------------------------- */
/* Converts the PyTorch checkpoint in `dir` (pytorch_model.bin, its sharded index, or a PEFT adapter folder's
 * adapter_model.bin — read by a restricted unpickler that runs no code) to safetensors: into `dir` itself when
 * out_dir is NULL/""/dir, else into a new folder out_dir with the other files copied (atomically: complete or
 * absent). options_json (may be NULL): {"max_shard_bytes": N}. on_event (may be NULL) receives
 * {"event":"progress","stage","done","total","name"}; abort (may be NULL) is polled per tensor. *out_json (may
 * be NULL) receives {"out","kind","files","tensors","bytes"}; free it with llmt_free_string.
 * Errors: IO, BAD_INPUT (damaged or malicious checkpoint, nothing to convert), UNSUPPORTED (legacy format),
 * ABORTED. */
LLMT_API llmt_status llmt_model_convert(const char *dir, const char *out_dir, const char *options_json,
                                        llmt_event_fn on_event, llmt_abort_fn abort, void *user, char **out_json);

/* Merges a PEFT LoRA adapter into its base and writes an HF folder out_dir (must not exist or be empty):
 * W + s·B·A per LoRA pair (s = alpha/r, alpha/sqrt(r) with rsLoRA), modules_to_save tensors replace the
 * base's, a larger embedding/lm_head extends the vocabulary (Chinese-LLaMA-Alpaca deltas; the adapter folder's
 * tokenizer must match it). options_json (may be NULL): {"dtype": "auto"|"float32"|"float16"|"bfloat16",
 * "max_shard_bytes": N}; auto keeps the base dtype. Callbacks and *out_json as llmt_model_convert
 * ({"out","dtype","merged_modules","replaced_tensors","vocab_before","vocab_after","files",...}).
 * Errors: IO, BAD_INPUT (adapter for another base, vocabulary mismatch, existing output), UNSUPPORTED, ABORTED. */
LLMT_API llmt_status llmt_model_merge(const char *model_dir, const char *adapter_dir, const char *out_dir,
                                      const char *options_json, llmt_event_fn on_event, llmt_abort_fn abort,
                                      void *user, char **out_json);

/* ---- training ------------------------------------------------------------------------------------------ */
/* Runs a training job (JSON, see docs/formats.md) to its end. Events (started, step, eval, checkpoint,
 * warning, error, done) go to on_event, one JSON object per call. `control` (may be NULL) is polled between
 * micro-batches: return 0 to go on, 1 to stop gracefully (a checkpoint is written), 2 to abort.
 * Errors: as the `error` event's code (BAD_INPUT, IO, OOM, NAN, UNSUPPORTED, ABORTED). */
LLMT_API llmt_status llmt_train(const char *job_json, llmt_event_fn on_event, llmt_abort_fn control, void *user);

#ifdef __cplusplus
}
#endif

#endif /* LLMT_H */
