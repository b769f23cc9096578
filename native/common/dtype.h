// Element types and exact host-side conversions between float32 and the two
// 16-bit float formats (round to nearest even; NaN, Inf and subnormals kept).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace moba {

// Numbering is shared with lib/dtype.ts.
enum class DType : int { BF16 = 0, F16 = 1, F32 = 2, I32 = 3 };

inline size_t dtypeSize(DType t) { return (t == DType::BF16 || t == DType::F16) ? 2 : 4; }
inline bool isValidDType(int code) { return code >= 0 && code <= 3; }
inline const char* dtypeName(DType t) {
  switch (t) {
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::F32: return "f32";
    case DType::I32: return "i32";
  }
  return "?";
}

inline uint32_t floatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t floatToBf16Bits(float f) {
  uint32_t u = floatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN, sign kept
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);  // overflow carries into Inf, as IEEE rounding does
}
inline float bf16BitsToFloat(uint16_t h) { return bitsFloat(static_cast<uint32_t>(h) << 16); }

inline uint16_t floatToF16Bits(float f) {
  uint32_t u = floatBits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((absu >> 13) & 0x1ffu);  // NaN
  if (absu >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to Inf (and Inf stays Inf)
  if (absu < 0x38800000u) {
    // Result is an f16 subnormal (or zero): value / 2^-24 rounded to nearest even.
    if (absu < 0x33000000u) return sign;  // below half the smallest subnormal: +-0
    uint32_t exp = absu >> 23;
    uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - exp;  // 113 - exp + 13
    uint32_t halfway = 1u << (shift - 1);
    uint32_t rest = mant & ((1u << shift) - 1u);
    uint32_t q = mant >> shift;
    if (rest > halfway || (rest == halfway && (q & 1u))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  // Normal: rebias exponent (127 -> 15) and round the 13 dropped mantissa bits.
  uint32_t v = absu - 0x38000000u;
  uint32_t rounding = 0xfffu + ((v >> 13) & 1u);
  return sign | static_cast<uint16_t>((v + rounding) >> 13);
}

// Without branches, so that loops over rows of f16 vectorize (CPU decode
// widens every key and value it reads): normal values rebias the exponent,
// Inf and NaN (payload kept) take the top exponent, and zeros and subnormals
// (mant x 2^-24, exact in fp32) come from one exact float subtraction.
inline float f16BitsToFloat(uint16_t h) {
  const uint32_t o = static_cast<uint32_t>(h & 0x7fffu) << 13;
  const uint32_t e = o & 0x0f800000u;
  const uint32_t infNan = 0u - static_cast<uint32_t>(e == 0x0f800000u);
  const uint32_t tiny = 0u - static_cast<uint32_t>(e == 0u);
  const uint32_t sub = floatBits(bitsFloat(o + 0x38800000u) - bitsFloat(0x38800000u));
  const uint32_t r = ((o + 0x38000000u) & ~(infNan | tiny)) | ((o + 0x70000000u) & infNan) | (sub & tiny);
  return bitsFloat(r | (static_cast<uint32_t>(h & 0x8000u) << 16));
}

// Converts `count` float32 values into `dst` of type `t` (bf16, f16 or f32).
void convertFromF32(const float* src, void* dst, size_t count, DType t);
// Converts `count` values of type `t` (bf16, f16 or f32) into float32.
void convertToF32(const void* src, float* dst, size_t count, DType t);
// Converts float64 values with a single correct rounding to `t`: the step
// through float32 rounds to odd, which keeps the final round-to-nearest-even exact.
void convertFromF64(const double* src, void* dst, size_t count, DType t);

}  // namespace moba
