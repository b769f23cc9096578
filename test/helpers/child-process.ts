import { spawnSync, type SpawnSyncReturns } from 'node:child_process';

/** The built package's entry, as a URL a child's `import` takes. */
export const distEntry = new URL('../../dist/index.js', import.meta.url).href;

/** Runs ES-module `source` in a fresh Node.js process (60 s at most). */
export function runModule(source: string): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, ['--input-type=module', '-e', source], { encoding: 'utf8', timeout: 60_000 });
}
