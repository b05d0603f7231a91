// tcpstore.cpp — the rendezvous key-value store (see collective.hpp): rank 0 serves a map on
// MASTER_ADDR:MASTER_PORT, every rank connects as a client. It carries only the ranks' transport addresses,
// host names and a first-failure note — no tensor ever goes through it (Gloo/NCCL carry those). Gloo's
// 2022 snapshot in Debian has FileStore, HashStore (in-process), PrefixStore and RedisStore but no TCPStore,
// hence this one.
// Wire format, both ways little-endian: request = op u8 ('S' set, 'G' get) + key (u32 length + bytes) +
// value (u32 length + bytes, set only); reply = u8 found (1/0) + value (u32 length + bytes) for 'G', u8 1 for 'S'.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "collective.hpp"
#include "status.hpp"

namespace llmt {
namespace {

using Clock = std::chrono::steady_clock;

bool send_all(int fd, const void *p, size_t n) {
  const char *c = static_cast<const char *>(p);
  while (n) {
    ssize_t w = ::send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads exactly n bytes, giving up at the deadline (poll) — a dead server must not hang a rank.
bool recv_all(int fd, void *p, size_t n, Clock::time_point deadline) {
  char *c = static_cast<char *>(p);
  while (n) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd pf{fd, POLLIN, 0};
    int pr = ::poll(&pf, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (pr < 0 && errno == EINTR) continue;
    if (pr < 0) return false;
    if (pr == 0) continue;
    ssize_t r = ::recv(fd, c, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool send_blob(int fd, const std::string &s) {
  uint32_t n = static_cast<uint32_t>(s.size());
  return send_all(fd, &n, 4) && send_all(fd, s.data(), s.size());
}

bool recv_blob(int fd, std::string &s, Clock::time_point deadline) {
  uint32_t n = 0;
  if (!recv_all(fd, &n, 4, deadline)) return false;
  if (n > (64u << 20)) return false;  // a rendezvous value is small; anything else is a stray client
  s.resize(n);
  return n == 0 || recv_all(fd, &s[0], n, deadline);
}

bool is_loopback(const std::string &host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// The server: one thread accepting, one per connection (a world has few ranks).
class StoreServer {
 public:
  ~StoreServer() {
    stop_ = true;
    if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
    if (accept_.joinable()) accept_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    std::vector<std::thread> workers;
    {
      std::lock_guard<std::mutex> g(mu_);
      for (int fd : conns_) ::shutdown(fd, SHUT_RDWR);  // each worker's recv returns at once
      workers.swap(workers_);
    }
    for (auto &t : workers) t.join();
  }

  llmt_status start(const DistEnv &env) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (listen_fd_ < 0) return set_error(LLMT_ERR_IO, std::string("rendezvous: socket(): ") + std::strerror(errno));
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ::fcntl(listen_fd_, F_SETFD, FD_CLOEXEC);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(env.master_port));
    // loopback runs stay on loopback; a multi-node master listens on every interface (MASTER_ADDR is one of them)
    a.sin_addr.s_addr = is_loopback(env.master_addr) ? htonl(INADDR_LOOPBACK) : htonl(INADDR_ANY);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
      const int e = errno;
      return set_error(LLMT_ERR_IO, "rendezvous: rank 0 cannot listen on port " + std::to_string(env.master_port) + ": " +
                                        std::strerror(e) + (e == EADDRINUSE ? " (pick another MASTER_PORT)" : ""));
    }
    if (::listen(listen_fd_, 128) != 0) return set_error(LLMT_ERR_IO, std::string("rendezvous: listen(): ") + std::strerror(errno));
    accept_ = std::thread([this] { accept_loop(); });
    return LLMT_OK;
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd pf{listen_fd_, POLLIN, 0};
      if (::poll(&pf, 1, 200) <= 0) continue;
      int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      std::lock_guard<std::mutex> g(mu_);
      conns_.push_back(fd);
      workers_.emplace_back([this, fd] { serve(fd); });
    }
  }

  void serve(int fd) {
    const auto forever = Clock::now() + std::chrono::hours(24 * 365);
    for (;;) {
      uint8_t op = 0;
      std::string key, value;
      if (!recv_all(fd, &op, 1, forever) || !recv_blob(fd, key, forever)) break;
      if (op == 'S') {
        if (!recv_blob(fd, value, forever)) break;
        {
          std::lock_guard<std::mutex> g(mu_);
          map_[key] = value;
        }
        uint8_t ok = 1;
        if (!send_all(fd, &ok, 1)) break;
      } else if (op == 'G') {
        uint8_t found = 0;
        {
          std::lock_guard<std::mutex> g(mu_);
          auto it = map_.find(key);
          if (it != map_.end()) {
            found = 1;
            value = it->second;
          }
        }
        if (!send_all(fd, &found, 1) || !send_blob(fd, value)) break;
      } else {
        break;
      }
    }
    ::close(fd);
  }

  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread accept_;
  std::mutex mu_;
  std::vector<int> conns_;
  std::vector<std::thread> workers_;
  std::map<std::string, std::string> map_;
};

class TcpStore : public KvStore {
 public:
  ~TcpStore() override {
    if (fd_ >= 0) ::close(fd_);
  }

  llmt_status open(const DistEnv &env, int64_t timeout_ms) {
    if (env.rank == 0) {
      server_ = std::make_unique<StoreServer>();
      if (llmt_status st = server_->start(env)) return st;
    }
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    const std::string port = std::to_string(env.master_port);
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    std::string last = "no attempt";
    while (Clock::now() < deadline) {
      int gai = ::getaddrinfo(env.master_addr.c_str(), port.c_str(), &hints, &res);
      if (gai != 0) {
        last = std::string("cannot resolve MASTER_ADDR: ") + ::gai_strerror(gai);
      } else {
        for (addrinfo *p = res; p; p = p->ai_next) {
          int fd = ::socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
          if (fd < 0) continue;
          if (::connect(fd, p->ai_addr, p->ai_addrlen) == 0) {
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            fd_ = fd;
            break;
          }
          last = std::strerror(errno);
          ::close(fd);
        }
        ::freeaddrinfo(res);
        if (fd_ >= 0) return LLMT_OK;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return set_error(LLMT_ERR_IO, "rendezvous: rank " + std::to_string(env.rank) + " could not reach rank 0 at " + env.master_addr +
                                      ":" + port + " within " + std::to_string(timeout_ms / 1000) + " s (" + last +
                                      "); is rank 0 running, and are MASTER_ADDR/MASTER_PORT the same on every rank?");
  }

  int set(const std::string &key, const std::vector<char> &value) override {
    std::lock_guard<std::mutex> g(mu_);
    uint8_t op = 'S', ok = 0;
    if (!send_all(fd_, &op, 1) || !send_blob(fd_, key) || !send_blob(fd_, std::string(value.begin(), value.end())) ||
        !recv_all(fd_, &ok, 1, Clock::now() + std::chrono::seconds(30)))
      return lost("set " + key);
    return 0;
  }

  int try_get(const std::string &key, std::vector<char> &value) override {
    std::lock_guard<std::mutex> g(mu_);
    uint8_t op = 'G', found = 0;
    std::string v;
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    if (!send_all(fd_, &op, 1) || !send_blob(fd_, key) || !recv_all(fd_, &found, 1, deadline) || !recv_blob(fd_, v, deadline)) {
      lost("get " + key);
      return -1;
    }
    if (!found) return 0;
    value.assign(v.begin(), v.end());
    return 1;
  }

  int get(const std::string &key, std::vector<char> &value, int64_t timeout_ms) override {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (int wait_ms = 1;; wait_ms = std::min(wait_ms * 2, 50)) {
      int r = try_get(key, value);
      if (r < 0) return LLMT_ERR_IO;
      if (r == 1) return 0;
      if (Clock::now() >= deadline) {
        error_ = "rendezvous: timed out after " + std::to_string(timeout_ms / 1000) + " s waiting for \"" + key +
                 "\" (a rank did not start or failed before joining)";
        return LLMT_ERR_IO;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
    }
  }

  const char *last_error() const override { return error_.c_str(); }

 private:
  int lost(const std::string &what) {
    error_ = "rendezvous: lost the connection to rank 0's store (" + what + ")";
    return LLMT_ERR_IO;
  }
  std::unique_ptr<StoreServer> server_;
  int fd_ = -1;
  std::mutex mu_;
  std::string error_;
};

}  // namespace

std::unique_ptr<KvStore> open_tcp_store(const DistEnv &env, int64_t timeout_ms, llmt_status &st) {
  auto s = std::make_unique<TcpStore>();
  st = s->open(env, timeout_ms);
  if (st) return nullptr;
  return s;
}

}  // namespace llmt
