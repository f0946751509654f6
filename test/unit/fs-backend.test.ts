import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { collect, ferryError, makeTempDir, tempDirFor } from './helpers.js';
import { storeBackendConformance } from './store-backend-conformance.js';

storeBackendConformance(
  'FilesystemBackend',
  async () => {
    const directory = await makeTempDir('ferry-fs-backend-');
    return { backend: new FilesystemBackend(path.join(directory, 'store')), cleanup: () => fs.rm(directory, { recursive: true, force: true }) };
  },
);

describe('FilesystemBackend on disk', () => {
  test('an object is a file at the key path, readable by a new backend over the same root', async (t) => {
    const root = path.join(await tempDirFor(t), 'store');
    await new FilesystemBackend(root).put('chunks/ab/ab01', Buffer.from('durable'));
    assert.deepEqual(await fs.readFile(path.join(root, 'chunks', 'ab', 'ab01')), Buffer.from('durable'));
    const reopened = new FilesystemBackend(root);
    assert.equal(await reopened.has('chunks/ab/ab01'), true);
    assert.deepEqual(await reopened.get('chunks/ab/ab01'), Buffer.from('durable'));
  });

  test('a put leaves no temporary file behind', async (t) => {
    const root = path.join(await tempDirFor(t), 'store');
    const backend = new FilesystemBackend(root);
    await backend.put('chunks/ab/ab01', Buffer.alloc(1000, 7));
    await backend.put('chunks/ab/ab01', Buffer.alloc(1000, 7));
    assert.deepEqual(await fs.readdir(path.join(root, 'chunks', 'ab')), ['ab01']);
  });

  // What a crash between writing the temporary file and renaming it leaves: it must stay invisible.
  test('the temporary file of an interrupted put is not an object: not listed, has is false, get is not-found', async (t) => {
    const root = path.join(await tempDirFor(t), 'store');
    const backend = new FilesystemBackend(root);
    await backend.put('chunks/ab/ab01', Buffer.from('complete'));
    await fs.writeFile(path.join(root, 'chunks', 'ab', '.ab02.0123456789ab.tmp'), 'half of an obj');
    assert.deepEqual(await collect(backend.list('')), ['chunks/ab/ab01']);
    assert.deepEqual(await collect(backend.list('chunks/ab/')), ['chunks/ab/ab01']);
    assert.equal(await backend.has('chunks/ab/ab02'), false);
    await assert.rejects(backend.get('chunks/ab/ab02'), { code: 'not-found' });
  });

  test("a put to '../x' writes nothing outside the root", async (t) => {
    const parent = await tempDirFor(t);
    const backend = new FilesystemBackend(path.join(parent, 'store'));
    await assert.rejects(backend.put('../x', Buffer.from('escape')));
    await assert.rejects(backend.put('a/../../y', Buffer.from('escape')));
    assert.deepEqual(await fs.readdir(parent), []);
  });

  test('location is the absolute path of the root', async (t) => {
    const directory = await tempDirFor(t);
    const relative = path.relative(process.cwd(), path.join(directory, 'store'));
    assert.equal(new FilesystemBackend(relative).location, path.join(directory, 'store'));
  });
});

describe('FilesystemBackend when its directories change underneath', () => {
  test('a put after its directory was removed by hand recreates it', async (t) => {
    const root = path.join(await tempDirFor(t), 'store');
    const backend = new FilesystemBackend(root);
    await backend.put('chunks/ab/ab01', Buffer.from('one'));
    await fs.rm(path.join(root, 'chunks'), { recursive: true });
    await backend.put('chunks/ab/ab02', Buffer.from('two'));
    assert.deepEqual(await backend.get('chunks/ab/ab02'), Buffer.from('two'));
  });

  test('getRangeInto reads a range into the caller\'s buffer, with getRange\'s errors', async (t) => {
    const backend = new FilesystemBackend(path.join(await tempDirFor(t), 'store'));
    await backend.put('packs/ab/ab01', Buffer.from('0123456789'));
    const target = Buffer.alloc(4);
    await backend.getRangeInto('packs/ab/ab01', 3, target);
    assert.equal(target.toString(), '3456');
    await assert.rejects(backend.getRangeInto('packs/ab/ab01', 8, target), ferryError('corrupt-data', ['truncated']));
    await assert.rejects(backend.getRangeInto('packs/ab/gone', 0, target), ferryError('not-found'));
  });

  // Range reads keep files open for a moment (delta bases are thousands of small reads of a few packs).
  test('range reads reuse open files; put and delete through the backend are never hidden by them', async (t) => {
    const root = path.join(await tempDirFor(t), 'store');
    const backend = new FilesystemBackend(root);
    t.after(() => backend.close());
    const openFiles = async () => (await fs.readdir('/proc/self/fd')).length;
    await backend.put('packs/ab/ab01', Buffer.alloc(4096, 1));
    const before = await openFiles();
    await Promise.all(Array.from({ length: 200 }, (_, position) => backend.getRange('packs/ab/ab01', position, 16)));
    assert.equal(await openFiles(), before + 1, 'one file kept open for 200 reads of one object');

    await backend.put('packs/ab/ab01', Buffer.alloc(4096, 2)); // replaced: reads must see the new bytes
    assert.deepEqual(await backend.getRange('packs/ab/ab01', 10, 4), Buffer.alloc(4, 2));
    await backend.delete('packs/ab/ab01');
    await assert.rejects(backend.getRange('packs/ab/ab01', 0, 1), ferryError('not-found', ['packs/ab/ab01']));

    // Many objects: at most 64 stay open.
    for (let position = 0; position < 100; position++) await backend.put(`packs/cd/cd${String(position).padStart(3, '0')}`, Buffer.alloc(64, position));
    for (let position = 0; position < 100; position++) {
      assert.deepEqual(await backend.getRange(`packs/cd/cd${String(position).padStart(3, '0')}`, 0, 8), Buffer.alloc(8, position));
    }
    assert.ok((await openFiles()) <= before + 64, `at most 64 files kept open, found ${(await openFiles()) - before} more`);
    await backend.close();
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok((await openFiles()) <= before, 'close() closes them');
    assert.deepEqual(await backend.getRange('packs/cd/cd007', 0, 8), Buffer.alloc(8, 7)); // still usable after close
  });
});
