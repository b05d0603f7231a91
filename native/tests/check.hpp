// check.hpp — the C++ test suites' one assertion: CHECK(cond, msg) records a failure (file:line, the
// condition and msg — a std::string or a C string) and goes on, so one run reports every broken check.
// A suite's main() returns g_failures != 0.
#pragma once

#include <cstdio>
#include <string>

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond, msg)                                                                                         \
  do {                                                                                                           \
    ++g_checks;                                                                                                  \
    if (!(cond)) {                                                                                               \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s — %s\n", __FILE__, __LINE__, #cond, std::string(msg).c_str()); \
      ++g_failures;                                                                                              \
    }                                                                                                            \
  } while (0)
