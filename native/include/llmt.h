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
} llmt_device_info;

/* Number of devices (>= 1). Errors: none today; kept fallible for drivers that fail to load. */
LLMT_API llmt_status llmt_device_count(int *out_count);
/* Fills `out` for device `index`. Errors: LLMT_ERR_BAD_INPUT for a NULL `out` or index out of range. */
LLMT_API llmt_status llmt_device_info_get(int index, llmt_device_info *out);

#ifdef __cplusplus
}
#endif

#endif /* LLMT_H */
