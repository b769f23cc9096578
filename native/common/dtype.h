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

// Round to nearest even, without branches so that row loops vectorize: each
// case is computed and the right one selected by masks.
inline uint16_t floatToF16Bits(float f) {
  const uint32_t u = floatBits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7fffffffu;
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa
  // bits (a carry may reach the exponent, or Inf, as IEEE rounding does).
  const uint32_t v = absu - 0x38000000u;
  const uint32_t normal = (v + 0xfffu + ((v >> 13) & 1u)) >> 13;
  // Below 2^-14 the result is an f16 subnormal (or zero), steps of 2^-24:
  // adding 0.5 leaves a float whose ulp is 2^-24, so the FPU's own rounding
  // to nearest even gives the result in its low bits.
  const uint32_t subnormal = floatBits(bitsFloat(absu) + 0.5f) - 0x3f000000u;
  const uint32_t nan = 0x7e00u | ((absu >> 13) & 0x1ffu);  // quiet, the payload's top bits kept
  const uint32_t isNan = 0u - static_cast<uint32_t>(absu > 0x7f800000u);
  const uint32_t isInf = 0u - static_cast<uint32_t>(absu >= 0x477ff000u);  // >= 65520 rounds to Inf
  const uint32_t isSub = 0u - static_cast<uint32_t>(absu < 0x38800000u);
  uint32_t r = (normal & ~(isSub | isInf)) | (subnormal & isSub);
  r = (r & ~isInf) | (0x7c00u & isInf);
  r = (r & ~isNan) | (nan & isNan);
  return static_cast<uint16_t>(sign | r);
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
