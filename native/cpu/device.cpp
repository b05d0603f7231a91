// device.cpp — the device list. Index 0 is the host CPU (threads and RAM read from the OS); GPUs follow
// (index 1 + CUDA ordinal), found through the driver and NVML loaded with dlopen (cuda/loader.cpp), in every build.
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/sysinfo.h>
#include <unistd.h>
#endif

#include "../engine/status.hpp"
#include "../cuda/loader.hpp"

namespace {

int cpu_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void host_memory(uint64_t *total, uint64_t *available) {
  *total = 0;
  *available = 0;
#if defined(__linux__)
  // MemAvailable (not MemFree) is what a new allocation can really get without swapping.
  if (FILE *f = std::fopen("/proc/meminfo", "r")) {
    char key[64];
    unsigned long long kb = 0;
    char unit[16];
    while (std::fscanf(f, "%63s %llu %15s", key, &kb, unit) == 3) {
      if (std::strcmp(key, "MemTotal:") == 0) *total = kb * 1024ull;
      if (std::strcmp(key, "MemAvailable:") == 0) *available = kb * 1024ull;
    }
    std::fclose(f);
  }
  if (*total == 0) {
    struct sysinfo si;
    if (sysinfo(&si) == 0) {
      *total = static_cast<uint64_t>(si.totalram) * si.mem_unit;
      *available = static_cast<uint64_t>(si.freeram) * si.mem_unit;
    }
  }
#endif
}

}  // namespace

extern "C" {

llmt_status llmt_device_count(int *out_count) {
  if (out_count == nullptr) return llmt::set_error(LLMT_ERR_BAD_INPUT, "llmt_device_count: out_count is NULL");
  llmt::clear_error();
  *out_count = 1 + static_cast<int>(llmt::cudadl::list_gpus(nullptr).size());  // CPU, then GPUs (driver + NVML, dlopen'ed)
  return LLMT_OK;
}

llmt_status llmt_device_info_get(int index, llmt_device_info *out) {
  if (out == nullptr) return llmt::set_error(LLMT_ERR_BAD_INPUT, "llmt_device_info_get: out is NULL");
  int count = 0;
  llmt_device_count(&count);
  if (index < 0 || index >= count) {
    return llmt::set_error(LLMT_ERR_BAD_INPUT, "llmt_device_info_get: device index " + std::to_string(index) +
                                                   " is out of range (this machine has " + std::to_string(count) +
                                                   " device(s))");
  }
  std::memset(out, 0, sizeof(*out));
  if (index > 0) {  // a GPU: listed through the dlopen'ed driver and NVML (cuda/loader.cpp), in CUDA ordinal order
    std::vector<llmt::cudadl::Gpu> gpus = llmt::cudadl::list_gpus(nullptr);
    if (index - 1 >= static_cast<int>(gpus.size()))
      return llmt::set_error(LLMT_ERR_BAD_INPUT, "llmt_device_info_get: GPU " + std::to_string(index - 1) + " went away");
    const auto &g = gpus[static_cast<size_t>(index - 1)];
    out->index = index;
    out->kind = LLMT_DEVICE_CUDA;
    std::snprintf(out->name, sizeof(out->name), "%s", g.name.c_str());
    out->memory_total = g.memory_total;
    out->memory_free = g.memory_free;
    out->utilization = g.utilization;
    out->compute_capability = g.cc_major * 10 + g.cc_minor;
    llmt::clear_error();
    return LLMT_OK;
  }
  out->index = 0;
  out->utilization = -1;
  out->kind = LLMT_DEVICE_CPU;
  out->threads = cpu_threads();
  std::snprintf(out->name, sizeof(out->name), "CPU (%d threads)", out->threads);
  host_memory(&out->memory_total, &out->memory_free);
  llmt::clear_error();
  return LLMT_OK;
}

}  // extern "C"
