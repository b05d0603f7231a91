// test_formats.cpp — tests of the engine's file formats: the JSON DOM (parse/dump, escapes, big integers,
// errors with line:column), fp16/bf16 conversions, safetensors read/write/validation (hand-crafted bad
// files), sharded weight sets and the atomic file helpers. Plain checks, no framework; exit 1 on failure.
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <ftw.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../engine/json.hpp"
#include "../engine/safetensors.hpp"
#include "../engine/status.hpp"
#include "llmt.h"

using llmt::DType;
using llmt::Json;

#include "check.hpp"

static bool contains(const std::string &hay, const std::string &needle) {
  return hay.find(needle) != std::string::npos;
}
static std::string last_error() { return llmt_last_error(); }

// Checks a failed call's status and that the last error mentions every string in `parts`.
#define CHECK_FAILS(status_expr, want, parts, what)                                                   \
  do {                                                                                                \
    llmt_status got_ = (status_expr);                                                                 \
    CHECK(got_ == (want), std::string(what) + ": status " + llmt_status_name(got_) + " (want " +      \
                              llmt_status_name(want) + "), message: " + last_error());                \
    for (const std::string &part_ : std::vector<std::string> parts)                                   \
      CHECK(contains(last_error(), part_), std::string(what) + ": message lacks \"" + part_ + "\": " + \
                                               last_error());                                          \
  } while (0)

static std::string g_tmp;

static std::string tmp_path(const std::string &name) { return g_tmp + "/" + name; }

