// collective.hpp — the small collective interface data-parallel training needs (all-reduce, broadcast,
// barrier), where a world of ranks comes from (torchrun's and Slurm's environment variables), and the
// rendezvous store every backend meets through. No collective algorithm lives in this tree:
//  - CPU workers: Gloo (Debian's libgloo-dev), compiled into the plug-in `libllmt_gloo.so` (dist/gloo.cpp) that
//    is loaded at run time, so neither llmt-engine nor the addon needs libgloo unless a job has several ranks;
//  - GPU workers: NCCL, libnccl.so.2 loaded with dlopen (collective_nccl.cpp); it needs device buffers,
//    i.e. the CUDA backend, and is compiled always but UNTESTED on hardware so far.
// The rendezvous (tcpstore.cpp) is a tiny key-value store served by rank 0 on MASTER_ADDR:MASTER_PORT:
// ranks publish their transport addresses there, nothing else. Every call has a timeout: a rank whose peer
// dies gets an error, never a hang.
//
// Contracts
//  - All methods return 0 on success, or an llmt_status with last_error() saying what failed (and on which
//    peer when known). After an error the communicator is unusable; the caller ends the run.
//  - Collectives are called by every rank in the same order with the same sizes. One thread at a time.
//  - Buffers are the backend's memory: host memory for Gloo, device memory (on `stream`) for NCCL.
//  - A process using Gloo must ignore SIGPIPE (llmt-engine train does; Node does for the addon): Gloo writes to a dead
//    peer's socket without MSG_NOSIGNAL, and the default action would end the process before its error is reported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "llmt.h"

namespace llmt {

enum class CollDType : int { F32 = 0, F64 = 1 };

/** The key-value store of the rendezvous (what Gloo calls rendezvous::Store). Blocking get with timeout. */
class KvStore {
 public:
  virtual ~KvStore() = default;
  virtual int set(const std::string &key, const std::vector<char> &value) = 0;
  /** Waits up to timeout_ms for the key, then copies its value. */
  virtual int get(const std::string &key, std::vector<char> &value, int64_t timeout_ms) = 0;
  /** Non-blocking: 1 and the value when present, 0 when absent, <0 on error. */
  virtual int try_get(const std::string &key, std::vector<char> &value) = 0;
  virtual const char *last_error() const = 0;
};

class Collective {
 public:
  virtual ~Collective() = default;
  virtual const char *name() const = 0;  // "gloo" or "nccl"
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /** In place: buf[i] = Σ over ranks of buf[i]. Every rank ends with bitwise identical values. */
  virtual int allreduce_sum(void *buf, size_t count, CollDType type, void *stream = nullptr) = 0;
  /** In place, several buffers of one type as one operation where the library can (NCCL: one group call). */
  virtual int allreduce_sum_many(const std::vector<std::pair<void *, size_t>> &bufs, CollDType type, void *stream = nullptr) {
    for (const auto &b : bufs)
      if (int r = allreduce_sum(b.first, b.second, type, stream)) return r;
    return 0;
  }
  /** In place on `root`: its buf becomes Σ over ranks of buf; the others' buf may be left holding partial sums
   *  (scratch). Half the bytes of an all-reduce where the library has a reduce (NCCL, Gloo); the default is an
   *  all-reduce (a superset). */
  virtual int reduce_sum(void *buf, size_t count, CollDType type, int root, void *stream = nullptr) {
    (void)root;
    return allreduce_sum(buf, count, type, stream);
  }
  struct Rooted {
    void *buf;
    size_t count;
    int root;
  };
  /** reduce_sum of several buffers, each to its own root, as one operation where the library can (NCCL: a group). */
  virtual int reduce_sum_many(const std::vector<Rooted> &bufs, CollDType type, void *stream = nullptr) {
    for (const auto &b : bufs)
      if (int r = reduce_sum(b.buf, b.count, type, b.root, stream)) return r;
    return 0;
  }
  /** True when buffers must be device memory (NCCL: the CUDA backend's, ordered on `stream`), false for host memory
   *  (Gloo). */
  virtual bool device_buffers() const { return false; }
  /** In place: every rank's buf becomes root's. */
  virtual int broadcast(void *buf, size_t count, CollDType type, int root, void *stream = nullptr) = 0;
  virtual int barrier() = 0;
  virtual const char *last_error() const = 0;
};

/** Where this process sits in the world, from the environment (torchrun or Slurm variables). */
struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "single";  // "single", "torchrun" (RANK/WORLD_SIZE…) or "slurm" (SLURM_PROCID…)
};

/** Reads RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_ADDR/MASTER_PORT, else SLURM_PROCID/SLURM_NTASKS/
 *  SLURM_LOCALID/SLURM_NTASKS_PER_NODE with MASTER_ADDR from the environment or the first host of
 *  SLURM_JOB_NODELIST (simple lists only: "node[1-4]" and "a,b" forms). Under torchrun
 *  (TORCHELASTIC_USE_AGENT_STORE=True, its agent owns MASTER_PORT) the store uses MASTER_PORT+1;
 *  LLMT_MASTER_PORT overrides the port. Errors: BAD_INPUT naming the variable. */
llmt_status read_dist_env(DistEnv &env);

/** Slurm's compact host list → its first host name ("gpu[03-05,07]" → "gpu03"); "" when not understood. */
std::string first_slurm_host(const std::string &nodelist);

/** The rendezvous store: rank 0 serves it on master_addr:master_port, every rank (0 too) is a client.
 *  Connecting retries until timeout_ms (rank 0 may start last). */
std::unique_ptr<KvStore> open_tcp_store(const DistEnv &env, int64_t timeout_ms, llmt_status &st);

/** Opens the communicator: backend "gloo" (host buffers) or "nccl" (device buffers). Errors: UNSUPPORTED
 *  when the library is missing (the message names the package to install), IO on rendezvous/connect
 *  failures and timeouts. */
std::unique_ptr<Collective> open_collective(const std::string &backend, const DistEnv &env, KvStore &store,
                                            int64_t timeout_ms, llmt_status &st);

/** NCCL, loaded at run time (collective_nccl.cpp). `device` is the CUDA ordinal (LOCAL_RANK by default). */
std::unique_ptr<Collective> open_nccl(const DistEnv &env, KvStore &store, int device, int64_t timeout_ms, llmt_status &st);

// ---- the Gloo plug-in's C entry point (dist/gloo.cpp); both sides are built from this header ----
constexpr int kGlooPluginAbi = 2;  // 2: Collective::reduce_sum
/** Returns 0 and *out, or an llmt_status with the message in err. `host` is the address to listen on. */
using GlooCreateFn = int (*)(int abi, int rank, int size, KvStore *store, const char *host, const char *iface,
                             int64_t timeout_ms, Collective **out, char *err, size_t err_len);

}  // namespace llmt
