/**
 * The agent's per-disk memory (src/agent/agent-state.ts) with the block fingerprints of its last index
 * (src/agent/block-fingerprints.ts), on real files: fingerprints say which 4 KiB blocks of a chunk
 * changed; they are saved with the index they describe, loaded only for that index, and forgotten
 * with it; damaged or mismatched ones are ignored, never trusted.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { AgentState } from '../../src/agent/agent-state.js';
import { BlockFingerprints, FINGERPRINT_BLOCK_SIZE } from '../../src/agent/block-fingerprints.js';
import { hashChunk } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { tempDirFor } from './helpers.js';

const CHUNK = 64 * 1024;

/** A disk of random bytes (the last chunk short), its index and its fingerprints. */
function disk(size = 3 * CHUNK + 10_000): { bytes: Buffer; index: DiskIndex; fingerprints: BlockFingerprints } {
  const bytes = randomBytes(size);
  const index = DiskIndex.empty(size, CHUNK);
  const fingerprints = BlockFingerprints.empty(size, CHUNK)!;
  for (let position = 0; position < index.chunkCount; position++) {
    const data = bytes.subarray(position * CHUNK, position * CHUNK + index.lengthAt(position));
    index.setHash(position, hashChunk(data));
    fingerprints.compute(position, data);
  }
  return { bytes, index, fingerprints };
}

describe('block fingerprints', () => {
  test('16 per 64 KiB chunk; changedBlocks names exactly the rewritten blocks, also in a short last chunk', () => {
    const { bytes, fingerprints } = disk();
    assert.equal(fingerprints.blocksPerChunk, 16);
    assert.equal(fingerprints.crcs.length, 4 * 16, 'one slot per block of every chunk: 1/1024 of the disk in bytes');
    const after = BlockFingerprints.empty(bytes.length, CHUNK)!;
    const changedBytes = Buffer.from(bytes);
    randomBytes(FINGERPRINT_BLOCK_SIZE).copy(changedBytes, CHUNK + 5 * FINGERPRINT_BLOCK_SIZE);
    changedBytes[CHUNK + 15 * FINGERPRINT_BLOCK_SIZE + 7]! ^= 1; // one bit in the chunk's last block
    changedBytes[changedBytes.length - 1]! ^= 0x80; // the short last block of the short last chunk
    for (let position = 0; position < 4; position++) {
      after.compute(position, changedBytes.subarray(position * CHUNK, Math.min((position + 1) * CHUNK, changedBytes.length)));
    }
    assert.deepEqual(after.changedBlocks(fingerprints, 0, CHUNK), []);
    assert.deepEqual(after.changedBlocks(fingerprints, 1, CHUNK), [5, 15]);
    assert.deepEqual(after.changedBlocks(fingerprints, 3, 10_000), [2]);
    after.copyFrom(fingerprints, 1);
    assert.deepEqual(after.changedBlocks(fingerprints, 1, CHUNK), [], 'copied: equal again');
    after.clear(1);
    assert.deepEqual([...after.crcs.subarray(16, 32)], new Array(16).fill(0));
  });

  test('chunk sizes that are not at least two whole blocks get no fingerprints', () => {
    assert.equal(BlockFingerprints.empty(CHUNK * 4, 4096), null);
    assert.equal(BlockFingerprints.empty(CHUNK * 4, 6000), null);
    assert.equal(BlockFingerprints.empty(CHUNK * 4, 8192)?.blocksPerChunk, 2);
  });
});

describe('AgentState with block fingerprints', () => {
  test('saved with an index, loaded for that index, equal to what was saved', async (t) => {
    const state = new AgentState(await tempDirFor(t));
    const { index, fingerprints } = disk();
    await state.saveIndex('disk-a', index, null, fingerprints);
    const loaded = await state.lastIndex('disk-a');
    assert.ok(loaded);
    const prints = await state.lastFingerprints('disk-a', loaded);
    assert.ok(prints, 'fingerprints saved with the index are found for it');
    assert.deepEqual([...prints.crcs], [...fingerprints.crcs]);
    assert.equal(prints.blockSize, FINGERPRINT_BLOCK_SIZE);
    assert.equal(await state.lastFingerprints('disk-b', loaded), null, 'another disk has none');
  });

  test('fingerprints are not used for another index, e.g. after a crash between writing them and their index', async (t) => {
    const dataDir = await tempDirFor(t);
    const state = new AgentState(dataDir);
    const first = disk();
    const second = disk(first.bytes.length);
    await state.saveIndex('d', first.index, null, first.fingerprints);
    const firstIndexFile = await fs.readFile(path.join(dataDir, 'state', 'd.index'));
    await state.saveIndex('d', second.index, null, second.fingerprints);
    // As if the agent died after writing the second fingerprints but before the second index.
    await fs.writeFile(path.join(dataDir, 'state', 'd.index'), firstIndexFile);
    const loaded = await state.lastIndex('d');
    assert.deepEqual(loaded?.hashes, first.index.hashes);
    assert.equal(await state.lastFingerprints('d', loaded!), null);
  });

  test('saving an index without fingerprints drops the old ones; forget drops them with the index', async (t) => {
    const dataDir = await tempDirFor(t);
    const state = new AgentState(dataDir);
    const { index, fingerprints } = disk();
    const file = path.join(dataDir, 'state', 'd.index.blocks');
    await state.saveIndex('d', index, null, fingerprints);
    await fs.access(file);
    await state.saveIndex('d', index);
    await assert.rejects(fs.access(file), 'no fingerprints given: none kept');
    await state.saveIndex('d', index, null, fingerprints);
    await state.forget('d');
    assert.equal(await state.lastIndex('d'), null);
    await assert.rejects(fs.access(file), 'forgotten together with the index');
    assert.equal(await state.lastFingerprints('d', index), null);
  });

  test('damaged, truncated or mis-sized fingerprints are ignored, not trusted', async (t) => {
    const dataDir = await tempDirFor(t);
    const state = new AgentState(dataDir);
    const { index, fingerprints } = disk();
    const file = path.join(dataDir, 'state', 'd.index.blocks');
    await state.saveIndex('d', index, null, fingerprints);
    const good = await fs.readFile(file);
    const flipped = Buffer.from(good);
    flipped[100]! ^= 1;
    await fs.writeFile(file, flipped);
    assert.equal(await state.lastFingerprints('d', index), null, 'checksum mismatch');
    await fs.writeFile(file, good.subarray(0, good.length - 1));
    assert.equal(await state.lastFingerprints('d', index), null, 'truncated');
    await fs.writeFile(file, good);
    assert.ok(await state.lastFingerprints('d', index));
    const other = BlockFingerprints.empty(index.diskSize + CHUNK, CHUNK)!;
    await state.saveIndex('d', index, null, other);
    assert.equal(await state.lastFingerprints('d', index), null, 'fingerprints of another disk size are not saved');
  });
});
