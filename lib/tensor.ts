import type { Device } from './device.js';
import { DTYPE_BYTES, DTYPE_CODE, type DType } from './dtype.js';
import { MobaError } from './errors.js';
import type { NativeBuffer } from './native.js';

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * A dense, row-major array in device memory. Ops enqueue work and return
 * tensors at once; `toArray()` waits for the data without blocking the event
 * loop.
 */
export class Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  /** @internal */
  readonly buffer: NativeBuffer;

  /** @internal Tensors are made by Device.tensor(), Device.empty() and the ops. */
  constructor(device: Device, buffer: NativeBuffer, shape: readonly number[], dtype: DType) {
    this.device = device;
    this.buffer = buffer;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    // readonly at run time too: a shape or dtype changed later would no
    // longer describe the buffer.
    Object.freeze(this);
    // No FinalizationRegistry here: the native buffer's own finalizer frees
    // the memory of a tensor dropped without dispose(), and registering every
    // output would add about 2 us of host time to each op.
  }

  /** Number of elements. */
  get numel(): number {
    return numelOf(this.shape);
  }

  get byteLength(): number {
    return this.numel * DTYPE_BYTES[this.dtype];
  }

  get disposed(): boolean {
    return this.buffer.disposed();
  }

  /**
   * Copies the tensor to the host once all work enqueued before this call is
   * done. bf16/f16/f32 read back as Float32Array (exactly), i32 as Int32Array.
   * Errors of earlier queued work reject the promise.
   */
  toArray(): Promise<Float32Array | Int32Array> {
    try {
      this.assertLive('toArray()');
      return this.device.native.read(this.buffer, DTYPE_CODE[this.dtype], this.numel);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Frees the device memory (after work already enqueued that uses it). Idempotent. */
  dispose(): void {
    this.buffer.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal */
  assertLive(what: string): void {
    if (this.buffer.disposed()) {
      throw new MobaError('EDISPOSED', `Cannot use ${what}: the tensor ${this.describe()} has been disposed`);
    }
  }

  /** "bf16[1024, 16, 128]" */
  describe(): string {
    return `${this.dtype}[${this.shape.join(', ')}]`;
  }

  toString(): string {
    return `Tensor(${this.describe()} on ${this.device.backend})`;
  }
}
