// cuemu.cpp — a CPU emulator of the CUDA driver API and cuBLAS's sgemm, for testing the CUDA backend without a GPU.
// TEST HARNESS ONLY: built into build/cuemu/libcuemu.so (with libcuda.so.1 / libcublas.so.13 symlinks to it) when the
// CUDA backend is compiled with tests; ctest points LLMT_CUDA_LIB_DIRS at it and runs test_cuda, so the real
// backend_cuda.cpp (dlopen, context, caching allocator, staging, launches) drives the real kernels.cu source — compiled
// here as C++ (device.hpp) and run with CUDA's block/warp semantics by a fiber scheduler. It does not replace the GPU
// check (bench/gpu.sh): it cannot see timing, data races a GPU could expose, or code paths behind __CUDA_ARCH__.
//
// Checks a GPU would fail on (each makes the call return the error a driver would, with a line on stderr):
//  - every pointer argument of a kernel is null or inside a device allocation (a host pointer is fatal on a GPU);
//  - every device allocation ends at a PROT_NONE guard page, so a kernel reading past the end crashes here too;
//  - memcpy ranges lie inside one allocation, and the host side of a copy is not device memory;
//  - launch limits (≤ 1024 threads per block, grid.y/z ≤ 65535, block.z ≤ 64); a block whose threads deadlock on
//    __syncthreads / divergent warp shuffles; errors are sticky like a GPU context's;
//  - the module image is a fatbin (magic 0xBA55ED50) and each kernel looked up exists in kernels.cu.
// LLMT_CUEMU_MEMORY_MB caps device memory (default 2048) so out-of-memory paths can be tested;
// LLMT_CUEMU_FAIL_KERNEL=k_name makes every launch of that kernel fail (CUDA_ERROR_LAUNCH_FAILED, sticky).
#undef _FORTIFY_SOURCE  // __longjmp_chk refuses the jumps between fiber stacks this scheduler is made of
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <functional>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "device.hpp"

// ---- the kernels under test --------------------------------------------------------------------------------------------
#include "../../cuda/kernels.cu"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace cuemu {

// ---- fibers and the per-block scheduler -----------------------------------------------------------------------------
enum State { kReady, kWaitBar, kWaitShfl, kDone };

struct Fiber {
  jmp_buf jb;
  ucontext_t uc;
  char *stack = nullptr;
  ThreadCoords c;
  State state = kReady;
  bool started = false;
  uint64_t gen = 0;  // warp exchanges done
};

namespace {
constexpr size_t kStack = 128 * 1024;

struct Warp {
  std::array<uint64_t, 32> slot[2];
};

struct BlockRun {
  void (*call)(void *, void **) = nullptr;
  void *fn = nullptr;
  void **params = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::string error;
};

thread_local BlockRun *g_block = nullptr;
thread_local jmp_buf g_sched;
std::vector<char *> g_stacks;

void fiber_main() {
  Fiber *f = g_current;
  g_block->call(g_block->fn, g_block->params);
  f->state = kDone;
  _longjmp(g_sched, 1);
}

__attribute__((noinline)) void yield() {
  if (!_setjmp(g_current->jb)) _longjmp(g_sched, 1);
}

__attribute__((noinline)) void resume(Fiber *f) {
  g_current = f;
  if (!_setjmp(g_sched)) {
    if (!f->started) {
      f->started = true;
#if defined(__x86_64__)
      // first entry: switch to the fiber's stack and call fiber_main (no signal-mask syscalls, unlike setcontext;
      // later switches are _setjmp/_longjmp, which save no signal mask either)
      char *top = f->stack + kStack - 64;
      top = reinterpret_cast<char *>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15));
      asm volatile("mov %0, %%rsp\n\tcall *%1\n\tud2" : : "r"(top), "r"(&fiber_main) : "memory");
      __builtin_unreachable();
#else
      setcontext(&f->uc);
#endif
    }
    _longjmp(f->jb, 1);
  }
  g_current = nullptr;
}
}  // namespace

thread_local Fiber *g_current = nullptr;

const ThreadCoords &coords() { return g_current->c; }

void syncthreads() {
  g_current->state = kWaitBar;
  yield();
}

uint64_t warp_exchange(uint64_t v, int src) {
  Fiber *f = g_current;
  Warp &w = g_block->warps[static_cast<size_t>(f->c.warp)];
  const int b = static_cast<int>(f->gen & 1);
  w.slot[b][static_cast<size_t>(f->c.lane)] = v;
  f->state = kWaitShfl;
  yield();
  ++f->gen;
  return w.slot[b][static_cast<size_t>(src & 31)];
}

