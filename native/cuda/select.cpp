// select.cpp — backend selection by device string and the "which backends are compiled / can run" lines of
// `llmt-engine --version`. Compiled in every build; the CUDA backend itself is cuda/backend_cuda.cpp or nocuda.cpp.
#include <cstdio>
#include <cstdlib>

#include "../engine/backend.hpp"
#include "cuda.hpp"
#include "loader.hpp"

#ifndef LLMT_CUDA_ARCHS
#define LLMT_CUDA_ARCHS ""
#endif

namespace llmt {

std::string compiled_backends() {
  const std::string archs = LLMT_CUDA_ARCHS;
  return archs.empty() ? "cpu" : "cpu, cuda(" + archs + ")";
}

std::string runnable_backends() {
  std::string out = "cpu: yes";
  if (std::string(LLMT_CUDA_ARCHS).empty()) return out + "\ncuda: not compiled in (built without nvcc)";
  std::string why;
  std::vector<cudadl::Gpu> gpus = cudadl::list_gpus(&why);
  const cudadl::Driver &d = cudadl::driver();
  if (!d.ok) return out + "\ncuda: no device (" + d.why + ")";
  char buf[512];
  std::snprintf(buf, sizeof buf, "\ncuda: %d device(s), driver %d.%d", d.devices, d.version / 1000, d.version % 1000 / 10);
  out += buf;
  for (const auto &g : gpus) {
    std::snprintf(buf, sizeof buf, "\n  [%d] %s (sm_%d%d, %.1f GiB)%s", g.index, g.name.c_str(), g.cc_major, g.cc_minor,
                  g.memory_total / 1073741824.0, g.cc_major < 8 ? " — too old (needs sm_80+)" : "");
    out += buf;
  }
  const cudadl::Cublas &cb = cudadl::cublas();
  out += cb.ok ? "\ncublas: " + cb.soname + (cb.lt ? ", " + cb.lt_soname : "")
               : "\ncublas: not found (" + cb.why + "; set LLMT_CUDA_LIB_DIRS) — own GEMM kernel used";
  return out;
}

Backend *select_backend(const std::string &device, std::string *fallback, std::string *err) {
  if (device.empty() || device == "cpu") return &cpu_backend();
  int index = 0;
  bool is_auto = device == "auto";
  if (!is_auto) {
    if (device.compare(0, 4, "cuda") != 0 || (device.size() > 4 && device[4] != ':')) {
      if (err) *err = "device must be \"cpu\", \"cuda\", \"cuda:N\" or \"auto\" (got \"" + device + "\")";
      return nullptr;
    }
    if (device.size() > 5) {
      char *end = nullptr;
      index = static_cast<int>(std::strtol(device.c_str() + 5, &end, 10));
      if (*end || index < 0) {
        if (err) *err = "device \"" + device + "\": N in cuda:N must be a GPU index";
        return nullptr;
      }
    }
  }
  std::string why;
  if (Backend *be = cuda_backend(index, &why)) return be;
  if (!is_auto && fallback) *fallback = "CUDA unavailable: " + why + "; running on the CPU";
  return &cpu_backend();
}

}  // namespace llmt
