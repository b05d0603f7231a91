// main.cpp — `llmt-engine`, the engine's standalone worker and verification tool.
// It needs no Node: RunService spawns it (`train --job`: JSON-lines events on stdout, control lines on
// stdin), and it runs on a bare GPU server or under torchrun/Slurm launchers. It reaches the engine only
// through the C API (llmt.h); json.hpp is used as a plain JSON utility for its own files.
// Exit codes: 0 success, 1 engine error (message on stderr, prefixed with its code), 2 usage error.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/resource.h>
#endif

#include "../engine/json.hpp"
#include "llmt.h"

using llmt::Json;

namespace {

const char *kUsage =
    "usage: llmt-engine <command> [options]\n"
    "\n"
    "commands:\n"
    "  info [--json]                      engine version, build features and compute devices\n"
    "  version                            print the engine version\n"
    "  inspect --model DIR                describe an HF model folder as JSON (no weights loaded)\n"
    "  create-tiny --family F --out DIR [--seed N]\n"
    "                                     write a tiny random model as an HF folder (F: llama, llama3,\n"
    "                                     llama_bias, mistral, qwen2, baichuan, baichuan13b, gpt_neox, bloom,\n"
    "                                     falcon, falcon40b, minicpm, chatglm, chatglm2, demo)\n"
    "  forward --model DIR [--adapter DIR] --tokens T.json --out O.json\n"
    "                                     T.json: {\"input_ids\": [[...]], \"labels\": [[...]]} (labels optional,\n"
    "                                     -100 ignored, rows of equal length); O.json: {\"loss\", \"tokens\",\n"
    "                                     \"logits\": [B][T][V]} in float32, no dropout\n"
    "  grad --model DIR --adapter DIR --tokens T.json --out G.safetensors\n"
    "                                     gradients of that mean loss w.r.t. every adapter parameter (LoRA A/B,\n"
    "                                     modules_to_save), float32, keyed by PEFT's names, no dropout\n"
    "  generate --model DIR [--adapter DIR] (--prompt-ids 1,2,3 | --tokens T.json) [--max-new-tokens N]\n"
    "           [--temperature X] [--top-k K] [--top-p P] [--repetition-penalty R] [--greedy] [--seed N] [--batch]\n"
    "                                     generated ids as JSON {\"ids\": [...]}; tokens stream to stderr with --stream;\n"
    "                                     --batch: every prompt at once (--prompt-ids 1,2;3,4,5 or every row of T.json,\n"
    "                                     rows of any length), {\"ids\": [[...], ...]}, each row as if generated alone;\n"
    "                                     sampling defaults are the seed's (temperature 0.001, top-k 30, top-p 0.85,\n"
    "                                     repetition penalty 1.2); --greedy: argmax with repetition penalty 1 (HF's\n"
    "                                     do_sample=False) unless --repetition-penalty is given; generation stops at\n"
    "                                     generation_config.json's eos_token_id(s) (else config.json's), as HF's does\n"
    "  eval --model DIR [--adapter DIR] --data FILE.tok [--batch N] [--json] [--progress]\n"
    "                                     evaluation loss and perplexity on a tokenized dataset, computed as a training\n"
    "                                     job's eval (eval_batch_size N, default 4): the same value bit for bit;\n"
    "                                     --progress: {\"event\":\"progress\",...} lines on stderr\n"
    "  train --job JOB.json               run a training job; JSON-lines events on stdout; stdin lines\n"
    "                                     \"stop\" (checkpoint, then exit) and \"abort\"; SIGTERM/SIGINT = stop\n"
    "                                     data-parallel over several workers when RANK/WORLD_SIZE/MASTER_ADDR/\n"
    "                                     MASTER_PORT (torchrun) or SLURM_PROCID/SLURM_NTASKS (srun) are set;\n"
    "                                     see docs/distributed.md\n"
    "  quantize --model DIR --out DIR [--type nf4|fp4] [--no-double-quant]\n"
    "                                     a bitsandbytes 4-bit checkpoint of the model (transformers' layout and\n"
    "                                     quantization_config); forward/grad/train/bench load it as stored\n"
    "  quantize --in X.safetensors --out Y.safetensors [--type nf4|fp4] [--no-double-quant] [--dequantized]\n"
    "                                     every float tensor as bitsandbytes 4-bit (verification against bnb)\n"
    "  bench --model DIR [--adapter DIR] [--batch B] [--seq T] [--iters N] [--warmup W]\n"
    "                                     time one forward and one forward+backward (LoRA step) on random\n"
    "                                     tokens; prints JSON with milliseconds and tokens/s\n"
    "  convert DIR [--out DIR] [--max-shard-bytes N]\n"
    "                                     pytorch_model.bin (sharded too) or adapter_model.bin -> safetensors, read by a\n"
    "                                     restricted unpickler that runs no code; in place unless --out (a new folder)\n"
    "  merge --model DIR --adapter DIR --out DIR [--dtype auto|float32|float16|bfloat16] [--max-shard-bytes N]\n"
    "                                     merge a LoRA adapter (or a vocabulary-extending delta) into its base; HF folder\n"
    "  help                               this text\n"
    "\n"
    "options for forward, grad, train, bench, generate and eval: --quantization nf4|fp4|none (QLoRA: the block linears\n"
    "                                     as bitsandbytes 4-bit, double-quantized scales; train: overrides the job field)\n"
    "options for every command: --threads N (CPU worker threads)\n"
    "forward, grad, bench, generate, eval: --precision fp32|bf16|fp16 (frozen base weights in 16 bits, fp32 accumulation)\n"
    "forward, grad, bench, generate: --device cpu|cuda|cuda:N|auto (a GPU that cannot be used: the CPU, one line says so)\n"
    "bench: --checkpointing (gradient checkpointing in the timed backward); --offload-checkpoints (the same, with the\n"
    "       checkpointed block inputs in host memory on a GPU); --profile (then one more step with every kernel and\n"
    "       cuBLAS call timed on the device: \"profile\" in the JSON, the 40 longest rows, GEMM TFLOP/s; GPU only);\n"
    "       --q4-gemm auto|fused|dequant|both (QLoRA in bf16/fp16 on a GPU: the fused 4-bit kernels, or each weight\n"
    "       decoded to 16 bits by L2-sized slices, then cuBLAS; auto: the GPU's default, dequant on compute capability\n"
    "       9+; both: the default, then the step timed each way, \"q4_gemm\" in the JSON)\n"
    "       --q4-cache auto|on|off|both (QLoRA in bf16/fp16 with --checkpointing: each recomputed block's 4-bit\n"
    "       weights decoded to 16 bits once for its recomputation and backward, one layer's weights in 16 bits at a\n"
    "       time; auto: LLMT_Q4_LAYER_CACHE=1 turns it on, else off; both: the default, then the step timed off and\n"
    "       on, \"q4_cache\" in the JSON)\n"
    "       --attn v2|v1|both (bf16/fp16 on a GPU: the tensor-core attention kernels with 4 warps (the forward's\n"
    "       accumulators lazily rescaled), the default; or the 2-warp v1; both: the default, then the step timed each\n"
    "       way, \"attn_tc\" in the JSON)\n"
    "forward, grad, bench: --device cpu|cuda|cuda:N|auto (default cpu; cuda without a usable GPU falls back to the CPU\n"
    "                                     with one line on stderr). `version` also lists the backends compiled in and runnable.\n";

int usage_error(const std::string &msg) {
  std::fprintf(stderr, "llmt-engine: %s\n\n%s", msg.c_str(), kUsage);
  return 2;
}

int fail(llmt_status st) {
  std::fprintf(stderr, "llmt-engine: %s: %s\n", llmt_status_name(st), llmt_last_error());
  return 1;
}

// --name value / --flag
struct Args {
  std::map<std::string, std::string> kv;
  std::vector<std::string> flags;
  std::string error;
  bool has(const std::string &k) const { return kv.count(k) || std::find(flags.begin(), flags.end(), k) != flags.end(); }
  std::string get(const std::string &k, const std::string &def = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? def : it->second;
  }
};

Args parse_args(int argc, char **argv, int from, std::initializer_list<const char *> valued,
                std::initializer_list<const char *> boolean) {
  Args a;
  for (int i = from; i < argc; ++i) {
    std::string s = argv[i];
    bool is_v = false, is_b = false;
    for (const char *v : valued) is_v = is_v || s == v;
    for (const char *b : boolean) is_b = is_b || s == b;
    if (is_v) {
      if (i + 1 >= argc) {
        a.error = "option " + s + " needs a value";
        return a;
      }
      a.kv[s] = argv[++i];
    } else if (is_b) {
      a.flags.push_back(s);
    } else {
      a.error = "unknown option '" + s + "'";
      return a;
    }
  }
  return a;
}

bool read_file(const std::string &path, std::string &out) {
  FILE *f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  std::fclose(f);
  return true;
}

bool write_file(const std::string &path, const std::string &text) {
  const std::string tmp = path + ".tmp";
  FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f) return false;
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = std::fclose(f) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

// Reads {"input_ids": [[...]], "labels": [[...]]} with rows of equal length.
bool read_tokens(const std::string &path, std::vector<int32_t> &ids, std::vector<int32_t> &labels, int64_t &B, int64_t &T,
                 bool &has_labels, std::string &err) {
  std::string text;
  if (!read_file(path, text)) {
    err = "cannot read " + path + ": " + std::strerror(errno);
    return false;
  }
  Json j;
  if (!Json::parse(text, j, err)) {
    err = path + " is not valid JSON: " + err;
    return false;
  }
  const Json &in = j.get("input_ids");
  const Json &lb = j.get("labels");
  if (!in.is_array() || in.size() == 0 || !in[0].is_array() || in[0].size() == 0) {
    err = path + ": \"input_ids\" must be a non-empty list of non-empty lists of token ids";
    return false;
  }
  B = static_cast<int64_t>(in.size());
  T = static_cast<int64_t>(in[0].size());
  has_labels = !lb.is_null();
  if (has_labels && (!lb.is_array() || static_cast<int64_t>(lb.size()) != B)) {
    err = path + ": \"labels\" must have one row per input_ids row";
    return false;
  }
  for (int64_t r = 0; r < B; ++r) {
    if (!in[r].is_array() || static_cast<int64_t>(in[r].size()) != T) {
      err = path + ": input_ids row " + std::to_string(r) + " has a different length than row 0 (pad the rows)";
      return false;
    }
    if (has_labels && (!lb[r].is_array() || static_cast<int64_t>(lb[r].size()) != T)) {
      err = path + ": labels row " + std::to_string(r) + " must have the same length as input_ids";
      return false;
    }
    for (int64_t t = 0; t < T; ++t) {
      if (!in[r][t].is_integer()) {
        err = path + ": input_ids[" + std::to_string(r) + "][" + std::to_string(t) + "] is not an integer";
        return false;
      }
      ids.push_back(static_cast<int32_t>(in[r][t].as_int()));
      if (has_labels) {
        if (!lb[r][t].is_integer()) {
          err = path + ": labels[" + std::to_string(r) + "][" + std::to_string(t) + "] is not an integer";
          return false;
        }
        labels.push_back(static_cast<int32_t>(lb[r][t].as_int()));
      }
    }
  }
  return true;
}

int apply_threads(const Args &a) {
  if (!a.has("--threads")) return 0;
  int n = std::atoi(a.get("--threads").c_str());
  llmt_status st = llmt_set_threads(n);
  return st ? fail(st) : 0;
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
    Json o = Json::object();
    o.set("index", Json::integer(d.index));
    o.set("kind", Json::string(d.kind == LLMT_DEVICE_CUDA ? "cuda" : "cpu"));
    o.set("name", Json::string(d.name));
    o.set("memory_total", Json::integer(static_cast<int64_t>(d.memory_total)));
    o.set("memory_free", Json::integer(static_cast<int64_t>(d.memory_free)));
    o.set("threads", Json::integer(d.threads));
    if (i) devices += ",";
    devices += o.dump();
    char line[256];
    std::snprintf(line, sizeof(line), "  [%d] %s, %.1f GiB total, %.1f GiB free\n", d.index, d.name,
                  d.memory_total / 1073741824.0, d.memory_free / 1073741824.0);
    text += line;
  }
  devices += "]";
  if (as_json) {
    std::printf("{\"version\":%s,\"api_version\":%d,\"build\":%s,\"devices\":%s}\n", Json::string(llmt_version()).dump().c_str(),
                llmt_api_version(), llmt_build_info(), devices.c_str());
  } else {
    std::printf("llmt-engine %s (C API %d)\nbuild: %s\ndevices:\n%s", llmt_version(), llmt_api_version(), llmt_build_info(),
                text.c_str());
  }
  return 0;
}

