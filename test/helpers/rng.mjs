// The seeded random source of every test driver: the vitest suites (through
// random.ts), the fuzz driver and the sanitizer driver, which run as plain
// JavaScript on dist/ and so cannot import TypeScript.

/** FNV-1a of a label, to derive a stream of its own for each test or case. */
export function hashLabel(label) {
  let h = 0x811c9dc5;
  for (let i = 0; i < label.length; i++) {
    h ^= label.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** mulberry32: small, fast, good enough for test inputs. */
export function makeRng(seed) {
  let a = seed >>> 0;
  let spare;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    seed: seed >>> 0,
    next,
    int(lo, hi) {
      return lo + Math.floor(next() * (hi - lo + 1));
    },
    normal() {
      if (spare !== undefined) {
        const s = spare;
        spare = undefined;
        return s;
      }
      // Box-Muller; 1 - u is in (0, 1], so the log is finite.
      const u = 1 - next();
      const w = next();
      const r = Math.sqrt(-2 * Math.log(u));
      spare = r * Math.sin(2 * Math.PI * w);
      return r * Math.cos(2 * Math.PI * w);
    },
    pick(items) {
      if (items.length === 0) throw new Error('pick from an empty array');
      return items[Math.floor(next() * items.length)];
    },
  };
}
