// json.cpp — the engine's JSON DOM: an RFC 8259 parser (strict UTF-8, depth limit, "line L, column C"
// errors, integer literals kept exactly as int64) and a writer (compact or pretty, shortest round-trip
// doubles, insertion-ordered keys). Nothing here throws on bad input or calls exit().
#include "json.hpp"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>

#if __has_include(<charconv>)
#include <charconv>  // defines __cpp_lib_to_chars where floating-point to_chars/from_chars exist
#endif
#include <clocale>

namespace llmt {

namespace {

constexpr int kMaxDepth = 512;
// 2^63 as a double: the first value past the int64 range.
constexpr double kTwo63 = 9223372036854775808.0;

const Json &null_json() {
  static const Json null_value;
  return null_value;
}

// Length of the well-formed UTF-8 sequence at p (Unicode Table 3-7: no overlongs, no surrogates,
// nothing above U+10FFFF), or 0 if the bytes there are not one.
size_t utf8_sequence_length(const unsigned char *p, const unsigned char *end) {
  const size_t avail = static_cast<size_t>(end - p);
  if (avail == 0) return 0;
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  auto cont = [&](size_t i, unsigned char lo, unsigned char hi) {
    return i < avail && p[i] >= lo && p[i] <= hi;
  };
  if (c >= 0xC2 && c <= 0xDF) return cont(1, 0x80, 0xBF) ? 2 : 0;
  if (c == 0xE0) return cont(1, 0xA0, 0xBF) && cont(2, 0x80, 0xBF) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
    return cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) ? 3 : 0;
  if (c == 0xED) return cont(1, 0x80, 0x9F) && cont(2, 0x80, 0xBF) ? 3 : 0;
  if (c == 0xF0) return cont(1, 0x90, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3)
    return cont(1, 0x80, 0xBF) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
  if (c == 0xF4) return cont(1, 0x80, 0x8F) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
  return 0;
}

void append_utf8(std::string &out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Locale-independent string -> double for text already checked against the JSON number grammar.
// Out-of-range magnitudes become ±inf (overflow) or ±0 (underflow), as strtod would give.
double parse_double(const char *first, const char *last) {
  double value = 0.0;
#if defined(__cpp_lib_to_chars)
  auto res = std::from_chars(first, last, value, std::chars_format::general);
  if (res.ec == std::errc()) return value;
  // result_out_of_range: decide between overflow and underflow from the decimal magnitude.
  const bool negative = *first == '-';
  const char *p = negative ? first + 1 : first;
  long long magnitude = 0;  // decimal exponent of the leading significant digit
  bool seen_nonzero = false;
  long long int_digits = 0, leading_frac_zeros = 0;
  while (p < last && *p >= '0' && *p <= '9') {
    if (*p != '0' || seen_nonzero) { seen_nonzero = true; ++int_digits; }
    ++p;
  }
  if (p < last && *p == '.') {
    ++p;
    while (p < last && *p >= '0' && *p <= '9') {
      if (!seen_nonzero) {
        if (*p == '0') ++leading_frac_zeros; else seen_nonzero = true;
      }
      ++p;
    }
  }
  long long exp = 0;
  if (p < last && (*p == 'e' || *p == 'E')) {
    ++p;
    bool neg_exp = false;
    if (p < last && (*p == '+' || *p == '-')) neg_exp = *p++ == '-';
    while (p < last && *p >= '0' && *p <= '9') {
      if (exp < 100000000) exp = exp * 10 + (*p - '0');
      ++p;
    }
    if (neg_exp) exp = -exp;
  }
  magnitude = (int_digits > 0 ? int_digits - 1 : -(leading_frac_zeros + 1)) + exp;
  value = magnitude > 0 ? HUGE_VAL : 0.0;
  return negative ? -value : value;
#else
  std::string tmp(first, last);
  // strtod follows the C locale's decimal point; JSON always uses '.'.
  const struct lconv *lc = std::localeconv();
  if (lc && lc->decimal_point && lc->decimal_point[0] != '.') {
    for (char &ch : tmp)
      if (ch == '.') ch = lc->decimal_point[0];
  }
  value = std::strtod(tmp.c_str(), nullptr);
  return value;
#endif
}

// Shortest text that parses back to exactly `d` (finite `d`).
std::string format_double(double d) {
  char buf[64];
#if defined(__cpp_lib_to_chars)
  auto res = std::to_chars(buf, buf + sizeof(buf), d);
  if (res.ec == std::errc()) return std::string(buf, res.ptr);
#endif
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, d);
    for (char *c = buf; *c; ++c)
      if (*c == ',') *c = '.';  // a locale with a decimal comma
    if (precision == 17 || parse_double(buf, buf + std::strlen(buf)) == d) break;
  }
  return buf;
}