// --device cpu|cuda|cuda:N|auto (default cpu): a missing GPU falls back to the CPU with one line on stderr.
llmt_status apply_device(const Args &a, llmt_model *m) {
  if (!a.has("--device")) return LLMT_OK;
  char note[512] = {0};
  llmt_status st = llmt_model_set_device(m, a.get("--device").c_str(), note, sizeof note);
  if (st == LLMT_OK && note[0]) std::fprintf(stderr, "llmt-engine: %s\n", note);
  return st;
}

// --precision fp32|bf16|fp16 (default fp32): frozen base weights in 16 bits (Model::set_precision)
llmt_status apply_precision(const Args &a, llmt_model *m) {
  if (!a.has("--precision")) return LLMT_OK;
  return llmt_model_set_precision(m, a.get("--precision").c_str());
}

struct ModelHandle {
  llmt_model *m = nullptr;
  ~ModelHandle() { llmt_model_free(m); }
};

int cmd_forward(const Args &a, bool grad) {
  const std::string model = a.get("--model"), adapter = a.get("--adapter"), tokens = a.get("--tokens"), out = a.get("--out");
  if (model.empty() || tokens.empty() || out.empty()) return usage_error(std::string(grad ? "grad" : "forward") + " needs --model, --tokens and --out");
  if (grad && adapter.empty()) return usage_error("grad needs --adapter (the LoRA whose gradients are wanted)");
  std::vector<int32_t> ids, labels;
  int64_t B = 0, T = 0;
  bool has_labels = false;
  std::string err;
  if (!read_tokens(tokens, ids, labels, B, T, has_labels, err)) {
    std::fprintf(stderr, "llmt-engine: BAD_INPUT: %s\n", err.c_str());
    return 1;
  }
  if (grad && !has_labels) {
    std::fprintf(stderr, "llmt-engine: BAD_INPUT: %s has no \"labels\": grad needs a loss\n", tokens.c_str());
    return 1;
  }
  ModelHandle h;
  llmt_status st = llmt_model_load_mixed(model.c_str(), adapter.empty() ? nullptr : adapter.c_str(),
                                         a.get("--quantization").c_str(), a.get("--precision").c_str(), &h.m);
  if (st) return fail(st);
  if ((st = apply_device(a, h.m)) || (st = apply_precision(a, h.m))) return fail(st);
  if (grad) {
    double loss = 0;
    st = llmt_model_grad(h.m, ids.data(), labels.data(), B, T, out.c_str(), &loss);
    if (st) return fail(st);
    std::printf("{\"loss\":%s}\n", Json::number(loss).dump().c_str());
    return 0;
  }
  char *info = nullptr;
  if ((st = llmt_model_info(h.m, &info))) return fail(st);
  Json ij;
  std::string e2;
  Json::parse(info, ij, e2);
  llmt_free_string(info);
  const int64_t V = ij.get_int("vocab", 0);
  std::vector<float> logits(static_cast<size_t>(B * T * V));
  double loss = 0;
  int64_t count = 0;
  st = llmt_model_forward(h.m, ids.data(), has_labels ? labels.data() : nullptr, B, T, logits.data(), &loss, &count);
  if (st) return fail(st);
  int64_t bad = 0;
  for (float x : logits) bad += !std::isfinite(x);
  if (bad) {  // JSON has no NaN: say what is wrong instead of writing a file no parser reads
    std::fprintf(stderr, "llmt-engine: NAN: %lld of %lld logits are not finite (NaN or inf): the model's weights or the adapter hold "
                         "non-finite values (a diverged checkpoint?); nothing was written\n",
                 static_cast<long long>(bad), static_cast<long long>(logits.size()));
    return 1;
  }
  std::string o = "{\"loss\":";
  o += has_labels && count > 0 ? Json::number(loss).dump() : "null";
  o += ",\"tokens\":" + std::to_string(count) + ",\"logits\":[";
  char buf[32];
  for (int64_t b = 0; b < B; ++b) {
    o += b ? ",[" : "[";
    for (int64_t t = 0; t < T; ++t) {
      o += t ? ",[" : "[";
      for (int64_t v = 0; v < V; ++v) {
        std::snprintf(buf, sizeof buf, "%s%.9g", v ? "," : "", static_cast<double>(logits[(b * T + t) * V + v]));
        o += buf;
      }
      o += "]";
    }
    o += "]";
  }
  o += "]}\n";
  if (!write_file(out, o)) {
    std::fprintf(stderr, "llmt-engine: IO: cannot write %s: %s\n", out.c_str(), std::strerror(errno));
    return 1;
  }
  return 0;
}

