// status.cpp — status names, the per-thread last-error message, version and build info.
// Every C API entry point reports failure through set_error(); nothing here may throw or exit.
#include "status.hpp"

#include <string>

namespace llmt {

namespace {
thread_local std::string g_last_error;
}

llmt_status set_error(llmt_status status, const std::string &message) {
  g_last_error = message;
  return status;
}

void clear_error() { g_last_error.clear(); }

const char *last_error() { return g_last_error.c_str(); }

}  // namespace llmt

extern "C" {

const char *llmt_version(void) { return LLMT_VERSION_STRING; }

int llmt_api_version(void) { return LLMT_API_VERSION; }

const char *llmt_status_name(llmt_status status) {
  switch (status) {
    case LLMT_OK: return "OK";
    case LLMT_ERR_BAD_INPUT: return "BAD_INPUT";
    case LLMT_ERR_IO: return "IO";
    case LLMT_ERR_OOM: return "OOM";
    case LLMT_ERR_NAN: return "NAN";
    case LLMT_ERR_CUDA: return "CUDA";
    case LLMT_ERR_UNSUPPORTED: return "UNSUPPORTED";
    case LLMT_ERR_ABORTED: return "ABORTED";
    case LLMT_ERR_INTERNAL: return "INTERNAL";
  }
  return "UNKNOWN";
}

const char *llmt_last_error(void) { return llmt::last_error(); }

const char *llmt_build_info(void) {
  static const std::string info = std::string("{\"version\":\"") + LLMT_VERSION_STRING +
                                  "\",\"api_version\":" + std::to_string(LLMT_API_VERSION) +
                                  ",\"cuda\":" + (LLMT_WITH_CUDA ? "true" : "false") +
                                  ",\"compiler\":\"" + LLMT_COMPILER_ID + "\"}";
  return info.c_str();
}

}  // extern "C"
