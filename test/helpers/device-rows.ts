/**
 * Long bf16 row tensors on a device without making them on the host: random
 * rows repeated with a period, and copies of a run of rows. For tests whose
 * sequences have millions of tokens.
 */
import type { Device, Tensor } from '../../lib/index.js';
import { randn, roundToBf16, type Rng } from './random.js';

/**
 * [rows, heads, dim] bf16 whose row r is row r % period of `period` random
 * rows. With a prime period, blocks of a power-of-two size repeat only every
 * `period` blocks.
 */
export function periodicRows(device: Device, rows: number, heads: number, dim: number, period: number, rng: Rng): Tensor {
  const rowBytes = heads * dim * 2;
  const t = device.empty([rows, heads, dim], 'bf16');
  using src = device.tensor(roundToBf16(randn(period * heads * dim, rng)), { dtype: 'bf16', shape: [period, heads, dim] });
  for (let at = 0; at < rows; at += period) {
    device.native.copy(t.buffer, at * rowBytes, src.buffer, 0, Math.min(period, rows - at) * rowBytes);
  }
  return t;
}

/** A copy of rows [from, from + count) of a [rows, heads, dim] bf16 tensor. */
export function rowSlice(device: Device, t: Tensor, from: number, count: number): Tensor {
  const [, heads, dim] = t.shape as [number, number, number];
  const rowBytes = heads * dim * 2;
  const out = device.empty([count, heads, dim], 'bf16');
  device.native.copy(out.buffer, 0, t.buffer, from * rowBytes, count * rowBytes);
  return out;
}
