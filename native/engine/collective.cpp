// collective.cpp — the world from the environment (torchrun / Slurm variables) and opening a communicator:
// Gloo through its run-time plug-in (libllmt_gloo.so next to the engine), NCCL through collective_nccl.cpp.
// See collective.hpp for the contracts.
#include "collective.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "status.hpp"

namespace llmt {
namespace {

bool env_int(const char *name, int &out, llmt_status &st) {
  const char *v = std::getenv(name);
  if (!v || !*v) return false;
  char *end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (!end || *end != '\0' || x < 0 || x > 1000000) {
    st = set_error(LLMT_ERR_BAD_INPUT, std::string("environment variable ") + name + "=\"" + v + "\" is not a non-negative integer");
    return false;
  }
  out = static_cast<int>(x);
  return true;
}

std::string env_str(const char *name) {
  const char *v = std::getenv(name);
  return v ? v : "";
}

// The folder holding this engine (the llmt-engine executable or the addon), where the plug-in is built.
std::string engine_dir() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void *>(&engine_dir), &info) && info.dli_fname) {
    std::string p = info.dli_fname;
    if (p.find('/') == std::string::npos) {  // the executable itself, named without a path
      char buf[4096];
      ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
      if (n > 0) p.assign(buf, static_cast<size_t>(n));
    }
    const size_t slash = p.rfind('/');
    if (slash != std::string::npos) return p.substr(0, slash);
  }
  return ".";
}

std::unique_ptr<Collective> open_gloo(const DistEnv &env, KvStore &store, int64_t timeout_ms, llmt_status &st) {
  const std::string override_path = env_str("LLMT_GLOO_PLUGIN");
  const std::string path = override_path.empty() ? engine_dir() + "/libllmt_gloo.so" : override_path;
  void *h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *why = ::dlerror();
    st = set_error(LLMT_ERR_UNSUPPORTED,
                   "training with " + std::to_string(env.world_size) +
                       " CPU workers needs the Gloo collectives library, which this engine cannot load (" + path + ": " +
                       (why ? why : "not found") +
                       "). Install Debian's libgloo-dev (apt-get install libgloo-dev) and rebuild the engine "
                       "(npm run build:native), or train with one worker.");
    return nullptr;
  }
  auto create = reinterpret_cast<GlooCreateFn>(::dlsym(h, "llmt_gloo_create"));
  if (!create) {
    st = set_error(LLMT_ERR_UNSUPPORTED, path + " is not the engine's Gloo plug-in (no llmt_gloo_create)");
    return nullptr;
  }
  // the address this rank listens on for its peers: loopback for local worlds, else this host's name
  // (GLOO_SOCKET_IFNAME picks an interface instead, as in PyTorch)
  std::string host, iface = env_str("GLOO_SOCKET_IFNAME");
  if (iface.empty()) {
    const bool local = env.master_addr == "127.0.0.1" || env.master_addr == "localhost" || env.master_addr == "::1";
    if (local) host = "127.0.0.1";
    else {
      char hn[256] = {0};
      ::gethostname(hn, sizeof hn - 1);
      host = hn;
    }
  }
  Collective *c = nullptr;
  char err[1024] = {0};
  int rc = create(kGlooPluginAbi, env.rank, env.world_size, &store, host.c_str(), iface.c_str(), timeout_ms, &c, err, sizeof err);
  if (rc != 0 || !c) {
    st = set_error(rc ? static_cast<llmt_status>(rc) : LLMT_ERR_INTERNAL, err[0] ? err : "the Gloo plug-in failed to connect");
    return nullptr;
  }
  st = LLMT_OK;
  return std::unique_ptr<Collective>(c);  // the plug-in stays loaded for the process's life
}

}  // namespace

