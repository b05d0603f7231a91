// test_collective.cpp — the distributed plumbing without the trainer: the world read from torchrun/Slurm
// variables, Slurm host lists, the rendezvous store (set/get, timeouts), the Gloo plug-in (all-reduce,
// broadcast, barrier across two processes, and a peer that dies mid-run giving an error instead of a hang),
// and the clear errors when Gloo's plug-in or NCCL is missing. Plain checks, no framework; exit 1 on failure.
// Needs the Gloo plug-in next to this binary for the two-process part (skipped, with a note, without it).
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../engine/collective.hpp"
#include "llmt.h"

using namespace llmt;

#include "check.hpp"

static bool contains(const std::string &h, const std::string &n) { return h.find(n) != std::string::npos; }

static void clear_env() {
  for (const char *v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                        "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NODELIST", "LLMT_GLOO_PLUGIN",
                        "TORCHELASTIC_USE_AGENT_STORE", "LLMT_MASTER_PORT"})
    ::unsetenv(v);
}

// A free TCP port on loopback (bind to 0, read it back, close).
static int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

static void test_env() {
  CHECK(first_slurm_host("gpu[03-05,07],cpu1") == "gpu03", first_slurm_host("gpu[03-05,07],cpu1"));
  CHECK(first_slurm_host("node7") == "node7", "single host");
  CHECK(first_slurm_host("a1,b2") == "a1", "comma list");
  CHECK(first_slurm_host("n[x-y]").empty(), "not understood");

  DistEnv e;
  clear_env();
  CHECK(read_dist_env(e) == LLMT_OK && e.world_size == 1 && e.rank == 0 && e.source == "single", "no variables: one worker");

  ::setenv("RANK", "1", 1);
  ::setenv("WORLD_SIZE", "4", 1);
  ::setenv("LOCAL_RANK", "1", 1);
  ::setenv("LOCAL_WORLD_SIZE", "2", 1);
  ::setenv("MASTER_ADDR", "10.0.0.5", 1);
  ::setenv("MASTER_PORT", "29611", 1);
  CHECK(read_dist_env(e) == LLMT_OK, llmt_last_error());
  CHECK(e.source == "torchrun" && e.rank == 1 && e.world_size == 4 && e.local_rank == 1 && e.local_world_size == 2 &&
            e.master_addr == "10.0.0.5" && e.master_port == 29611,
        "torchrun variables");
  ::setenv("TORCHELASTIC_USE_AGENT_STORE", "True", 1);
  CHECK(read_dist_env(e) == LLMT_OK && e.master_port == 29612, "torchrun's agent owns MASTER_PORT: the next one");
  ::setenv("LLMT_MASTER_PORT", "31000", 1);
  CHECK(read_dist_env(e) == LLMT_OK && e.master_port == 31000, "LLMT_MASTER_PORT wins");
  ::unsetenv("TORCHELASTIC_USE_AGENT_STORE");
  ::unsetenv("LLMT_MASTER_PORT");
  ::setenv("RANK", "4", 1);
  CHECK(read_dist_env(e) == LLMT_ERR_BAD_INPUT && contains(llmt_last_error(), "outside a world of 4"), llmt_last_error());
  ::setenv("RANK", "x", 1);
  CHECK(read_dist_env(e) == LLMT_ERR_BAD_INPUT && contains(llmt_last_error(), "RANK"), llmt_last_error());
  clear_env();
  ::setenv("RANK", "0", 1);
  CHECK(read_dist_env(e) == LLMT_ERR_BAD_INPUT && contains(llmt_last_error(), "WORLD_SIZE"), llmt_last_error());

  clear_env();
  ::setenv("SLURM_PROCID", "3", 1);
  ::setenv("SLURM_NTASKS", "8", 1);
  ::setenv("SLURM_LOCALID", "1", 1);
  ::setenv("SLURM_NTASKS_PER_NODE", "2", 1);
  ::setenv("SLURM_JOB_NODELIST", "gpu[12-15]", 1);
  CHECK(read_dist_env(e) == LLMT_OK, llmt_last_error());
  CHECK(e.source == "slurm" && e.rank == 3 && e.world_size == 8 && e.local_rank == 1 && e.local_world_size == 2 &&
            e.master_addr == "gpu12" && e.master_port == 29500,
        "slurm variables, master from the node list");
  ::setenv("MASTER_ADDR", "login1", 1);
  CHECK(read_dist_env(e) == LLMT_OK && e.master_addr == "login1", "MASTER_ADDR wins over the node list");
  clear_env();
}

