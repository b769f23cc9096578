/** `moba-cuda info`: the package's bin, run as a user would run it. */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const pkg = JSON.parse(readFileSync(`${root}/package.json`, 'utf8')) as { bin: Record<string, string>; version: string };

function runCli(...args: string[]) {
  return spawnSync(process.execPath, [`${root}/${pkg.bin['moba-cuda']}`, ...args], { encoding: 'utf8', cwd: root });
}

it('info --json reports backend, device, versions, memory and GPU architectures', () => {
  const res = runCli('info', '--json');
  expect(res.stderr).toBe('');
  expect(res.status).toBe(0);
  const r = JSON.parse(res.stdout) as Record<string, unknown>;
  expect(r.version).toBe(pkg.version);
  expect(['cpu', 'cuda']).toContain(r.backend);
  expect(r.device).toMatch(/\S/);
  expect((r.memory as { total: number }).total).toBeGreaterThan(0);
  expect(Array.isArray(r.cudaArchs)).toBe(true);
  if (r.backend === 'cuda') {
    expect(r.computeCapability).toMatch(/^\d+\.\d$/);
    expect(r.cudaDriver).toMatch(/^\d+\.\d+$/);
  } else {
    expect(r.cudaUnavailableReason).toMatch(/\S/);
  }
});

it('info prints a readable table', () => {
  const res = runCli('info');
  expect(res.status).toBe(0);
  for (const label of ['backend', 'device', 'compute capability', 'memory', 'CUDA driver', 'CUDA runtime', 'GPU architectures']) {
    expect(res.stdout).toMatch(new RegExp(`^${label}\\s+\\S`, 'm'));
  }
});

it('an unknown command prints usage and exits 2', () => {
  const res = runCli('frobnicate');
  expect(res.status).toBe(2);
  expect(res.stderr).toContain('usage: moba-cuda info');
});
