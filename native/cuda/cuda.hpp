// cuda.hpp — what the engine (model/train/capi/CLI) sees of the CUDA backend. Declared in every build; in a
// build without LLMT_CUDA (cuda/nocuda.cpp) the backend is never available and the reason says so.
// STATUS: the kernels behind this have been compiled (sm_80/86/89/90 + PTX) and run under cuemu, NOT yet on a GPU — see
// docs/cuda.md; `test_cuda` / `bench/gpu.sh` are the checks that validate them on a GPU server.
#pragma once

#include <stdexcept>
#include <string>

namespace llmt {

class Backend;

/** A CUDA driver/runtime/library failure; the message names the kernel or call. The C API maps it to
 *  LLMT_ERR_CUDA. (Device out-of-memory is std::bad_alloc, mapped to LLMT_ERR_OOM.) */
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/** The CUDA backend of device ordinal `index` (created on first use, lives for the process), or null with
 *  *why saying why not ("this engine was built without CUDA", "no device (libcuda.so.1 not found)", ...). */
Backend *cuda_backend(int index, std::string *why);

/** Backends compiled in, e.g. "cpu, cuda(sm_80,sm_86,sm_89,sm_90+ptx)". */
std::string compiled_backends();

/** One line per compiled backend saying whether it can run here, e.g.
 *  "cuda: no device (libcuda.so.1 not found)" or "cuda: 1 device: [0] NVIDIA H200 (sm_90, 140.4 GiB), driver 12.8, cuBLAS libcublas.so.12". */
std::string runnable_backends();

/** Parses a device string ("cpu", "cuda", "cuda:1", "auto"). Returns the backend to compute on, or null with *err
 *  on a malformed string. "cuda" without a usable GPU falls back to the CPU backend and sets *fallback to one line
 *  saying why; "auto" picks CUDA when it is usable, silently. */
Backend *select_backend(const std::string &device, std::string *fallback, std::string *err);

}  // namespace llmt