static void test_store() {
  DistEnv e0, e1;
  e0.world_size = e1.world_size = 2;
  e1.rank = 1;
  e0.master_port = e1.master_port = free_port();
  llmt_status st;
  // rank 1 first: it must retry until rank 0 serves
  std::unique_ptr<KvStore> s1;
  std::thread t([&] {
    llmt_status s;
    s1 = open_tcp_store(e1, 5000, s);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto s0 = open_tcp_store(e0, 5000, st);
  t.join();
  CHECK(s0 && s1, llmt_last_error());
  if (!s0 || !s1) return;
  CHECK(s1->set("k", {'a', 'b'}) == 0, s1->last_error());
  std::vector<char> v;
  CHECK(s0->get("k", v, 1000) == 0 && v == std::vector<char>({'a', 'b'}), "get after set");
  CHECK(s0->try_get("missing", v) == 0, "try_get of an absent key");
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(s1->get("missing", v, 300) != 0 && contains(s1->last_error(), "timed out"), s1->last_error());
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3), "the get timeout is honoured");

  // nobody serves: a clear error within the timeout
  DistEnv lone;
  lone.world_size = 2;
  lone.rank = 1;
  lone.master_port = free_port();
  auto none = open_tcp_store(lone, 400, st);
  CHECK(!none && st == LLMT_ERR_IO && contains(llmt_last_error(), "could not reach rank 0"), llmt_last_error());
}

static void test_missing_libraries() {
  DistEnv e;
  e.world_size = 2;
  e.master_port = free_port();
  llmt_status st;
  auto store = open_tcp_store(e, 2000, st);
  CHECK(store != nullptr, llmt_last_error());
  if (!store) return;
  ::setenv("LLMT_GLOO_PLUGIN", "/nonexistent/libllmt_gloo.so", 1);
  auto c = open_collective("gloo", e, *store, 1000, st);
  CHECK(!c && st == LLMT_ERR_UNSUPPORTED && contains(llmt_last_error(), "libgloo-dev"), llmt_last_error());
  ::unsetenv("LLMT_GLOO_PLUGIN");
  if (::getenv("LLMT_TEST_HAS_NCCL") == nullptr) {  // this machine has no NCCL: the loader says so
    auto n = open_nccl(e, *store, 0, 1000, st);
    CHECK(!n && st == LLMT_ERR_UNSUPPORTED && contains(llmt_last_error(), "libnccl.so.2"), llmt_last_error());
  }
  auto bad = open_collective("mpi", e, *store, 1000, st);
  CHECK(!bad && st == LLMT_ERR_BAD_INPUT, "unknown backend");
}

static bool plugin_present(const char *argv0) {
  std::string dir = argv0;
  dir = dir.substr(0, dir.rfind('/') == std::string::npos ? 0 : dir.rfind('/'));
  return ::access(((dir.empty() ? "." : dir) + "/libllmt_gloo.so").c_str(), R_OK) == 0;
}

