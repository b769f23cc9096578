#!/usr/bin/env node
// npm's install step: keep a prebuilt binary that loads (prebuilds/ or an
// earlier build/), otherwise build from source with cmake-js, offline.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

if (!process.env.MOBA_FORCE_BUILD) {
  try {
    require('node-gyp-build')(root);
    process.exit(0);
  } catch {
    // no loadable binary yet: build one
  }
}
const result = spawnSync(process.execPath, [join(root, 'scripts', 'build-native.js')], { cwd: root, stdio: 'inherit' });
process.exit(result.status ?? 1);