void dump_string(const std::string &s, std::string &out) {
  out.push_back('"');
  const auto *p = reinterpret_cast<const unsigned char *>(s.data());
  const auto *end = p + s.size();
  while (p < end) {
    const unsigned char c = *p;
    switch (c) {
      case '"': out += "\\\""; ++p; continue;
      case '\\': out += "\\\\"; ++p; continue;
      case '\b': out += "\\b"; ++p; continue;
      case '\f': out += "\\f"; ++p; continue;
      case '\n': out += "\\n"; ++p; continue;
      case '\r': out += "\\r"; ++p; continue;
      case '\t': out += "\\t"; ++p; continue;
      default: break;
    }
    if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
      ++p;
    } else if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++p;
    } else {
      // Keep the output valid UTF-8 whatever the string holds: invalid bytes become U+FFFD.
      const size_t n = utf8_sequence_length(p, end);
      if (n == 0) {
        out += "\xEF\xBF\xBD";
        ++p;
      } else {
        out.append(reinterpret_cast<const char *>(p), n);
        p += n;
      }
    }
  }
  out.push_back('"');
}

void newline_indent(std::string &out, int indent, int level) {
  out.push_back('\n');
  out.append(static_cast<size_t>(indent) * static_cast<size_t>(level), ' ');
}

void dump_value(const Json &v, std::string &out, int indent, int level) {
  switch (v.type()) {
    case Json::Type::Null: out += "null"; return;
    case Json::Type::Bool: out += v.as_bool() ? "true" : "false"; return;
    case Json::Type::Number: {
      const double d = v.as_double();
      if (v.is_integer()) {
        if (v.as_int() == 0 && std::signbit(d)) {
          out += "-0";
        } else {
          char buf[32];
          std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v.as_int()));
          out += buf;
        }
      } else if (!std::isfinite(d)) {
        out += "null";
      } else {
        out += format_double(d);
      }
      return;
    }
    case Json::Type::String: dump_string(v.as_string(), out); return;
    case Json::Type::Array: {
      const auto &items = v.items();
      if (items.empty()) { out += "[]"; return; }
      out.push_back('[');
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out.push_back(',');
        if (indent >= 0) newline_indent(out, indent, level + 1);
        dump_value(items[i], out, indent, level + 1);
      }
      if (indent >= 0) newline_indent(out, indent, level);
      out.push_back(']');
      return;
    }
    case Json::Type::Object: {
      const auto &members = v.members();
      if (members.empty()) { out += "{}"; return; }
      out.push_back('{');
      for (size_t i = 0; i < members.size(); ++i) {
        if (i) out.push_back(',');
        if (indent >= 0) newline_indent(out, indent, level + 1);
        dump_string(members[i].first, out);
        out += indent >= 0 ? ": " : ":";
        dump_value(members[i].second, out, indent, level + 1);
      }
      if (indent >= 0) newline_indent(out, indent, level);
      out.push_back('}');
      return;
    }
  }
}

}  // namespace

// ---- construction ---------------------------------------------------------------------------------

Json Json::boolean(bool b) {
  Json j;
  j.type_ = Type::Bool;
  j.b_ = b;
  return j;
}

Json Json::number(double d) {
  Json j;
  j.type_ = Type::Number;
  j.d_ = d;
  if (std::isfinite(d) && d == std::trunc(d) && d >= -kTwo63 && d < kTwo63) {
    j.i_ = static_cast<int64_t>(d);
    j.int_ok_ = true;
  }
  return j;
}

Json Json::integer(int64_t i) {
  Json j;
  j.type_ = Type::Number;
  j.i_ = i;
  j.d_ = static_cast<double>(i);
  j.int_ok_ = true;
  return j;
}

Json Json::string(std::string s) {
  Json j;
  j.type_ = Type::String;
  j.s_ = std::move(s);
  return j;
}