std::atomic<int> g_control{0};

void on_signal(int) {
  // first signal: graceful stop; a second one: abort
  g_control.store(g_control.load() >= 1 ? 2 : 1);
}

void print_event(void *, const char *json) {
  std::fputs(json, stdout);
  std::fputc('\n', stdout);
  // SIGPIPE is ignored (cmd_train): when whoever reads our events is gone (the app was killed), the write fails with EPIPE
  // and the run aborts at its next control poll instead of training on as an orphan
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) g_control.store(2);
}

int cmd_train(const Args &a) {
  const std::string job = a.get("--job");
  if (job.empty()) return usage_error("train needs --job JOB.json");
  std::string text;
  if (!read_file(job, text)) {
    std::string msg = "cannot read the job file " + job + ": " + std::strerror(errno);
    std::printf("{\"event\":\"error\",\"code\":\"IO\",\"message\":%s}\n", Json::string(msg).dump().c_str());
    std::fprintf(stderr, "llmt-engine: IO: %s\n", msg.c_str());
    return 1;
  }
  if (a.has("--quantization")) {  // overrides the job's "quantization" field
    Json j;
    std::string perr;
    if (Json::parse(text, j, perr) && j.is_object()) {
      j.set("quantization", Json::string(a.get("--quantization")));
      text = j.dump();
    }
  }
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
#if !defined(_WIN32)
  // a peer rank that died must not kill this one through SIGPIPE (Gloo writes to its sockets without MSG_NOSIGNAL):
  // the write fails with EPIPE instead and the collective reports the lost peer, naming the rank that failed; a
  // closed event pipe (the app killed) aborts the run in print_event
  std::signal(SIGPIPE, SIG_IGN);
#endif
  // control lines on stdin: "stop" (checkpoint, then exit), "abort"
  std::thread([] {
    std::string line;
    while (std::getline(std::cin, line)) {
      if (line == "stop") g_control.store(std::max(g_control.load(), 1));
      else if (line == "abort") g_control.store(2);
    }
  }).detach();
  llmt_status st = llmt_train(text.c_str(), print_event, [](void *) { return g_control.load(); }, nullptr);
  if (st) return fail(st);
  return 0;
}

