/**
 * The chunk catalog's hash table (chunk-catalog.ts) against a plain Map doing the same thing: random
 * adds (with duplicates across containers, and repacks that replace), forgets, adopts and touches, with
 * names chosen to collide (long probe runs, runs that wrap around the table's end, when probes start at
 * the names' first bytes), across several doublings of the table.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import { ChunkCatalog, type ChunkContainer } from '../../src/store/chunk-catalog.js';

/** A seeded generator (mulberry32), so a failure repeats. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * `count` distinct names: most evenly spread, a share starting with one of a few 4-byte prefixes (the
 * table's probe starts), among them 0xffffffff, whose probe starts at the table's last slot.
 */
function names(count: number): string[] {
  const prefixes = ['ffffffff', '00000000', '7f3a0001', 'fffffffe'];
  return Array.from({ length: count }, (_, index) => {
    const hash = createHash('sha256').update(String(index)).digest('hex');
    return index % 5 === 0 ? prefixes[index % prefixes.length]! + hash.slice(8) : hash;
  });
}

interface ModelEntry {
  key: string;
  position: number;
  touchedAt: number;
}

describe('ChunkCatalog', () => {
  for (const probeOffset of [0, undefined]) {
    test(`agrees with a Map model through 4000 random operations (${probeOffset === 0 ? 'probes from the first bytes, where the test names collide' : 'probe offset chosen at random'})`, () => {
      const next = random(7);
      const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
      const pool = names(6000);
      const catalog = new ChunkCatalog(probeOffset);
      const model = new Map<string, ModelEntry>();
      const containers = new Map<string, { names: string[]; modifiedAt: number }>();
      let packNumber = 0;
      let clock = 1000;

      const check = (sampleAbsent: boolean) => {
        assert.equal(catalog.size, model.size, 'size');
        for (const [name, expected] of model) {
          const entry = catalog.get(name);
          assert.ok(entry, `${name} should be catalogued`);
          assert.equal(entry.container.key, expected.key, `${name}: container`);
          assert.equal(entry.offset, expected.position * 100, `${name}: offset`);
          assert.equal(entry.length, expected.position + 1, `${name}: length`);
          assert.equal(entry.touchedAt, expected.touchedAt, `${name}: touch time`);
          assert.ok(catalog.isCurrent(name, entry.container));
        }
        if (sampleAbsent) for (const name of pool) if (!model.has(name)) assert.equal(catalog.get(name), undefined, `${name} should not be catalogued`);
        assert.deepEqual(catalog.containers().map((container) => container.key).sort(), [...containers.keys()].sort());
      };

      for (let step = 0; step < 4000; step++) {
        clock += 1 + Math.floor(next() * 10);
        const roll = next();
        if (roll < 0.45 || containers.size === 0) {
          // A new pack: 1-150 distinct names, some already held elsewhere; now and then a repack that replaces.
          const size = 1 + Math.floor(next() * 150);
          const chosen = [...new Set(Array.from({ length: size }, () => pick(pool)))];
          const key = `packs/${packNumber++}`;
          const replace = next() < 0.1;
          const touchedAt = replace ? 0 : clock;
          catalog.add({ key, kind: 'pack', size: 1, modifiedAt: clock }, chosen.map((name, position) => ({ name, offset: position * 100, length: position + 1 })), touchedAt, replace);
          containers.set(key, { names: chosen, modifiedAt: clock });
          chosen.forEach((name, position) => {
            const existing = model.get(name);
            if (existing && !replace) existing.touchedAt = Math.max(existing.touchedAt, touchedAt);
            else model.set(name, { key, position, touchedAt: Math.max(touchedAt, existing?.touchedAt ?? 0) });
          });
        } else if (roll < 0.7) {
          const key = pick([...containers.keys()]);
          catalog.forgetContainer(key);
          containers.delete(key);
          for (const [name, entry] of model) if (entry.key === key) model.delete(name);
        } else if (roll < 0.85) {
          const name = pick(pool);
          assert.equal(catalog.touch(name, clock), model.has(name));
          const entry = model.get(name);
          if (entry) {
            entry.touchedAt = clock;
            containers.get(entry.key)!.modifiedAt = clock;
          }
        } else {
          // Adopt a copy: read a name from a container that holds it.
          const key = pick([...containers.keys()]);
          const held = containers.get(key)!;
          const position = Math.floor(next() * held.names.length);
          const container = catalog.container(key)!;
          const adopted = catalog.adopt(container, position);
          assert.equal(adopted.container, container);
          model.set(held.names[position]!, { key, position, touchedAt: held.modifiedAt });
        }
        check(step % 500 === 0);
      }
      check(true);
      assert.ok(model.size > 1000, `the table grew well past its first size (${model.size} entries)`);
    });
  }

  test('a container keeps its names, offsets and lengths; a name that is not 64 hex is refused or not found', () => {
    const catalog = new ChunkCatalog();
    const [a, b] = names(2);
    catalog.add({ key: 'packs/p', kind: 'pack', size: 300, modifiedAt: 5 }, [{ name: a!, offset: 0, length: 100 }, { name: b!, offset: 100, length: 200 }], 5);
    const container: ChunkContainer = catalog.container('packs/p')!;
    assert.deepEqual([...container.names], [a, b]);
    assert.deepEqual([...container.names.entries()], [[0, a], [1, b]]);
    assert.deepEqual([...container.offsets], [0, 100]);
    assert.deepEqual([...container.lengths], [100, 200]);
    assert.equal(catalog.get(a!.toUpperCase()), undefined);
    assert.equal(catalog.get('abc'), undefined);
    assert.throws(() => catalog.add({ key: 'packs/q', kind: 'pack', size: 1, modifiedAt: 5 }, [{ name: 'zz', offset: 0, length: 1 }], 5), /not 64 hex/);
  });

  test('touching a chunk marks its container modified too', () => {
    const catalog = new ChunkCatalog();
    const [a] = names(1);
    catalog.add({ key: 'packs/p', kind: 'pack', size: 1, modifiedAt: 5 }, [{ name: a!, offset: 0, length: 1 }], 5);
    assert.equal(catalog.touch(a!, 99), true);
    assert.equal(catalog.get(a!)!.touchedAt, 99);
    assert.equal(catalog.container('packs/p')!.modifiedAt, 99);
    assert.equal(catalog.touch(names(2)[1]!, 100), false);
  });
});
