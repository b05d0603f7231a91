// loader.hpp — run-time loading of NVIDIA's libraries with dlopen, by soname (CUDA 13 and 12 names), so one
// engine build runs on machines without them. Compiled into every build (CUDA or not): it needs no CUDA header —
// the few types and prototypes used are declared here by hand, with the C ABI of cuda.h / nvml.h / cublas_api.h.
// NCCL is loaded elsewhere (engine/collective_nccl.cpp). Nothing here aborts: a missing library is a reason string.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace llmt::cudadl {

// ---- driver API (libcuda.so.1) ----------------------------------------------------------------------------
using CUresult = int;  // CUDA_SUCCESS = 0
using CUdevice = int;
using CUdeviceptr = unsigned long long;
struct CUctx_st;
struct CUmod_st;
struct CUfunc_st;
struct CUstream_st;
using CUcontext = CUctx_st *;
using CUmodule = CUmod_st *;
using CUfunction = CUfunc_st *;
using CUstream = CUstream_st *;
struct CUevent_st;
using CUevent = CUevent_st *;

constexpr int kAttrMultiprocessors = 16;    // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
constexpr int kAttrCcMajor = 75;            // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
constexpr int kAttrCcMinor = 76;            // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
constexpr unsigned kStreamNonBlocking = 1;  // CU_STREAM_NON_BLOCKING
constexpr CUresult kErrOutOfMemory = 2;     // CUDA_ERROR_OUT_OF_MEMORY

struct Driver {
  bool ok = false;
  std::string why;   // when !ok: e.g. "libcuda.so.1 not found" or "cuInit failed: CUDA_ERROR_NO_DEVICE"
  int version = 0;   // cuDriverGetVersion, e.g. 12040
  int devices = 0;
  CUresult (*cuInit)(unsigned) = nullptr;
  CUresult (*cuDriverGetVersion)(int *) = nullptr;
  CUresult (*cuDeviceGetCount)(int *) = nullptr;
  CUresult (*cuDeviceGet)(CUdevice *, int) = nullptr;
  CUresult (*cuDeviceGetName)(char *, int, CUdevice) = nullptr;
  CUresult (*cuDeviceTotalMem)(size_t *, CUdevice) = nullptr;
  CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice) = nullptr;
  CUresult (*cuDeviceGetPCIBusId)(char *, int, CUdevice) = nullptr;
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice) = nullptr;
  CUresult (*cuCtxSetCurrent)(CUcontext) = nullptr;
  CUresult (*cuModuleLoadData)(CUmodule *, const void *) = nullptr;
  CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *) = nullptr;
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                             void **, void **) = nullptr;
  CUresult (*cuStreamCreate)(CUstream *, unsigned) = nullptr;
  CUresult (*cuStreamSynchronize)(CUstream) = nullptr;
  CUresult (*cuMemAlloc)(CUdeviceptr *, size_t) = nullptr;
  CUresult (*cuMemFree)(CUdeviceptr) = nullptr;
  CUresult (*cuMemGetInfo)(size_t *, size_t *) = nullptr;
  CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream) = nullptr;
  CUresult (*cuMemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream) = nullptr;
  CUresult (*cuMemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream) = nullptr;
  CUresult (*cuMemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream) = nullptr;
  CUresult (*cuGetErrorName)(CUresult, const char **) = nullptr;
  CUresult (*cuGetErrorString)(CUresult, const char **) = nullptr;
  // optional (null when missing): events, for Backend::profile_start (cuEventElapsedTime_v2 in CUDA 13 drivers, the
  // unversioned name before); page-locked host memory, for asynchronous offload copies
  CUresult (*cuEventCreate)(CUevent *, unsigned) = nullptr;
  CUresult (*cuEventRecord)(CUevent, CUstream) = nullptr;
  CUresult (*cuEventSynchronize)(CUevent) = nullptr;
  CUresult (*cuEventElapsedTime)(float *, CUevent, CUevent) = nullptr;
  CUresult (*cuEventDestroy)(CUevent) = nullptr;
  CUresult (*cuMemHostAlloc)(void **, size_t, unsigned) = nullptr;
  CUresult (*cuMemFreeHost)(void *) = nullptr;
  bool has_events() const { return cuEventCreate && cuEventRecord && cuEventSynchronize && cuEventElapsedTime && cuEventDestroy; }
  /** "CUDA_ERROR_OUT_OF_MEMORY (out of memory)" */
  std::string error(CUresult r) const;
};
/** Loads libcuda.so.1 and calls cuInit(0) once (thread-safe); never throws. */
const Driver &driver();

// ---- cuBLAS (libcublas.so.13 / .12) and cuBLASLt ------------------------------------------------------------
struct cublasContext;
using cublasHandle_t = cublasContext *;
using cublasStatus_t = int;  // CUBLAS_STATUS_SUCCESS = 0
constexpr int kCublasOpN = 0, kCublasOpT = 1;
constexpr int kCublasDefaultMath = 0, kCublasTf32Math = 3;
constexpr int kCudaR32F = 0, kCudaR16F = 2, kCudaR16BF = 14;  // cudaDataType
constexpr int kCublasCompute32F = 68, kCublasGemmDefault = -1;

struct Cublas {
  bool ok = false;
  std::string why, soname;  // soname of the library loaded, e.g. "libcublas.so.13"
  bool lt = false;          // cuBLASLt loaded too (fused epilogues: mixed-precision path, next step)
  std::string lt_soname;
  cublasStatus_t (*create)(cublasHandle_t *) = nullptr;
  cublasStatus_t (*destroy)(cublasHandle_t) = nullptr;
  cublasStatus_t (*set_stream)(cublasHandle_t, CUstream) = nullptr;
  cublasStatus_t (*set_math_mode)(cublasHandle_t, int) = nullptr;
  cublasStatus_t (*sgemm)(cublasHandle_t, int, int, int, int, int, const float *, const float *, int, const float *, int,
                          const float *, float *, int) = nullptr;
  const char *(*status_string)(cublasStatus_t) = nullptr;  // may be null (old cuBLAS)
  // cublasGemmEx (16-bit inputs, fp32 output and compute); null if missing: the backend's own kernel is used
  cublasStatus_t (*gemm_ex)(cublasHandle_t, int, int, int, int, int, const void *, const void *, int, int, const void *, int,
                            int, const void *, void *, int, int, int, int) = nullptr;
};
/** Loads cuBLAS (and cuBLASLt) once. Directories in $LLMT_CUDA_LIB_DIRS (':'-separated) are tried first. */
const Cublas &cublas();

// ---- NVML (libnvidia-ml.so.1) -----------------------------------------------------------------------------------
struct Gpu {
  int index = 0;               // CUDA device ordinal (honours CUDA_VISIBLE_DEVICES)
  std::string name;            // "NVIDIA H200"
  uint64_t memory_total = 0, memory_free = 0;  // bytes (free: 0 when unknown)
  int utilization = -1;        // percent busy over NVML's last sample period, -1 if unknown
  int cc_major = 0, cc_minor = 0;
  std::string pci_bus_id;
};
/** GPUs of this machine, listed through the driver (order, compute capability) and NVML (memory, utilisation),
 *  re-read on every call. Empty with *why set when there is none or the libraries are missing. */
std::vector<Gpu> list_gpus(std::string *why);

}  // namespace llmt::cudadl
