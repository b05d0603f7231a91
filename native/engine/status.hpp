// status.hpp — internal helpers behind llmt_last_error(): set the calling thread's message and
// return the status, so a failing path reads `return set_error(LLMT_ERR_IO, "...")`.
#pragma once

#include <string>

#include "llmt.h"

#ifndef LLMT_VERSION_STRING
#define LLMT_VERSION_STRING "0.0.0"
#endif
#ifndef LLMT_WITH_CUDA
#define LLMT_WITH_CUDA 0
#endif
#ifndef LLMT_COMPILER_ID
#define LLMT_COMPILER_ID "unknown"
#endif

namespace llmt {
llmt_status set_error(llmt_status status, const std::string &message);
void clear_error();
const char *last_error();
}  // namespace llmt
