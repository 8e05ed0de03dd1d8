// Inputs for tests that hold two casts to the same bits (the host's builds,
// the GPU kernel): every F16 and BF16 bit pattern, and F32/F64 patterns
// covering every exponent with varied mantissas, NaNs with payloads,
// infinities, subnormals, both zeros, doubles just above rounding ties, and
// random bits.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "hoist/dtype.h"

namespace hoist::testing {

struct CastInputs {
  struct Source {
    DType type;
    const void* data;
    size_t count;
  };

  CastInputs() {
    halves.resize(65536);
    for (uint32_t i = 0; i < 65536; ++i) halves[i] = static_cast<uint16_t>(i);
    std::mt19937 rng(7);
    for (uint32_t exp = 0; exp < 256; ++exp) {
      for (uint32_t m : {0u, 1u, 0x1000u, 0x1FFFu, 0x2000u, 0x3FFFFFu, 0x400000u, 0x7FFFFFu, 0x7FE000u, 0x7FF000u}) {
        floats.push_back(exp << 23 | m);
        floats.push_back(0x80000000u | exp << 23 | m);
      }
      for (int k = 0; k < 64; ++k) floats.push_back(exp << 23 | (rng() & 0x807FFFFFu));
    }
    for (uint32_t f : floats) {
      // Around each float: exactly it, and just above the rounding tie.
      float x;
      std::memcpy(&x, &f, 4);
      const double v = static_cast<double>(x);
      uint64_t d;
      std::memcpy(&d, &v, 8);
      doubles.push_back(d);
      doubles.push_back(d | 0x10000000ull);
    }
    for (int k = 0; k < 20000; ++k) doubles.push_back(static_cast<uint64_t>(rng()) << 32 | rng());
  }

  // One per castable source type, in the order F16, BF16, F32, F64.
  std::vector<Source> Sources() const {
    return {{DType::kF16, halves.data(), halves.size()},
            {DType::kBF16, halves.data(), halves.size()},
            {DType::kF32, floats.data(), floats.size()},
            {DType::kF64, doubles.data(), doubles.size()}};
  }

  std::vector<uint16_t> halves;
  std::vector<uint32_t> floats;
  std::vector<uint64_t> doubles;
};

}  // namespace hoist::testing