// getcontext is returns_twice: kept out of run_grid so its locals stay in registers safely
__attribute__((noinline)) void make_fiber(Fiber &f) {
#if defined(__x86_64__)
  (void)f;  // started by a stack switch in resume()
  return;
#endif
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack;
  f.uc.uc_stack.ss_size = kStack;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, fiber_main, 0);
}

// LLMT_CUEMU_REVERSE=1: blocks, and the threads of a block between scheduling points, run in descending order. A
// kernel that reads shared memory another warp (or lane) wrote with no __syncthreads (__syncwarp) between, or that
// counts on one block running before another, gives the same results in only one of the two orders — a GPU runs
// them in any order.
bool reverse_order() {
  static const bool r = [] {
    const char *e = std::getenv("LLMT_CUEMU_REVERSE");
    return e && *e && std::strcmp(e, "0") != 0;
  }();
  return r;
}

/** Runs every block of a launch; "" or what went wrong. */
std::string run_grid(void (*call)(void *, void **), void *fn, void **params, Dim3 grid, Dim3 block) {
  const unsigned nt = block.x * block.y * block.z;
  const bool rev = reverse_order();
  while (g_stacks.size() < nt) {
    void *s = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s == MAP_FAILED) return "cannot map fiber stacks";
    g_stacks.push_back(static_cast<char *>(s));
  }
  BlockRun run;
  run.call = call;
  run.fn = fn;
  run.params = params;
  run.fibers.resize(nt);
  run.warps.resize((nt + 31) / 32);
  g_block = &run;
  for (unsigned bz0 = 0; bz0 < grid.z; ++bz0)
    for (unsigned by0 = 0; by0 < grid.y; ++by0)
      for (unsigned bx0 = 0; bx0 < grid.x; ++bx0) {
        const unsigned bz = rev ? grid.z - 1 - bz0 : bz0, by = rev ? grid.y - 1 - by0 : by0,
                       bx = rev ? grid.x - 1 - bx0 : bx0;
        for (unsigned t = 0; t < nt; ++t) {
          Fiber &f = run.fibers[t];
          f.state = kReady;
          f.started = false;
          f.gen = 0;
          f.c.thread = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
          f.c.block = {bx, by, bz};
          f.c.block_dim = block;
          f.c.grid_dim = grid;
          f.c.lane = static_cast<int>(t & 31);
          f.c.warp = static_cast<int>(t >> 5);
          f.stack = g_stacks[t];
          make_fiber(f);
        }
        for (;;) {
          bool any = false;
          for (unsigned i = 0; i < nt; ++i) {
            Fiber &f = run.fibers[rev ? nt - 1 - i : i];
            if (f.state == kReady) {
              any = true;
              resume(&f);
            }
          }
          size_t live = 0, bar = 0;
          for (Fiber &f : run.fibers) {
            if (f.state != kDone) ++live;
            if (f.state == kWaitBar) ++bar;
          }
          if (live == 0) break;
          bool released = false;
          if (bar == live) {
            for (Fiber &f : run.fibers)
              if (f.state == kWaitBar) f.state = kReady;
            released = true;
          } else {
            for (size_t w = 0; w < run.warps.size(); ++w) {
              size_t wl = 0, ws = 0;
              uint64_t gen = ~0ull;
              bool same = true;
              for (size_t t = w * 32; t < std::min<size_t>(nt, w * 32 + 32); ++t) {
                Fiber &f = run.fibers[t];
                if (f.state != kDone) ++wl;
                if (f.state == kWaitShfl) {
                  ++ws;
                  if (gen != ~0ull && gen != f.gen) same = false;
                  gen = f.gen;
                }
              }
              if (ws > 0 && ws == wl) {
                if (!same) {
                  g_block = nullptr;
                  return "divergent warp shuffles in warp " + std::to_string(w);
                }
                for (size_t t = w * 32; t < std::min<size_t>(nt, w * 32 + 32); ++t)
                  if (run.fibers[t].state == kWaitShfl) run.fibers[t].state = kReady;
                released = true;
              }
            }
          }
          if (!released && !any) {
            g_block = nullptr;
            return "deadlock in block (" + std::to_string(bx) + "," + std::to_string(by) + "," + std::to_string(bz) + "): " +
                   std::to_string(bar) + " of " + std::to_string(live) +
                   " live threads wait at __syncthreads, the others at a warp shuffle their warp never completes";
          }
        }
      }
  g_block = nullptr;
  return "";
}

