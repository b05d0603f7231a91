// threadpool.cpp — the persistent worker pool behind set_num_threads / num_threads / parallel_for: plain
// std::thread + condition variables, static contiguous chunks (chunk 0 runs on the caller), a brief spin
// before blocking so back-to-back kernels do not pay a wake-up each, never a busy loop that lasts.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
#include <immintrin.h>
#define LLMT_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define LLMT_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define LLMT_CPU_RELAX() std::this_thread::yield()
#endif

#include "ops.hpp"

namespace llmt::cpu::detail {
// Shared with ops.cpp (declared there too): runs fn(ctx, begin, end) over min(nchunks, threads)
// contiguous chunks of [0, n); chunk c is [n·c/k, n·(c+1)/k). Blocks until every chunk is done.
using ChunkFn = void (*)(void *ctx, int64_t begin, int64_t end);
void run_chunks(int64_t n, int64_t nchunks, ChunkFn fn, void *ctx);
}  // namespace llmt::cpu::detail

namespace {

using llmt::cpu::detail::ChunkFn;
using Clock = std::chrono::steady_clock;

constexpr auto kSpin = std::chrono::microseconds(100);  // how long an idle thread polls before it blocks

thread_local bool t_inside_pool = false;  // set while running a chunk: nested calls run inline

int default_threads() {
  if (const char *env = std::getenv("LLMT_NUM_THREADS")) {
    long v = std::strtol(env, nullptr, 10);
    if (v > 0) return v > 1024 ? 1024 : static_cast<int>(v);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

class Pool {
 public:
  Pool() : threads_(default_threads()) {}
  ~Pool() {
    std::lock_guard<std::mutex> call(call_mu_);
    stop_workers();
  }

  int threads() const { return threads_.load(std::memory_order_relaxed); }

  void set_threads(int n) {
    if (n < 1) n = 1;
    if (n > 1024) n = 1024;
    std::lock_guard<std::mutex> call(call_mu_);
    if (n == threads_.load()) return;
    stop_workers();
    threads_.store(n);
  }

  void run(int64_t n, int64_t nchunks, ChunkFn fn, void *ctx) {
    if (n <= 0) return;
    if (nchunks > n) nchunks = n;
    int t = threads();
    if (nchunks > t) nchunks = t;
    if (nchunks <= 1 || t_inside_pool) {  // small, single-threaded, or nested: inline
      fn(ctx, 0, n);
      return;
    }
    std::lock_guard<std::mutex> call(call_mu_);  // one job at a time; other callers wait here
    if (static_cast<int>(workers_.size()) != threads() - 1) start_workers();
    if (nchunks > static_cast<int64_t>(workers_.size()) + 1) nchunks = static_cast<int64_t>(workers_.size()) + 1;
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    nchunks_ = nchunks;
    remaining_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    work_cv_.notify_all();

    // Chunk 0 on the caller. Kernels never throw; a user's parallel_for body might, and then the workers
    // must still finish with ctx before the exception leaves this frame.
    std::exception_ptr error;
    t_inside_pool = true;
    try {
      fn(ctx, 0, n / nchunks);
    } catch (...) {
      error = std::current_exception();
    }
    t_inside_pool = false;
    wait_for_workers();
    if (!error && worker_error_) error = worker_error_;
    worker_error_ = nullptr;
    if (error) std::rethrow_exception(error);
  }

 private:
  void wait_for_workers() {
    const auto t0 = Clock::now();
    for (int i = 0; remaining_.load(std::memory_order_acquire) != 0; ++i) {
      LLMT_CPU_RELAX();
      if ((i & 63) == 63 && Clock::now() - t0 > kSpin) {
        std::unique_lock<std::mutex> lk(mu_);
        done_cv_.wait(lk, [&] { return remaining_.load(std::memory_order_acquire) == 0; });
        break;
      }
    }
  }

  void start_workers() {
    stop_workers();
    stop_.store(false);
    int nw = threads() - 1;
    const uint64_t g0 = generation_.load();  // the workers' baseline: any later bump is work for them
    workers_.reserve(nw);
    for (int w = 1; w <= nw; ++w) workers_.emplace_back([this, w, g0] { worker_loop(w, g0); });
  }

  void stop_workers() {
    if (workers_.empty()) return;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
      generation_.fetch_add(1, std::memory_order_release);
    }
    work_cv_.notify_all();
    for (auto &th : workers_) th.join();
    workers_.clear();
  }

  void worker_loop(int index, uint64_t seen) {
    t_inside_pool = true;
    for (;;) {
      // Poll for a short while, then sleep on the condition variable.
      const auto t0 = Clock::now();
      for (int i = 0; generation_.load(std::memory_order_acquire) == seen; ++i) {
        LLMT_CPU_RELAX();
        if ((i & 63) == 63 && Clock::now() - t0 > kSpin) {
          std::unique_lock<std::mutex> lk(mu_);
          work_cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
          break;
        }
      }
      seen = generation_.load(std::memory_order_acquire);
      if (stop_.load()) return;
      if (index < nchunks_) {
        int64_t b = n_ * index / nchunks_, e = n_ * (index + 1) / nchunks_;
        if (b < e) {
          try {
            fn_(ctx_, b, e);
          } catch (...) {  // handed to the caller, which rethrows it once every chunk is done
            std::lock_guard<std::mutex> lk(mu_);
            if (!worker_error_) worker_error_ = std::current_exception();
          }
        }
      }
      if (remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        { std::lock_guard<std::mutex> lk(mu_); }  // pairs with the caller's predicate check
        done_cv_.notify_one();
      }
    }
  }

  std::atomic<int> threads_;
  std::mutex call_mu_;  // serialises jobs and resizing
  std::mutex mu_;       // guards the sleep/wake hand-off
  std::condition_variable work_cv_, done_cv_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> remaining_{0};
  std::atomic<bool> stop_{false};
  // The current job (written before generation_ is bumped, read after it is seen).
  ChunkFn fn_ = nullptr;
  std::exception_ptr worker_error_;  // first exception thrown by a worker's chunk (guarded by mu_)
  void *ctx_ = nullptr;
  int64_t n_ = 0, nchunks_ = 0;
};

Pool &pool() {
  static Pool p;
  return p;
}

}  // namespace

namespace llmt::cpu {

void detail::run_chunks(int64_t n, int64_t nchunks, ChunkFn fn, void *ctx) { pool().run(n, nchunks, fn, ctx); }

void set_num_threads(int n) { pool().set_threads(n); }

int num_threads() { return pool().threads(); }

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)> &fn) {
  if (n <= 0) return;
  auto tramp = [](void *ctx, int64_t b, int64_t e) {
    (*static_cast<const std::function<void(int64_t, int64_t)> *>(ctx))(b, e);
  };
  detail::run_chunks(n, n, tramp, const_cast<void *>(static_cast<const void *>(&fn)));
}

}  // namespace llmt::cpu