static bool file_exists(const std::string &path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

static std::string slurp(const std::string &path) {
  std::string out;
  CHECK(llmt::read_text_file(path, out) == LLMT_OK, "read " + path + ": " + last_error());
  return out;
}

static void write_raw(const std::string &path, const std::string &bytes) {
  std::FILE *f = std::fopen(path.c_str(), "wb");
  if (!f) {
    std::fprintf(stderr, "cannot create %s\n", path.c_str());
    std::exit(2);
  }
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

// A safetensors file by hand: 8-byte little-endian length, header text, data bytes.
static std::string craft(const std::string &name, const std::string &header, const std::string &data,
                         uint64_t header_len_override = UINT64_MAX) {
  const uint64_t n = header_len_override == UINT64_MAX ? header.size() : header_len_override;
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  bytes += header;
  bytes += data;
  const std::string path = tmp_path(name);
  write_raw(path, bytes);
  return path;
}

static llmt_status open_status(const std::string &path) {
  llmt_status s = LLMT_OK;
  auto f = llmt::SafetensorsFile::open(path, s);
  if (s == LLMT_OK && !f) return LLMT_ERR_INTERNAL;
  if (s != LLMT_OK && f) return LLMT_ERR_INTERNAL;
  return s;
}

static int remove_entry(const char *path, const struct stat *, int, struct FTW *) { return ::remove(path); }

static uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
static float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static uint64_t bits64(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}

// ---- JSON -----------------------------------------------------------------------------------------

static bool parse_ok(const std::string &text, Json &out) {
  std::string err;
  bool ok = Json::parse(text, out, err);
  CHECK(ok, "parse should succeed: " + text.substr(0, 80) + " — " + err);
  return ok;
}

static std::string parse_err(const std::string &text) {
  Json out;
  std::string err;
  bool ok = Json::parse(text, out, err);
  CHECK(!ok, "parse should fail: " + text.substr(0, 80));
  CHECK(out.is_null(), "a failed parse leaves null");
  CHECK(err.rfind("line ", 0) == 0 && contains(err, ", column "), "error has line/column: " + err);
  return err;
}

static void test_json() {
  Json j;
  // Basics and compact/pretty dumps with insertion order.
  if (parse_ok(" {\"b\": 1, \"a\": [true, false, null, -2.5, \"x\"], \"c\": {}} ", j)) {
    CHECK(j.is_object() && j.size() == 3, "object with 3 members");
    CHECK(j.members()[0].first == "b" && j.members()[1].first == "a", "insertion order kept");
    CHECK(j.dump() == "{\"b\":1,\"a\":[true,false,null,-2.5,\"x\"],\"c\":{}}", "compact dump: " + j.dump());
    CHECK(j.dump(2) ==
              "{\n  \"b\": 1,\n  \"a\": [\n    true,\n    false,\n    null,\n    -2.5,\n    \"x\"\n  ],\n  \"c\": {}\n}",
          "pretty dump: " + j.dump(2));
    CHECK(j.get("a")[3].as_double() == -2.5 && !j.get("a")[3].is_integer(), "-2.5 is a non-integer number");
    CHECK(j.get("a")[99].is_null(), "out-of-range index gives null");
    CHECK(j.get("missing").is_null() && j.get("b").get("x").is_null(), "get on absent/non-object gives null");
    CHECK(j.get_int("b", 7) == 1 && j.get_int("zz", 7) == 7, "get_int");
    CHECK(j.get_string("b", "d") == "d" && j.get_bool("zz", true), "typed getters fall back to defaults");
    CHECK(j.has("c") && !j.has("zz") && !j.get("a").has("b"), "has");
    Json again;
    if (parse_ok(j.dump(4), again)) CHECK(again.dump() == j.dump(), "pretty output parses back identically");
  }
  // set replaces in place; push/set on null build containers.
  {
    Json o = Json::object();
    o.set("x", Json::integer(1));
    o.set("y", Json::integer(2));
    o.set("x", Json::string("new"));
    CHECK(o.dump() == "{\"x\":\"new\",\"y\":2}", "set replaces in place: " + o.dump());
    Json a;
    a.push(Json::integer(1));
    a.push(Json::number(0.5));
    CHECK(a.dump() == "[1,0.5]", "push on null makes an array: " + a.dump());
    CHECK(Json().dump() == "null" && Json::array().dump(2) == "[]" && Json::object().dump(2) == "{}", "empties");
  }
  // Duplicate keys: last wins at the first position, also for big (hashed) objects.
  if (parse_ok("{\"a\":1,\"b\":2,\"a\":3}", j)) CHECK(j.dump() == "{\"a\":3,\"b\":2}", "duplicate key: " + j.dump());
  {
    std::string big = "{";
    for (int i = 0; i < 100; ++i) big += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
    big += "\"k5\":\"dup\",\"k99\":true}";
    if (parse_ok(big, j)) {
      CHECK(j.size() == 100 && j.get("k5").as_string() == "dup" && j.get("k99").as_bool(), "big object dedup");
      CHECK(j.members()[5].first == "k5", "dedup keeps the first position");
    }
  }
  // Escapes and Unicode.
  if (parse_ok("\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t \\u00e9 \\u20AC \\ud83d\\ude00 \\u0000end\"", j)) {
    const std::string want = std::string("q\" b\\ s/ \b\f\n\r\t \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 ") +
                             std::string(1, '\0') + "end";
    CHECK(j.is_string() && j.as_string() == want, "escapes decode to UTF-8");
    CHECK(j.dump() == "\"q\\\" b\\\\ s/ \\b\\f\\n\\r\\t \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \\u0000end\"",
          "string dump: " + j.dump());
  }
  if (parse_ok("\"\xF0\x9F\x98\x80 raw \xE4\xB8\xAD\"", j))
    CHECK(j.as_string() == "\xF0\x9F\x98\x80 raw \xE4\xB8\xAD", "raw UTF-8 kept");
  CHECK(contains(parse_err("\"\\ud83d\""), "surrogate"), "lone high surrogate");
  CHECK(contains(parse_err("\"\\ud83d\\u0041\""), "surrogate"), "high surrogate + non-low");
  CHECK(contains(parse_err("\"\\ude00\""), "surrogate"), "lone low surrogate");
  CHECK(contains(parse_err("\"\\u12G4\""), "hex"), "bad hex");
  CHECK(contains(parse_err("\"\\x\""), "escape"), "unknown escape");
  CHECK(Json::string("bad \xFF byte").dump() == "\"bad \xEF\xBF\xBD byte\"", "dump replaces invalid UTF-8");
  // Invalid UTF-8 in strings.
  CHECK(contains(parse_err("\"\xC3\x28\""), "UTF-8"), "bad continuation");
  CHECK(contains(parse_err("\"\xC0\xAF\""), "UTF-8"), "overlong 2-byte");
  CHECK(contains(parse_err("\"\xE0\x80\xAF\""), "UTF-8"), "overlong 3-byte");
  CHECK(contains(parse_err("\"\xED\xA0\x80\""), "UTF-8"), "encoded surrogate");
  CHECK(contains(parse_err("\"\xF4\x90\x80\x80\""), "UTF-8"), "above U+10FFFF");
  CHECK(contains(parse_err("\"\x80\""), "UTF-8"), "stray continuation byte");
  CHECK(contains(parse_err("\"abc\xE4\xB8\""), "UTF-8"), "truncated sequence");
  CHECK(contains(parse_err("\"a\nb\""), "control character"), "raw newline in a string");
  // Numbers: exact int64, doubles round-trip, non-finite as null.
  if (parse_ok("[9007199254740993, -9223372036854775808, 9223372036854775807, 9223372036854775808, 1e3, 1.0, "
               "-0, 0.1, 1e400, -1e400, 1e-400, 123456789012345678901234567890]",
               j)) {
    CHECK(j[0].is_integer() && j[0].as_int() == 9007199254740993LL, "2^53+1 exact");
    CHECK(j[1].is_integer() && j[1].as_int() == std::numeric_limits<int64_t>::min(), "int64 min exact");
    CHECK(j[2].is_integer() && j[2].as_int() == std::numeric_limits<int64_t>::max(), "int64 max exact");
    CHECK(!j[3].is_integer() && j[3].as_double() == 9223372036854775808.0, "2^63 is a double");
    CHECK(j[4].is_integer() && j[4].as_int() == 1000, "1e3 is integral");
    CHECK(j[5].is_integer() && j[5].as_int() == 1, "1.0 is integral");
    CHECK(j[6].is_integer() && j[6].as_int() == 0, "-0");
    CHECK(j[7].as_double() == 0.1, "0.1");
    CHECK(std::isinf(j[8].as_double()) && j[8].as_double() > 0, "1e400 overflows to inf");
    CHECK(std::isinf(j[9].as_double()) && j[9].as_double() < 0, "-1e400 overflows to -inf");
    CHECK(j[10].as_double() == 0.0, "1e-400 underflows to 0");
    CHECK(!j[11].is_integer() && std::fabs(j[11].as_double() / 1.2345678901234568e29 - 1) < 1e-15, "huge literal");
    Json back;
    if (parse_ok(j[3].dump(), back)) CHECK(back.as_double() == 9223372036854775808.0, "2^63 dump round-trips");
    CHECK(j[0].dump() + j[1].dump() + j[2].dump() == "9007199254740993-92233720368547758089223372036854775807",
          "big integers dump exactly");
    CHECK(j[4].dump() + j[5].dump() + j[6].dump() + j[7].dump() + j[8].dump() + j[9].dump() + j[10].dump() ==
              "1000100.1nullnull0",
          "number dumps");
    CHECK(j[11].dump() == "1.2345678901234568e+29", "huge literal dump: " + j[11].dump());
  }
  {
    const double values[] = {0.1, 1.0 / 3.0, 3.141592653589793, 1e-300, 5e-324, 1.7976931348623157e308,
                             -2.5e-7, 123456.789, 6.02214076e23, 0.30000000000000004};
    for (double v : values) {
      Json back;
      const std::string text = Json::number(v).dump();
      if (parse_ok(text, back)) CHECK(bits64(back.as_double()) == bits64(v), "double round-trip: " + text);
    }
    CHECK(Json::number(0.1).dump() == "0.1", "shortest form: " + Json::number(0.1).dump());
    CHECK(Json::number(std::nan("")).dump() == "null", "NaN dumps as null");
    CHECK(Json::number(-INFINITY).dump() == "null", "-inf dumps as null");
    CHECK(Json::integer(9007199254740993LL).dump() == "9007199254740993", "integer dump exact");
    CHECK(Json::number(3.0).is_integer() && !Json::number(3.5).is_integer(), "is_integer of numbers");
  }
  // Nesting limit.
  {
    std::string ok_deep = std::string(512, '[') + std::string(512, ']');
    parse_ok(ok_deep, j);
    std::string too_deep = std::string(100000, '[') + std::string(100000, ']');
    CHECK(contains(parse_err(too_deep), "nesting deeper than 512"), "deep nesting is an error");
    std::string deep_obj;
    for (int i = 0; i < 600; ++i) deep_obj += "{\"a\":";
    deep_obj += "1" + std::string(600, '}');
    CHECK(contains(parse_err(deep_obj), "nesting"), "deep objects too");
  }
  // Syntax errors with positions.
  {
    std::string e = parse_err("{\"a\": 1}\n  x");
    CHECK(e.rfind("line 2, column 3:", 0) == 0 && contains(e, "trailing"), "trailing garbage position: " + e);
    e = parse_err("[1, 2]]");
    CHECK(e.rfind("line 1, column 7:", 0) == 0, "extra bracket position: " + e);
    e = parse_err("{\n  \"\xC3\xA9\xC3\xA9\": tru\n}");
    CHECK(e.rfind("line 2, column 9:", 0) == 0 && contains(e, "true"), "columns count characters: " + e);
    CHECK(contains(parse_err(""), "end of input"), "empty input");
    CHECK(contains(parse_err("   "), "end of input"), "blank input");
    parse_err("[1,]");
    parse_err("{\"a\":1,}");
    CHECK(contains(parse_err("{\"a\" 1}"), "':'"), "missing colon");
    CHECK(contains(parse_err("{'a':1}"), "key"), "single quotes");
    CHECK(contains(parse_err("01"), "leading zeros"), "leading zero");
    parse_err("1.");
    parse_err("1e");
    parse_err("-");
    parse_err("+1");
    parse_err(".5");
    parse_err("NaN");
    parse_err("\"abc");
    parse_err("[1 2]");
    parse_err("nul");
    CHECK(contains(parse_err("\x01"), "0x01"), "non-printable bytes are shown in hex");
  }
  if (parse_ok("\xEF\xBB\xBF{\"bom\":true}", j)) CHECK(j.get_bool("bom", false), "a UTF-8 BOM is skipped");
  if (parse_ok("\t\r\n 42 \n", j)) CHECK(j.as_int() == 42, "scalar top-level value with whitespace");
}

// ---- fp16 / bf16 ------------------------------------------------------------------------------------

static void test_half() {
  using llmt::bf16_to_f32;
  using llmt::f16_to_f32;
  using llmt::f32_to_bf16;
  using llmt::f32_to_f16;
  CHECK(f32_to_f16(1.0f) == 0x3C00 && f16_to_f32(0x3C00) == 1.0f, "f16 1.0");
  CHECK(f32_to_f16(-2.5f) == 0xC100 && f16_to_f32(0xC100) == -2.5f, "f16 -2.5");
  CHECK(f32_to_f16(65504.0f) == 0x7BFF && f16_to_f32(0x7BFF) == 65504.0f, "f16 max");
  CHECK(f32_to_f16(65519.0f) == 0x7BFF, "just below the overflow threshold rounds down");
  CHECK(f32_to_f16(65520.0f) == 0x7C00, "65520 rounds (to even) to inf");
  CHECK(f32_to_f16(1e-8f) == 0x0000, "1e-8 is below half the smallest subnormal: 0");
  CHECK(f32_to_f16(1e-7f) == 0x0002, "1e-7 rounds to 2 × 2^-24");
  CHECK(f32_to_f16(-1e-8f) == 0x8000, "-1e-8 gives -0");
  CHECK(f32_to_f16(std::ldexp(1.0f, -24)) == 0x0001 && f16_to_f32(0x0001) == std::ldexp(1.0f, -24), "min subnormal");
  CHECK(f32_to_f16(std::ldexp(1.0f, -25)) == 0x0000, "2^-25 ties to even (0)");
  CHECK(f32_to_f16(std::ldexp(1.5f, -25)) == 0x0001, "0.75 units rounds up");
  CHECK(f32_to_f16(std::ldexp(1.5f, -24)) == 0x0002, "1.5 units ties to 2");
  CHECK(f32_to_f16(std::ldexp(2.5f, -24)) == 0x0002, "2.5 units ties to 2");
  CHECK(f16_to_f32(0x03FF) == std::ldexp(1023.0f, -24), "max subnormal");
  CHECK(f32_to_f16(std::ldexp(1023.5f, -24)) == 0x0400, "rounds up into the smallest normal");
  CHECK(f16_to_f32(0x0400) == std::ldexp(1.0f, -14), "min normal");
  CHECK(f32_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00, "normal tie to even (down)");
  CHECK(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02, "normal tie to even (up)");
  CHECK(f32_to_f16(INFINITY) == 0x7C00 && f32_to_f16(-INFINITY) == 0xFC00, "f16 inf");
  CHECK(std::isinf(f16_to_f32(0x7C00)) && f16_to_f32(0xFC00) < 0, "f16 inf back");
  const uint16_t hn = f32_to_f16(std::nanf(""));
  CHECK((hn & 0x7C00) == 0x7C00 && (hn & 0x3FF) != 0, "f16 NaN stays NaN");
  CHECK(std::isnan(f16_to_f32(0x7E00)) && std::isnan(f16_to_f32(0x7C01)), "f16 NaN back");
  CHECK(std::signbit(f16_to_f32(0x8000)) && f16_to_f32(0x8000) == 0.0f, "-0");
  CHECK(f32_to_f16(from_bits(0x7F800001)) != 0x7C00, "signalling NaN payload does not become inf");
  // Every finite/inf half survives a round trip through float.
  int bad = 0;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue;
    if (f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))) != h) ++bad;
  }
  CHECK(bad == 0, "f16 round trip of all values: " + std::to_string(bad) + " bad");
