/**
 * Store verification over a real FilesystemBackend: a missing chunk (its pack deleted, or found damaged
 * when the store was opened), a chunk with one flipped byte, a missing and a damaged index are each
 * found and named with exactly the points that need them.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkStore } from '../../src/store/chunk-store.js';
import { hashChunk } from '../../src/store/chunking.js';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { type PointToVerify, verifyStore } from '../../src/store/verify.js';
import { flipChunkByte, locateStored, loseChunk, objectFile, publishIndex, storeRandomChunk, tempDirFor } from './helpers.js';

const CHUNK = 4096;

/**
 * Three points: vm/p1 and vm/p2 share chunk `shared`; `onlyP1` is in p1 alone; db/p3 has two disks
 * and its own chunk `onlyP3` (twice, in both disks).
 */
async function fixture(t: TestContext) {
  const root = path.join(await tempDirFor(t), 'store');
  const store = new ChunkStore(new FilesystemBackend(root));
  const chunks = new Map<string, number>();
  const chunk = async (length = CHUNK) => {
    const hash = await storeRandomChunk(store, length);
    chunks.set(hash, length);
    return hash;
  };
  const index = (hashes: (string | null)[], lastLength = CHUNK) => publishIndex(store, hashes, CHUNK, lastLength);
  const shared = await chunk();
  const onlyP1 = await chunk();
  const onlyP2 = await chunk(1000); // a short last chunk
  const onlyP3 = await chunk();
  const p1Index = await index([shared, null, onlyP1]);
  const p2Index = await index([shared, null, onlyP2], 1000);
  const p3Disk0 = await index([onlyP3, null]);
  const p3Disk1 = await index([null, onlyP3, shared]);
  const points: PointToVerify[] = [
    { machine: 'vm', pointId: 'p1', indexHashes: [p1Index] },
    { machine: 'vm', pointId: 'p2', indexHashes: [p2Index] },
    { machine: 'db', pointId: 'p3', indexHashes: [p3Disk0, p3Disk1] },
  ];
  /** Flips a bit of the last byte of an index object. */
  const flipIndexByte = async (indexHash: string) => {
    const file = objectFile(store, store.indexObjectKey(indexHash));
    const bytes = await fs.readFile(file);
    bytes[bytes.length - 1]! ^= 0x40;
    await fs.writeFile(file, bytes);
  };
  /** Flips a bit of the last byte of a chunk's stored object, inside its pack. */
  const flipChunk = (hash: string) => flipChunkByte(store, hash, -1, 0x40);
  return { root, store, points, chunks, shared, onlyP1, onlyP2, onlyP3, p1Index, p2Index, p3Disk0, p3Disk1, flipIndexByte, flipChunk };
}