// ---- device memory --------------------------------------------------------------------------------------------------
namespace {
struct Alloc {
  char *map;
  size_t map_len, size;
};
std::mutex g_mu;
std::map<uintptr_t, Alloc> g_allocs;  // user pointer → mapping
size_t g_used = 0;
int g_sticky = 0;

size_t cap() {
  const char *e = std::getenv("LLMT_CUEMU_MEMORY_MB");
  return (e ? std::strtoull(e, nullptr, 10) : 2048ull) << 20;
}
/** The allocation holding [p, p+n), or null. */
const Alloc *find(uintptr_t p, size_t n, uintptr_t *base = nullptr) {
  auto it = g_allocs.upper_bound(p);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  if (p < it->first || p + n > it->first + it->second.size) return nullptr;
  if (base) *base = it->first;
  return &it->second;
}
int fail(int code, const std::string &what) {
  std::fprintf(stderr, "cuemu: %s\n", what.c_str());
  if (code == 700 || code == 719) g_sticky = code;
  return code;
}

// A kernel: how to call it from a void** parameter array, and which parameters are pointers.
struct Kernel {
  void (*call)(void *, void **);
  void *fn;
  std::vector<bool> pointer;
};
template <typename... A, size_t... I>
void invoke_idx(void (*f)(A...), void **p, std::index_sequence<I...>) {
  f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>> *>(p[I])...);
}
template <typename... A>
void invoke(void *fn, void **p) {
  invoke_idx(reinterpret_cast<void (*)(A...)>(fn), p, std::index_sequence_for<A...>{});
}
template <typename... A>
Kernel make_kernel(void (*f)(A...)) {
  return Kernel{&invoke<A...>, reinterpret_cast<void *>(f), {std::is_pointer_v<A>...}};
}
const std::map<std::string, Kernel> &kernels() {
  static const std::map<std::string, Kernel> k = {
#define LLMT_CUEMU_KERNEL(name) {#name, make_kernel(&name)},
#include "cuemu_kernels.inc"
#undef LLMT_CUEMU_KERNEL
  };
  return k;
}
struct Module {
  int dummy;
};
Module g_module;
int g_ctx, g_stream;
}  // namespace
}  // namespace cuemu

using namespace cuemu;

// ---- driver API -------------------------------------------------------------------------------------------------------
using CUdeviceptr = unsigned long long;

