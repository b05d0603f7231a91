// loader.cpp — dlopen/dlsym of the CUDA driver, cuBLAS/cuBLASLt and NVML (see loader.hpp). Each library is
// loaded once, on first use, under a static-local initialiser (thread-safe); failures are remembered as text.
#include "loader.hpp"

#include <cstdlib>
#include <cstring>

#if defined(_WIN32)
// Windows: not supported by this loader yet (the CUDA backend targets Linux GPU servers first).
#else
#include <dlfcn.h>
#endif

namespace llmt::cudadl {

namespace {

void *open_lib(const std::vector<std::string> &sonames, std::string *loaded, std::string *why) {
#if defined(_WIN32)
  *why = "run-time loading of CUDA libraries is not implemented on Windows";
  return nullptr;
#else
  std::vector<std::string> dirs;
  if (const char *e = std::getenv("LLMT_CUDA_LIB_DIRS")) {
    std::string s = e;
    size_t at = 0;
    while (at <= s.size()) {
      size_t c = s.find(':', at);
      if (c == std::string::npos) c = s.size();
      if (c > at) dirs.push_back(s.substr(at, c - at));
      at = c + 1;
    }
  }
  for (const auto &so : sonames) {
    for (const auto &d : dirs)
      if (void *h = dlopen((d + "/" + so).c_str(), RTLD_NOW | RTLD_LOCAL)) {
        *loaded = so;
        return h;
      }
    if (void *h = dlopen(so.c_str(), RTLD_NOW | RTLD_LOCAL)) {
      *loaded = so;
      return h;
    }
  }
  std::string list;
  for (const auto &so : sonames) list += (list.empty() ? "" : ", ") + so;
  *why = list + " not found";
  return nullptr;
#endif
}

template <typename F>
bool sym(void *h, const char *name, F &out) {
#if defined(_WIN32)
  return false;
#else
  out = reinterpret_cast<F>(dlsym(h, name));
  return out != nullptr;
#endif
}

}  // namespace

std::string Driver::error(CUresult r) const {
  const char *n = nullptr, *s = nullptr;
  if (cuGetErrorName) cuGetErrorName(r, &n);
  if (cuGetErrorString) cuGetErrorString(r, &s);
  return std::string(n ? n : ("CUresult " + std::to_string(r)).c_str()) + (s ? std::string(" (") + s + ")" : "");
}

const Driver &driver() {
  static const Driver d = [] {
    Driver d;
    std::string so;
    void *h = open_lib({"libcuda.so.1", "libcuda.so"}, &so, &d.why);
    if (!h) {
      d.why = "libcuda.so.1 not found";
      return d;
    }
    bool ok = sym(h, "cuInit", d.cuInit) && sym(h, "cuDriverGetVersion", d.cuDriverGetVersion) &&
              sym(h, "cuDeviceGetCount", d.cuDeviceGetCount) && sym(h, "cuDeviceGet", d.cuDeviceGet) &&
              sym(h, "cuDeviceGetName", d.cuDeviceGetName) && sym(h, "cuDeviceTotalMem_v2", d.cuDeviceTotalMem) &&
              sym(h, "cuDeviceGetAttribute", d.cuDeviceGetAttribute) &&
              sym(h, "cuDeviceGetPCIBusId", d.cuDeviceGetPCIBusId) &&
              sym(h, "cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain) &&
              sym(h, "cuCtxSetCurrent", d.cuCtxSetCurrent) && sym(h, "cuModuleLoadData", d.cuModuleLoadData) &&
              sym(h, "cuModuleGetFunction", d.cuModuleGetFunction) && sym(h, "cuLaunchKernel", d.cuLaunchKernel) &&
              sym(h, "cuStreamCreate", d.cuStreamCreate) && sym(h, "cuStreamSynchronize", d.cuStreamSynchronize) &&
              sym(h, "cuMemAlloc_v2", d.cuMemAlloc) && sym(h, "cuMemFree_v2", d.cuMemFree) &&
              sym(h, "cuMemGetInfo_v2", d.cuMemGetInfo) && sym(h, "cuMemcpyHtoDAsync_v2", d.cuMemcpyHtoDAsync) &&
              sym(h, "cuMemcpyDtoHAsync_v2", d.cuMemcpyDtoHAsync) &&
              sym(h, "cuMemcpyDtoDAsync_v2", d.cuMemcpyDtoDAsync) && sym(h, "cuMemsetD8Async", d.cuMemsetD8Async) &&
              sym(h, "cuGetErrorName", d.cuGetErrorName) && sym(h, "cuGetErrorString", d.cuGetErrorString);
    sym(h, "cuEventCreate", d.cuEventCreate);
    sym(h, "cuEventRecord", d.cuEventRecord);
    sym(h, "cuEventSynchronize", d.cuEventSynchronize);
    if (!sym(h, "cuEventElapsedTime_v2", d.cuEventElapsedTime)) sym(h, "cuEventElapsedTime", d.cuEventElapsedTime);
    if (!sym(h, "cuEventDestroy_v2", d.cuEventDestroy)) sym(h, "cuEventDestroy", d.cuEventDestroy);
    sym(h, "cuMemHostAlloc", d.cuMemHostAlloc);
    sym(h, "cuMemFreeHost", d.cuMemFreeHost);
    if (!ok) {
      d.why = "libcuda.so.1 is too old (a driver API entry point is missing); update the NVIDIA driver";
      return d;
    }
    CUresult r = d.cuInit(0);
    if (r != 0) {
      d.why = "cuInit failed: " + d.error(r);
      return d;
    }
    d.cuDriverGetVersion(&d.version);
    if ((r = d.cuDeviceGetCount(&d.devices)) != 0 || d.devices == 0) {
      d.why = r ? "cuDeviceGetCount failed: " + d.error(r) : "the driver sees no GPU";
      d.devices = 0;
      return d;
    }
    d.ok = true;
    return d;
  }();
  return d;
}

const Cublas &cublas() {
  static const Cublas c = [] {
    Cublas c;
    void *h = open_lib({"libcublas.so.13", "libcublas.so.12"}, &c.soname, &c.why);
    if (!h) return c;
    c.ok = sym(h, "cublasCreate_v2", c.create) && sym(h, "cublasDestroy_v2", c.destroy) &&
           sym(h, "cublasSetStream_v2", c.set_stream) && sym(h, "cublasSetMathMode", c.set_math_mode) &&
           sym(h, "cublasSgemm_v2", c.sgemm);
    if (!c.ok) {
      c.why = c.soname + " lacks an expected entry point";
      return c;
    }
    sym(h, "cublasGetStatusString", c.status_string);
    sym(h, "cublasGemmEx", c.gemm_ex);
    std::string why;
    c.lt = open_lib({"libcublasLt.so.13", "libcublasLt.so.12"}, &c.lt_soname, &why) != nullptr;
    return c;
  }();
  return c;
}

// ---- NVML ----------------------------------------------------------------------------------------------------
namespace {
struct nvmlDevice_st;
using nvmlDevice_t = nvmlDevice_st *;
struct NvmlMemory {
  unsigned long long total, free, used;
};
struct NvmlUtil {
  unsigned gpu, memory;
};
struct Nvml {
  bool ok = false;
  std::string why;
  int (*init)() = nullptr;
  int (*count)(unsigned *) = nullptr;
  int (*by_index)(unsigned, nvmlDevice_t *) = nullptr;
  int (*by_bus)(const char *, nvmlDevice_t *) = nullptr;
  int (*name)(nvmlDevice_t, char *, unsigned) = nullptr;
  int (*memory)(nvmlDevice_t, NvmlMemory *) = nullptr;
  int (*util)(nvmlDevice_t, NvmlUtil *) = nullptr;
};
const Nvml &nvml() {
  static const Nvml n = [] {
    Nvml n;
    std::string so;
    void *h = open_lib({"libnvidia-ml.so.1", "libnvidia-ml.so"}, &so, &n.why);
    if (!h) return n;
    if (!(sym(h, "nvmlInit_v2", n.init) && sym(h, "nvmlDeviceGetCount_v2", n.count) &&
          sym(h, "nvmlDeviceGetHandleByIndex_v2", n.by_index) && sym(h, "nvmlDeviceGetName", n.name) &&
          sym(h, "nvmlDeviceGetMemoryInfo", n.memory) && sym(h, "nvmlDeviceGetUtilizationRates", n.util))) {
      n.why = so + " lacks an expected entry point";
      return n;
    }
    sym(h, "nvmlDeviceGetHandleByPciBusId_v2", n.by_bus);
    if (int r = n.init()) {
      n.why = "nvmlInit failed (NVML error " + std::to_string(r) + ")";
      return n;
    }
    n.ok = true;
    return n;
  }();
  return n;
}
}  // namespace

std::vector<Gpu> list_gpus(std::string *why) {
  std::vector<Gpu> out;
  const Driver &d = driver();
  const Nvml &n = nvml();
  auto fill_nvml = [&](Gpu &g, nvmlDevice_t h) {
    NvmlMemory m{};
    if (n.memory(h, &m) == 0) {
      g.memory_total = m.total;
      g.memory_free = m.free;
    }
    NvmlUtil u{};
    if (n.util(h, &u) == 0) g.utilization = static_cast<int>(u.gpu);
  };
  if (d.ok) {  // the driver's order is the one --device cuda:N and CUDA_VISIBLE_DEVICES use
    for (int i = 0; i < d.devices; ++i) {
      CUdevice dev = 0;
      if (d.cuDeviceGet(&dev, i) != 0) continue;
      Gpu g;
      g.index = i;
      char name[256] = {0};
      d.cuDeviceGetName(name, sizeof name - 1, dev);
      g.name = name;
      size_t total = 0;
      d.cuDeviceTotalMem(&total, dev);
      g.memory_total = total;
      d.cuDeviceGetAttribute(&g.cc_major, kAttrCcMajor, dev);
      d.cuDeviceGetAttribute(&g.cc_minor, kAttrCcMinor, dev);
      char bus[64] = {0};
      if (d.cuDeviceGetPCIBusId(bus, sizeof bus - 1, dev) == 0) g.pci_bus_id = bus;
      nvmlDevice_t h = nullptr;
      if (n.ok && n.by_bus && !g.pci_bus_id.empty() && n.by_bus(g.pci_bus_id.c_str(), &h) == 0) fill_nvml(g, h);
      out.push_back(g);
    }
    return out;
  }
  if (n.ok) {  // no usable driver API (e.g. too old) but NVML answers: list what it sees
    unsigned cnt = 0;
    if (n.count(&cnt) == 0)
      for (unsigned i = 0; i < cnt; ++i) {
        nvmlDevice_t h = nullptr;
        if (n.by_index(i, &h) != 0) continue;
        Gpu g;
        g.index = static_cast<int>(i);
        char name[256] = {0};
        n.name(h, name, sizeof name - 1);
        g.name = name;
        fill_nvml(g, h);
        out.push_back(g);
      }
  }
  if (out.empty() && why) *why = d.why;
  return out;
}

}  // namespace llmt::cudadl