Json gen_params(const Args &a) {
  Json p = Json::object();
  if (a.has("--max-new-tokens")) p.set("max_new_tokens", Json::integer(std::atoll(a.get("--max-new-tokens").c_str())));
  if (a.has("--temperature")) p.set("temperature", Json::number(std::atof(a.get("--temperature").c_str())));
  if (a.has("--top-k")) p.set("top_k", Json::integer(std::atoll(a.get("--top-k").c_str())));
  if (a.has("--top-p")) p.set("top_p", Json::number(std::atof(a.get("--top-p").c_str())));
  if (a.has("--repetition-penalty")) p.set("repetition_penalty", Json::number(std::atof(a.get("--repetition-penalty").c_str())));
  if (a.has("--seed")) p.set("seed", Json::integer(std::atoll(a.get("--seed").c_str())));
  if (a.has("--greedy")) {
    p.set("do_sample", Json::boolean(false));
    // plain argmax decoding, as HF's generate(do_sample=False): no repetition penalty unless one is asked for
    if (!a.has("--repetition-penalty")) p.set("repetition_penalty", Json::number(1.0));
  }
  return p;
}

// generate --batch: prompts of any lengths from --prompt-ids "1,2;3,4,5" or the rows of --tokens T.json.
int cmd_generate_batch(const Args &a) {
  std::vector<int32_t> flat;
  std::vector<int64_t> lengths;
  if (a.has("--prompt-ids")) {
    const std::string s = a.get("--prompt-ids");
    int64_t len = 0;
    size_t at = 0;
    while (at <= s.size()) {
      const size_t c = s.find_first_of(",;", at);
      const std::string tok = s.substr(at, c == std::string::npos ? std::string::npos : c - at);
      char *end = nullptr;
      const long v = std::strtol(tok.c_str(), &end, 10);
      if (tok.empty() || *end) return usage_error("--prompt-ids must be comma-separated integers, prompts separated by ';'");
      flat.push_back(static_cast<int32_t>(v));
      ++len;
      if (c == std::string::npos || s[c] == ';') {
        lengths.push_back(len);
        len = 0;
      }
      if (c == std::string::npos) break;
      at = c + 1;
    }
  } else if (a.has("--tokens")) {
    std::string text, err;
    Json j;
    if (!read_file(a.get("--tokens"), text) || !Json::parse(text, j, err) || !j.get("input_ids").is_array()) {
      std::fprintf(stderr, "llmt-engine: BAD_INPUT: %s must be JSON with \"input_ids\": [[...], ...] %s\n", a.get("--tokens").c_str(), err.c_str());
      return 1;
    }
    for (const auto &row : j.get("input_ids").items()) {
      if (!row.is_array()) return usage_error("--tokens: every input_ids row must be a list of ids");
      for (const auto &x : row.items()) flat.push_back(static_cast<int32_t>(x.as_int()));
      lengths.push_back(static_cast<int64_t>(row.size()));
    }
  } else {
    return usage_error("generate needs --prompt-ids or --tokens");
  }
  const Json p = gen_params(a);
  ModelHandle h;
  llmt_status st = llmt_model_load_mixed(a.get("--model").c_str(), a.has("--adapter") ? a.get("--adapter").c_str() : nullptr,
                                         a.get("--quantization").c_str(), a.get("--precision").c_str(), &h.m);
  if (st || (st = apply_device(a, h.m))) return fail(st);
  std::signal(SIGINT, on_signal);
  const int64_t cap = std::max<int64_t>(1, p.get_int("max_new_tokens", 512)), R = static_cast<int64_t>(lengths.size());
  std::vector<int32_t> out(static_cast<size_t>(cap * R));
  std::vector<int64_t> n(static_cast<size_t>(R));
  st = llmt_model_generate_batch(
      h.m, flat.data(), lengths.data(), R, p.dump().c_str(),
      a.has("--stream") ? static_cast<llmt_event_fn>([](void *, const char *e) { std::fprintf(stderr, "%s\n", e); }) : nullptr,
      [](void *) { return g_control.load() ? 1 : 0; }, nullptr, out.data(), cap, n.data());
  if (st && st != LLMT_ERR_ABORTED) return fail(st);
  Json ids = Json::array();
  for (int64_t r = 0; r < R; ++r) {
    Json row = Json::array();
    for (int64_t i = 0; i < std::min(n[r], cap); ++i) row.push(Json::integer(out[static_cast<size_t>(r * cap + i)]));
    ids.push(row);
  }
  Json o = Json::object();
  o.set("ids", ids);
  o.set("stopped", Json::boolean(st == LLMT_ERR_ABORTED));
  std::printf("%s\n", o.dump().c_str());
  return 0;
}

