// test_torchbin.cpp — the restricted unpickler for PyTorch zip checkpoints (engine/torchbin.cpp) and the
// model manager's convert/merge (engine/modelops.cpp) on hand-built files: the pickles a state dict uses
// (OrderedDict, _rebuild_tensor_v2, storages, memo), views (offset, transposed stride), F16, a planted
// `posix.system` call that must be refused (and never run), truncation, CRC damage, a missing storage.
// Files written by real torch.save are covered in tests/integration/model-manager.test.ts.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../engine/json.hpp"
#include "../engine/modelops.hpp"
#include "../engine/safetensors.hpp"
#include "../engine/torchbin.hpp"
#include "llmt.h"

using llmt::DType;

#include "check.hpp"
static bool has(const std::string &h, const std::string &n) { return h.find(n) != std::string::npos; }
static std::string g_tmp;

// ---- a minimal stored-zip writer (what torch.save writes: no compression) --------------------------------
static uint32_t crc(const std::string &s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
  }
  return c ^ 0xFFFFFFFFu;
}
static void put16(std::string &o, uint32_t v) { o.push_back(char(v & 0xff)), o.push_back(char((v >> 8) & 0xff)); }
static void put32(std::string &o, uint32_t v) { put16(o, v & 0xffff), put16(o, v >> 16); }
static std::string make_zip(const std::vector<std::pair<std::string, std::string>> &recs) {
  std::string out, cd;
  for (const auto &r : recs) {
    const uint32_t off = static_cast<uint32_t>(out.size()), c = crc(r.second), n = static_cast<uint32_t>(r.second.size());
    put32(out, 0x04034b50), put16(out, 20), put16(out, 0), put16(out, 0), put32(out, 0), put32(out, c), put32(out, n),
        put32(out, n), put16(out, static_cast<uint32_t>(r.first.size())), put16(out, 0);
    out += r.first + r.second;
    put32(cd, 0x02014b50), put16(cd, 20), put16(cd, 20), put16(cd, 0), put16(cd, 0), put32(cd, 0), put32(cd, c),
        put32(cd, n), put32(cd, n), put16(cd, static_cast<uint32_t>(r.first.size())), put16(cd, 0), put16(cd, 0),
        put16(cd, 0), put16(cd, 0), put32(cd, 0), put32(cd, off);
    cd += r.first;
  }
  const uint32_t cdoff = static_cast<uint32_t>(out.size());
  out += cd;
  put32(out, 0x06054b50), put16(out, 0), put16(out, 0), put16(out, static_cast<uint32_t>(recs.size())),
      put16(out, static_cast<uint32_t>(recs.size())), put32(out, static_cast<uint32_t>(cd.size())), put32(out, cdoff),
      put16(out, 0);
  return out;
}
static void write_file(const std::string &p, const std::string &s) {
  FILE *f = std::fopen(p.c_str(), "wb");
  std::fwrite(s.data(), 1, s.size(), f);
  std::fclose(f);
}
static bool exists(const std::string &p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// ---- pickle pieces (protocol 2, as torch.save writes) ------------------------------------------------------
static std::string str(const std::string &s) {
  std::string o = "X";
  put32(o, static_cast<uint32_t>(s.size()));
  return o + s;
}
static std::string glob(const std::string &mod, const std::string &name) { return "c" + mod + "\n" + name + "\n"; }
static std::string k1(int v) { return std::string("K") + char(v); }
static std::string tup(const std::vector<int> &v) {
  std::string o = "(";
  for (int x : v) o += k1(x);
  return o + "t";
}
// _rebuild_tensor_v2(PERSID(storage), offset, size, stride, False, OrderedDict())
static std::string tensor(const std::string &cls, const std::string &key, int numel, int offset, const std::vector<int> &size,
                          const std::vector<int> &stride) {
  return glob("torch._utils", "_rebuild_tensor_v2") + "((" + str("storage") + glob("torch", cls) + str(key) + str("cpu") +
         k1(numel) + "tQ" + k1(offset) + tup(size) + tup(stride) + "\x89" + glob("collections", "OrderedDict") + ")Rtq\x05R";
}
static std::string state_dict(const std::string &items) {
  return std::string("\x80\x02") + glob("collections", "OrderedDict") + ")Rq\x01(" + items + "u" +
         // state._metadata (BUILD with a dict), as nn.Module.state_dict() pickles it
         "}" + str("_metadata") + glob("collections", "OrderedDict") + ")Rsb.";
}
static std::string floats(const std::vector<float> &v) { return std::string(reinterpret_cast<const char *>(v.data()), v.size() * 4); }

static void test_reader() {
  const std::string dir = g_tmp + "/m";
  ::mkdir(dir.c_str(), 0755);
  // storage 0: 6 floats; "w" = [2,3] contiguous, "t" = its transpose view [3,2] stride (1,3), "v" = offset 2 size [3]
  const std::string pkl = state_dict(str("w") + tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1}) + str("t") +
                                     tensor("FloatStorage", "0", 6, 0, {3, 2}, {1, 3}) + str("v") +
                                     tensor("FloatStorage", "0", 6, 2, {3}, {1}) + str("h") +
                                     tensor("HalfStorage", "1", 2, 0, {2}, {1}));
  const uint16_t half[2] = {0x3c00, 0xc000};  // 1.0, -2.0
  const std::string zip = make_zip({{"archive/data.pkl", pkl},
                                    {"archive/data/0", floats({1, 2, 3, 4, 5, 6})},
                                    {"archive/data/1", std::string(reinterpret_cast<const char *>(half), 4)},
                                    {"archive/version", "3\n"}});
  write_file(dir + "/pytorch_model.bin", zip);
  llmt_status s;
  auto f = llmt::open_torch_checkpoint(dir + "/pytorch_model.bin", s);
  CHECK(f && s == LLMT_OK, std::string("open: ") + llmt_last_error());
  if (!f) return;
  CHECK(f->tensors().size() == 4 && f->tensors()[0].name == "w", "four tensors in pickle order");
  std::vector<float> o(6);
  CHECK(f->read_f32(*f->find("w"), o.data()) == LLMT_OK && o == std::vector<float>({1, 2, 3, 4, 5, 6}), "contiguous");
  CHECK(f->find("t")->shape == std::vector<int64_t>({3, 2}), "transposed shape");
  CHECK(f->read_f32(*f->find("t"), o.data()) == LLMT_OK && o == std::vector<float>({1, 4, 2, 5, 3, 6}), "transposed copy");
  CHECK(f->read_f32(*f->find("v"), o.data()) == LLMT_OK && o[0] == 3 && o[2] == 5, "offset view");
  CHECK(f->find("h")->dtype == DType::F16 && f->read_f32(*f->find("h"), o.data()) == LLMT_OK && o[0] == 1 && o[1] == -2, "F16");

  // Through the weight set (a folder with only pytorch_model.bin), then converted to safetensors in place.
  auto ws = llmt::WeightSet::open_dir(dir, s);
  CHECK(ws && ws->format() == "pt" && ws->names().size() == 4, "weight set from .bin");
  llmt::Json rep;
  CHECK(llmt::convert_checkpoint(dir, "", 0, {}, rep) == LLMT_OK, std::string("convert: ") + llmt_last_error());
  CHECK(exists(dir + "/model.safetensors"), "model.safetensors written");
  ws = llmt::WeightSet::open_dir(dir, s);
  CHECK(ws && ws->format() == "safetensors" && ws->find("t") && ws->find("h")->dtype == DType::F16, "safetensors preferred");
  if (ws) CHECK(ws->read_f32("t", o.data()) == LLMT_OK && o[1] == 4, "converted view values");

  // Sharded: pytorch_model.bin.index.json naming a missing shard.
  const std::string sh = g_tmp + "/sharded";
  ::mkdir(sh.c_str(), 0755);
  write_file(sh + "/pytorch_model-00001-of-00002.bin", zip);
  write_file(sh + "/pytorch_model.bin.index.json",
             "{\"weight_map\": {\"w\": \"pytorch_model-00001-of-00002.bin\", \"x\": \"pytorch_model-00002-of-00002.bin\"}}");
  ws = llmt::WeightSet::open_dir(sh, s);
  CHECK(!ws && s == LLMT_ERR_IO && has(llmt_last_error(), "pytorch_model-00002-of-00002.bin is missing"), llmt_last_error());

  // A planted call: {"w": tensor, "evil": posix.system("touch PWNED")} — refused by name, never run.
  const std::string pwned = g_tmp + "/PWNED";
  const std::string evil_pkl = state_dict(str("w") + tensor("FloatStorage", "0", 6, 0, {6}, {1}) + str("evil") +
                                          glob("posix", "system") + "(" + str("touch " + pwned) + "tR");
  write_file(g_tmp + "/evil.bin", make_zip({{"archive/data.pkl", evil_pkl}, {"archive/data/0", floats({1, 2, 3, 4, 5, 6})}}));
  f = llmt::open_torch_checkpoint(g_tmp + "/evil.bin", s);
  CHECK(!f && s == LLMT_ERR_BAD_INPUT && has(llmt_last_error(), "refusing to load") &&
            has(llmt_last_error(), "posix.system (os.system)") && has(llmt_last_error(), "never needs"),
        llmt_last_error());
  CHECK(!exists(pwned), "the planted command did not run");
  const std::string evil2 = state_dict(str("w") + "\x8c\x08" "builtins\x8c\x04" "eval\x93(" + str("1") + "tR");
  write_file(g_tmp + "/evil2.bin", make_zip({{"archive/data.pkl", evil2}}));
  f = llmt::open_torch_checkpoint(g_tmp + "/evil2.bin", s);
  CHECK(!f && has(llmt_last_error(), "builtins.eval"), std::string("STACK_GLOBAL refused: ") + llmt_last_error());

  // Truncated (half the file), damaged storage (CRC), missing storage record, a legacy pickle stream.
  write_file(g_tmp + "/trunc.bin", zip.substr(0, zip.size() / 2));
  f = llmt::open_torch_checkpoint(g_tmp + "/trunc.bin", s);
  CHECK(!f && s == LLMT_ERR_BAD_INPUT && has(llmt_last_error(), "truncated"), llmt_last_error());
  std::string bad = zip;
  bad[bad.find("archive/data/0") + 14 + 5] ^= 0x40;  // a byte inside storage 0
  write_file(g_tmp + "/crc.bin", bad);
  f = llmt::open_torch_checkpoint(g_tmp + "/crc.bin", s);
  CHECK(!f && has(llmt_last_error(), "CRC-32") && has(llmt_last_error(), "archive/data/0"), llmt_last_error());
  write_file(g_tmp + "/nostorage.bin", make_zip({{"archive/data.pkl", pkl}, {"archive/data/0", floats({1, 2, 3, 4, 5, 6})}}));
  f = llmt::open_torch_checkpoint(g_tmp + "/nostorage.bin", s);
  CHECK(!f && has(llmt_last_error(), "archive/data/1") && has(llmt_last_error(), "lacks"), llmt_last_error());
  write_file(g_tmp + "/small.bin", make_zip({{"archive/data.pkl", pkl}, {"archive/data/0", floats({1, 2, 3})},
                                             {"archive/data/1", std::string(4, '\0')}}));
  f = llmt::open_torch_checkpoint(g_tmp + "/small.bin", s);
  CHECK(!f && has(llmt_last_error(), "corrupt"), llmt_last_error());
  write_file(g_tmp + "/legacy.bin", std::string("\x80\x02\x8a\x0a", 4) + std::string(20, '\0'));
  f = llmt::open_torch_checkpoint(g_tmp + "/legacy.bin", s);
  CHECK(!f && s == LLMT_ERR_UNSUPPORTED && has(llmt_last_error(), "legacy"), llmt_last_error());
  // An unknown opcode (protocol-0 INT) is refused, not guessed.
  write_file(g_tmp + "/op.bin", make_zip({{"archive/data.pkl", std::string("\x80\x02I1\n.")}}));
  f = llmt::open_torch_checkpoint(g_tmp + "/op.bin", s);
  CHECK(!f && has(llmt_last_error(), "opcode 0x49"), llmt_last_error());
}

static int remove_entry(const char *p, const struct stat *, int, struct FTW *) { return std::remove(p); }

int main() {
  char tmpl[] = "/tmp/llmt_test_torchbin_XXXXXX";
  if (!::mkdtemp(tmpl)) return 2;
  g_tmp = tmpl;
  test_reader();
  ::nftw(g_tmp.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  if (g_failures) {
    std::fprintf(stderr, "test_torchbin: %d of %d checks failed\n", g_failures, g_checks);
    return 1;
  }
  std::printf("test_torchbin: %d checks, all passed\n", g_checks);
  return 0;
}