std::string first_slurm_host(const std::string &nodelist) {
  // "a,b" → a; "gpu[03-05,07],cpu1" → gpu03; "n1" → n1
  std::string s = nodelist;
  const size_t br = s.find('['), comma = s.find(',');
  if (br == std::string::npos || (comma != std::string::npos && comma < br)) return s.substr(0, comma);
  const size_t close = s.find(']', br);
  if (close == std::string::npos) return "";
  std::string inner = s.substr(br + 1, close - br - 1);
  inner = inner.substr(0, inner.find_first_of(",-"));
  if (inner.empty()) return "";
  for (char c : inner)
    if (c < '0' || c > '9') return "";
  return s.substr(0, br) + inner;
}

llmt_status read_dist_env(DistEnv &env) {
  env = DistEnv();
  llmt_status st = LLMT_OK;
  int v = 0;
  if (std::getenv("WORLD_SIZE") || std::getenv("RANK")) {
    env.source = "torchrun";
    if (!env_int("RANK", env.rank, st) && !st) env.rank = 0;
    if (!env_int("WORLD_SIZE", env.world_size, st) && !st)
      return set_error(LLMT_ERR_BAD_INPUT, "RANK is set but WORLD_SIZE is not: set both (torchrun style) or neither");
    if (st) return st;
    env.local_rank = env_int("LOCAL_RANK", v, st) ? v : env.rank;
    env.local_world_size = env_int("LOCAL_WORLD_SIZE", v, st) ? v : env.world_size;
  } else if (std::getenv("SLURM_PROCID") && std::getenv("SLURM_NTASKS")) {
    env.source = "slurm";
    env_int("SLURM_PROCID", env.rank, st);
    env_int("SLURM_NTASKS", env.world_size, st);
    env.local_rank = env_int("SLURM_LOCALID", v, st) ? v : 0;
    env.local_world_size = env_int("SLURM_NTASKS_PER_NODE", v, st) ? v : 1;
  } else {
    return LLMT_OK;  // one worker
  }
  if (st) return st;
  if (env.world_size < 1) return set_error(LLMT_ERR_BAD_INPUT, "WORLD_SIZE must be at least 1");
  if (env.rank >= env.world_size)
    return set_error(LLMT_ERR_BAD_INPUT, "rank " + std::to_string(env.rank) + " is outside a world of " + std::to_string(env.world_size) + " ranks");
  const std::string addr = env_str("MASTER_ADDR");
  if (!addr.empty()) env.master_addr = addr;
  else if (env.source == "slurm" && !env_str("SLURM_JOB_NODELIST").empty()) {
    const std::string h = first_slurm_host(env_str("SLURM_JOB_NODELIST"));
    if (h.empty())
      return set_error(LLMT_ERR_BAD_INPUT, "cannot tell the first host of SLURM_JOB_NODELIST=\"" + env_str("SLURM_JOB_NODELIST") +
                                               "\": set MASTER_ADDR (e.g. $(scontrol show hostnames | head -n1))");
    env.master_addr = h;
  }
  if (env_int("MASTER_PORT", v, st)) {
    if (v < 1 || v > 65535) return set_error(LLMT_ERR_BAD_INPUT, "MASTER_PORT must be a TCP port (1-65535)");
    env.master_port = v;
    // under torchrun the agent already serves PyTorch's TCPStore on MASTER_PORT: ours takes the next port
    if (env_str("TORCHELASTIC_USE_AGENT_STORE") == "True") env.master_port = v < 65535 ? v + 1 : v - 1;
  }
  if (env_int("LLMT_MASTER_PORT", v, st)) {  // an explicit port for the engine's rendezvous wins
    if (v < 1 || v > 65535) return set_error(LLMT_ERR_BAD_INPUT, "LLMT_MASTER_PORT must be a TCP port (1-65535)");
    env.master_port = v;
  }
  return st;
}

std::unique_ptr<Collective> open_collective(const std::string &backend, const DistEnv &env, KvStore &store,
                                            int64_t timeout_ms, llmt_status &st) {
  if (backend == "gloo") return open_gloo(env, store, timeout_ms, st);
  if (backend == "nccl") return open_nccl(env, store, env.local_rank, timeout_ms, st);
  st = set_error(LLMT_ERR_BAD_INPUT, "unknown collectives backend \"" + backend + "\" (gloo or nccl)");
  return nullptr;
}

}  // namespace llmt