describe('verifyStore', () => {
  test('a sound store: every distinct index and chunk checked once, no problems', async (t) => {
    const { store, points, chunks } = await fixture(t);
    for (const deep of [false, true]) {
      const report = await verifyStore(store, points, { deep });
      assert.deepEqual(report.problems, []);
      assert.deepEqual(report.affectedPoints, []);
      assert.deepEqual(report.checked, {
        points: 3,
        indexes: 4,
        chunks: chunks.size,
        bytesRead: deep ? [...chunks.values()].reduce((total, length) => total + length, 0) : 0,
      });
    }
  });

  test('a flipped byte in a stored chunk is found by deep verify and named with exactly the points using it', async (t) => {
    const { store, points, onlyP1, shared, flipChunk } = await fixture(t);
    await flipChunk(onlyP1);
    await flipChunk(shared);
    const report = await verifyStore(store, points, { deep: true });
    const byChunk = new Map(report.problems.map((problem) => [problem.chunk, problem]));
    assert.equal(report.problems.length, 2);
    assert.equal(byChunk.get(onlyP1)?.kind, 'corrupt-chunk');
    assert.deepEqual(byChunk.get(onlyP1)?.points, [{ machine: 'vm', pointId: 'p1' }]);
    assert.match(byChunk.get(onlyP1)!.message, new RegExp(onlyP1));
    assert.equal(byChunk.get(shared)?.kind, 'corrupt-chunk');
    assert.deepEqual(byChunk.get(shared)?.points, [
      { machine: 'db', pointId: 'p3' },
      { machine: 'vm', pointId: 'p1' },
      { machine: 'vm', pointId: 'p2' },
    ]);
    assert.deepEqual(report.affectedPoints, [
      { machine: 'db', pointId: 'p3' },
      { machine: 'vm', pointId: 'p1' },
      { machine: 'vm', pointId: 'p2' },
    ]);
  });

  test('quick verify checks presence only: it misses a flipped byte but finds a missing chunk', async (t) => {
    const { store, points, onlyP1, onlyP3, flipChunk } = await fixture(t);
    await flipChunk(onlyP1);
    await loseChunk(store, onlyP3);
    for (const deep of [false, true]) {
      const report = await verifyStore(store, points, { deep });
      const missing = report.problems.filter((problem) => problem.kind === 'missing-chunk');
      assert.deepEqual(missing.map((problem) => [problem.chunk, problem.points]), [[onlyP3, [{ machine: 'db', pointId: 'p3' }]]], `deep=${deep}`);
      assert.equal(report.problems.some((problem) => problem.kind === 'corrupt-chunk'), deep, `deep=${deep}: corrupt chunk found only when deep`);
    }
  });

  test('a missing index and a damaged index are named with their points, and their chunks are not blamed', async (t) => {
    const { store, points, p2Index, p3Disk1, flipIndexByte } = await fixture(t);
    await store.deleteObject(store.indexObjectKey(p2Index));
    await flipIndexByte(p3Disk1);
    const report = await verifyStore(store, points, { deep: true });
    assert.deepEqual(
      report.problems.map((problem) => ({ kind: problem.kind, index: problem.index, points: problem.points })),
      [
        { kind: 'missing-index', index: p2Index, points: [{ machine: 'vm', pointId: 'p2' }] },
        { kind: 'corrupt-index', index: p3Disk1, points: [{ machine: 'db', pointId: 'p3' }] },
      ],
    );
    assert.deepEqual(report.affectedPoints, [
      { machine: 'db', pointId: 'p3' },
      { machine: 'vm', pointId: 'p2' },
    ]);
  });

  test('the problem list is capped, but every affected point is still named', async (t) => {
    const { store, points, onlyP1, onlyP2, onlyP3 } = await fixture(t);
    for (const hash of [onlyP1, onlyP2, onlyP3]) await loseChunk(store, hash);
    const report = await verifyStore(store, points, { deep: false, maxProblems: 1 });
    assert.equal(report.problems.length, 1);
    assert.equal(report.problemsOmitted, 2);
    assert.deepEqual(report.affectedPoints.map((point) => point.pointId), ['p3', 'p1', 'p2']);
  });

  test('a chunk in a pack found damaged when the store was opened is missing, and the message names that pack', async (t) => {
    const { root, store, points, onlyP1 } = await fixture(t);
    const { key } = await locateStored(store, onlyP1);
    const file = objectFile(store, key);
    await fs.truncate(file, (await fs.stat(file)).size - 1);
    const reopened = new ChunkStore(new FilesystemBackend(root));
    for (const deep of [false, true]) {
      const report = await verifyStore(reopened, points, { deep });
      assert.deepEqual(
        report.problems.map((problem) => ({ kind: problem.kind, chunk: problem.chunk, points: problem.points })),
        [{ kind: 'missing-chunk', chunk: onlyP1, points: [{ machine: 'vm', pointId: 'p1' }] }],
        `deep=${deep}`,
      );
      assert.match(report.problems[0]!.message, new RegExp(`${onlyP1}.*damaged pack.*${key}`));
    }
  });

  test('a lost pack loses every chunk in it: each is named with the points that need it', async (t) => {
    const root = path.join(await tempDirFor(t), 'store');
    const store = new ChunkStore(new FilesystemBackend(root));
    const batch = [randomBytes(CHUNK), randomBytes(CHUNK), randomBytes(CHUNK)].map((data) => ({ hashHex: hashChunk(data).toString('hex'), data }));
    const [a, b, c] = batch.map((chunk) => chunk.hashHex) as [string, string, string];
    await store.putChunks(batch.slice(0, 2)); // a and b share a pack
    await store.putChunks(batch.slice(2));
    const points: PointToVerify[] = [
      { machine: 'vm', pointId: 'p1', indexHashes: [await publishIndex(store, [a, c], CHUNK)] },
      { machine: 'db', pointId: 'p2', indexHashes: [await publishIndex(store, [b, null], CHUNK)] },
    ];
    await store.backend.delete((await locateStored(store, a)).key);
    for (const deep of [false, true]) {
      const report = await verifyStore(store, points, { deep });
      const byChunk = Object.fromEntries(report.problems.map((problem) => [problem.chunk!, { kind: problem.kind, points: problem.points }]));
      assert.deepEqual(
        byChunk,
        {
          [a]: { kind: 'missing-chunk', points: [{ machine: 'vm', pointId: 'p1' }] },
          [b]: { kind: 'missing-chunk', points: [{ machine: 'db', pointId: 'p2' }] },
        },
        `deep=${deep}`,
      );
    }
  });

  test('an aborted signal stops verification with the signal\'s reason', async (t) => {
    const { store, points } = await fixture(t);
    const controller = new AbortController();
    controller.abort(new Error('shutting down'));
    await assert.rejects(verifyStore(store, points, { deep: true, signal: controller.signal }), /shutting down/);
  });
});