int cmd_generate(const Args &a) {
  const std::string model = a.get("--model"), adapter = a.get("--adapter");
  if (model.empty()) return usage_error("generate needs --model");
  if (a.has("--batch")) return cmd_generate_batch(a);
  std::vector<int32_t> prompt;
  if (a.has("--prompt-ids")) {
    std::string s = a.get("--prompt-ids");
    size_t at = 0;
    while (at < s.size()) {
      size_t c = s.find(',', at);
      std::string tok = s.substr(at, c == std::string::npos ? std::string::npos : c - at);
      char *end = nullptr;
      long v = std::strtol(tok.c_str(), &end, 10);
      if (tok.empty() || *end) return usage_error("--prompt-ids must be comma-separated integers");
      prompt.push_back(static_cast<int32_t>(v));
      if (c == std::string::npos) break;
      at = c + 1;
    }
  } else if (a.has("--tokens")) {
    std::vector<int32_t> labels;
    int64_t B, T;
    bool hl;
    std::string err;
    if (!read_tokens(a.get("--tokens"), prompt, labels, B, T, hl, err)) {
      std::fprintf(stderr, "llmt-engine: BAD_INPUT: %s\n", err.c_str());
      return 1;
    }
    prompt.resize(static_cast<size_t>(T));  // first row
  } else {
    return usage_error("generate needs --prompt-ids or --tokens");
  }
  const Json p = gen_params(a);
  ModelHandle h;
  llmt_status st = llmt_model_load_mixed(model.c_str(), adapter.empty() ? nullptr : adapter.c_str(), a.get("--quantization").c_str(),
                                         a.get("--precision").c_str(), &h.m);
  if (st || (st = apply_device(a, h.m))) return fail(st);
  std::signal(SIGINT, on_signal);
  const int64_t cap = p.get_int("max_new_tokens", 512);
  std::vector<int32_t> out(static_cast<size_t>(std::max<int64_t>(cap, 1)));
  int64_t n = 0;
  const bool stream = a.has("--stream");
  st = llmt_model_generate(
      h.m, prompt.data(), static_cast<int64_t>(prompt.size()), p.dump().c_str(),
      stream ? static_cast<llmt_event_fn>([](void *, const char *e) { std::fprintf(stderr, "%s\n", e); }) : nullptr,
      [](void *) { return g_control.load() ? 1 : 0; }, nullptr, out.data(), static_cast<int64_t>(out.size()), &n);
  if (st && st != LLMT_ERR_ABORTED) return fail(st);
  Json ids = Json::array();
  for (int64_t i = 0; i < n; ++i) ids.push(Json::integer(out[static_cast<size_t>(i)]));
  Json o = Json::object();
  o.set("ids", ids);
  o.set("stopped", Json::boolean(st == LLMT_ERR_ABORTED));
  std::printf("%s\n", o.dump().c_str());
  return 0;
}

// Peak resident memory of this process in MiB: VmHWM from /proc/self/status (Linux), else getrusage; 0 if neither.
double host_peak_mib() {
  if (std::FILE *f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    double kb = 0;
    while (std::fgets(line, sizeof line, f))
      if (std::strncmp(line, "VmHWM:", 6) == 0) kb = std::strtod(line + 6, nullptr);
    std::fclose(f);
    if (kb > 0) return kb / 1024.0;
  }
#if defined(__unix__) || defined(__APPLE__)
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
#if defined(__APPLE__)
    return static_cast<double>(ru.ru_maxrss) / (1024.0 * 1024.0);  // bytes
#else
    return static_cast<double>(ru.ru_maxrss) / 1024.0;  // KiB
#endif
  }
#endif
  return 0;
}

