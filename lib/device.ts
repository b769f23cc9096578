import { checkDType, DTYPE_BYTES, DTYPE_CODE, POISON_PATTERN, type DType } from './dtype.js';
import { describeValue, invalidArgument, isRevokedProxy, MobaError } from './errors.js';
import { loadNative, type NativeDevice } from './native.js';
import { numelOf, Tensor } from './tensor.js';

export type Backend = 'cuda' | 'cpu';

export interface OpenDeviceOptions {
  /** 'auto' (default) picks CUDA when a device is usable, else the CPU. */
  backend?: 'auto' | 'cuda' | 'cpu';
  /** CUDA device ordinal, default 0. */
  index?: number;
  /**
   * Fill every new output (and `empty()`) with NaN / an absurd index before
   * use, so that elements an op fails to write are visible. For testing.
   */
  poisonOutputs?: boolean;
}

export interface MemoryInfo {
  /** Bytes still available for allocation. */
  free: number;
  /** Bytes of device memory (system RAM on the CPU backend). */
  total: number;
  /** Bytes held by this device's tensors and workspace. */
  used: number;
}

export type TensorData = Float32Array | Float64Array | Int32Array | Uint16Array | readonly number[];

const MAX_ELEMENTS = 2 ** 46;

export function checkShape(shape: unknown, arg = 'shape'): number[] {
  if (isRevokedProxy(shape) || !Array.isArray(shape)) throw invalidArgument(arg, 'an array of non-negative integers', shape);
  // Each entry is read once, into the copy that is checked and kept.
  const dims: number[] = [];
  for (let i = 0, n = shape.length; i < n; i++) dims.push(shape[i] as number);
  for (const d of dims) {
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0) {
      throw invalidArgument(arg, 'an array of non-negative integers', dims);
    }
  }
  // Not "> MAX": huge dimensions times a zero one make NaN.
  if (!(numelOf(dims) <= MAX_ELEMENTS)) throw invalidArgument(arg, `at most 2^46 elements`, dims);
  return dims;
}

let devicesOpened = 0;

/** A compute device: a CUDA GPU or the CPU, with its own in-order stream of work. */
export class Device {
  readonly backend: Backend;
  readonly name: string;
  /** "9.0" for an H100/H200; undefined on the CPU backend. */
  readonly computeCapability?: string;
  /** @internal */
  readonly native: NativeDevice;
  /** @internal */
  readonly poisonOutputs: boolean;
  #disposed = false;
  // Tells apart devices of one backend in messages ("... for k.device").
  readonly #ordinal = ++devicesOpened;

