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
});