int cmd_bench(const Args &a) {
  const std::string model = a.get("--model"), adapter = a.get("--adapter");
  if (model.empty()) return usage_error("bench needs --model");
  const int64_t B = std::atoll(a.get("--batch", "1").c_str()), T = std::atoll(a.get("--seq", "128").c_str());
  const int iters = std::atoi(a.get("--iters", "5").c_str()), warmup = std::atoi(a.get("--warmup", "1").c_str());
  if (B <= 0 || T <= 1 || iters <= 0 || warmup < 0) return usage_error("bench: --batch >= 1, --seq >= 2, --iters >= 1");
  const std::string q4 = a.get("--q4-gemm", "auto");
  if (q4 != "auto" && q4 != "fused" && q4 != "dequant" && q4 != "both") return usage_error("bench: --q4-gemm auto|fused|dequant|both");
  // the CUDA backend reads LLMT_Q4_GEMM at each 4-bit GEMM (docs/cuda.md); auto and both: its default for the GPU
  if (q4 == "fused" || q4 == "dequant") ::setenv("LLMT_Q4_GEMM", q4.c_str(), 1);
  else ::unsetenv("LLMT_Q4_GEMM");
  const std::string q4c = a.get("--q4-cache", "auto");
  if (q4c != "auto" && q4c != "on" && q4c != "off" && q4c != "both") return usage_error("bench: --q4-cache auto|on|off|both");
  // and LLMT_Q4_LAYER_CACHE at each checkpointed backward (RunOptions::q4_layer_cache)
  if (q4c == "on" || q4c == "off") ::setenv("LLMT_Q4_LAYER_CACHE", q4c == "on" ? "1" : "0", 1);
  const std::string attn = a.get("--attn", "v2");
  if (attn != "v1" && attn != "v2" && attn != "both") return usage_error("bench: --attn v1|v2|both");
  // and LLMT_ATTN_TC at each tensor-core attention forward
  if (attn == "v1") ::setenv("LLMT_ATTN_TC", "v1", 1);
  else ::unsetenv("LLMT_ATTN_TC");
  ModelHandle h;
  llmt_status st = llmt_model_load_mixed(model.c_str(), adapter.empty() ? nullptr : adapter.c_str(),
                                         a.get("--quantization").c_str(), a.get("--precision").c_str(), &h.m);
  if (st) return fail(st);
  if ((st = apply_device(a, h.m)) || (st = apply_precision(a, h.m))) return fail(st);
  if ((st = llmt_model_set_checkpointing(h.m, a.has("--offload-checkpoints") ? 2 : a.has("--checkpointing") ? 1 : 0))) return fail(st);
  char *info = nullptr;
  if ((st = llmt_model_info(h.m, &info))) return fail(st);
  Json ij;
  std::string err;
  Json::parse(info, ij, err);
  llmt_free_string(info);
  const int64_t V = ij.get_int("vocab", 2);
  std::vector<int32_t> ids(static_cast<size_t>(B * T));
  uint64_t x = 12345;
  for (auto &v : ids) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<int32_t>((x >> 33) % static_cast<uint64_t>(V));
  }
  auto now = [] { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  auto time_it = [&](auto fn) {
    for (int i = 0; i < warmup; ++i)
      if (llmt_status s = fn()) return -static_cast<double>(s);
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
      const double t0 = now();
      if (llmt_status s = fn()) return -static_cast<double>(s);
      ms.push_back(now() - t0);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];  // median
  };
  double loss = 0;
  const double fwd = time_it([&] { return llmt_model_forward(h.m, ids.data(), ids.data(), B, T, nullptr, &loss, nullptr); });
  if (fwd < 0) return fail(static_cast<llmt_status>(-fwd));
  Json o = Json::object();
  o.set("batch", Json::integer(B));
  o.set("seq", Json::integer(T));
  o.set("parameters", ij.get("parameters"));
  o.set("trainable", ij.get("trainable"));
  o.set("forward_ms", Json::number(fwd));
  o.set("forward_tokens_per_s", Json::number(B * T / (fwd / 1000.0)));
  if (ij.get_int("trainable", 0) > 0) {
    const double bwd = time_it([&] { return llmt_model_backward(h.m, ids.data(), ids.data(), B, T, &loss); });
    if (bwd < 0) return fail(static_cast<llmt_status>(-bwd));
    o.set("train_step_ms", Json::number(bwd));
    o.set("train_tokens_per_s", Json::number(B * T / (bwd / 1000.0)));
    // "both": the step timed again with env var `var` set to each of `values` (the figure above is the default's),
    // every figure under `key`
    auto both = [&](const char *key, const char *var, std::initializer_list<const char *> values) -> llmt_status {
      Json m = Json::object();
      for (const char *v : values) {
        ::setenv(var, v, 1);
        const double ms = time_it([&] { return llmt_model_backward(h.m, ids.data(), ids.data(), B, T, &loss); });
        ::unsetenv(var);
        if (ms < 0) return static_cast<llmt_status>(-ms);
        Json e = Json::object();
        e.set("train_step_ms", Json::number(ms));
        e.set("train_tokens_per_s", Json::number(B * T / (ms / 1000.0)));
        m.set(v, e);
      }
      o.set(key, m);
      return LLMT_OK;
    };
    // the fused 4-bit kernels and the sliced decode + cuBLAS; the attention kernels with 4 warps and the 2-warp v1
    if (q4 == "both" && (st = both("q4_gemm", "LLMT_Q4_GEMM", {"fused", "dequant"}))) return fail(st);
    if (attn == "both" && (st = both("attn_tc", "LLMT_ATTN_TC", {"v2", "v1"}))) return fail(st);
    if (q4c == "both" && (st = both("q4_cache", "LLMT_Q4_LAYER_CACHE", {"0", "1"}))) return fail(st);
  }
  // --profile: one more step (the training step when there is one) with every device call timed; not in the figures
  // above. kernel_ms against the step's wall time shows how much of the step the device was busy.
  if (a.has("--profile")) {
    if ((st = llmt_model_profile(h.m, 1, nullptr))) return fail(st);
    const bool train = ij.get_int("trainable", 0) > 0;
    const double t0 = now();
    st = train ? llmt_model_backward(h.m, ids.data(), ids.data(), B, T, &loss)
               : llmt_model_forward(h.m, ids.data(), ids.data(), B, T, nullptr, &loss, nullptr);
    const double wall = now() - t0;
    char *prof = nullptr;
    llmt_status st2 = llmt_model_profile(h.m, 0, &prof);
    if (st) return fail(st);
    if (st2) return fail(st2);
    Json pj;
    Json::parse(prof, pj, err);
    llmt_free_string(prof);
    Json rows = Json::array();
    const Json &all = pj.get("rows");
    const size_t keep = 40;
    double rest_ms = 0;
    int64_t rest_calls = 0;
    for (size_t i = 0; i < all.size(); ++i) {
      if (i < keep) rows.push(all[i]);
      else rest_ms += all[i].get_number("ms", 0), rest_calls += all[i].get_int("calls", 0);
    }
    Json p = Json::object();
    p.set("step", Json::string(train ? "forward+backward" : "forward"));
    p.set("wall_ms", Json::number(wall));
    p.set("kernel_ms", pj.get("kernel_ms"));
    p.set("names", Json::integer(static_cast<int64_t>(all.size())));
    p.set("rows", rows);
    p.set("rest_ms", Json::number(rest_ms));
    p.set("rest_calls", Json::integer(rest_calls));
    o.set("profile", p);
  }
  // the device allocator's peaks over load + all iterations (PyTorch's max_memory_allocated/reserved counterparts)
  if ((st = llmt_model_info(h.m, &info))) return fail(st);
  Json mj;
  Json::parse(info, mj, err);
  llmt_free_string(info);
  o.set("device", mj.get("device"));
  o.set("device_memory", mj.get("device_memory"));
  // this process's peak resident memory (load included): /proc/self/status VmHWM counts this image's own pages
  // only — getrusage's ru_maxrss also keeps the parent's size when a large process forked this one
  if (const double mib = host_peak_mib(); mib > 0) o.set("host_peak_mib", Json::number(mib));
  std::printf("%s\n", o.dump().c_str());
  return 0;
}

