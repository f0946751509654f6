import { createHash, randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { HASH_LENGTH, ZERO_HASH } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { ferryError } from './helpers.js';

const HEADER_LENGTH = 24;

/** An index of `diskSize` bytes whose every `zeroEvery`-th chunk is zero and the rest random. */
function sampleIndex(diskSize: number, chunkSize: number, zeroEvery = 3): DiskIndex {
  const index = DiskIndex.empty(diskSize, chunkSize);
  for (let position = 0; position < index.chunkCount; position++) {
    if (position % zeroEvery !== 0) index.setHash(position, randomBytes(HASH_LENGTH));
  }
  return index;
}

/** Re-seals an edited encoding with a correct checksum, so only the edited field is wrong. */
function reseal(encoded: Buffer): Buffer {
  const body = encoded.subarray(0, encoded.length - HASH_LENGTH);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

describe('DiskIndex', () => {
  test('encode/decode round trip keeps size, chunk size and every hash', () => {
    const index = sampleIndex(10 * 65536, 65536);
    const decoded = DiskIndex.decode(index.encode());
    assert.equal(decoded.diskSize, 10 * 65536);
    assert.equal(decoded.chunkSize, 65536);
    assert.equal(decoded.chunkCount, 10);
    assert.deepEqual(decoded.hashes, index.hashes);
  });

  test('a disk size that is not a multiple of the chunk size gets a short last chunk', () => {
    const index = sampleIndex(3 * 4096 + 17, 4096);
    assert.equal(index.chunkCount, 4);
    assert.equal(index.lengthAt(0), 4096);
    assert.equal(index.lengthAt(3), 17);
    const decoded = DiskIndex.decode(index.encode(), 'upload');
    assert.equal(decoded.diskSize, 3 * 4096 + 17);
    assert.equal(decoded.chunkCount, 4);
    assert.equal(decoded.lengthAt(3), 17);
    assert.deepEqual(decoded.hashes, index.hashes);
  });

  test('an empty disk round trips', () => {
    const decoded = DiskIndex.decode(DiskIndex.empty(0, 4096).encode());
    assert.equal(decoded.diskSize, 0);
    assert.equal(decoded.chunkCount, 0);
  });

  test('the encoding is header, hashes and a trailing SHA-256 of both', () => {
    const index = sampleIndex(5 * 512, 512);
    const encoded = index.encode();
    assert.equal(encoded.length, HEADER_LENGTH + 5 * HASH_LENGTH + HASH_LENGTH);
    assert.equal(encoded.subarray(0, 8).toString('latin1'), 'FRYIDX1\n');
    const body = encoded.subarray(0, encoded.length - HASH_LENGTH);
    assert.deepEqual(encoded.subarray(-HASH_LENGTH), createHash('sha256').update(body).digest());
  });

  test('decode copies the hashes, so the index does not alias the input buffer', () => {
    const encoded = sampleIndex(4 * 512, 512, 100).encode();
    const decoded = DiskIndex.decode(encoded);
    const before = Buffer.from(decoded.hashes);
    encoded.fill(0);
    assert.deepEqual(decoded.hashes, before);
  });

  describe('decode rejects damaged data', () => {
    const encoded = sampleIndex(7 * 4096 + 100, 4096).encode();

    const damaged: [string, () => Buffer][] = [
      ['truncated by one byte', () => encoded.subarray(0, encoded.length - 1)],
      ['truncated inside the header', () => encoded.subarray(0, 10)],
      ['empty', () => Buffer.alloc(0)],
      ['with a byte appended', () => Buffer.concat([encoded, Buffer.from([0])])],
      [
        'with one hash byte flipped (checksum)',
        () => {
          const copy = Buffer.from(encoded);
          copy[HEADER_LENGTH + 40]! ^= 0x01;
          return copy;
        },
      ],
      [
        'with one checksum byte flipped',
        () => {
          const copy = Buffer.from(encoded);
          copy[copy.length - 1]! ^= 0x80;
          return copy;
        },
      ],
      [
        'with a wrong magic',
        () => {
          const copy = Buffer.from(encoded);
          copy.write('FRYIDX2\n', 0, 'latin1');
          return reseal(copy);
        },
      ],
      [
        'with a chunk count inconsistent with the size',
        () => {
          const copy = Buffer.from(encoded);
          copy.writeUInt32LE(7, 20); // the size needs 8
          return reseal(copy);
        },
      ],
      [
        'with a disk size inconsistent with the chunk count',
        () => {
          const copy = Buffer.from(encoded);
          copy.writeBigUInt64LE(BigInt(9 * 4096), 8);
          return reseal(copy);
        },
      ],
      [
        'with a zero chunk size',
        () => {
          const copy = Buffer.from(encoded);
          copy.writeUInt32LE(0, 16);
          return reseal(copy);
        },
      ],
    ];

    for (const [what, make] of damaged) {
      test(`${what}: corrupt-data from the store, invalid-request from an upload`, () => {
        const data = make();
        assert.throws(() => DiskIndex.decode(data, 'store'), ferryError('corrupt-data', ['disk index']));
        assert.throws(() => DiskIndex.decode(data), ferryError('corrupt-data'));
        assert.throws(() => DiskIndex.decode(data, 'upload'), ferryError('invalid-request', ['disk index']));
      });
    }

    test('the messages say what is wrong', () => {
      const flipped = Buffer.from(encoded);
      flipped[HEADER_LENGTH]! ^= 0xff;
      assert.throws(() => DiskIndex.decode(flipped), ferryError('corrupt-data', ['checksum']));
      assert.throws(() => DiskIndex.decode(encoded.subarray(0, encoded.length - 5)), ferryError('corrupt-data', ['truncated']));
      const wrongCount = Buffer.from(encoded);
      wrongCount.writeUInt32LE(3, 20);
      assert.throws(() => DiskIndex.decode(reseal(wrongCount)), ferryError('corrupt-data', ['says 3 chunks', 'need 8']));
    });
  });

  test('distinctHashes skips zero entries and collapses repeats', () => {
    const index = DiskIndex.empty(6 * 512, 512);
    const a = randomBytes(HASH_LENGTH);
    const b = randomBytes(HASH_LENGTH);
    index.setHash(1, a);
    index.setHash(2, b);
    index.setHash(4, a);
    assert.deepEqual([...index.distinctHashes()].sort(), [a.toString('hex'), b.toString('hex')].sort());
    assert.equal(index.distinctHashes().has(ZERO_HASH.toString('hex')), false);
    assert.equal(DiskIndex.empty(4 * 512, 512).distinctHashes().size, 0);
    assert.equal(index.isZeroAt(0), true);
    assert.equal(index.isZeroAt(1), false);
  });

  test('the constructor refuses a hash list that does not fit the size', () => {
    assert.throws(() => new DiskIndex(3 * 512, 512, Buffer.alloc(2 * HASH_LENGTH)));
    assert.throws(() => new DiskIndex(3 * 512 + 1, 512, Buffer.alloc(3 * HASH_LENGTH)));
  });
});
