import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { openDevice } from './device.js';
import { loadNative, packageRoot } from './native.js';

export interface BuildInfo {
  /** Package version. */
  version: string;
  /** The binary was compiled with CUDA kernels. */
  cudaCompiled: boolean;
  /** GPU architectures the binary carries, e.g. ["80", "86", "89", "90a", "compute_90"]. */
  cudaArchs: string[];
  /** "13.0" */
  cudaRuntime?: string;
  /** CUDA version the installed driver supports, when a driver is present. */
  cudaDriver?: string;
  cudaUsable: boolean;
  cudaDeviceCount: number;
  /** Why CUDA cannot be used, when it cannot. */
  cudaUnavailableReason?: string;
}

function cudaVersion(v: number): string | undefined {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : undefined;
}

/** What the loaded binary carries and what CUDA the machine offers. */
export function buildInfo(): BuildInfo {
  const addon = loadNative();
  const probe = addon.probeCuda();
  const pkg = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string };
  const info: BuildInfo = {
    version: pkg.version,
    cudaCompiled: probe.compiled,
    cudaArchs: probe.archs ? probe.archs.split(',') : [],
    cudaUsable: probe.usable,
    cudaDeviceCount: probe.deviceCount,
  };
  const runtime = cudaVersion(probe.runtimeVersion);
  const driver = cudaVersion(probe.driverVersion);
  if (runtime) info.cudaRuntime = runtime;
  if (driver) info.cudaDriver = driver;
  if (!probe.usable) info.cudaUnavailableReason = probe.reason;
  return info;
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

export interface InfoReport {
  version: string;
  backend: string;
  device: string;
  computeCapability: string | null;
  memory: { total: number; free: number };
  cudaDriver: string | null;
  cudaRuntime: string | null;
  cudaCompiled: boolean;
  cudaArchs: string[];
  cudaUnavailableReason: string | null;
}

/** Everything `moba-cuda info` prints, for the device openDevice() picks. */
export function infoReport(): InfoReport {
  const build = buildInfo();
  const device = openDevice();
  try {
    const mem = device.memoryInfo();
    return {
      version: build.version,
      backend: device.backend,
      device: device.name,
      computeCapability: device.computeCapability ?? null,
      memory: { total: mem.total, free: mem.free },
      cudaDriver: build.cudaDriver ?? null,
      cudaRuntime: build.cudaRuntime ?? null,
      cudaCompiled: build.cudaCompiled,
      cudaArchs: build.cudaArchs,
      cudaUnavailableReason: build.cudaUnavailableReason ?? null,
    };
  } finally {
    device.dispose();
  }
}

export function formatInfo(r: InfoReport): string {
  const mem = r.memory;
  const lines: [string, string][] = [
    ['moba-cuda', String(r.version)],
    ['backend', String(r.backend)],
    ['device', String(r.device)],
    ['compute capability', r.computeCapability === null ? '-' : String(r.computeCapability)],
    ['memory', `${gib(mem.free)} free of ${gib(mem.total)}`],
    ['CUDA driver', r.cudaDriver === null ? 'none' : String(r.cudaDriver)],
    ['CUDA runtime', r.cudaRuntime === null ? '-' : `${String(r.cudaRuntime)} (static)`],
    ['GPU architectures', r.cudaCompiled ? r.cudaArchs.join(', ') : 'none (CPU-only build)'],
  ];
  if (r.cudaUnavailableReason !== null) lines.push(['CUDA unavailable', String(r.cudaUnavailableReason)]);
  const width = Math.max(...lines.map(([k]) => k.length));
  return lines.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n');
}

