import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import zstd from 'zstd-napi/binding.js';
import { ChunkCodec, codecOf, decodeChunkObject, encodeChunkObject, type ObjectCodec, PLAIN_CODEC } from '../../src/store/chunk-object.js';
import { ferryError } from './helpers.js';

const KEY = 'chunks/ab/ab0123';
const dataKey = randomBytes(32);
const codecs: Record<string, ObjectCodec> = {
  none: PLAIN_CODEC,
  zstd: { compressionLevel: 3, dataKey: null },
  'aes-256-gcm': { compressionLevel: null, dataKey },
  'aes-256-gcm + zstd': { compressionLevel: 3, dataKey },
};

/** 64 KiB of text-like data: compresses well, but is not one repeated byte. */
function compressible(length = 65536): Buffer {
  const words = ['ferry', 'chunk', 'store', 'disk', 'point', 'replica', 'site', 'agent'];
  let text = '';
  for (let i = 0; text.length < length; i++) text += `${words[(i * 7) % words.length]} ${i % 1000}\n`;
  return Buffer.from(text.slice(0, length));
}

describe('chunk object codecs', () => {
  test('the codec numbers are fixed: 0 none, 1 zstd, 2 aes-256-gcm, 3 aes-256-gcm over zstd', () => {
    assert.deepEqual(ChunkCodec, { None: 0, Zstd: 1, Aes256Gcm: 2, Aes256GcmZstd: 3 });
  });

  for (const [name, codec] of Object.entries(codecs)) {
    test(`round trip with ${name}: compressible, incompressible, tiny and empty data`, () => {
      for (const data of [compressible(), randomBytes(65536), Buffer.from('x'), Buffer.alloc(0)]) {
        const object = encodeChunkObject(data, KEY, codec);
        assert.deepEqual(decodeChunkObject(object, KEY, codec), data);
      }
    });
  }

  test('each codec setting writes the codec byte it should', () => {
    const data = compressible();
    assert.equal(codecOf(encodeChunkObject(data, KEY, codecs['none']!)), ChunkCodec.None);
    assert.equal(codecOf(encodeChunkObject(data, KEY, codecs['zstd']!)), ChunkCodec.Zstd);
    assert.equal(codecOf(encodeChunkObject(data, KEY, codecs['aes-256-gcm']!)), ChunkCodec.Aes256Gcm);
    assert.equal(codecOf(encodeChunkObject(data, KEY, codecs['aes-256-gcm + zstd']!)), ChunkCodec.Aes256GcmZstd);
  });

  test('compressible data is stored smaller; incompressible data is stored raw, at its own size', () => {
    const text = compressible();
    const zstdObject = encodeChunkObject(text, KEY, codecs['zstd']!);
    assert.ok(zstdObject.length < text.length / 4, `64 KiB of text should compress well, got ${zstdObject.length} bytes`);

    const random = randomBytes(65536);
    const plain = encodeChunkObject(random, KEY, codecs['zstd']!);
    assert.equal(codecOf(plain), ChunkCodec.None, 'random data gains nothing from zstd');
    assert.equal(plain.length, 4 + random.length);
    assert.deepEqual(plain.subarray(4), random);

    const encrypted = encodeChunkObject(random, KEY, codecs['aes-256-gcm + zstd']!);
    assert.equal(codecOf(encrypted), ChunkCodec.Aes256Gcm, 'encrypted but not compressed');
    assert.equal(encrypted.length, 4 + 12 + random.length + 16, 'header, nonce, ciphertext, tag');
  });

  test('encryption uses a fresh nonce: the same bytes under the same key give different objects', () => {
    const data = compressible();
    const a = encodeChunkObject(data, KEY, codecs['aes-256-gcm']!);
    const b = encodeChunkObject(data, KEY, codecs['aes-256-gcm']!);
    assert.notDeepEqual(a, b);
    assert.equal(a.indexOf(data.subarray(0, 32)), -1, 'no plaintext in the object');
  });

  test('a tampered ciphertext, tag, nonce or header is corrupt-data, never wrong bytes', () => {
    const codec = codecs['aes-256-gcm + zstd']!;
    const object = encodeChunkObject(compressible(), KEY, codec);
    for (const position of [3, 4, 4 + 12, Math.floor(object.length / 2), object.length - 1]) {
      const tampered = Buffer.from(object);
      tampered[position]! ^= position === 3 ? 0x01 : 0x40; // position 3: codec 3 becomes 2 (authenticated too)
      assert.throws(() => decodeChunkObject(tampered, KEY, codec), ferryError('corrupt-data', [KEY]), `byte ${position}`);
    }
    assert.throws(() => decodeChunkObject(object.subarray(0, 20), KEY, codec), ferryError('corrupt-data', ['too short']));
  });

  test('an encrypted object moved to another key, or read with another data key, fails authentication', () => {
    const codec = codecs['aes-256-gcm']!;
    const object = encodeChunkObject(compressible(), KEY, codec);
    assert.throws(() => decodeChunkObject(object, 'chunks/cd/cd4567', codec), ferryError('corrupt-data', ['authentication']));
    const otherKey: ObjectCodec = { compressionLevel: null, dataKey: randomBytes(32) };
    assert.throws(() => decodeChunkObject(object, KEY, otherKey), ferryError('corrupt-data', ['authentication']));
  });

  test('an encrypted object read without a key, or a plain object read with one, is corrupt-data', () => {
    const encrypted = encodeChunkObject(compressible(), KEY, codecs['aes-256-gcm']!);
    assert.throws(() => decodeChunkObject(encrypted, KEY, PLAIN_CODEC), ferryError('corrupt-data', ['encrypted']));
    for (const plain of [encodeChunkObject(compressible(), KEY, PLAIN_CODEC), encodeChunkObject(compressible(), KEY, codecs['zstd']!)]) {
      assert.throws(() => decodeChunkObject(plain, KEY, codecs['aes-256-gcm']!), ferryError('corrupt-data', ['not encrypted']));
    }
  });

  test('encrypting without the object key it will be stored under is refused', () => {
    assert.throws(() => encodeChunkObject(Buffer.from('data'), '', codecs['aes-256-gcm']!), ferryError('internal'));
  });

  test('codec 0 objects as written before compression existed stay readable by every unencrypted codec', () => {
    // The exact bytes the first format wrote: "FC", version 1, codec 0, then the chunk.
    const legacy = Buffer.concat([Buffer.from([0x46, 0x43, 0x01, 0x00]), Buffer.from('chunk bytes from 2026')]);
    assert.deepEqual(decodeChunkObject(legacy, KEY), Buffer.from('chunk bytes from 2026'));
    assert.deepEqual(decodeChunkObject(legacy, KEY, codecs['zstd']!), Buffer.from('chunk bytes from 2026'));
    assert.deepEqual(encodeChunkObject(Buffer.from('chunk bytes from 2026')), legacy, 'the default codec still writes the same bytes');
  });

  test('a damaged or oversized zstd payload is corrupt-data, and the size check comes before any allocation', () => {
    const codec = codecs['zstd']!;
    const object = encodeChunkObject(compressible(), KEY, codec);
    const damaged = Buffer.from(object);
    damaged.fill(0xff, 40, 80);
    assert.throws(() => decodeChunkObject(damaged, KEY, codec), ferryError('corrupt-data', [KEY]));

    // 1 MiB of zeros is a frame of a few dozen bytes: under a 64 KiB limit it is refused from its header.
    const frame = Buffer.alloc(zstd.compressBound(1 << 20));
    const bomb = Buffer.alloc(1 << 20);
    const length = new zstd.CCtx().compress(frame, bomb, 19);
    const header = Buffer.from([0x46, 0x43, 0x01, ChunkCodec.Zstd]);
    const object1MiB = Buffer.concat([header, frame.subarray(0, length)]);
    assert.equal(decodeChunkObject(object1MiB, KEY, codec, 1 << 20).length, 1 << 20);
    assert.throws(() => decodeChunkObject(object1MiB, KEY, codec, 65536), ferryError('corrupt-data', ['at most 65536']));
  });

  test('bad headers and unknown codec bits are corrupt-data', () => {
    assert.throws(() => decodeChunkObject(Buffer.from('FC'), KEY), ferryError('corrupt-data', ['header']));
    assert.throws(() => decodeChunkObject(Buffer.from([0x46, 0x43, 0x02, 0x00, 1]), KEY), ferryError('corrupt-data', ['format version 2']));
    assert.throws(() => decodeChunkObject(Buffer.from([0x46, 0x43, 0x01, 0x04, 1]), KEY), ferryError('corrupt-data', ['codec 4']));
  });
});
