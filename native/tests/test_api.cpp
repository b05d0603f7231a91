// test_api.cpp — C API contract tests: status names, last-error per thread, device listing and its
// errors. Plain asserts with messages (no framework) so the suite builds anywhere CMake does.
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "llmt.h"

#include "check.hpp"

int main() {
  CHECK(llmt_api_version() == LLMT_API_VERSION, "library and header API versions differ");
  CHECK(std::strlen(llmt_version()) >= 5, "version string looks wrong");
  CHECK(std::strcmp(llmt_status_name(LLMT_ERR_OOM), "OOM") == 0, "OOM name");
  CHECK(std::strcmp(llmt_status_name(LLMT_ERR_BAD_INPUT), "BAD_INPUT") == 0, "BAD_INPUT name");
  CHECK(std::strcmp(llmt_status_name(static_cast<llmt_status>(999)), "UNKNOWN") == 0, "unknown status");
  CHECK(std::strstr(llmt_build_info(), "\"cuda\":") != nullptr, "build info lacks cuda flag");

  int count = 0;
  CHECK(llmt_device_count(&count) == LLMT_OK && count >= 1, "at least the CPU device");
  llmt_device_info d;
  CHECK(llmt_device_info_get(0, &d) == LLMT_OK, "device 0");
  CHECK(d.kind == LLMT_DEVICE_CPU && d.threads >= 1, "device 0 is the CPU with >= 1 thread");
  CHECK(d.memory_total > 0, "host memory total read");
  CHECK(std::strcmp(llmt_last_error(), "") == 0, "success clears the last error");

  CHECK(llmt_device_info_get(count, &d) == LLMT_ERR_BAD_INPUT, "out-of-range index is BAD_INPUT");
  CHECK(std::strstr(llmt_last_error(), "out of range") != nullptr, "message says out of range");
  CHECK(llmt_device_count(nullptr) == LLMT_ERR_BAD_INPUT, "NULL out pointer is BAD_INPUT");

  // The last error is per thread: a failure here is not visible on another thread.
  std::string other;
  std::thread t([&] { other = llmt_last_error(); });
  t.join();
  CHECK(other.empty(), "last error leaked across threads");

  if (g_failures == 0) std::printf("test_api: all checks passed\n");
  return g_failures == 0 ? 0 : 1;
}
