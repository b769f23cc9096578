import { invalidArgument } from './errors.js';

/** Element types of tensors. bf16 and f16 read back as Float32Array (exactly). */
export type DType = 'bf16' | 'f16' | 'f32' | 'i32';

export const DTYPES: readonly DType[] = ['bf16', 'f16', 'f32', 'i32'];

/** Numbering shared with native/common/dtype.h. */
export const DTYPE_CODE: Readonly<Record<DType, number>> = { bf16: 0, f16: 1, f32: 2, i32: 3 };

export const DTYPE_BYTES: Readonly<Record<DType, number>> = { bf16: 2, f16: 2, f32: 4, i32: 4 };

/**
 * Bit patterns written into fresh outputs when poisoning is on, so an element
 * a kernel forgot to write reads back as NaN (floats) or as an absurd index.
 */
export const POISON_PATTERN: Readonly<Record<DType, number>> = {
  bf16: 0x7fc1,
  f16: 0x7e01,
  f32: 0x7fc00001,
  i32: 0x7f7f7f7f,
};

export function isDType(value: unknown): value is DType {
  return typeof value === 'string' && (DTYPES as readonly string[]).includes(value);
}

export function checkDType(value: unknown, arg: string): DType {
  if (!isDType(value)) throw invalidArgument(arg, `one of ${DTYPES.map((d) => `"${d}"`).join(', ')}`, value);
  return value;
}

export function isFloat16Type(dtype: DType): dtype is 'bf16' | 'f16' {
  return dtype === 'bf16' || dtype === 'f16';
}
