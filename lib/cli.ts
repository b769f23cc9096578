#!/usr/bin/env node
/**
 * `moba-cuda info [--json]`: the backend that openDevice() picks, the device,
 * CUDA driver/runtime versions, memory and the GPU architectures compiled in.
 */
import { MobaError } from './errors.js';
import { formatInfo, infoReport } from './info.js';

function main(argv: string[]): number {
  const [command, ...rest] = argv;
  if (command === 'info') {
    const report = infoReport();
    console.log(rest.includes('--json') ? JSON.stringify(report, null, 2) : formatInfo(report));
    return 0;
  }
  console.error('usage: moba-cuda info [--json]');
  return command === undefined || command === '--help' || command === '-h' ? 0 : 2;
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (err) {
  console.error(err instanceof MobaError ? `moba-cuda: ${err.code}: ${err.message}` : err);
  process.exitCode = 1;
}
