import { types } from 'node:util';

/**
 * Every failure the package reports is a MobaError with a stable `code`
 * (DESIGN.md section 5), so callers can branch on the code and tests can
 * assert on it.
 */
export type MobaErrorCode =
  | 'EINVAL'
  | 'ENOCUDA'
  | 'EOOM'
  | 'EDISPOSED'
  | 'ECUDA'
  | 'ECAPACITY'
  | 'ENOBINARY';

export class MobaError extends Error {
  readonly code: MobaErrorCode;
  /** CUDA error name (e.g. "cudaErrorIllegalAddress") when code is ECUDA. */
  readonly cudaError?: string;

  constructor(code: MobaErrorCode, message: string, options?: { cudaError?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MobaError';
    this.code = code;
    if (options?.cudaError !== undefined) this.cudaError = options.cudaError;
  }
}

/**
 * Whether `value` is a revoked Proxy (or one whose prototype cannot be read):
 * every operation on it, even Array.isArray or instanceof, throws a
 * TypeError, so argument checks ask this first.
 */
export function isRevokedProxy(value: unknown): boolean {
  if ((typeof value !== 'object' || value === null) && typeof value !== 'function') return false;
  if (!types.isProxy(value)) return false;
  try {
    Reflect.getPrototypeOf(value as object);
    return false;
  } catch {
    return true;
  }
}

/** Renders a received value for an error message without dumping huge arrays. */
export function describeValue(value: unknown): string {
  if (isRevokedProxy(value)) return 'a revoked Proxy';
  if (value === undefined) return 'undefined';
  if (value === null) return 'null';
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (Array.isArray(value)) {
    const head = value.slice(0, 8).map(describeValue).join(', ');
    return `[${head}${value.length > 8 ? `, ... (${value.length} items)` : ''}]`;
  }
  if (ArrayBuffer.isView(value)) {
    const name = value.constructor.name;
    const len = (value as unknown as { length?: number }).length;
    return len === undefined ? name : `${name}(${len})`;
  }
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'object') {
    const ctor = (value as object).constructor?.name;
    return ctor && ctor !== 'Object' ? `${/^[AEIOU]/.test(ctor) ? 'an' : 'a'} ${ctor}` : 'an object';
  }
  return String(value);
}

/** EINVAL in the house style: "Expected <what> for <arg> but received <value>". */
export function invalidArgument(arg: string, expected: string, received: unknown): MobaError {
  return new MobaError('EINVAL', `Expected ${expected} for ${arg} but received ${describeValue(received)}`);
}