// LLMT_CUEMU_SKIP_WORK=1: kernels and GEMMs are checked as usual but not executed, so a run's time is the engine's
// own host-side cost per launch (its results are garbage). For measuring that overhead only (docs/cuda.md).
static bool skip_work() {
  static const bool on = [] {
    const char *e = std::getenv("LLMT_CUEMU_SKIP_WORK");
    return e && *e && std::strcmp(e, "0") != 0;
  }();
  return on;
}
EXPORT int cuInit(unsigned) { return 0; }
EXPORT int cuDriverGetVersion(int *v) {
  *v = 13000;
  return 0;
}
// LLMT_CUEMU_DEVICES=N: N devices (default 1), so data-parallel runs can put each rank on its own ordinal. Each
// process emulates the one it uses; the devices do not share memory.
static int device_count() {
  const char *e = std::getenv("LLMT_CUEMU_DEVICES");
  const int n = e ? std::atoi(e) : 1;
  return n < 1 ? 1 : n > 16 ? 16 : n;
}
EXPORT int cuDeviceGetCount(int *n) {
  *n = device_count();
  return 0;
}
EXPORT int cuDeviceGet(int *d, int i) {
  if (i < 0 || i >= device_count()) return 101;  // CUDA_ERROR_INVALID_DEVICE
  *d = i;
  return 0;
}
EXPORT int cuDeviceGetName(char *name, int len, int) {
  std::snprintf(name, static_cast<size_t>(len), "cuemu (CUDA kernels emulated on the CPU)");
  return 0;
}
EXPORT int cuDeviceTotalMem_v2(size_t *b, int) {
  *b = cap();
  return 0;
}
EXPORT int cuDeviceGetAttribute(int *v, int attr, int) {
  *v = attr == 75 ? 9 : attr == 76 ? 0 : attr == 16 ? 4 : 0;
  return 0;
}
EXPORT int cuDeviceGetPCIBusId(char *s, int len, int d) {
  std::snprintf(s, static_cast<size_t>(len), "0000:%02x:00.0", d);
  return 0;
}
EXPORT int cuDevicePrimaryCtxRetain(void **ctx, int) {
  *ctx = &g_ctx;
  return 0;
}
EXPORT int cuCtxSetCurrent(void *) { return 0; }
EXPORT int cuModuleLoadData(void **mod, const void *image) {
  uint32_t magic = 0;
  std::memcpy(&magic, image, 4);
  if (magic != 0xBA55ED50u) return fail(200, "cuModuleLoadData: the image is not a fatbin (magic " + std::to_string(magic) + ")");
  *mod = &g_module;
  return 0;
}
EXPORT int cuModuleGetFunction(void **f, void *, const char *name) {
  auto it = kernels().find(name);
  if (it == kernels().end()) return fail(500, std::string("cuModuleGetFunction: no kernel named ") + name);  // NOT_FOUND
  *f = const_cast<Kernel *>(&it->second);
  return 0;
}
EXPORT int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                          unsigned shared, void *, void **params, void **extra) {
  if (g_sticky) return g_sticky;
  const Kernel *k = static_cast<const Kernel *>(f);
  std::string name = "?";
  for (auto &e : kernels())
    if (&e.second == k) name = e.first;
  if (!params || extra) return fail(1, "cuLaunchKernel " + name + ": parameters must come as kernelParams");
  if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || bx > 1024 || by > 1024 || bz > 64 ||
      uint64_t(bx) * by * bz > 1024 || gy > 65535 || gz > 65535 || gx > 0x7fffffffu || shared > 48 * 1024)
    return fail(1, "cuLaunchKernel " + name + ": invalid launch configuration grid(" + std::to_string(gx) + "," +
                       std::to_string(gy) + "," + std::to_string(gz) + ") block(" + std::to_string(bx) + "," +
                       std::to_string(by) + "," + std::to_string(bz) + ")");
  {
    std::lock_guard<std::mutex> lk(g_mu);
    for (size_t i = 0; i < k->pointer.size(); ++i) {
      if (!k->pointer[i]) continue;
      uintptr_t p = 0;
      std::memcpy(&p, params[i], sizeof p);
      if (p && !find(p, 0))
        return fail(700, "kernel " + name + ": pointer argument " + std::to_string(i) +
                             " is not device memory (a host pointer or a freed block)");
    }
  }
  if (const char *inject = std::getenv("LLMT_CUEMU_FAIL_KERNEL"))  // fault injection for the engine's error paths
    if (name == inject) return fail(719, "kernel " + name + ": failure injected by LLMT_CUEMU_FAIL_KERNEL");
  if (skip_work()) return 0;  // host-overhead measurement: launches checked, not run
  std::string err = run_grid(k->call, k->fn, params, Dim3{gx, gy, gz}, Dim3{bx, by, bz});
  if (!err.empty()) return fail(719, "kernel " + name + ": " + err);
  return 0;
}
EXPORT int cuStreamCreate(void **s, unsigned) {
  *s = &g_stream;
  return 0;
}
EXPORT int cuStreamSynchronize(void *) { return g_sticky; }
EXPORT int cuMemAlloc_v2(CUdeviceptr *out, size_t bytes) {
  if (g_sticky) return g_sticky;
  if (bytes == 0) return 1;
  std::lock_guard<std::mutex> lk(g_mu);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t size = (bytes + 255) / 256 * 256, body = (size + page - 1) / page * page;
  if (g_used + size > cap()) return 2;  // CUDA_ERROR_OUT_OF_MEMORY
  void *m = mmap(nullptr, body + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return 2;
  mprotect(static_cast<char *>(m) + body, page, PROT_NONE);
  char *user = static_cast<char *>(m) + (body - size);
  std::memset(user, 0xA5, size);  // device memory is not zeroed: make reads of unwritten memory visible
  g_allocs[reinterpret_cast<uintptr_t>(user)] = Alloc{static_cast<char *>(m), body + page, size};
  g_used += size;
  *out = reinterpret_cast<CUdeviceptr>(user);
  return 0;
}
EXPORT int cuMemFree_v2(CUdeviceptr p) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_allocs.find(static_cast<uintptr_t>(p));
  if (it == g_allocs.end()) return fail(1, "cuMemFree of a pointer that is not an allocation's base");
  g_used -= it->second.size;
  munmap(it->second.map, it->second.map_len);
  g_allocs.erase(it);
  return 0;
}
EXPORT int cuMemGetInfo_v2(size_t *fr, size_t *tot) {
  std::lock_guard<std::mutex> lk(g_mu);
  *tot = cap();
  *fr = cap() - g_used;
  return 0;
}
static int copy_check(const char *what, uintptr_t dev, size_t n, uintptr_t host, bool host_side) {
  std::lock_guard<std::mutex> lk(g_mu);
  if (n && !find(dev, n))
    return fail(1, std::string(what) + ": device range of " + std::to_string(n) + " bytes is not inside one allocation");
  if (host_side && n && find(host, 0))
    return fail(1, std::string(what) + ": the host pointer is device memory");
  return 0;
}
EXPORT int cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, void *) {
  if (g_sticky) return g_sticky;
  if (int r = copy_check("cuMemcpyHtoD", dst, n, reinterpret_cast<uintptr_t>(src), true)) return r;
  if (n) std::memcpy(reinterpret_cast<void *>(dst), src, n);
  return 0;
}
EXPORT int cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, void *) {
  if (g_sticky) return g_sticky;
  if (int r = copy_check("cuMemcpyDtoH", src, n, reinterpret_cast<uintptr_t>(dst), true)) return r;
  if (n) std::memcpy(dst, reinterpret_cast<void *>(src), n);
  return 0;
}
EXPORT int cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void *) {
  if (g_sticky) return g_sticky;
  if (int r = copy_check("cuMemcpyDtoD (dst)", dst, n, 0, false)) return r;
  if (int r = copy_check("cuMemcpyDtoD (src)", src, n, 0, false)) return r;
  if (n) std::memmove(reinterpret_cast<void *>(dst), reinterpret_cast<void *>(src), n);
  return 0;
}
EXPORT int cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void *) {
  if (g_sticky) return g_sticky;
  if (int r = copy_check("cuMemsetD8", dst, n, 0, false)) return r;
  if (n) std::memset(reinterpret_cast<void *>(dst), v, n);
  return 0;
}
// Events (the engine's profile): kernels run when launched here, so an event's time is the host clock when recorded.
namespace cuemu {
namespace {
struct Event {
  double ms = 0;
  bool recorded = false;
};
double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace
}  // namespace cuemu
EXPORT int cuEventCreate(void **e, unsigned) {
  *e = new Event();
  return 0;
}
EXPORT int cuEventRecord(void *e, void *) {
  if (g_sticky) return g_sticky;
  static_cast<Event *>(e)->ms = now_ms();
  static_cast<Event *>(e)->recorded = true;
  return 0;
}
EXPORT int cuEventSynchronize(void *) { return g_sticky; }
EXPORT int cuEventElapsedTime_v2(float *ms, void *a, void *b) {
  const Event *x = static_cast<Event *>(a), *y = static_cast<Event *>(b);
  if (!x->recorded || !y->recorded) return 400;  // CUDA_ERROR_INVALID_HANDLE: an event never recorded
  *ms = static_cast<float>(y->ms - x->ms);
  return 0;
}
EXPORT int cuEventDestroy_v2(void *e) {
  delete static_cast<Event *>(e);
  return 0;
}
// Page-locked host memory: plain host memory here (not device memory: a kernel given it still fails)
EXPORT int cuMemHostAlloc(void **p, size_t bytes, unsigned) {
  *p = std::malloc(bytes ? bytes : 1);
  return *p ? 0 : 2;
}
EXPORT int cuMemFreeHost(void *p) {
  std::free(p);
  return 0;
}
EXPORT int cuGetErrorName(int r, const char **s) {
  static const std::map<int, const char *> names = {
      {0, "CUDA_SUCCESS"},           {1, "CUDA_ERROR_INVALID_VALUE"},      {2, "CUDA_ERROR_OUT_OF_MEMORY"},
      {101, "CUDA_ERROR_INVALID_DEVICE"}, {200, "CUDA_ERROR_INVALID_IMAGE"}, {500, "CUDA_ERROR_NOT_FOUND"},
      {700, "CUDA_ERROR_ILLEGAL_ADDRESS"}, {719, "CUDA_ERROR_LAUNCH_FAILED"}};
  auto it = names.find(r);
  *s = it == names.end() ? nullptr : it->second;
  return it == names.end() ? 1 : 0;
}
EXPORT int cuGetErrorString(int r, const char **s) {
  *s = r == 2 ? "out of memory" : r == 700 ? "an illegal memory access was encountered" : r == 719 ? "unspecified launch failure" : nullptr;
  return *s ? 0 : 1;
}

// ---- cuBLAS: sgemm only (column-major, as cuBLAS) --------------------------------------------------------------------
EXPORT int cublasCreate_v2(void **h) {
  static int handle;
  *h = &handle;
  return 0;
}
EXPORT int cublasDestroy_v2(void *) { return 0; }
EXPORT int cublasSetStream_v2(void *, void *) { return 0; }
EXPORT int cublasSetMathMode(void *, int) { return 0; }
EXPORT const char *cublasGetStatusString(int s) { return s == 0 ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE"; }
EXPORT int cublasSgemm_v2(void *, int ta, int tb, int m, int n, int k, const float *alpha, const float *A, int lda,
                          const float *B, int ldb, const float *beta, float *C, int ldc) {
  if (g_sticky) return 13;  // CUBLAS_STATUS_EXECUTION_FAILED
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m)) {
    fail(1, "cublasSgemm: invalid dimensions or leading dimensions");
    return 7;  // CUBLAS_STATUS_INVALID_VALUE
  }
  {
    std::lock_guard<std::mutex> lk(g_mu);
    const size_t na = size_t(ta ? m : k) * size_t(lda), nb = size_t(tb ? k : n) * size_t(ldb), nc = size_t(n) * size_t(ldc);
    if ((k && m && !find(reinterpret_cast<uintptr_t>(A), sizeof(float) * (na - size_t(lda) + size_t(ta ? k : m)))) ||
        (k && n && !find(reinterpret_cast<uintptr_t>(B), sizeof(float) * (nb - size_t(ldb) + size_t(tb ? n : k)))) ||
        (m && n && !find(reinterpret_cast<uintptr_t>(C), sizeof(float) * (nc - size_t(ldc) + size_t(m))))) {
      fail(700, "cublasSgemm: an operand is not (entirely) device memory");
      return 13;
    }
  }
  if (skip_work()) return 0;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float s = 0.0f;
      for (int l = 0; l < k; ++l) {
        const float a = ta ? A[l + size_t(i) * lda] : A[i + size_t(l) * lda];
        const float b = tb ? B[j + size_t(l) * ldb] : B[l + size_t(j) * ldb];
        s += a * b;
      }
      float &c = C[i + size_t(j) * ldc];
      c = *beta == 0.0f ? *alpha * s : *alpha * s + *beta * c;
    }
  return 0;
}
EXPORT int cublasGemmEx(void *, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int atype, int lda,
                        const void *B, int btype, int ldb, const void *beta, void *C, int ctype, int ldc, int compute, int) {
  if (g_sticky) return 13;
  auto size_of = [](int t) { return t == 0 ? 4 : (t == 2 || t == 14) ? 2 : 0; };
  if (!size_of(atype) || !size_of(btype) || ctype != 0 || compute != 68 || m < 0 || n < 0 || k < 0 ||
      lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m)) {
    fail(1, "cublasGemmEx: unsupported types or invalid dimensions");
    return 7;
  }
  {
    std::lock_guard<std::mutex> lk(g_mu);
    const size_t na = size_t(ta ? m : k) * size_t(lda), nb = size_t(tb ? k : n) * size_t(ldb), nc = size_t(n) * size_t(ldc);
    if ((k && m && !find(reinterpret_cast<uintptr_t>(A), size_t(size_of(atype)) * (na - size_t(lda) + size_t(ta ? k : m)))) ||
        (k && n && !find(reinterpret_cast<uintptr_t>(B), size_t(size_of(btype)) * (nb - size_t(ldb) + size_t(tb ? n : k)))) ||
        (m && n && !find(reinterpret_cast<uintptr_t>(C), sizeof(float) * (nc - size_t(ldc) + size_t(m))))) {
      fail(700, "cublasGemmEx: an operand is not (entirely) device memory");
      return 13;
    }
  }
  if (skip_work()) return 0;
  auto load = [](const void *p, int type, size_t i) -> float {
    if (type == 0) return static_cast<const float *>(p)[i];
    return llmt::from_half(static_cast<const uint16_t *>(p)[i], type == 2 ? 2 : 1);
  };
  const float al = *static_cast<const float *>(alpha), be = *static_cast<const float *>(beta);
  float *Cf = static_cast<float *>(C);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      float s = 0.0f;
      for (int l = 0; l < k; ++l)
        s += load(A, atype, ta ? l + size_t(i) * lda : i + size_t(l) * lda) * load(B, btype, tb ? j + size_t(l) * ldb : l + size_t(j) * ldb);
      float &c = Cf[i + size_t(j) * ldc];
      c = be == 0.0f ? al * s : al * s + be * c;
    }
  return 0;
}