#if defined(__FLT16_MAX__) && (defined(__x86_64__) || defined(__aarch64__))
  // Cross-check rounding against the compiler's _Float16 on a spread of float bit patterns.
  bad = 0;
  uint32_t state = 12345;
  for (int i = 0; i < 2000000; ++i) {
    state = state * 1664525u + 1013904223u;
    uint32_t u = (i < 1000000) ? state : (0x33000000u + (state % (0x47800000u - 0x33000000u)));
    float f = from_bits(u);
    if (std::isnan(f)) continue;
    _Float16 ref = static_cast<_Float16>(f);
    uint16_t rb;
    std::memcpy(&rb, &ref, 2);
    if (f32_to_f16(f) != rb) ++bad;
  }
  CHECK(bad == 0, "f32_to_f16 agrees with _Float16: " + std::to_string(bad) + " differ");
#endif
  // bf16.
  CHECK(f32_to_bf16(1.0f) == 0x3F80 && bf16_to_f32(0x3F80) == 1.0f, "bf16 1.0");
  CHECK(f32_to_bf16(-2.5f) == 0xC020 && bf16_to_f32(0xC020) == -2.5f, "bf16 -2.5");
  CHECK(f32_to_bf16(from_bits(0x3F808000)) == 0x3F80, "bf16 tie to even (down)");
  CHECK(f32_to_bf16(from_bits(0x3F818000)) == 0x3F82, "bf16 tie to even (up)");
  CHECK(f32_to_bf16(from_bits(0x3F808001)) == 0x3F81, "bf16 above the tie rounds up");
  CHECK(f32_to_bf16(from_bits(0x3F807FFF)) == 0x3F80, "bf16 below the tie rounds down");
  CHECK(f32_to_bf16(INFINITY) == 0x7F80 && f32_to_bf16(-INFINITY) == 0xFF80, "bf16 inf");
  CHECK(f32_to_bf16(std::numeric_limits<float>::max()) == 0x7F80, "float max rounds to bf16 inf");
  CHECK(f32_to_bf16(1e-40f) == (bits(1e-40f) + 0x7FFF + ((bits(1e-40f) >> 16) & 1)) >> 16, "bf16 subnormal");
  const uint16_t bn = f32_to_bf16(std::nanf(""));
  CHECK((bn & 0x7F80) == 0x7F80 && (bn & 0x7F) != 0 && std::isnan(bf16_to_f32(bn)), "bf16 NaN");
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0x7F800001)))), "bf16 NaN with a low payload stays NaN");
  bad = 0;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    if ((b & 0x7F80) == 0x7F80 && (b & 0x7F)) continue;
    if (f32_to_bf16(bf16_to_f32(static_cast<uint16_t>(b))) != b) ++bad;
  }
  CHECK(bad == 0, "bf16 round trip of all values");
}