Json Json::array() {
  Json j;
  j.type_ = Type::Array;
  return j;
}

Json Json::object() {
  Json j;
  j.type_ = Type::Object;
  return j;
}

bool Json::is_integer() const { return type_ == Type::Number && int_ok_; }

// ---- arrays and objects ---------------------------------------------------------------------------

size_t Json::size() const {
  if (type_ == Type::Array) return arr_.size();
  if (type_ == Type::Object) return obj_.size();
  return 0;
}

const Json &Json::operator[](size_t i) const {
  if (type_ != Type::Array || i >= arr_.size()) return null_json();
  return arr_[i];
}

Json &Json::push(Json v) {
  if (type_ != Type::Array) *this = array();  // pushing onto a non-array makes it an array
  arr_.push_back(std::move(v));
  return arr_.back();
}

bool Json::has(const std::string &key) const {
  if (type_ != Type::Object) return false;
  for (const auto &m : obj_)
    if (m.first == key) return true;
  return false;
}

const Json &Json::get(const std::string &key) const {
  if (type_ != Type::Object) return null_json();
  for (const auto &m : obj_)
    if (m.first == key) return m.second;
  return null_json();
}

Json &Json::set(const std::string &key, Json v) {
  if (type_ != Type::Object) *this = object();  // setting on a non-object makes it an object
  for (auto &m : obj_) {
    if (m.first == key) {
      m.second = std::move(v);
      return m.second;
    }
  }
  obj_.emplace_back(key, std::move(v));
  return obj_.back().second;
}

std::string Json::get_string(const std::string &key, const std::string &def) const {
  const Json &v = get(key);
  return v.is_string() ? v.s_ : def;
}

double Json::get_number(const std::string &key, double def) const {
  const Json &v = get(key);
  return v.is_number() ? v.d_ : def;
}

int64_t Json::get_int(const std::string &key, int64_t def) const {
  const Json &v = get(key);
  return v.is_integer() ? v.i_ : def;
}

bool Json::get_bool(const std::string &key, bool def) const {
  const Json &v = get(key);
  return v.is_bool() ? v.b_ : def;
}

// ---- writing --------------------------------------------------------------------------------------

std::string Json::dump(int indent) const {
  std::string out;
  dump_value(*this, out, indent < 0 ? -1 : indent, 0);
  return out;
}

// ---- parsing --------------------------------------------------------------------------------------

