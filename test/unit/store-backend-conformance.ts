/**
 * The shared conformance suite for `StoreBackend` (contract in src/store/backend.ts). Every backend
 * registers it from its own test file, so the chunk store can rely on the contract and not on one
 * implementation's accidents.
 */
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../src/errors.js';
import type { StoreBackend } from '../../src/store/backend.js';
import { collect, ferryError } from './helpers.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A backend under test and how to dispose of whatever it holds. */
export interface BackendUnderTest {
  backend: StoreBackend;
  cleanup: () => Promise<void>;
}

/** Options of the conformance suite for one backend. */
export interface StoreBackendConformanceOptions {
  /**
   * Test titles this backend is known to fail, each with the reason (a bug reference). They still run,
   * reported as TODO, so a fix shows up as a passing TODO and a new failure elsewhere still fails.
   */
  knownFailures?: Record<string, string>;
}

/** Keys the contract forbids; each must be refused by every operation. */
export const invalidKeys = ['../x', '/abs', 'A/B', '', 'a//b', 'a/', 'a/../b', './x', 'a b', 'a\\b'] as const;

/**
 * Registers the StoreBackend conformance tests under `describe(name)`. `makeBackend` is called once per
 * test and must return an empty backend, so tests never see each other's objects.
 */
export function storeBackendConformance(name: string, makeBackend: () => Promise<BackendUnderTest>, options: StoreBackendConformanceOptions = {}): void {
  const knownFailures = options.knownFailures ?? {};
  const titles = new Set<string>();

  /** Registers one contract test with a fresh backend, marked TODO when listed as a known failure. */
  const contract = (title: string, body: (backend: StoreBackend) => Promise<void>) => {
    titles.add(title);
    const todo = knownFailures[title];
    test(title, todo === undefined ? {} : { todo }, async (t) => {
      const { backend, cleanup } = await makeBackend();
      t.after(cleanup);
      await body(backend);
    });
  };

  describe(`StoreBackend conformance: ${name}`, () => {
    contract('has a human-readable location', async (backend) => {
      assert.equal(typeof backend.location, 'string');
      assert.ok(backend.location.length > 0);
    });

    contract('get returns exactly the bytes put, for binary, nested and empty objects', async (backend) => {
      const binary = Buffer.concat([Buffer.from([0, 0xff, 0x0a, 0x0d, 0]), randomBytes(100_000)]);
      await backend.put('chunks/ab/ab01', binary);
      await backend.put('top-level', Buffer.from('x'));
      await backend.put('empty', new Uint8Array(0));
      assert.deepEqual(await backend.get('chunks/ab/ab01'), binary);
      assert.deepEqual(await backend.get('top-level'), Buffer.from('x'));
      const empty = await backend.get('empty');
      assert.ok(Buffer.isBuffer(empty));
      assert.equal(empty.length, 0);
    });

    contract('put copies the data: changing the caller\'s buffer afterwards does not change the object', async (backend) => {
      const data = Buffer.from('original bytes');
      await backend.put('copied', data);
      data.fill(0);
      assert.deepEqual(await backend.get('copied'), Buffer.from('original bytes'));
    });

    contract('putting the same key with the same bytes again is harmless', async (backend) => {
      const data = randomBytes(4096);
      await backend.put('chunks/cd/cd01', data);
      await backend.put('chunks/cd/cd01', data);
      assert.deepEqual(await backend.get('chunks/cd/cd01'), data);
      assert.deepEqual(await collect(backend.list('chunks/')), ['chunks/cd/cd01']);
    });

    contract('putting a key again with other bytes leaves exactly the new bytes', async (backend) => {
      await backend.put('indexes/aa', Buffer.from('first version, longer than the second'));
      await backend.put('indexes/aa', Buffer.from('second'));
      assert.deepEqual(await backend.get('indexes/aa'), Buffer.from('second'));
    });

    contract('get of a missing key throws not-found, not retryable', async (backend) => {
      await backend.put('present', Buffer.from('x'));
      await assert.rejects(backend.get('absent'), ferryError('not-found', ['absent']));
      await assert.rejects(backend.get('chunks/zz/zz99'), (error: unknown) => {
        assert.ok(error instanceof FerryError);
        assert.equal(error.code, 'not-found');
        assert.equal(error.retryable, false);
        return true;
      });
    });

    contract('put of a list of buffers stores their concatenation, empty parts included', async (backend) => {
      const parts = [randomBytes(10), Buffer.alloc(0), randomBytes(200_000), randomBytes(1)];
      await backend.put('packs/cd/cd01', parts);
      assert.deepEqual(await backend.get('packs/cd/cd01'), Buffer.concat(parts));
      const many = Array.from({ length: 3000 }, (_, n) => Buffer.from([n % 256])); // more parts than one writev takes
      await backend.put('packs/cd/cd02', many);
      assert.deepEqual(await backend.get('packs/cd/cd02'), Buffer.concat(many));
      await backend.put('packs/cd/cd03', []);
      assert.deepEqual(await backend.get('packs/cd/cd03'), Buffer.alloc(0));
    });

    contract('getRange returns exactly the bytes asked for, anywhere in the object', async (backend) => {
      const data = randomBytes(300_000);
      await backend.put('packs/ab/ab01', data);
      assert.deepEqual(await backend.getRange('packs/ab/ab01', 0, 10), data.subarray(0, 10));
      assert.deepEqual(await backend.getRange('packs/ab/ab01', 123_456, 100_000), data.subarray(123_456, 223_456));
      assert.deepEqual(await backend.getRange('packs/ab/ab01', 299_990, 10), data.subarray(299_990));
      assert.deepEqual(await backend.getRange('packs/ab/ab01', 300_000, 0), Buffer.alloc(0));
    });

    contract('getRange refuses a missing object, a range past the end and a malformed range', async (backend) => {
      await backend.put('packs/ab/ab01', Buffer.from('0123456789'));
      await assert.rejects(backend.getRange('packs/ab/ab02', 0, 1), ferryError('not-found', ['packs/ab/ab02']));
      await assert.rejects(backend.getRange('packs/ab/ab01', 5, 6), (error: unknown) => {
        assert.ok(error instanceof FerryError);
        assert.equal(error.code, 'corrupt-data');
        assert.equal(error.retryable, false);
        assert.ok(error.message.includes('packs/ab/ab01'));
        return true;
      });
      await assert.rejects(backend.getRange('packs/ab/ab01', 11, 0), ferryError('corrupt-data'));
      await assert.rejects(backend.getRange('packs/ab/ab01', -1, 2), ferryError('invalid-request'));
      await assert.rejects(backend.getRange('packs/ab/ab01', 0, 1.5), ferryError('invalid-request'));
    });

    contract('has is false before put, true after, false after delete', async (backend) => {
      assert.equal(await backend.has('chunks/ef/ef01'), false);
      await backend.put('chunks/ef/ef01', Buffer.from('data'));
      assert.equal(await backend.has('chunks/ef/ef01'), true);
      await backend.delete('chunks/ef/ef01');
      assert.equal(await backend.has('chunks/ef/ef01'), false);
      await assert.rejects(backend.get('chunks/ef/ef01'), ferryError('not-found'));
    });

    // A prefix of a stored key is not itself an object: has must not promise a get that cannot succeed.
    contract('a prefix of a stored key is not an object: has is false, get is not-found', async (backend) => {
      await backend.put('chunks/ab/ab01', Buffer.from('data'));
      assert.equal(await backend.has('chunks/ab'), false);
      assert.equal(await backend.has('chunks'), false);
      await assert.rejects(backend.get('chunks/ab'), ferryError('not-found'));
    });

    contract('delete removes only its key and is idempotent', async (backend) => {
      await backend.put('chunks/ab/ab01', Buffer.from('one'));
      await backend.put('chunks/ab/ab02', Buffer.from('two'));
      await backend.delete('chunks/ab/ab01');
      await backend.delete('chunks/ab/ab01');
      await backend.delete('never-existed');
      assert.equal(await backend.has('chunks/ab/ab01'), false);
      assert.deepEqual(await backend.get('chunks/ab/ab02'), Buffer.from('two'));
      assert.deepEqual(await collect(backend.list('')), ['chunks/ab/ab02']);
    });

    contract('delete of a prefix of a stored key is a harmless no-op', async (backend) => {
      await backend.put('chunks/ab/ab01', Buffer.from('data'));
      await backend.delete('chunks/ab');
      assert.deepEqual(await backend.get('chunks/ab/ab01'), Buffer.from('data'));
    });

    contract('list(prefix) yields exactly the keys starting with prefix, each once', async (backend) => {
      const keys = ['chunks/ab/ab01', 'chunks/ab/ab02', 'chunks/ab0/x', 'chunks/cd/cd01', 'chunksx/1', 'indexes/ff', 'indexes/ff00', 'z'];
      for (const key of keys) await backend.put(key, Buffer.from(key));
      const listed = async (prefix: string) => (await collect(backend.list(prefix))).sort();
      assert.deepEqual(await listed(''), [...keys].sort());
      assert.deepEqual(await listed('chunks/'), ['chunks/ab/ab01', 'chunks/ab/ab02', 'chunks/ab0/x', 'chunks/cd/cd01']);
      assert.deepEqual(await listed('chunks/ab/'), ['chunks/ab/ab01', 'chunks/ab/ab02']);
      assert.deepEqual(await listed('chunks/ab'), ['chunks/ab/ab01', 'chunks/ab/ab02', 'chunks/ab0/x']);
      assert.deepEqual(await listed('chunks/ab/ab0'), ['chunks/ab/ab01', 'chunks/ab/ab02']);
      assert.deepEqual(await listed('chunks'), ['chunks/ab/ab01', 'chunks/ab/ab02', 'chunks/ab0/x', 'chunks/cd/cd01', 'chunksx/1']);
      assert.deepEqual(await listed('indexes/ff'), ['indexes/ff', 'indexes/ff00']);
      assert.deepEqual(await listed('z'), ['z']);
      assert.deepEqual(await listed('nothing/'), []);
      assert.deepEqual(await listed('nothing/deeper/'), []);
    });

    contract('list of a prefix that continues past a stored key yields nothing', async (backend) => {
      await backend.put('chunks/ab/ab01', Buffer.from('data'));
      assert.deepEqual(await collect(backend.list('chunks/ab/ab01/')), []);
      assert.deepEqual(await collect(backend.list('chunks/ab/ab01/x')), []);
    });

    contract('list of an empty backend yields nothing', async (backend) => {
      assert.deepEqual(await collect(backend.list('')), []);
      assert.deepEqual(await collect(backend.list('chunks/')), []);
    });

    contract('keys with a segment starting with a dot are refused (backends keep temporary files there)', async (backend) => {
      await assert.rejects(backend.put('meta/.hidden', Buffer.from('x')), ferryError('invalid-request'));
      assert.deepEqual(await collect(backend.list('')), []);
    });

    contract('a prefix no valid key can have is refused, and nothing outside the store is listed', async (backend) => {
      await backend.put('inside/a', Buffer.from('x'));
      await assert.rejects(collect(backend.list('../')), ferryError('invalid-request'));
      await assert.rejects(collect(backend.list('/etc/')), ferryError('invalid-request'));
      assert.deepEqual(await collect(backend.list('')), ['inside/a']);
    });

    contract('invalid keys are refused by put, get, has and delete, and put stores nothing', async (backend) => {
      for (const key of invalidKeys) {
        await assert.rejects(backend.put(key, Buffer.from('x')), `put('${key}') should be refused`);
        await assert.rejects(backend.get(key), `get('${key}') should be refused`);
        await assert.rejects(backend.has(key), `has('${key}') should be refused`);
        await assert.rejects(backend.delete(key), `delete('${key}') should be refused`);
      }
      assert.deepEqual(await collect(backend.list('')), []);
    });

    // A caller retries retryable errors; an invalid key will never succeed, so it must not say retryable.
    contract('invalid keys are refused as a caller error, never as a retryable one', async (backend) => {
      const operations: [string, (key: string) => Promise<unknown>][] = [
        ['put', (key) => backend.put(key, Buffer.from('x'))],
        ['get', (key) => backend.get(key)],
        ['getRange', (key) => backend.getRange(key, 0, 1)],
        ['has', (key) => backend.has(key)],
        ['delete', (key) => backend.delete(key)],
      ];
      for (const key of invalidKeys) {
        for (const [operation, run] of operations) {
          await assert.rejects(run(key), (error: unknown) => {
            assert.ok(!(error instanceof FerryError && error.retryable), `${operation}('${key}') was refused as retryable: ${String(error)}`);
            return true;
          });
        }
      }
    });

    contract('stat gives the size of an object and null for a missing key or a prefix of a stored key', async (backend) => {
      const before = Date.now();
      await backend.put('chunks/ab/ab01', randomBytes(1234));
      await backend.put('empty', new Uint8Array(0));
      const after = Date.now();
      const stat = await backend.stat('chunks/ab/ab01');
      assert.ok(stat, 'an object that was put has a stat');
      assert.equal(stat.size, 1234);
      // modifiedAt may be rounded down to the medium's resolution (whole seconds at worst).
      assert.ok(stat.modifiedAt >= before - 2000 && stat.modifiedAt <= after + 1000, `modifiedAt ${stat.modifiedAt} should lie around [${before}, ${after}]`);
      assert.equal((await backend.stat('empty'))?.size, 0);
      assert.equal(await backend.stat('chunks/ab/ab02'), null);
      assert.equal(await backend.stat('chunks/ab'), null);
      assert.equal(await backend.stat('chunks'), null);
      await backend.delete('chunks/ab/ab01');
      assert.equal(await backend.stat('chunks/ab/ab01'), null);
    });

    contract('touch of a missing key or a prefix resolves false and creates nothing', async (backend) => {
      assert.equal(await backend.touch('chunks/ab/ab01'), false);
      assert.deepEqual(await collect(backend.list('')), []);
      await backend.put('chunks/ab/ab02', Buffer.from('data'));
      assert.equal(await backend.touch('chunks/ab'), false);
      assert.equal(await backend.touch('chunks/ab/ab01'), false);
      assert.deepEqual(await collect(backend.list('')), ['chunks/ab/ab02']);
      assert.equal(await backend.has('chunks/ab/ab01'), false);
    });

    // Garbage collection keeps objects touched after its cutoff; a touch that did not move modifiedAt
    // forward would let it delete a chunk a client was just told exists.
    contract('touch moves modifiedAt forward and leaves the bytes alone', async (backend) => {
      const data = randomBytes(2048);
      await backend.put('chunks/cd/cd01', data);
      const first = await backend.stat('chunks/cd/cd01');
      await sleep(1100); // longer than the coarsest timestamp resolution a backend may have
      const touchedAt = Date.now();
      assert.equal(await backend.touch('chunks/cd/cd01'), true);
      const second = await backend.stat('chunks/cd/cd01');
      assert.ok(first && second);
      assert.ok(second.modifiedAt > first.modifiedAt, `modifiedAt should move forward: ${first.modifiedAt} -> ${second.modifiedAt}`);
      assert.ok(second.modifiedAt >= touchedAt - 1000, `modifiedAt ${second.modifiedAt} should be about the touch (${touchedAt})`);
      assert.equal(second.size, data.length);
      assert.deepEqual(await backend.get('chunks/cd/cd01'), data);
    });

    contract('invalid keys are refused by stat and touch as a caller error', async (backend) => {
      for (const key of invalidKeys) {
        for (const [operation, run] of [['stat', () => backend.stat(key)], ['touch', () => backend.touch(key)]] as const) {
          await assert.rejects(run(), (error: unknown) => {
            assert.ok(error instanceof FerryError, `${operation}('${key}') should throw a FerryError, got ${String(error)}`);
            assert.equal(error.code, 'invalid-request', `${operation}('${key}')`);
            assert.equal(error.retryable, false);
            return true;
          });
        }
      }
      assert.deepEqual(await collect(backend.list('')), []);
    });

    contract('a put in progress never shows a partial object to list, has or get', async (backend) => {
      const objects = Array.from({ length: 8 }, (_, position) => ({ key: `chunks/p${position}/obj`, data: randomBytes(512 * 1024) }));
      const expected = new Map(objects.map((object) => [object.key, object.data]));
      const writes = Promise.all(objects.map((object) => backend.put(object.key, object.data)));
      let settled = false;
      void writes.finally(() => (settled = true)).catch(() => undefined);
      do {
        for (const key of await collect(backend.list('chunks/'))) {
          const data = expected.get(key);
          assert.ok(data, `list yielded '${key}', which no put wrote (a temporary file?)`);
          assert.deepEqual(await backend.get(key), data, `'${key}' was listed before it was complete`);
        }
        for (const object of objects) {
          if (await backend.has(object.key)) assert.deepEqual(await backend.get(object.key), object.data);
        }
      } while (!settled);
      await writes;
      assert.deepEqual((await collect(backend.list('chunks/'))).sort(), [...expected.keys()].sort());
    });
  });

  test(`StoreBackend conformance: ${name}: every known failure names a real test`, () => {
    for (const title of Object.keys(knownFailures)) assert.ok(titles.has(title), `knownFailures names no test called '${title}'`);
  });
}
