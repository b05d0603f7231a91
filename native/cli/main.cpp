// main.cpp — `llmt-engine`, the engine's standalone worker and verification tool.
// It needs no Node: RunService spawns it (job file in, JSONL events on stdout, control on stdin), and it
// runs on a bare GPU server or under torchrun/Slurm launchers. It uses the C API (llmt.h) and nothing else
// of the engine. Exit codes: 0 success, 1 engine error (message on stderr, prefixed with its code),
// 2 usage error.
#include <cstdio>
#include <cstring>
#include <string>

#include "../engine/json.hpp"
#include "llmt.h"

namespace {

const char *kUsage =
    "usage: llmt-engine <command> [options]\n"
    "\n"
    "commands:\n"
    "  info [--json]     engine version, build features and compute devices\n"
    "  version           print the engine version\n"
    "  help              this text\n"
    "\n"
    "Training (train), verification (forward, grad, generate) and bench arrive with the engine.\n";

int fail(llmt_status st) {
  std::fprintf(stderr, "llmt-engine: %s: %s\n", llmt_status_name(st), llmt_last_error());
  return 1;
}

int cmd_info(bool as_json) {
  int count = 0;
  llmt_status st = llmt_device_count(&count);
  if (st != LLMT_OK) return fail(st);
  std::string devices = "[";
  std::string text;
  for (int i = 0; i < count; ++i) {
    llmt_device_info d;
    st = llmt_device_info_get(i, &d);
    if (st != LLMT_OK) return fail(st);
    if (i) devices += ",";
    devices += "{\"index\":" + std::to_string(d.index) + ",\"kind\":\"" +
               (d.kind == LLMT_DEVICE_CUDA ? "cuda" : "cpu") + "\",\"name\":" + llmt::json_escape(d.name) +
               ",\"memory_total\":" + std::to_string(d.memory_total) +
               ",\"memory_free\":" + std::to_string(d.memory_free) + ",\"threads\":" + std::to_string(d.threads) +
               "}";
    char line[256];
    std::snprintf(line, sizeof(line), "  [%d] %s, %.1f GiB total, %.1f GiB free\n", d.index, d.name,
                  d.memory_total / 1073741824.0, d.memory_free / 1073741824.0);
    text += line;
  }
  devices += "]";
  if (as_json) {
    std::printf("{\"version\":%s,\"api_version\":%d,\"build\":%s,\"devices\":%s}\n",
                llmt::json_escape(llmt_version()).c_str(), llmt_api_version(), llmt_build_info(), devices.c_str());
  } else {
    std::printf("llmt-engine %s (C API %d)\nbuild: %s\ndevices:\n%s", llmt_version(), llmt_api_version(),
                llmt_build_info(), text.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (cmd == "version" || cmd == "--version") {
    std::printf("%s\n", llmt_version());
    return 0;
  }
  if (cmd == "info") {
    bool as_json = false;
    for (int i = 2; i < argc; ++i) {
      if (std::strcmp(argv[i], "--json") == 0) {
        as_json = true;
      } else {
        std::fprintf(stderr, "llmt-engine info: unknown option '%s'\n%s", argv[i], kUsage);
        return 2;
      }
    }
    return cmd_info(as_json);
  }
  std::fprintf(stderr, "llmt-engine: unknown command '%s'\n%s", cmd.c_str(), kUsage);
  return 2;
}
