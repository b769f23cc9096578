#!/usr/bin/env node
// Builds the native addon with cmake-js (CMakeLists.txt is the one build
// definition). Environment: MOBA_CUDA=AUTO|ON|OFF, MOBA_CUDA_ARCHS="90a" or
// "80,90a" (default: 80, 86, 89, 90a + PTX). Options: --out <dir> (cmake-js
// build directory, default build/), --copy-to <dir> (copy the .node there:
// used by binding.gyp so node-gyp and prebuildify find it), --debug.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

const args = process.argv.slice(2);
function option(name) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}
const out = resolve(root, option('--out') ?? 'build');
const copyTo = option('--copy-to');
const config = args.includes('--debug') ? 'Debug' : 'Release';

const cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
// Both settings are passed on every build (cmake-js drops empty values, hence
// "default"), and the build directory is configured again each time, so a
// changed MOBA_CUDA_ARCHS takes effect in an existing build/.
const common = [
  '--out', out, '--config', config,
  `--CDMOBA_CUDA=${process.env.MOBA_CUDA || 'AUTO'}`,
  `--CDMOBA_CUDA_ARCHS=${process.env.MOBA_CUDA_ARCHS || 'default'}`,
];
const build = ['build', ...common];
if (process.env.MOBA_BUILD_JOBS) build.push('--parallel', process.env.MOBA_BUILD_JOBS);
let result = spawnSync(process.execPath, [cmakeJs, 'configure', ...common], { cwd: root, stdio: 'inherit' });
if (result.status === 0) result = spawnSync(process.execPath, [cmakeJs, ...build], { cwd: root, stdio: 'inherit' });
if (result.status !== 0) {
  console.error('moba-cuda: native build failed. It needs cmake (>= 3.18) and a C++17 compiler; ' +
    'CUDA kernels also need nvcc (set MOBA_CUDA=OFF for a CPU-only build).');
  process.exit(result.status ?? 1);
}
if (copyTo) {
  const dest = resolve(root, copyTo);
  mkdirSync(dest, { recursive: true });
  copyFileSync(join(out, config, 'moba_cuda.node'), join(dest, 'moba_cuda.node'));
}
