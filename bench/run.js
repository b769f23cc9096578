#!/usr/bin/env node
// `npm run bench -- <name> [args...]` runs bench/<name>.js with the remaining
// arguments. Benchmarks import the compiled package (dist/): run `npm run
// build:ts` first after changing lib/.
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const available = readdirSync(here)
  .filter((f) => f.endsWith('.js') && f !== 'run.js' && !f.startsWith('_'))
  .map((f) => f.slice(0, -3))
  .sort();
const [name, ...rest] = process.argv.slice(2);
if (!name || !available.includes(name)) {
  console.error(`usage: npm run bench -- <${available.join('|')}> [options]`);
  process.exit(name ? 2 : 0);
}
process.argv = [process.argv[0], join(here, `${name}.js`), ...rest];
await import(pathToFileURL(join(here, `${name}.js`)).href);
