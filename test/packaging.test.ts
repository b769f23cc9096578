/**
 * node-gyp users are served from the same CMake build: binding.gyp only runs
 * cmake-js, so `prebuildify --napi --strip` (which drives node-gyp) must leave
 * a loadable prebuilds/<platform>-<arch>/moba-cuda.node. Built CPU-only here
 * to keep the test short; the CUDA build goes through the same path.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'moba-packaging-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

it('prebuildify (node-gyp -> binding.gyp -> cmake-js) produces a prebuild that node-gyp-build loads', () => {
  const files = spawnSync('git', ['ls-files'], { cwd: root, encoding: 'utf8' }).stdout.trim().split('\n');
  for (const f of files) {
    if (f.startsWith('native/') || f.startsWith('scripts/') || ['CMakeLists.txt', 'binding.gyp', 'package.json'].includes(f)) {
      cpSync(join(root, f), join(work, f), { recursive: true });
    }
  }
  symlinkSync(join(root, 'node_modules'), join(work, 'node_modules'), 'dir');
  const prebuildify = join(root, 'node_modules', 'prebuildify', 'bin.js');
  const res = spawnSync(process.execPath, [prebuildify, '--napi', '--strip'], {
    cwd: work,
    env: { ...process.env, MOBA_CUDA: 'OFF' },
    encoding: 'utf8',
    timeout: 15 * 60_000,
  });
  expect(res.status, `prebuildify failed:\n${res.stdout}\n${res.stderr}`).toBe(0);
  const prebuild = join(work, 'prebuilds', `${process.platform}-${process.arch}`, 'moba-cuda.node');
  expect(existsSync(prebuild)).toBe(true);

  const require = createRequire(import.meta.url);
  const load = require(join(dirname(require.resolve('node-gyp-build')), 'index.js')) as {
    path: (dir: string) => string;
  };
  expect(load.path(work)).toBe(prebuild);
  const addon = require(prebuild) as { NativeDevice: new (k: string, i: number) => { kind: string; dispose(): void } };
  const device = new addon.NativeDevice('cpu', 0);
  expect(device.kind).toBe('cpu');
  device.dispose();
}, 16 * 60_000);