// ---- the CUDA runtime calls NCCL's users make (collective_nccl.cpp), on the driver emulation above -------------------
static int g_rt_device = 0;
EXPORT int cudaSetDevice(int d) {
  if (d < 0 || d >= device_count()) return 101;  // cudaErrorInvalidDevice
  g_rt_device = d;
  return 0;
}
EXPORT int cudaGetDevice(int *d) {
  *d = g_rt_device;
  return 0;
}
EXPORT int cudaStreamQuery(void *) { return g_sticky ? 719 : 0; }  // work runs at launch here: always complete
EXPORT int cudaStreamSynchronize(void *) { return g_sticky ? 719 : 0; }
EXPORT const char *cudaGetErrorString(int e) {
  return e == 0 ? "no error" : e == 101 ? "invalid device ordinal" : e == 719 ? "unspecified launch failure" : "cuemu runtime error";
}

// ---- NCCL between processes (test harness): a shared-memory segment per communicator --------------------------------
// Semantics kept: every rank calls the same collectives in the same order; buffers must be device memory (a host
// pointer fails as on a GPU); all-reduce sums in rank order, so every rank ends with bitwise identical values; a
// rank whose peer is gone (its process exited, or it aborted its communicator) gets ncclRemoteError instead of
// hanging, and LLMT_CUEMU_NCCL_TIMEOUT_MS (default 120000) bounds every wait. Groups run their operations eagerly.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <random>
#include <thread>

