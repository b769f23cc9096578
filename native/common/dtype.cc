#include "dtype.h"

#include <cmath>

namespace moba {

void convertFromF32(const float* src, void* dst, size_t count, DType t) {
  switch (t) {
    case DType::BF16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) out[i] = floatToBf16Bits(src[i]);
      break;
    }
    case DType::F16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) out[i] = floatToF16Bits(src[i]);
      break;
    }
    case DType::F32:
      std::memcpy(dst, src, count * 4);
      break;
    case DType::I32:
      break;  // callers never convert floats into i32
  }
}

void convertToF32(const void* src, float* dst, size_t count, DType t) {
  switch (t) {
    case DType::BF16: {
      auto* in = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = bf16BitsToFloat(in[i]);
      break;
    }
    case DType::F16: {
      auto* in = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = f16BitsToFloat(in[i]);
      break;
    }
    case DType::F32:
    case DType::I32:
      std::memcpy(dst, src, count * 4);
      break;
  }
}

static float roundToOddF32(double d) {
  float f = static_cast<float>(d);
  if (std::isnan(d) || static_cast<double>(f) == d) return f;
  // Inexact: take the float32 truncation toward zero and force its last bit to 1.
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  return bitsFloat(floatBits(f) | 1u);
}

void convertFromF64(const double* src, void* dst, size_t count, DType t) {
  switch (t) {
    case DType::BF16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) out[i] = floatToBf16Bits(roundToOddF32(src[i]));
      break;
    }
    case DType::F16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) out[i] = floatToF16Bits(roundToOddF32(src[i]));
      break;
    }
    case DType::F32: {
      auto* out = static_cast<float*>(dst);
      for (size_t i = 0; i < count; ++i) out[i] = static_cast<float>(src[i]);
      break;
    }
    case DType::I32:
      break;
  }
}

}  // namespace moba
