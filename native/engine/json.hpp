// json.hpp — a small JSON DOM for the engine's inputs and outputs: config.json, adapter_config.json,
// model.safetensors.index.json, safetensors headers, job files, token files, trainer state.
// Parsing never throws: errors come back as a message with line:column. Numbers are kept as double plus,
// when integral and in range, int64 (token ids, tensor offsets). Object keys keep insertion order.
// Writing escapes per RFC 8259; non-finite numbers are written as null.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace llmt {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;  // null
  static Json boolean(bool b);
  static Json number(double d);
  static Json integer(int64_t i);
  static Json string(std::string s);
  static Json array();
  static Json object();

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  /** A number with no fractional part that fits int64 exactly. */
  bool is_integer() const;
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  bool as_bool() const { return b_; }
  double as_double() const { return d_; }
  int64_t as_int() const { return i_; }
  const std::string &as_string() const { return s_; }

  // arrays
  size_t size() const;  // elements of an array, members of an object, else 0
  const Json &operator[](size_t i) const;
  Json &push(Json v);
  const std::vector<Json> &items() const { return arr_; }

  // objects (insertion order kept)
  bool has(const std::string &key) const;
  /** The member, or a shared null value when absent (never throws). */
  const Json &get(const std::string &key) const;
  Json &set(const std::string &key, Json v);  // replaces an existing key in place
  const std::vector<std::pair<std::string, Json>> &members() const { return obj_; }

  // convenient typed lookups with defaults (the default is used when absent or null)
  std::string get_string(const std::string &key, const std::string &def = "") const;
  double get_number(const std::string &key, double def) const;
  int64_t get_int(const std::string &key, int64_t def) const;
  bool get_bool(const std::string &key, bool def) const;

  /** Serialize. indent < 0: compact; otherwise pretty with that many spaces. */
  std::string dump(int indent = -1) const;

  /** Parse `text`. On error returns false and sets `error` to "line L, column C: what". */
  static bool parse(const std::string &text, Json &out, std::string &error);

 private:
  Type type_ = Type::Null;
  bool b_ = false;
  double d_ = 0.0;
  int64_t i_ = 0;
  bool int_ok_ = false;
  std::string s_;
  std::vector<Json> arr_;
  std::vector<std::pair<std::string, Json>> obj_;
};

}  // namespace llmt