// ---- safetensors ------------------------------------------------------------------------------------

static void test_safetensors_roundtrip() {
  const std::vector<float> a = {1, -2, 3.5f, 4, 5, 6.25f};  // F32 [2,3]
  std::vector<uint16_t> h;                                    // F16 [4]
  for (float v : {1.0f, -2.5f, 65504.0f, 0.099975586f}) h.push_back(llmt::f32_to_f16(v));
  std::vector<uint16_t> b;  // BF16 [2,2]
  for (float v : {1.0f, -2.5f, 3.0f, 1e30f}) b.push_back(llmt::f32_to_bf16(v));
  const int64_t i64 = 0x1122334455667788LL;
  const double d[2] = {0.5, -1e10};
  const std::string path = tmp_path("model.safetensors");
  std::vector<llmt::TensorToWrite> ts = {
      {"zeta.weight", DType::F32, {2, 3}, a.data()}, {"alpha.half", DType::F16, {4}, h.data()},
      {"mid.bf16", DType::BF16, {2, 2}, b.data()},   {"count", DType::I64, {}, &i64},
      {"empty", DType::F32, {0, 3}, nullptr},        {"f64", DType::F64, {2}, d},
  };
  CHECK(llmt::write_safetensors(path, ts, {{"format", "pt"}, {"note", "héllo \"q\""}}) == LLMT_OK,
        "write: " + last_error());
  CHECK(!file_exists(path + ".tmp"), "no temp file left after a write");

  // The raw layout: padded header, sorted names, contiguous offsets.
  const std::string raw = slurp(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(raw[i]);
  CHECK(n % 8 == 0 && raw.size() >= 8 + n, "header length is a multiple of 8");
  const std::string header = raw.substr(8, n);
  CHECK(header.back() == ' ' || header.back() == '}', "header padded with spaces");
  CHECK(header.rfind("{\"__metadata__\":{\"format\":\"pt\",\"note\":\"h\xC3\xA9llo \\\"q\\\"\"},\"count\":"
                     "{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},\"f64\":",
                     0) == 0,
        "header text as the Python library writes it: " + header);
  Json hj;
  if (parse_ok(header, hj)) {
    std::vector<std::string> keys;
    for (const auto &m : hj.members()) keys.push_back(m.first);
    // the Python library's order: element size descending, then name (keeps data aligned)
    const std::vector<std::string> want = {"__metadata__", "count", "f64", "empty", "zeta.weight", "alpha.half",
                                           "mid.bf16"};
    CHECK(keys == want, "header keys in data order (size, then name) after __metadata__");
  }

  llmt_status s = LLMT_OK;
  auto f = llmt::SafetensorsFile::open(path, s);
  CHECK(f && s == LLMT_OK, "open: " + last_error());
  if (!f) return;
  CHECK(f->tensors().size() == 6, "6 tensors");
  CHECK(f->tensors()[0].name == "count" && f->tensors()[5].name == "mid.bf16", "file order = size, then name");
  for (const auto &ti : f->tensors())
    CHECK(reinterpret_cast<uintptr_t>(ti.data) % llmt::dtype_size(ti.dtype) == 0 || ti.nbytes == 0, "data aligned: " + ti.name);
  CHECK(f->metadata().at("format") == "pt" && f->metadata().at("note") == "h\xC3\xA9llo \"q\"", "metadata");
  const llmt::TensorInfo *t = f->find("zeta.weight");
  CHECK(t && t->dtype == DType::F32 && t->shape == std::vector<int64_t>({2, 3}) && t->numel() == 6 && t->nbytes == 24,
        "F32 info");
  float out[8] = {0};
  if (t) {
    CHECK(f->read_f32(*t, out) == LLMT_OK, "read F32");
    CHECK(std::memcmp(out, a.data(), 24) == 0, "F32 values");
  }
  t = f->find("alpha.half");
  if (t && f->read_f32(*t, out) == LLMT_OK)
    CHECK(out[0] == 1.0f && out[1] == -2.5f && out[2] == 65504.0f && out[3] == 0.099975586f, "F16 values");
  else
    CHECK(false, "read F16");
  t = f->find("mid.bf16");
  if (t && f->read_f32(*t, out) == LLMT_OK)
    CHECK(out[0] == 1.0f && out[1] == -2.5f && out[2] == 3.0f && out[3] == llmt::bf16_to_f32(llmt::f32_to_bf16(1e30f)),
          "BF16 values");
  else
    CHECK(false, "read BF16");
  t = f->find("f64");
  if (t && f->read_f32(*t, out) == LLMT_OK) CHECK(out[0] == 0.5f && out[1] == -1e10f, "F64 values");
  else CHECK(false, "read F64");
  t = f->find("empty");
  CHECK(t && t->numel() == 0 && t->nbytes == 0 && f->read_f32(*t, out) == LLMT_OK, "empty tensor");
  t = f->find("count");
  CHECK(t && t->shape.empty() && t->numel() == 1 && t->nbytes == 8, "scalar I64");
  if (t) {
    int64_t back = 0;
    std::memcpy(&back, t->data, 8);
    CHECK(back == i64, "I64 bytes");
    CHECK_FAILS(f->read_f32(*t, out), LLMT_ERR_BAD_INPUT, ({"count", "I64", path}), "read_f32 of I64");
  }
  CHECK(f->find("nope") == nullptr, "find absent");

  // Overwriting an existing file replaces it.
  const float one = 7.0f;
  CHECK(llmt::write_safetensors(path, {{"only", DType::F32, {1}, &one}}, {}) == LLMT_OK, "overwrite");
  f = llmt::SafetensorsFile::open(path, s);
  CHECK(f && f->tensors().size() == 1 && f->metadata().empty(), "overwritten file has the new content");
  if (f) CHECK(slurp(path).substr(8, 2) == "{\"", "no __metadata__ when metadata is empty");

  // Write errors.
  CHECK_FAILS(llmt::write_safetensors(tmp_path("dup.safetensors"),
                                      {{"w", DType::F32, {1}, &one}, {"w", DType::F32, {1}, &one}}, {}),
              LLMT_ERR_BAD_INPUT, ({"'w'", "twice"}), "duplicate names");
  CHECK(!file_exists(tmp_path("dup.safetensors")) && !file_exists(tmp_path("dup.safetensors.tmp")),
        "nothing written for duplicates");
  CHECK_FAILS(llmt::write_safetensors(tmp_path("neg.safetensors"), {{"w", DType::F32, {-1}, &one}}, {}),
              LLMT_ERR_BAD_INPUT, ({"'w'", "negative"}), "negative dim on write");
  const std::string nodir = tmp_path("no/such/dir/model.safetensors");
  CHECK_FAILS(llmt::write_safetensors(nodir, {{"w", DType::F32, {1}, &one}}, {}), LLMT_ERR_IO,
              ({nodir, "No such file or directory"}), "missing directory");
  CHECK(!file_exists(nodir) && !file_exists(nodir + ".tmp"), "nothing created in a missing directory");

#if defined(__linux__)
  // A failing write (file size limit -> EFBIG, standing in for a full disk) leaves the old file intact.
  {
    const std::string keep = tmp_path("keep.safetensors");
    CHECK(llmt::write_safetensors(keep, {{"w", DType::F32, {1}, &one}}, {}) == LLMT_OK, "initial write");
    const std::string before = slurp(keep);
    std::vector<float> big(4096, 1.0f);
    struct rlimit old_lim;
    ::getrlimit(RLIMIT_FSIZE, &old_lim);
    struct rlimit lim = old_lim;
    lim.rlim_cur = 1024;
    void (*old_handler)(int) = ::signal(SIGXFSZ, SIG_IGN);
    if (::setrlimit(RLIMIT_FSIZE, &lim) == 0) {
      llmt_status ws = llmt::write_safetensors(keep, {{"w", DType::F32, {4096}, big.data()}}, {});
      ::setrlimit(RLIMIT_FSIZE, &old_lim);
      CHECK(ws == LLMT_ERR_IO, "failed write is IO: " + last_error());
      CHECK(contains(last_error(), keep) && contains(last_error(), std::strerror(EFBIG)),
            "message names the path and the OS reason: " + last_error());
      CHECK(!file_exists(keep + ".tmp"), "temp file removed after a failed write");
      CHECK(slurp(keep) == before, "the previous file is unchanged");
    }
    ::signal(SIGXFSZ, old_handler);
  }
#endif
}

static void test_safetensors_validation() {
  const std::string f32x2 = "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":";
  const std::string eight(8, '\0');
  struct Case {
    const char *file;
    std::string header;
    std::string data;
    llmt_status want;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"bad_json.st", "{\"w\": ", "", LLMT_ERR_BAD_INPUT, {"not valid JSON", "line 1, column"}},
      {"not_object.st", "[1, 2]  ", "", LLMT_ERR_BAD_INPUT, {"not a JSON object"}},
      {"bad_utf8.st", "{\"w\xFF\":1}", "", LLMT_ERR_BAD_INPUT, {"UTF-8"}},
      {"entry_not_object.st", "{\"w\": 3}", "", LLMT_ERR_BAD_INPUT, {"'w'"}},
      {"no_dtype.st", "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", eight, LLMT_ERR_BAD_INPUT, {"'w'", "dtype"}},
      {"no_shape.st", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", eight, LLMT_ERR_BAD_INPUT, {"'w'", "shape"}},
      {"no_offsets.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", eight, LLMT_ERR_BAD_INPUT, {"'w'", "data_offsets"}},
      {"bad_dtype.st", "{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", eight, LLMT_ERR_BAD_INPUT,
       {"'w'", "unknown dtype 'Q4'"}},
      {"fp8.st", "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[8],\"data_offsets\":[0,8]}}", eight, LLMT_ERR_UNSUPPORTED,
       {"'w'", "F8_E4M3"}},
      {"neg_dim.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", eight, LLMT_ERR_BAD_INPUT,
       {"'w'", "negative"}},
      {"frac_dim.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", eight, LLMT_ERR_BAD_INPUT,
       {"'w'", "integers"}},
      {"bad_offsets.st", "{\"w\":" + f32x2 + "[0,8,9]}}", eight, LLMT_ERR_BAD_INPUT, {"'w'", "data_offsets"}},
      {"neg_offsets.st", "{\"w\":" + f32x2 + "[-8,0]}}", eight, LLMT_ERR_BAD_INPUT, {"'w'", "data_offsets"}},
      {"reversed.st", "{\"w\":" + f32x2 + "[8,0]}}", eight, LLMT_ERR_BAD_INPUT, {"'w'"}},
      {"size_mismatch.st", "{\"w\":" + f32x2 + "[0,4]}}", std::string(4, '\0'), LLMT_ERR_BAD_INPUT,
       {"'w'", "needs 8 bytes", "span 4"}},
      {"huge_shape.st",
       "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,8],\"data_offsets\":[0,8]}}", eight,
       LLMT_ERR_BAD_INPUT, {"'w'", "too large"}},
      {"out_of_bounds.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", eight,
       LLMT_ERR_BAD_INPUT, {"'w'", "ends at byte 16 but the file's data is only 8 bytes", "truncated"}},
      {"overlap.st", "{\"a\":" + f32x2 + "[0,8]},\"b\":" + f32x2 + "[4,12]}}", std::string(12, '\0'),
       LLMT_ERR_BAD_INPUT, {"'a'", "'b'", "overlap"}},
      {"gap.st", "{\"a\":" + f32x2 + "[0,8]},\"b\":" + f32x2 + "[12,20]}}", std::string(20, '\0'),
       LLMT_ERR_BAD_INPUT, {"'a'", "'b'", "gap of 4"}},
      {"gap_at_start.st", "{\"a\":" + f32x2 + "[4,12]}}", std::string(12, '\0'), LLMT_ERR_BAD_INPUT,
       {"'a'", "gap of 4"}},
      {"trailing.st", "{\"a\":" + f32x2 + "[0,8]}}", std::string(11, '\0'), LLMT_ERR_BAD_INPUT,
       {"3 extra bytes"}},
      {"meta_not_string.st", "{\"__metadata__\":{\"format\":\"pt\",\"k\":1}}", "", LLMT_ERR_BAD_INPUT,
       {"__metadata__", "'k'", "not a string"}},
      {"meta_not_object.st", "{\"__metadata__\":[\"x\"]}", "", LLMT_ERR_BAD_INPUT, {"__metadata__"}},
  };
  for (const Case &c : cases) {
    const std::string path = craft(c.file, c.header, c.data);
    std::vector<std::string> parts = c.parts;
    parts.push_back(path);
    CHECK_FAILS(open_status(path), c.want, (parts), c.file);
  }

  // Length field problems.
  std::string path = tmp_path("tiny.st");
  write_raw(path, "abcde");
  CHECK_FAILS(open_status(path), LLMT_ERR_BAD_INPUT, ({path, "too small", "(5 bytes)", "truncated"}), "5-byte file");
  path = tmp_path("zero.st");
  write_raw(path, "");
  CHECK_FAILS(open_status(path), LLMT_ERR_BAD_INPUT, ({path, "too small", "(0 bytes)"}), "empty file");
  path = craft("header_huge.st", "{}", "", 200000000);
  CHECK_FAILS(open_status(path), LLMT_ERR_BAD_INPUT, ({path, "200000000", "100 MB"}), "header over 100 MB");
  path = craft("header_past_end.st", "{\"a\":1}", "", 1000);
  CHECK_FAILS(open_status(path), LLMT_ERR_BAD_INPUT, ({path, "1000", "truncated"}), "header past the end");
  path = craft("header_u64max.st", "{}", "", 0xFFFFFFFFFFFFFFF0ULL);
  CHECK_FAILS(open_status(path), LLMT_ERR_BAD_INPUT, ({path, "100 MB"}), "header length near 2^64");
  path = tmp_path("absent.st");
  CHECK_FAILS(open_status(path), LLMT_ERR_IO, ({path, "No such file or directory"}), "missing file");
  CHECK_FAILS(open_status(g_tmp), LLMT_ERR_IO, ({g_tmp}), "a directory");

  // Valid edge cases: empty file set, unaligned data, header padding with trailing spaces.
  path = craft("empty_ok.st", "{}", "");
  CHECK(open_status(path) == LLMT_OK, "'{}' with no data is valid: " + last_error());
  path = craft("meta_only.st", "{\"__metadata__\":{\"a\":\"b\"}}   ", "");
  CHECK(open_status(path) == LLMT_OK, "metadata-only file: " + last_error());
  {
    // Header of odd length puts the F32 data at an unaligned address.
    std::string data(12, '\0');
    const float vals[3] = {1.5f, -2.0f, 1e-3f};
    std::memcpy(&data[0], vals, 12);
    path = craft("unaligned.st", "{\"v\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}} ", data);
    llmt_status s = LLMT_OK;
    auto f = llmt::SafetensorsFile::open(path, s);
    CHECK(f != nullptr, "unaligned file opens: " + last_error());
    float out[3] = {0, 0, 0};
    if (f) CHECK(f->read_f32(f->tensors()[0], out) == LLMT_OK && std::memcmp(out, vals, 12) == 0, "unaligned read");
    // Zero-sized tensors may share offsets with their neighbours.
    path = craft("zero_sized.st",
                 "{\"z\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[0,0]},\"v\":{\"dtype\":\"F32\",\"shape\":[3],"
                 "\"data_offsets\":[0,12]},\"y\":{\"dtype\":\"I8\",\"shape\":[0,5],\"data_offsets\":[12,12]}}",
                 data);
    CHECK(open_status(path) == LLMT_OK, "zero-sized tensors: " + last_error());
  }
}

static void test_weight_set() {
  const std::string dir = tmp_path("sharded");
  ::mkdir(dir.c_str(), 0755);
  const float a[2] = {1, 2}, b[3] = {3, 4, 5}, c[1] = {6};
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  CHECK(llmt::write_safetensors(dir + "/" + s1, {{"a", DType::F32, {2}, a}, {"b", DType::F32, {3}, b}}, {}) == LLMT_OK,
        "shard 1");
  CHECK(llmt::write_safetensors(dir + "/" + s2, {{"c", DType::F32, {1}, c}}, {}) == LLMT_OK, "shard 2");
  const std::string index = dir + "/model.safetensors.index.json";
  auto write_index = [&](const std::string &weight_map) {
    CHECK(llmt::write_text_file_atomic(index, "{\"metadata\":{\"total_size\":24},\"weight_map\":" + weight_map + "}") ==
              LLMT_OK,
          "write index");
  };
  write_index("{\"a\":\"" + s1 + "\",\"b\":\"" + s1 + "\",\"c\":\"" + s2 + "\"}");
  llmt_status s = LLMT_OK;
  auto ws = llmt::WeightSet::open_dir(dir, s);
  CHECK(ws && s == LLMT_OK, "sharded open: " + last_error());
  if (ws) {
    CHECK(ws->names() == std::vector<std::string>({"a", "b", "c"}), "names sorted across shards");
    CHECK(ws->file_of("c") == dir + "/" + s2 && ws->file_of("a") == dir + "/" + s1, "file_of");
    CHECK(ws->file_of("zz").empty() && ws->find("zz") == nullptr, "absent tensor");
    float out[3] = {0, 0, 0};
    CHECK(ws->read_f32("b", out) == LLMT_OK && out[0] == 3 && out[2] == 5, "read from shard 1");
    CHECK(ws->read_f32("c", out) == LLMT_OK && out[0] == 6, "read from shard 2");
    CHECK(ws->find("a") && ws->find("a")->numel() == 2, "find");
    CHECK_FAILS(ws->read_f32("zz", out), LLMT_ERR_BAD_INPUT, ({"'zz'", "not found"}), "read absent");
  }
  // Trailing slash on the directory is fine.
  ws = llmt::WeightSet::open_dir(dir + "/", s);
  CHECK(ws && s == LLMT_OK, "dir with trailing slash");

  // A missing shard.
  write_index("{\"a\":\"" + s1 + "\",\"c\":\"" + s2 + "\",\"d\":\"model-00003-of-00003.safetensors\"}");
  ws = llmt::WeightSet::open_dir(dir, s);
  CHECK(!ws, "missing shard fails");
  CHECK_FAILS(s, LLMT_ERR_IO,
              ({"model-00003-of-00003.safetensors is missing (listed in model.safetensors.index.json)"}),
              "missing shard");
  // A tensor listed under a shard that does not hold it.
  write_index("{\"a\":\"" + s1 + "\",\"c\":\"" + s1 + "\"}");
  ws = llmt::WeightSet::open_dir(dir, s);
  CHECK(!ws, "tensor missing from shard fails");
  CHECK_FAILS(s, LLMT_ERR_BAD_INPUT, ({"'c'", s1}), "tensor missing from its shard");
  // The same tensor in two shards.
  const std::string s3 = "model-extra.safetensors";
  CHECK(llmt::write_safetensors(dir + "/" + s3, {{"a", DType::F32, {2}, a}}, {}) == LLMT_OK, "shard 3");
  write_index("{\"a\":\"" + s1 + "\",\"c\":\"" + s2 + "\",\"x\":\"" + s3 + "\"}");
  ws = llmt::WeightSet::open_dir(dir, s);
  CHECK(!ws, "tensor in two shards fails");
  CHECK(s == LLMT_ERR_BAD_INPUT && contains(last_error(), "'x'"), "x is not in shard 3 — reported first: " + last_error());
  write_index("{\"b\":\"" + s1 + "\",\"c\":\"" + s2 + "\",\"a\":\"" + s3 + "\"}");
  ws = llmt::WeightSet::open_dir(dir, s);
  CHECK(!ws, "duplicate tensor across shards fails");
  CHECK_FAILS(s, LLMT_ERR_BAD_INPUT, ({"'a'", "both", s1, s3}), "tensor in two shards");
  // Malformed indexes.
  CHECK(llmt::write_text_file_atomic(index, "{\"weight_map\": {\"a\": ") == LLMT_OK, "write bad index");
  ws = llmt::WeightSet::open_dir(dir, s);
  CHECK_FAILS(s, LLMT_ERR_BAD_INPUT, ({"model.safetensors.index.json", "not valid JSON", "line 1"}), "bad index JSON");
  CHECK(llmt::write_text_file_atomic(index, "{\"metadata\":{}}") == LLMT_OK, "write index without weight_map");
  ws = llmt::WeightSet::open_dir(dir, s);
  CHECK_FAILS(s, LLMT_ERR_BAD_INPUT, ({"weight_map"}), "index without weight_map");
  write_index("{\"a\":\"../outside.safetensors\"}");
  ws = llmt::WeightSet::open_dir(dir, s);
  CHECK_FAILS(s, LLMT_ERR_BAD_INPUT, ({"../outside.safetensors"}), "shard outside the folder");
  // A corrupt shard propagates its own error.
  write_index("{\"a\":\"" + s1 + "\",\"t\":\"trunc.safetensors\"}");
  write_raw(dir + "/trunc.safetensors", "abc");
  ws = llmt::WeightSet::open_dir(dir, s);
  CHECK_FAILS(s, LLMT_ERR_BAD_INPUT, ({"trunc.safetensors", "too small"}), "corrupt shard");

  // Single-file model.
  const std::string single = tmp_path("single");
  ::mkdir(single.c_str(), 0755);
  CHECK(llmt::write_safetensors(single + "/model.safetensors", {{"w", DType::F32, {2}, a}}, {{"format", "pt"}}) ==
            LLMT_OK,
        "single write");
  ws = llmt::WeightSet::open_dir(single, s);
  CHECK(ws && s == LLMT_OK && ws->names() == std::vector<std::string>({"w"}), "single-file weights");

  // No weights at all, then only a PyTorch checkpoint.
  const std::string none = tmp_path("none");
  ::mkdir(none.c_str(), 0755);
  ws = llmt::WeightSet::open_dir(none, s);
  CHECK(!ws, "no weights fails");
  CHECK_FAILS(s, LLMT_ERR_BAD_INPUT, ({"no weights found", none, "pytorch_model.bin"}), "no weights");
  // A .bin is read by the restricted unpickler (torchbin.cpp; tested in test_torchbin): a 2-byte one is damaged.
  write_raw(none + "/pytorch_model.bin", "PK");
  ws = llmt::WeightSet::open_dir(none, s);
  CHECK_FAILS(s, LLMT_ERR_BAD_INPUT, ({"pytorch_model.bin", "truncated"}), ".bin only");
  ws = llmt::WeightSet::open_dir(tmp_path("does-not-exist"), s);
  CHECK_FAILS(s, LLMT_ERR_IO, ({"does-not-exist"}), "missing directory");
}

static void test_text_files() {
  const std::string path = tmp_path("config.json");
  const std::string text = "{\"hidden_size\": 64}\n";
  CHECK(llmt::write_text_file_atomic(path, text) == LLMT_OK, "write text");
  CHECK(!file_exists(path + ".tmp"), "no temp left");
  std::string back;
  CHECK(llmt::read_text_file(path, back) == LLMT_OK && back == text, "read text back");
  CHECK(llmt::write_text_file_atomic(path, "") == LLMT_OK && llmt::read_text_file(path, back) == LLMT_OK && back.empty(),
        "empty text file");
  std::string bin(200000, '\0');
  for (size_t i = 0; i < bin.size(); ++i) bin[i] = static_cast<char>(i * 7 + 3);
  const std::string bpath = tmp_path("blob.bin");
  CHECK(llmt::write_file_atomic(bpath, bin.data(), bin.size()) == LLMT_OK, "write bytes");
  CHECK(llmt::read_text_file(bpath, back) == LLMT_OK && back == bin, "bytes round trip (larger than one buffer)");
  const std::string missing = tmp_path("missing.json");
  CHECK_FAILS(llmt::read_text_file(missing, back), LLMT_ERR_IO, ({missing, "No such file or directory"}), "read missing");
  CHECK_FAILS(llmt::read_text_file(g_tmp, back), LLMT_ERR_IO, ({g_tmp}), "read a directory");
  const std::string nodir = tmp_path("nope/x.json");
  CHECK_FAILS(llmt::write_text_file_atomic(nodir, "x"), LLMT_ERR_IO, ({nodir}), "write into a missing directory");
  CHECK(!file_exists(nodir), "nothing created");
}

int main() {
  char tmpl[] = "/tmp/llmt_test_formats_XXXXXX";
  if (!::mkdtemp(tmpl)) {
    std::perror("mkdtemp");
    return 2;
  }
  g_tmp = tmpl;

  test_json();
  test_half();
  test_safetensors_roundtrip();
  test_safetensors_validation();
  test_weight_set();
  test_text_files();

  ::nftw(g_tmp.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  if (g_failures) {
    std::fprintf(stderr, "test_formats: %d of %d checks failed\n", g_failures, g_checks);
    return 1;
  }
  std::printf("test_formats: %d checks\n", g_checks);
  std::printf("test_formats: all checks passed\n");
  return 0;
}
