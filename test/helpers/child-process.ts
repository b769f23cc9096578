import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';

import { expect } from 'vitest';

/** The built package's entry, as a URL a child's `import` takes. */
export const distEntry = new URL('../../dist/index.js', import.meta.url).href;

/**
 * Runs `cmd` with `args` without blocking the event loop (so that several
 * run at once); resolves with its exit status and its stdout and stderr
 * together (status -1 when it could not start).
 */
export function runCommand(cmd: string, args: string[]): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b) => (out += b));
    child.stderr.on('data', (b) => (out += b));
    child.on('error', (e) => resolve({ status: -1, out: String(e) }));
    child.on('close', (status) => resolve({ status, out }));
  });
}

/**
 * Runs ES-module `source` in a fresh Node.js process (60 s at most), with
 * `env` added to this process's environment.
 */
export function runModule(source: string, env: Record<string, string> = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, ['--input-type=module', '-e', source], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, ...env },
  });
}

/**
 * Runs `body` after `import { openDevice }` from the package in a fresh
 * process (environment plus `env`), and expects it to reach its end and
 * exit with code 0, silently.
 */
export function expectCleanExit(body: string, env: Record<string, string> = {}): void {
  const r = runModule(`import { openDevice } from ${JSON.stringify(distEntry)};\n${body}\nconsole.log('end of script');\n`, env);
  expect(r.stdout, r.stderr).toContain('end of script');
  expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
}

/**
 * A script body that, `rounds` times, starts a worker holding two devices of
 * `backend` with 64 reads queued (of 2^minLog2 .. 2^(minLog2 + sizes - 1)
 * floats) and terminates it: their completions reach an environment being
 * torn down.
 */
export function terminatedWorkers(backend: 'cpu' | 'cuda', rounds: number, minLog2: number, sizes: number): string {
  return `
    const { Worker } = await import('node:worker_threads');
    for (let round = 0; round < ${rounds}; round++) {
      const w = new Worker(\`
        import { parentPort } from 'node:worker_threads';
        import { openDevice } from ${JSON.stringify(distEntry)};
        const devices = [openDevice({ backend: '${backend}' }), openDevice({ backend: '${backend}' })];
        for (let i = 0; i < 64; i++) {
          const n = 1 << (${minLog2} + (i % ${sizes}));
          void devices[i % 2].tensor(new Float32Array(n).fill(i), { dtype: 'f32', shape: [n] }).toArray();
        }
        parentPort.postMessage('queued');
        setInterval(() => {}, 1000);\`, { eval: true, execArgv: ['--input-type=module'] });
      await new Promise((resolve) => w.once('message', resolve));
      await w.terminate();
    }
    void openDevice;`;
}