bool Json::parse(const std::string &text, Json &out, std::string &error) {
  // A local class has the access of the enclosing member function, so it can build members directly
  // (appending object members without Json::set's linear search keeps big vocabularies linear).
  struct Parser {
    const char *begin;
    const char *p;
    const char *end;
    std::string err;

    bool fail(const char *at, const std::string &what) {
      long line = 1, column = 1;
      for (const char *q = begin; q < at && q < end; ++q) {
        const auto c = static_cast<unsigned char>(*q);
        if (c == '\n') {
          ++line;
          column = 1;
        } else if ((c & 0xC0) != 0x80) {
          ++column;  // count characters, not UTF-8 continuation bytes
        }
      }
      err = "line " + std::to_string(line) + ", column " + std::to_string(column) + ": " + what;
      return false;
    }

    static std::string describe(const char *at, const char *end) {
      if (at >= end) return "end of input";
      const auto c = static_cast<unsigned char>(*at);
      char buf[32];
      if (c >= 0x20 && c < 0x7F)
        std::snprintf(buf, sizeof(buf), "character '%c'", c);
      else
        std::snprintf(buf, sizeof(buf), "byte 0x%02X", c);
      return buf;
    }

    void skip_ws() {
      while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
    }

    bool literal(const char *word, size_t n, Json &out, Json value) {
      if (static_cast<size_t>(end - p) < n || std::memcmp(p, word, n) != 0)
        return fail(p, std::string("invalid literal (expected '") + word + "')");
      p += n;
      out = std::move(value);
      return true;
    }

    bool hex4(const char *at, uint32_t &v) {
      if (end - at < 4) return fail(at, "truncated \\u escape (expected 4 hex digits)");
      v = 0;
      for (int i = 0; i < 4; ++i) {
        const char c = at[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
        else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
        else return fail(at + i, "invalid \\u escape (expected 4 hex digits)");
      }
      return true;
    }

    // p is at the opening quote.
    bool string(std::string &out) {
      const char *open = p;
      ++p;
      out.clear();
      for (;;) {
        // Copy the run of plain characters in one go.
        const char *run = p;
        while (p < end) {
          const auto c = static_cast<unsigned char>(*p);
          if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
          ++p;
        }
        out.append(run, static_cast<size_t>(p - run));
        if (p >= end) return fail(open, "unterminated string");
        const auto c = static_cast<unsigned char>(*p);
        if (c == '"') {
          ++p;
          return true;
        }
        if (c < 0x20) {
          char buf[80];
          std::snprintf(buf, sizeof(buf), "control character U+%04X in a string must be escaped", c);
          return fail(p, buf);
        }
        if (c >= 0x80) {
          const size_t n = utf8_sequence_length(reinterpret_cast<const unsigned char *>(p),
                                                reinterpret_cast<const unsigned char *>(end));
          if (n == 0) return fail(p, "invalid UTF-8 in a string (" + describe(p, end) + ")");
          out.append(p, n);
          p += n;
          continue;
        }
        // Escape.
        const char *esc = p;
        if (end - p < 2) return fail(open, "unterminated string");
        const char e = p[1];
        p += 2;
        switch (e) {
          case '"': out.push_back('"'); break;
          case '\\': out.push_back('\\'); break;
          case '/': out.push_back('/'); break;
          case 'b': out.push_back('\b'); break;
          case 'f': out.push_back('\f'); break;
          case 'n': out.push_back('\n'); break;
          case 'r': out.push_back('\r'); break;
          case 't': out.push_back('\t'); break;
          case 'u': {
            uint32_t cp = 0;
            if (!hex4(p, cp)) return false;
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              uint32_t lo = 0;
              if (end - p < 6 || p[0] != '\\' || p[1] != 'u')
                return fail(esc, "unpaired high surrogate in \\u escape (expected a \\uDC00-\\uDFFF to follow)");
              if (!hex4(p + 2, lo)) return false;
              if (lo < 0xDC00 || lo > 0xDFFF)
                return fail(p, "unpaired high surrogate in \\u escape (expected a \\uDC00-\\uDFFF to follow)");
              p += 6;
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
              return fail(esc, "unpaired low surrogate in \\u escape");
            }
            append_utf8(out, cp);
            break;
          }
          default:
            return fail(esc, "invalid escape '\\" + (e >= 0x20 && e < 0x7F ? std::string(1, e) : std::string("?")) +
                                 "' in a string");
        }
      }
    }

    static bool digit(char c) { return c >= '0' && c <= '9'; }

    bool number(Json &out) {
      const char *start = p;
      bool negative = false;
      if (*p == '-') {
        negative = true;
        ++p;
      }
      if (p >= end || !digit(*p)) return fail(p, "invalid number (expected a digit)");
      if (*p == '0') {
        ++p;
        if (p < end && digit(*p)) return fail(p, "invalid number (leading zeros are not allowed)");
      } else {
        while (p < end && digit(*p)) ++p;
      }
      const char *int_end = p;
      bool is_int = true;
      if (p < end && *p == '.') {
        is_int = false;
        ++p;
        if (p >= end || !digit(*p)) return fail(p, "invalid number (expected a digit after '.')");
        while (p < end && digit(*p)) ++p;
      }
      if (p < end && (*p == 'e' || *p == 'E')) {
        is_int = false;
        ++p;
        if (p < end && (*p == '+' || *p == '-')) ++p;
        if (p >= end || !digit(*p)) return fail(p, "invalid number (expected a digit in the exponent)");
        while (p < end && digit(*p)) ++p;
      }
      if (is_int) {
        // Integer literal: accumulate exactly; fall back to double only when it overflows int64.
        uint64_t acc = 0;
        const uint64_t limit = negative ? (uint64_t(1) << 63) : (uint64_t(1) << 63) - 1;
        bool overflow = false;
        for (const char *q = negative ? start + 1 : start; q < int_end; ++q) {
          const uint64_t d = static_cast<uint64_t>(*q - '0');
          if (acc > (limit - d) / 10) {
            overflow = true;
            break;
          }
          acc = acc * 10 + d;
        }
        if (!overflow) {
          int64_t v;
          if (negative) {
            v = acc == (uint64_t(1) << 63) ? INT64_MIN : -static_cast<int64_t>(acc);
          } else {
            v = static_cast<int64_t>(acc);
          }
          out = Json::integer(v);
          return true;
        }
      }
      out = Json::number(parse_double(start, p));
      return true;
    }

    bool value(Json &out, int depth) {
      skip_ws();
      if (p >= end) return fail(p, "unexpected end of input (expected a JSON value)");
      switch (*p) {
        case '{': return object(out, depth + 1);
        case '[': return array(out, depth + 1);
        case '"': {
          out = Json();
          out.type_ = Type::String;
          return string(out.s_);
        }
        case 't': return literal("true", 4, out, Json::boolean(true));
        case 'f': return literal("false", 5, out, Json::boolean(false));
        case 'n': return literal("null", 4, out, Json());
        default:
          if (*p == '-' || digit(*p)) return number(out);
          return fail(p, "unexpected " + describe(p, end) + " (expected a JSON value)");
      }
    }

    bool too_deep() {
      return fail(p, "nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    }

    bool array(Json &out, int depth) {
      if (depth > kMaxDepth) return too_deep();
      out = Json::array();
      ++p;  // '['
      skip_ws();
      if (p < end && *p == ']') {
        ++p;
        return true;
      }
      for (;;) {
        out.arr_.emplace_back();
        if (!value(out.arr_.back(), depth)) return false;
        skip_ws();
        if (p < end && *p == ',') {
          ++p;
          continue;
        }
        if (p < end && *p == ']') {
          ++p;
          return true;
        }
        return fail(p, "unexpected " + describe(p, end) + " in an array (expected ',' or ']')");
      }
    }

    bool object(Json &out, int depth) {
      if (depth > kMaxDepth) return too_deep();
      out = Json::object();
      ++p;  // '{'
      skip_ws();
      if (p < end && *p == '}') {
        ++p;
        return true;
      }
      // Duplicate keys: the last value wins, kept at the first key's position (like Json::set).
      // Small objects search linearly; big ones (vocabularies, headers) switch to a hash index.
      constexpr size_t kHashFrom = 16;
      std::unordered_map<std::string, size_t> index;
      std::string key;
      Json member;
      for (;;) {
        skip_ws();
        if (p >= end || *p != '"')
          return fail(p, "unexpected " + describe(p, end) + " in an object (expected a string key)");
        if (!string(key)) return false;
        skip_ws();
        if (p >= end || *p != ':')
          return fail(p, "unexpected " + describe(p, end) + " after an object key (expected ':')");
        ++p;
        member = Json();
        if (!value(member, depth)) return false;

        auto &obj = out.obj_;
        size_t existing = obj.size();
        if (obj.size() < kHashFrom) {
          for (size_t i = 0; i < obj.size(); ++i)
            if (obj[i].first == key) { existing = i; break; }
        } else {
          if (index.empty())
            for (size_t i = 0; i < obj.size(); ++i) index.emplace(obj[i].first, i);
          auto it = index.find(key);
          if (it != index.end()) existing = it->second;
          else index.emplace(key, obj.size());
        }
        if (existing < obj.size()) obj[existing].second = std::move(member);
        else obj.emplace_back(key, std::move(member));

        skip_ws();
        if (p < end && *p == ',') {
          ++p;
          continue;
        }
        if (p < end && *p == '}') {
          ++p;
          return true;
        }
        return fail(p, "unexpected " + describe(p, end) + " in an object (expected ',' or '}')");
      }
    }
  };

  Parser parser{text.data(), text.data(), text.data() + text.size(), std::string()};
  // A UTF-8 byte order mark (some editors on Windows write one) is ignored, as RFC 8259 allows.
  if (text.size() >= 3 && std::memcmp(text.data(), "\xEF\xBB\xBF", 3) == 0) parser.p += 3;
  Json result;
  bool ok = parser.value(result, 0);
  if (ok) {
    parser.skip_ws();
    if (parser.p < parser.end)
      ok = parser.fail(parser.p, "unexpected " + Parser::describe(parser.p, parser.end) +
                                     " after the JSON value (trailing garbage)");
  }
  if (!ok) {
    error = parser.err;
    out = Json();
    return false;
  }
  error.clear();
  out = std::move(result);
  return true;
}

}  // namespace llmt