// Rank `rank` of a 2-rank world: all-reduce, broadcast, rooted reduce, barrier; rank 1 dies after the first round when
// `die` is set. Returns a process exit code (0 ok) and reports through stderr.
static int gloo_rank(int rank, int port, bool die, std::string &report) {
  DistEnv e;
  e.world_size = 2;
  e.rank = rank;
  e.master_port = port;
  llmt_status st;
  auto store = open_tcp_store(e, 10000, st);
  if (!store) return report = llmt_last_error(), 10;
  auto c = open_collective("gloo", e, *store, 10000, st);
  if (!c) return report = llmt_last_error(), 11;
  std::vector<float> f = {1.0f + rank, 10.0f * (rank + 1), -0.5f};
  if (c->allreduce_sum(f.data(), f.size(), CollDType::F32)) return report = c->last_error(), 12;
  if (!(f[0] == 3.0f && f[1] == 30.0f && f[2] == -1.0f)) return report = "all-reduce sum wrong", 13;
  std::vector<double> d(100000);
  for (size_t i = 0; i < d.size(); ++i) d[i] = rank == 0 ? static_cast<double>(i) : -1.0;
  if (c->broadcast(d.data(), d.size(), CollDType::F64, 0)) return report = c->last_error(), 14;
  for (size_t i = 0; i < d.size(); ++i)
    if (d[i] != static_cast<double>(i)) return report = "broadcast wrong", 15;
  // rooted reduce (ZeRO-2): root's buffer gets the sum, in place; sizes that are not a multiple of the ring's chunks
  for (int root : {0, 1}) {
    std::vector<float> g(1000003);
    for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>((i % 97) * (rank + 1));
    if (c->reduce_sum(g.data(), g.size(), CollDType::F32, root)) return report = c->last_error(), 21;
    if (rank == root)
      for (size_t i = 0; i < g.size(); ++i)
        if (g[i] != static_cast<float>((i % 97) * 3)) return report = "reduce to rank " + std::to_string(root) + " wrong at " + std::to_string(i), 22;
  }
  if (c->barrier()) return report = c->last_error(), 16;
  if (die && rank == 1) ::_exit(0);  // a peer that vanishes without a word
  const auto t0 = std::chrono::steady_clock::now();
  int r = c->allreduce_sum(f.data(), f.size(), CollDType::F32);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (die) {
    if (r == 0) return report = "all-reduce with a dead peer succeeded", 17;
    if (s > 8) return report = "the dead peer was noticed only after " + std::to_string(s) + " s", 18;
    report = c->last_error();
    if (c->allreduce_sum(f.data(), f.size(), CollDType::F32) == 0) return report = "a broken communicator kept working", 19;
    return 0;
  }
  return r ? (report = c->last_error(), 20) : 0;
}

static void test_gloo(bool die) {
  const int port = free_port();
  pid_t child = ::fork();
  if (child == 0) {
    std::string rep;
    int rc = gloo_rank(1, port, die, rep);
    if (rc) std::fprintf(stderr, "rank 1: %s\n", rep.c_str());
    ::_exit(rc);
  }
  std::string rep;
  int rc = gloo_rank(0, port, die, rep);
  CHECK(rc == 0, "rank 0 (" + std::string(die ? "dying peer" : "healthy") + "): " + rep);
  if (die) CHECK(contains(rep, "rank 0"), "the error names the rank: " + rep);
  int status = 0;
  ::waitpid(child, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "rank 1 exit status " + std::to_string(status));
}

int main(int, char **argv) {
  // Gloo writes to its peers' sockets without MSG_NOSIGNAL: a write to the peer that test_gloo(true) kills raises
  // SIGPIPE, which would end this process instead of the error the check expects. `llmt-engine train` ignores SIGPIPE
  // for the same reason (and Node, hosting the addon, does too); so does this test.
  std::signal(SIGPIPE, SIG_IGN);
  // the forking checks first, while this process has no other threads
  if (plugin_present(argv[0])) {
    test_gloo(false);
    test_gloo(true);
  } else {
    std::fprintf(stderr, "note: no libllmt_gloo.so next to %s (Gloo not found at build time): two-process checks skipped\n", argv[0]);
  }
  test_env();
  test_store();
  test_missing_libraries();
  std::printf("test_collective: %d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