  /** @internal use openDevice() */
  constructor(native: NativeDevice, poisonOutputs: boolean) {
    this.native = native;
    this.backend = native.kind;
    this.name = native.name;
    if (native.computeCapability !== null) this.computeCapability = native.computeCapability;
    this.poisonOutputs = poisonOutputs;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  memoryInfo(): MemoryInfo {
    this.assertLive('memoryInfo()');
    return this.native.memoryInfo();
  }

  /** Resolves once all work enqueued so far has finished; rejects with its error. */
  synchronize(): Promise<void> {
    try {
      this.assertLive('synchronize()');
      return this.native.synchronize();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Frees every tensor of this device and releases the device. Work already
   * enqueued still finishes and pending promises still settle.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.native.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /**
   * Uploads host data. Floats (Float32Array, Float64Array, number[]) convert
   * to bf16/f16 by round-to-nearest-even, keeping NaN, Inf and subnormals;
   * a Uint16Array gives raw bf16/f16 bits.
   */
  tensor(data: TensorData, options: { dtype: DType; shape?: readonly number[] }): Tensor {
    this.assertLive('tensor()');
    if (options === null || typeof options !== 'object' || isRevokedProxy(options)) {
      throw invalidArgument('options', 'an object with dtype and shape', options);
    }
    const dtype = checkDType(options.dtype, 'dtype');
    const source = toTypedArray(data, dtype);
    const shape = options.shape === undefined ? [source.length] : checkShape(options.shape);
    if (numelOf(shape) !== source.length) {
      throw invalidArgument('shape', `a shape with ${source.length} elements (the length of data)`, shape);
    }
    const t = this.allocate(shape, dtype);
    if (source.length > 0) this.native.write(t.buffer, source, DTYPE_CODE[dtype]);
    return t;
  }

  /** An uninitialized tensor (poisoned when the device was opened with poisonOutputs). */
  empty(shape: readonly number[], dtype: DType): Tensor {
    this.assertLive('empty()');
    return this.output(checkShape(shape), checkDType(dtype, 'dtype'));
  }

  /** @internal A fresh output tensor, poisoned if asked. */
  output(shape: readonly number[], dtype: DType): Tensor {
    return this.poison(this.allocate(shape, dtype));
  }

  /** @internal Poisons `t` before an op writes it, when the device was opened with poisonOutputs. */
  poison(t: Tensor): Tensor {
    if (this.poisonOutputs && t.numel > 0) {
      this.native.fill(t.buffer, t.numel, DTYPE_BYTES[t.dtype] as 2 | 4, POISON_PATTERN[t.dtype]);
    }
    return t;
  }

  /** @internal */
  assertLive(what: string): void {
    if (this.#disposed) throw new MobaError('EDISPOSED', `Cannot call ${what}: the ${this.backend} device has been disposed`);
  }

  private allocate(shape: readonly number[], dtype: DType): Tensor {
    const buffer = this.native.alloc(numelOf(shape) * DTYPE_BYTES[dtype]);
    return new Tensor(this, buffer, shape, dtype);
  }

  toString(): string {
    return `Device(${this.backend}: ${this.name}, #${this.#ordinal})`;
  }
}

function toTypedArray(data: TensorData, dtype: DType): Float32Array | Float64Array | Int32Array | Uint16Array {
  if (isRevokedProxy(data)) throw invalidArgument('data', `a typed array or number[] for dtype "${dtype}"`, data);
  if (Array.isArray(data)) {
    // Each element is read once, by index (not through a user's iterator).
    const values = new Float64Array(data.length);
    for (let i = 0; i < values.length; i++) {
      const v: unknown = data[i];
      if (typeof v !== 'number') throw invalidArgument(`data[${i}]`, 'a number', v);
      values[i] = v;
    }
    return dtype === 'i32' ? int32From(values) : values;
  }
  // A Proxy of a typed array passes instanceof but is no view: its elements
  // cannot be read as one, so it is refused like any other non-array.
  const isView = ArrayBuffer.isView(data);
  // Data on a SharedArrayBuffer is copied first: the upload reads a plain buffer.
  if (isView && (data as ArrayBufferView).buffer instanceof SharedArrayBuffer) {
    data = (data as Float32Array | Float64Array | Int32Array | Uint16Array).slice();
  }
  if (dtype === 'i32') {
    if (isView && data instanceof Int32Array) return data;
    throw invalidArgument('data', 'an Int32Array or number[] for dtype "i32"', data);
  }
  if (isView && (data instanceof Float32Array || data instanceof Float64Array)) return data;
  if (isView && data instanceof Uint16Array && dtype !== 'f32') return data;
  throw invalidArgument(
    'data',
    `a Float32Array, Float64Array, number[]${dtype === 'f32' ? '' : ' or Uint16Array (raw bits)'} for dtype "${dtype}"`,
    data,
  );
}

function int32From(values: Float64Array): Int32Array {
  const out = new Int32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isInteger(v) || v < -(2 ** 31) || v >= 2 ** 31) {
      throw invalidArgument(`data[${i}]`, 'a 32-bit integer', v);
    }
    out[i] = v;
  }
  return out;
}

/**
 * Opens a device. 'auto' (the default) picks CUDA when a usable GPU exists,
 * else the CPU; 'cuda' without one throws ENOCUDA with the reason.
 */
export function openDevice(options: OpenDeviceOptions = {}): Device {
  if (options === null || typeof options !== 'object' || isRevokedProxy(options)) {
    throw invalidArgument('options', 'an object', options);
  }
  // Each option is read once.
  const backend = options.backend ?? 'auto';
  if (backend !== 'auto' && backend !== 'cuda' && backend !== 'cpu') {
    throw invalidArgument('backend', '"auto", "cuda" or "cpu"', backend);
  }
  const givenIndex = options.index;
  const index = givenIndex ?? 0;
  if (typeof index !== 'number' || !Number.isInteger(index) || index < 0) {
    throw invalidArgument('index', 'a non-negative integer', index);
  }
  if (index > 2 ** 20) throw invalidArgument('index', 'a device index of at most 2^20', index);
  const poison = options.poisonOutputs ?? false;
  if (typeof poison !== 'boolean') throw invalidArgument('poisonOutputs', 'a boolean', poison);
  const addon = loadNative();
  let kind: Backend;
  if (backend === 'auto') {
    kind = addon.probeCuda().usable ? 'cuda' : 'cpu';
    if (kind === 'cpu' && givenIndex !== undefined && index !== 0) {
      throw invalidArgument('index', `0 for the CPU backend (no CUDA device: ${addon.probeCuda().reason})`, index);
    }
  } else {
    kind = backend;
  }
  if (kind === 'cpu' && index !== 0) throw invalidArgument('index', '0 for the CPU backend', index);
  try {
    return new Device(new addon.NativeDevice(kind, index), poison);
  } catch (err) {
    if (err instanceof MobaError) throw err;
    throw new MobaError('EINVAL', `Could not open the ${kind} device ${describeValue(index)}: ${String(err)}`);
  }
}
