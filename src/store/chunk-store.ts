/**
 * The chunk store: content-addressed chunks and disk indexes on top of one `StoreBackend`.
 *
 * Safe write order is enforced here: a chunk is accepted only if its bytes hash to its name, and an
 * index is accepted only once every chunk it names is durably stored. A recovery point (metadata in
 * the database) is published only after its indexes are, so nothing committed ever names missing data.
 *
 * Every chunk is hashed when it is written (it must match its name, and its encoding must decode back to
 * it) and when it is read back. How objects are encoded (zstd, AES-256-GCM) and how a chunk's name maps to
 * its object key (plain, or keyed with a secret in an encrypted store) comes from the store's config
 * (store-config.ts) and stays inside this class: outside it, a chunk is always named by its plain SHA-256.
 */
import { createHash, createHmac } from 'node:crypto';
import { FerryError } from '../errors.js';
import type { StoreBackend } from './backend.js';
import { hashChunk, isAllZero, isHashHex } from './chunking.js';
import { decodeChunkObject, encodeChunkObject } from './chunk-object.js';
import { DiskIndex } from './disk-index.js';
import { openStoreConfig, PLAIN_STORE_SETTINGS, type StoreConfig, type StoreOpenOptions, type StoreSettings } from './store-config.js';

/** Largest index object decoded: far above the 256 MiB the API accepts, far below what a Buffer can hold. */
const MAX_INDEX_PAYLOAD = 1024 * 1024 * 1024;

/** The first bytes of an index stored raw, as stores did before indexes were wrapped like chunks. */
const RAW_INDEX_MAGIC = Buffer.from('FRYIDX1\n', 'latin1');

/** Store key of a chunk in a store with plain names: chunks/<first two hex>/<hex>. */
export function chunkKey(hashHex: string): string {
  return `chunks/${hashHex.slice(0, 2)}/${hashHex}`;
}

/** Store key of a disk index: indexes/<hex of the SHA-256 of its encoding>. */
export function indexKey(indexHashHex: string): string {
  return `indexes/${indexHashHex}`;
}

/** Content-addressed chunks and indexes over a backend. */
export class ChunkStore {
  /**
   * A store with the given settings, trusted as they are (no config is read). Without settings: plain
   * objects and plain names, the format of stores from before configs existed. Servers use `open`.
   */
  constructor(
    readonly backend: StoreBackend,
    private readonly settings: StoreSettings = PLAIN_STORE_SETTINGS,
    /** The store's config when opened with `open`; null when constructed with settings directly. */
    readonly config: StoreConfig | null = null,
  ) {}

  /**
   * Opens the store on `backend` under its config, creating the config if the store has none (see
   * `openStoreConfig` for every refusal: 'wrong-key', 'invalid-request', 'conflict', 'corrupt-data').
   * A refused open writes nothing.
   */
  static async open(backend: StoreBackend, options: StoreOpenOptions = {}): Promise<ChunkStore> {
    const { config, settings } = await openStoreConfig(backend, options);
    return new ChunkStore(backend, settings, config);
  }

  /** True when objects are encrypted and chunk names keyed. */
  get encrypted(): boolean {
    return this.settings.codec.dataKey !== null;
  }

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
    const key = this.chunkObjectKey(expectedHashHex);
    if (await this.backend.has(key)) return 'already-present';
    await this.backend.put(key, encodeChunkObject(data, key, this.settings.codec));
    return 'stored';
  }

  /** Reads a chunk, decodes it and checks its hash; throws not-found or corrupt-data. */
  async getChunk(hashHex: string): Promise<Buffer> {
    const key = this.chunkObjectKey(hashHex);
    const data = decodeChunkObject(await this.backend.get(key), key, this.settings.codec);
    if (hashChunk(data).toString('hex') !== hashHex) {
      throw new FerryError('corrupt-data', `stored chunk ${hashHex} does not match its hash`, { details: { hash: hashHex } });
    }
    return data;
  }

  /** True when the chunk named `hashHex` is stored (from durable state: a `getChunk` will find it). */
  async hasChunk(hashHex: string): Promise<boolean> {
    return this.backend.has(this.chunkObjectKey(hashHex));
  }

  /** Of the given hashes, those the store does not hold (in input order, without duplicates). */
  async missingChunks(hashHexes: readonly string[]): Promise<string[]> {
    const unique = [...new Set(hashHexes)];
    const present = await mapLimited(unique, 32, (hash) => this.hasChunk(hash));
    return unique.filter((_, position) => !present[position]);
  }

  /**
   * Publishes a disk index after checking that every chunk it names is stored; returns the index's
   * hash (its name: the SHA-256 of its encoding, whatever the store's codec). Throws chunk-missing
   * naming the first few absent chunks.
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
    const key = this.indexObjectKey(indexHash);
    if (!(await this.backend.has(key))) await this.backend.put(key, encodeChunkObject(encoded, key, this.settings.codec));
    return indexHash;
  }

  /** Reads, decodes and checks a disk index; throws not-found or corrupt-data. */
  async getIndex(indexHashHex: string): Promise<DiskIndex> {
    const key = this.indexObjectKey(indexHashHex);
    const stored = await this.backend.get(key);
    // Indexes written before stores had configs are the bare encoding and stay readable. Encrypted
    // stores never had those, so there a bare index is something planted, not something old.
    const raw = stored.subarray(0, RAW_INDEX_MAGIC.length).equals(RAW_INDEX_MAGIC);
    if (raw && this.encrypted) throw new FerryError('corrupt-data', `stored index ${indexHashHex} is not encrypted, in an encrypted store`);
    const encoded = raw ? stored : decodeChunkObject(stored, key, this.settings.codec, MAX_INDEX_PAYLOAD);
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

  /**
   * The backend object key that holds the chunk named `hashHex`: `chunkKey(hashHex)` in a plain store;
   * in an encrypted one chunks/<xx>/<HMAC-SHA256(naming key, hash)>, so the object's name says nothing
   * about its content to anyone without the key. The only place a chunk name becomes an object key.
   * Throws invalid-request for a name that is not 64 lowercase hex characters.
   */
  chunkObjectKey(hashHex: string): string {
    if (!isHashHex(hashHex)) throw new FerryError('invalid-request', `'${hashHex}' is not a SHA-256 hex name`);
    const namingKey = this.settings.namingKey;
    if (namingKey === null) return chunkKey(hashHex);
    return chunkKey(createHmac('sha256', namingKey).update(Buffer.from(hashHex, 'hex')).digest('hex'));
  }

  /**
   * The backend object key that holds the index named `indexHashHex`: always indexes/<hash>, also when
   * encrypted (the index's content is encrypted; its name is the hash of a list of chunk hashes, which
   * tells nothing to whoever does not already know the whole disk), so `listIndexHashes` can give names.
   */
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
