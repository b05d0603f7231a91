// rng.hpp — the engine's random numbers: a seedable generator whose whole state is two integers (saved in
// checkpoints for bit-identical resume) and a counter-based uniform for dropout masks, so a mask can be
// regenerated anywhere (gradient checkpointing) from (stream, index) alone.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

namespace llmt {

/** splitmix64 finaliser: a strong 64-bit mixing function. */
inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline uint64_t fnv1a(const std::string &s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

/** Uniform in [0, 1) from (stream, index), 24 bits of resolution like a float. */
inline float uniform01(uint64_t stream, uint64_t index) {
  return static_cast<float>(mix64(stream ^ mix64(index)) >> 40) * (1.0f / 16777216.0f);
}

/** Sequential generator (splitmix64 stream). State: (seed, counter). */
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) : seed_(seed), counter_(0) {}
  Rng(uint64_t seed, uint64_t counter) : seed_(seed), counter_(counter) {}
  uint64_t next() { return mix64(seed_ ^ mix64(counter_++)); }
  /** [0, 1) with 24-bit resolution. */
  float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }
  /** [0, 1) with 53-bit resolution. */
  double uniform_double() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  /** Integer in [0, n). */
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  uint64_t seed() const { return seed_; }
  uint64_t counter() const { return counter_; }

 private:
  uint64_t seed_, counter_;
};

}  // namespace llmt
