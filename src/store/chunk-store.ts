/**
 * The chunk store: content-addressed chunks and disk indexes on top of one `StoreBackend`.
 *
 * Safe write order is enforced here: a chunk is accepted only if its bytes hash to its name, and an
 * index is accepted only once every chunk it names is durably stored. A recovery point (metadata in
 * the database) is published only after its indexes are, so nothing committed ever names missing data.
 */
import { createHash } from 'node:crypto';
import { FerryError } from '../errors.js';
import type { StoreBackend } from './backend.js';
import { hashChunk, isAllZero, isHashHex } from './chunking.js';
import { decodeChunkObject, encodeChunkObject } from './chunk-object.js';
import { DiskIndex } from './disk-index.js';

/** Store key of a chunk: chunks/<first two hex>/<hex>. */
export function chunkKey(hashHex: string): string {
  return `chunks/${hashHex.slice(0, 2)}/${hashHex}`;
}

/** Store key of a disk index: indexes/<hex of the SHA-256 of its encoding>. */
export function indexKey(indexHashHex: string): string {
  return `indexes/${indexHashHex}`;
}

/** Content-addressed chunks and indexes over a backend. */
export class ChunkStore {
  constructor(readonly backend: StoreBackend) {}

  /**
   * Stores a chunk under its SHA-256. Throws chunk-hash-mismatch (and stores nothing) when the bytes
   * do not hash to `expectedHashHex`, and invalid-request for an all-zero chunk (those are never stored).
   * Idempotent: storing a chunk the store already has does nothing.
   */
  async putChunk(expectedHashHex: string, data: Uint8Array): Promise<'stored' | 'already-present'> {
    if (!isHashHex(expectedHashHex)) throw new FerryError('invalid-request', `'${expectedHashHex}' is not a SHA-256 hex name`);
    const actual = hashChunk(data).toString('hex');
    if (actual !== expectedHashHex) {
      throw new FerryError('chunk-hash-mismatch', `chunk sent as ${expectedHashHex} hashes to ${actual}; rejected, nothing stored`, {
        details: { expected: expectedHashHex, actual },
      });
    }
    if (isAllZero(data)) throw new FerryError('invalid-request', 'all-zero chunks are never stored; index them as zero');
    const key = chunkKey(expectedHashHex);
    if (await this.backend.has(key)) return 'already-present';
    await this.backend.put(key, encodeChunkObject(data));
    return 'stored';
  }

  /** Reads a chunk and checks its hash; throws not-found or corrupt-data. */
  async getChunk(hashHex: string): Promise<Buffer> {
    const key = chunkKey(hashHex);
    const data = decodeChunkObject(await this.backend.get(key), key);
    if (hashChunk(data).toString('hex') !== hashHex) {
      throw new FerryError('corrupt-data', `stored chunk ${hashHex} does not match its hash`, { details: { hash: hashHex } });
    }
    return data;
  }

  async hasChunk(hashHex: string): Promise<boolean> {
    return this.backend.has(chunkKey(hashHex));
  }

  /** Of the given hashes, those the store does not hold (in input order, without duplicates). */
  async missingChunks(hashHexes: readonly string[]): Promise<string[]> {
    const unique = [...new Set(hashHexes)];
    const present = await mapLimited(unique, 32, (hash) => this.hasChunk(hash));
    return unique.filter((_, position) => !present[position]);
  }

  /**
   * Publishes a disk index after checking that every chunk it names is stored; returns the index's
   * hash (its name). Throws chunk-missing naming the first few absent chunks.
   */
  async putIndex(index: DiskIndex): Promise<string> {
    const missing = await this.missingChunks([...index.distinctHashes()]);
    if (missing.length > 0) {
      throw new FerryError('chunk-missing', `index names ${missing.length} chunk(s) the store does not hold, e.g. ${missing.slice(0, 3).join(', ')}`, {
        details: { missing: missing.slice(0, 100) },
      });
    }
    const encoded = index.encode();
    const indexHash = createHash('sha256').update(encoded).digest('hex');
    const key = indexKey(indexHash);
    if (!(await this.backend.has(key))) await this.backend.put(key, encoded);
    return indexHash;
  }

  /** Reads and checks a disk index. */
  async getIndex(indexHashHex: string): Promise<DiskIndex> {
    const encoded = await this.backend.get(indexKey(indexHashHex));
    if (createHash('sha256').update(encoded).digest('hex') !== indexHashHex) {
      throw new FerryError('corrupt-data', `stored index ${indexHashHex} does not match its hash`);
    }
    return DiskIndex.decode(encoded, 'store');
  }

  async hasIndex(indexHashHex: string): Promise<boolean> {
    return isHashHex(indexHashHex) && this.backend.has(indexKey(indexHashHex));
  }

  // --- for maintenance (garbage collection, verify, stats) ---------------------------------------
  // These speak in backend object keys, so that how a chunk's name maps to its object key (plain or
  // keyed with a secret) stays inside this class.

  /** The backend object key that holds the chunk named `hashHex`. */
  chunkObjectKey(hashHex: string): string {
    return chunkKey(hashHex);
  }

  /** The backend object key that holds the index named `indexHashHex`. */
  indexObjectKey(indexHashHex: string): string {
    return indexKey(indexHashHex);
  }

  /** Every chunk object key in the store. */
  listChunkObjectKeys(): AsyncIterable<string> {
    return this.backend.list('chunks/');
  }

  /** Every index name (hash) in the store. */
  async *listIndexHashes(): AsyncIterable<string> {
    for await (const key of this.backend.list('indexes/')) yield key.slice('indexes/'.length);
  }

  /** Deletes one object by key (garbage collection only: callers must have proved nothing references it). */
  async deleteObject(key: string): Promise<void> {
    await this.backend.delete(key);
  }
}

/** Maps with at most `limit` calls in flight; results keep input order. */
export async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const position = next++;
      results[position] = await fn(items[position]!);
    }
  });
  await Promise.all(workers);
  return results;
}