int cmd_eval(const Args &a) {
  const std::string model = a.get("--model"), adapter = a.get("--adapter"), data = a.get("--data");
  if (model.empty() || data.empty()) return usage_error("eval needs --model and --data");
  char *end = nullptr;
  const long long batch = std::strtoll(a.get("--batch", "4").c_str(), &end, 10);
  if (*end || batch < 1) return usage_error("eval: --batch must be a positive integer");
  ModelHandle h;
  llmt_status st = llmt_model_load_mixed(model.c_str(), adapter.empty() ? nullptr : adapter.c_str(), a.get("--quantization").c_str(),
                                         a.get("--precision").c_str(), &h.m);
  if (st) return fail(st);
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  char *out = nullptr;
  st = llmt_model_eval_loss(
      h.m, data.c_str(), batch,
      a.has("--progress") ? static_cast<llmt_event_fn>([](void *, const char *e) { std::fprintf(stderr, "%s\n", e); }) : nullptr,
      [](void *) { return g_control.load() ? 1 : 0; }, nullptr, &out);
  if (st) return fail(st);
  Json r;
  std::string err;
  Json::parse(out, r, err);
  if (a.has("--json")) std::printf("%s\n", out);
  else
    std::printf("eval loss %.6f  perplexity %.4f  (%lld tokens, %lld samples)\n", r.get_number("loss", NAN), r.get_number("perplexity", NAN),
                static_cast<long long>(r.get_int("tokens", 0)), static_cast<long long>(r.get_int("samples", 0)));
  llmt_free_string(out);
  return 0;
}

// Progress of convert/merge on stderr: one line per tensor when not a TTY, a rewritten line on a TTY.
void op_progress(void *user, const char *json) {
  Json e;
  std::string err;
  if (!Json::parse(json, e, err)) return;
  const bool tty = user != nullptr;
  std::fprintf(stderr, tty ? "\r%s %lld/%lld %-60.60s" : "%s %lld/%lld %s\n", e.get_string("stage").c_str(),
               static_cast<long long>(e.get_int("done", 0)), static_cast<long long>(e.get_int("total", 0)),
               e.get_string("name").c_str());
}

int cmd_model_op(const std::string &cmd, const Args &a, const std::string &positional) {
  Json opts = Json::object();
  if (a.has("--max-shard-bytes")) opts.set("max_shard_bytes", Json::integer(std::atoll(a.get("--max-shard-bytes").c_str())));
  if (a.has("--dtype")) opts.set("dtype", Json::string(a.get("--dtype")));
  void *tty = isatty(2) ? reinterpret_cast<void *>(1) : nullptr;
  // SIGTERM/SIGINT stop between tensors: the engine removes its temporary output and nothing half-written stays.
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  auto stop = [](void *) -> int { return g_control.load() != 0; };
  char *out = nullptr;
  llmt_status st;
  if (cmd == "convert") {
    st = llmt_model_convert(positional.c_str(), a.get("--out").c_str(), opts.dump().c_str(), op_progress, stop, tty, &out);
  } else {
    st = llmt_model_merge(a.get("--model").c_str(), a.get("--adapter").c_str(), a.get("--out").c_str(), opts.dump().c_str(),
                          op_progress, stop, tty, &out);
  }
  if (tty) std::fputc('\n', stderr);
  if (st) return fail(st);
  std::printf("%s\n", out);
  llmt_free_string(out);
  return 0;
}

}  // namespace

int run_main(int argc, char **argv);

int main(int argc, char **argv) {
  try {
    return run_main(argc, argv);
  } catch (const std::bad_alloc &) {
    std::fprintf(stderr, "llmt-engine: OOM: out of memory; lower the batch size or the sequence length\n");
    return 1;
  } catch (const std::exception &e) {
    std::fprintf(stderr, "llmt-engine: INTERNAL: %s\n", e.what());
    return 1;
  }
}