namespace cuemu {
namespace {
constexpr size_t kSlot = 1 << 20;  // bytes each rank stages per round
constexpr int kMaxRanks = 16;
struct NcclShared {
  std::atomic<uint32_t> joined, bar_count, bar_gen, aborted;
  int32_t pid[kMaxRanks];
};
struct NcclComm {
  NcclShared *sh = nullptr;
  char *slots = nullptr;
  size_t map_len = 0;
  int rank = 0, nranks = 0;
  std::string name;
};
size_t nccl_map_len(int nranks) { return 4096 + kSlot * size_t(nranks); }
int64_t nccl_timeout_ms() {
  const char *e = std::getenv("LLMT_CUEMU_NCCL_TIMEOUT_MS");
  return e ? std::atoll(e) : 120000;
}
bool alive(int pid) {
  if (pid <= 0) return true;  // not joined yet
  if (::kill(pid, 0) != 0) return false;
  std::ifstream st("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(st, line);
  const size_t paren = line.rfind(')');
  return !(paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z');  // a zombie is dead
}
// 0, or ncclRemoteError (6) when a peer is gone / aborted or the wait timed out
int wait_until(NcclComm &c, const std::function<bool()> &done, const char *what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(nccl_timeout_ms());
  for (int spin = 0; !done(); ++spin) {
    if (c.sh->aborted.load()) {
      std::fprintf(stderr, "cuemu nccl: %s: a peer aborted its communicator\n", what);
      return 6;
    }
    if (spin % 64 == 0) {
      for (int r = 0; r < c.nranks; ++r)
        if (r != c.rank && !alive(c.sh->pid[r])) {
          // a peer that did its part and then exited (the last to reach a final barrier leaves at once) is no
          // error: everything it wrote before exiting is visible now, so look once more
          if (done()) return 0;
          std::fprintf(stderr, "cuemu nccl: %s: rank %d (pid %d) is gone\n", what, r, c.sh->pid[r]);
          return 6;
        }
      if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "cuemu nccl: %s: timed out\n", what);
        return 6;
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(spin < 1000 ? 5 : 200));
  }
  return 0;
}
int barrier(NcclComm &c, const char *what) {
  const uint32_t gen = c.sh->bar_gen.load();
  if (c.sh->bar_count.fetch_add(1) + 1 == uint32_t(c.nranks)) {
    c.sh->bar_count.store(0);
    c.sh->bar_gen.fetch_add(1);
    return 0;
  }
  return wait_until(c, [&] { return c.sh->bar_gen.load() != gen; }, what);
}
bool device_range(const void *p, size_t n) {
  std::lock_guard<std::mutex> lk(g_mu);
  return n == 0 || find(reinterpret_cast<uintptr_t>(p), n) != nullptr;
}
size_t nccl_size(int dt) { return dt == 7 ? 4 : dt == 8 ? 8 : 0; }  // ncclFloat32, ncclFloat64
}  // namespace
}  // namespace cuemu

struct CuemuNcclId {
  char internal[128];
};
EXPORT int ncclGetVersion(int *v) {
  *v = 22300;
  return 0;
}
EXPORT const char *ncclGetErrorString(int r) {
  switch (r) {
    case 0: return "no error";
    case 2: return "unhandled system error";
    case 4: return "invalid argument";
    case 6: return "remote process exited or there was a network error";
    default: return "cuemu nccl error";
  }
}
EXPORT int ncclGetUniqueId(CuemuNcclId *id) {
  std::memset(id->internal, 0, sizeof id->internal);
  std::random_device rd;
  std::snprintf(id->internal, sizeof id->internal, "/llmt-cuemu-nccl-%d-%08x%08x", int(getpid()), rd(), rd());
  return 0;
}
EXPORT int ncclCommInitRank(void **out, int nranks, CuemuNcclId id, int rank) {
  if (nranks < 1 || nranks > kMaxRanks || rank < 0 || rank >= nranks) return 4;
  auto *c = new NcclComm();
  c->rank = rank;
  c->nranks = nranks;
  c->name.assign(id.internal, strnlen(id.internal, sizeof id.internal));
  c->map_len = nccl_map_len(nranks);
  const int fd = ::shm_open(c->name.c_str(), O_CREAT | O_RDWR, 0600);
  if (fd < 0 || ::ftruncate(fd, off_t(c->map_len)) != 0) {
    std::fprintf(stderr, "cuemu nccl: shm_open/ftruncate %s failed\n", c->name.c_str());
    if (fd >= 0) ::close(fd);
    delete c;
    return 2;
  }
  void *m = ::mmap(nullptr, c->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) {
    delete c;
    return 2;
  }
  c->sh = static_cast<NcclShared *>(m);
  c->slots = static_cast<char *>(m) + 4096;
  c->sh->pid[rank] = int32_t(getpid());
  c->sh->joined.fetch_add(1);
  if (int r = wait_until(*c, [&] { return c->sh->joined.load() >= uint32_t(nranks); }, "ncclCommInitRank")) {
    ::munmap(m, c->map_len);
    delete c;
    return r;
  }
  if (int r = barrier(*c, "ncclCommInitRank")) {  // everyone has it mapped: the name can go
    ::munmap(m, c->map_len);
    delete c;
    return r;
  }
  if (rank == 0) ::shm_unlink(c->name.c_str());
  *out = c;
  return 0;
}
// (blocking in this emulation: returns when every rank has joined)
EXPORT int ncclCommInitRankConfig(void **out, int nranks, CuemuNcclId id, int rank, void *) {
  return ncclCommInitRank(out, nranks, id, rank);
}
EXPORT int ncclCommGetAsyncError(void *, int *r) {
  *r = 0;
  return 0;
}
EXPORT int ncclCommDestroy(void *p) {
  auto *c = static_cast<NcclComm *>(p);
  ::munmap(c->sh, c->map_len);
  delete c;
  return 0;
}
EXPORT int ncclCommAbort(void *p) {
  auto *c = static_cast<NcclComm *>(p);
  c->sh->aborted.store(1);  // peers waiting in a collective fail at once instead of timing out
  return ncclCommDestroy(p);
}
EXPORT int ncclGroupStart() { return 0; }
EXPORT int ncclGroupEnd() { return 0; }
// ncclAllReduce (root −1: every rank receives the sum) and ncclReduce (only root's recv is written)
static int reduce_sum(const char *what, const void *send, void *recv, size_t count, int dt, int op, int root, void *comm) {
  auto &c = *static_cast<NcclComm *>(comm);
  const size_t es = nccl_size(dt);
  if (!es || op != 0 || root >= c.nranks) return 4;  // sums of f32/f64 only (what the engine uses)
  if (g_sticky) return 1;
  if (!device_range(send, count * es) || ((root < 0 || c.rank == root) && !device_range(recv, count * es))) {
    fail(1, std::string(what) + ": a buffer is not device memory");
    return 4;
  }
  const size_t per = kSlot / es;
  for (size_t off = 0; off < count; off += per) {
    const size_t n = std::min(per, count - off);
    std::memcpy(c.slots + kSlot * size_t(c.rank), static_cast<const char *>(send) + off * es, n * es);
    if (int r = barrier(c, what)) return r;
    for (size_t i = 0; i < n && (root < 0 || c.rank == root); ++i) {
      if (es == 4) {
        float s = 0.0f;
        for (int k = 0; k < c.nranks; ++k) s += reinterpret_cast<const float *>(c.slots + kSlot * size_t(k))[i];
        static_cast<float *>(recv)[off + i] = s;
      } else {
        double s = 0.0;
        for (int k = 0; k < c.nranks; ++k) s += reinterpret_cast<const double *>(c.slots + kSlot * size_t(k))[i];
        static_cast<double *>(recv)[off + i] = s;
      }
    }
    if (int r = barrier(c, what)) return r;  // slots are reused only after everyone has read them
  }
  return 0;
}
EXPORT int ncclAllReduce(const void *send, void *recv, size_t count, int dt, int op, void *comm, void *) {
  return reduce_sum("ncclAllReduce", send, recv, count, dt, op, -1, comm);
}
EXPORT int ncclReduce(const void *send, void *recv, size_t count, int dt, int op, int root, void *comm, void *) {
  if (root < 0) return 4;
  return reduce_sum("ncclReduce", send, recv, count, dt, op, root, comm);
}
EXPORT int ncclBroadcast(const void *send, void *recv, size_t count, int dt, int root, void *comm, void *) {
  auto &c = *static_cast<NcclComm *>(comm);
  const size_t es = nccl_size(dt);
  if (!es || root < 0 || root >= c.nranks) return 4;
  if (g_sticky) return 1;
  if ((c.rank == root && !device_range(send, count * es)) || !device_range(recv, count * es)) {
    fail(1, "ncclBroadcast: a buffer is not device memory");
    return 4;
  }
  const size_t per = kSlot / es;
  for (size_t off = 0; off < count; off += per) {
    const size_t n = std::min(per, count - off);
    char *slot = c.slots + kSlot * size_t(root);
    if (c.rank == root) std::memcpy(slot, static_cast<const char *>(send) + off * es, n * es);
    if (int r = barrier(c, "ncclBroadcast")) return r;
    if (c.rank != root || send != recv) std::memcpy(static_cast<char *>(recv) + off * es, slot, n * es);
    if (int r = barrier(c, "ncclBroadcast")) return r;
  }
  return 0;
}
