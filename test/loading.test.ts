/**
 * A missing or unloadable binary is a MobaError (ENOBINARY) that says what is
 * missing and the command that builds it. Runs in its own module graph so the
 * loader's cache starts empty.
 */
import { afterEach, expect, it, vi } from 'vitest';

const saved = process.env.MOBA_NATIVE_PATH;
afterEach(() => {
  if (saved === undefined) delete process.env.MOBA_NATIVE_PATH;
  else process.env.MOBA_NATIVE_PATH = saved;
  vi.resetModules();
});

it('a missing binary is ENOBINARY naming what is missing and the build command', async () => {
  process.env.MOBA_NATIVE_PATH = '/nonexistent/moba_cuda.node';
  vi.resetModules();
  const { openDevice, MobaError } = await import('../lib/index.js');
  let err: unknown;
  try {
    openDevice({ backend: 'cpu' });
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(MobaError);
  expect((err as InstanceType<typeof MobaError>).code).toBe('ENOBINARY');
  const message = (err as Error).message;
  expect(message).toContain('/nonexistent/moba_cuda.node');
  expect(message).toContain(`${process.platform}-${process.arch}`);
  expect(message).toContain('npm run build:native');
});

it('the built binary loads and reports its version and CUDA build facts', async () => {
  vi.resetModules();
  const { buildInfo } = await import('../lib/index.js');
  const info = buildInfo();
  expect(info.version).toMatch(/^\d+\.\d+\.\d+/);
  expect(typeof info.cudaCompiled).toBe('boolean');
  if (info.cudaCompiled) {
    expect(info.cudaArchs.length).toBeGreaterThan(0);
    expect(info.cudaRuntime).toMatch(/^\d+\.\d+$/);
  }
  if (!info.cudaUsable) expect(info.cudaUnavailableReason).toMatch(/\S/);
});