int run_main(int argc, char **argv) {
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
    std::printf("%s\n%s\n", llmt_version(), llmt_backends_info());  // line 1: the version alone (scripts read it)
    return 0;
  }
  if (cmd == "info") {
    Args a = parse_args(argc, argv, 2, {}, {"--json"});
    if (!a.error.empty()) return usage_error("info: " + a.error);
    return cmd_info(a.has("--json"));
  }
  if (cmd == "inspect") {
    Args a = parse_args(argc, argv, 2, {"--model"}, {});
    if (!a.error.empty()) return usage_error("inspect: " + a.error);
    if (!a.has("--model")) return usage_error("inspect needs --model DIR");
    char *json = nullptr;
    llmt_status st = llmt_model_inspect(a.get("--model").c_str(), &json);
    if (st) return fail(st);
    std::printf("%s\n", json);
    llmt_free_string(json);
    return 0;
  }
  if (cmd == "create-tiny") {
    Args a = parse_args(argc, argv, 2, {"--family", "--out", "--seed"}, {});
    if (!a.error.empty()) return usage_error("create-tiny: " + a.error);
    if (!a.has("--family") || !a.has("--out")) return usage_error("create-tiny needs --family and --out");
    llmt_status st = llmt_create_tiny(a.get("--family").c_str(), a.get("--out").c_str(),
                                      static_cast<uint64_t>(std::atoll(a.get("--seed", "0").c_str())));
    if (st) return fail(st);
    std::printf("%s\n", a.get("--out").c_str());
    return 0;
  }
  if (cmd == "forward" || cmd == "grad") {
    Args a = parse_args(argc, argv, 2, {"--model", "--adapter", "--tokens", "--out", "--threads", "--quantization", "--device", "--precision"}, {});
    if (!a.error.empty()) return usage_error(cmd + ": " + a.error);
    if (int r = apply_threads(a)) return r;
    return cmd_forward(a, cmd == "grad");
  }
  if (cmd == "quantize") {  // --model: a bnb 4-bit model folder; --in: one safetensors file (verification tool)
    Args a = parse_args(argc, argv, 2, {"--model", "--in", "--out", "--type", "--quantization", "--threads"},
                        {"--no-double-quant", "--dequantized"});
    if (!a.error.empty()) return usage_error("quantize: " + a.error);
    if (a.get("--model").empty() == a.get("--in").empty() || a.get("--out").empty())
      return usage_error("quantize needs --model DIR (or --in FILE) and --out");
    if (a.has("--model") && a.has("--dequantized")) return usage_error("quantize: --dequantized goes with --in only");
    if (int r = apply_threads(a)) return r;
    const std::string type = a.get("--type", a.get("--quantization", "nf4"));
    const int dq = a.has("--no-double-quant") ? 0 : 1;
    llmt_status st = a.has("--model")
                         ? llmt_quantize_model(a.get("--model").c_str(), a.get("--out").c_str(), type.c_str(), dq)
                         : llmt_quantize_file(a.get("--in").c_str(), a.get("--out").c_str(), type.c_str(), dq,
                                              a.has("--dequantized") ? 1 : 0);
    if (st) return fail(st);
    if (a.has("--model")) std::printf("%s\n", a.get("--out").c_str());
    return 0;
  }
  if (cmd == "train") {
    Args a = parse_args(argc, argv, 2, {"--job", "--threads", "--quantization"}, {});
    if (!a.error.empty()) return usage_error("train: " + a.error);
    if (int r = apply_threads(a)) return r;
    return cmd_train(a);
  }
  if (cmd == "generate") {
    Args a = parse_args(argc, argv, 2,
                        {"--model", "--adapter", "--prompt-ids", "--tokens", "--max-new-tokens", "--temperature", "--top-k",
                         "--top-p", "--repetition-penalty", "--seed", "--threads", "--quantization", "--precision", "--device"},
                        {"--greedy", "--stream", "--batch"});
    if (!a.error.empty()) return usage_error("generate: " + a.error);
    if (int r = apply_threads(a)) return r;
    return cmd_generate(a);
  }
  if (cmd == "eval") {
    Args a = parse_args(argc, argv, 2, {"--model", "--adapter", "--data", "--batch", "--threads", "--quantization", "--precision"}, {"--json", "--progress"});
    if (!a.error.empty()) return usage_error("eval: " + a.error);
    if (int r = apply_threads(a)) return r;
    return cmd_eval(a);
  }
  if (cmd == "bench") {
    Args a = parse_args(argc, argv, 2, {"--model", "--adapter", "--batch", "--seq", "--iters", "--warmup", "--threads", "--quantization", "--device", "--precision", "--q4-gemm", "--attn", "--q4-cache"}, {"--checkpointing", "--offload-checkpoints", "--profile"});
    if (!a.error.empty()) return usage_error("bench: " + a.error);
    if (int r = apply_threads(a)) return r;
    return cmd_bench(a);
  }
  if (cmd == "convert") {
    if (argc < 3 || argv[2][0] == '-') return usage_error("convert needs the model (or adapter) folder: convert DIR [--out DIR]");
    Args a = parse_args(argc, argv, 3, {"--out", "--max-shard-bytes", "--threads"}, {});
    if (!a.error.empty()) return usage_error("convert: " + a.error);
    return cmd_model_op(cmd, a, argv[2]);
  }
  if (cmd == "merge") {
    Args a = parse_args(argc, argv, 2, {"--model", "--adapter", "--out", "--dtype", "--max-shard-bytes", "--threads"}, {});
    if (!a.error.empty()) return usage_error("merge: " + a.error);
    if (!a.has("--model") || !a.has("--adapter") || !a.has("--out")) return usage_error("merge needs --model, --adapter and --out");
    return cmd_model_op(cmd, a, "");
  }
  std::fprintf(stderr, "llmt-engine: unknown command '%s'\n%s", cmd.c_str(), kUsage);
  return 2;
}
