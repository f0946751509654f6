/**
 * The chunk store: content-addressed chunks and disk indexes on top of one `StoreBackend`.
 *
 * Safe write order is enforced here: a chunk is accepted only if its bytes hash to its name, and an
 * index is accepted only once every chunk it names is durably stored. A recovery point (metadata in
 * the database) is published only after its indexes are, so nothing committed ever names missing data.
 *
 * Chunks are stored in packs (pack.ts): every `putChunks` call writes the chunks the store lacks as one
 * pack object, so a batch costs one write and one fsync, not one per chunk. Where each chunk lies is
 * kept in the chunk catalog (chunk-catalog.ts), rebuilt from the pack directories when the store is
 * opened. Loose chunk objects (chunks/<xx>/<name>, one file per chunk, the layout before packs) stay
 * readable and are catalogued the same way.
 *
 * Every chunk is hashed when it is written (it must match its name, and its encoding must decode back to
 * it) and when it is read back. A chunk uploaded as a delta (the blocks that changed from a base chunk,
 * chunk-delta.ts) is rebuilt from its stored base first, then checked and stored like any other: the
 * store always holds whole chunks. How objects are encoded (zstd, AES-256-GCM) and how a chunk's name
 * maps to its object name (plain, or keyed with a secret in an encrypted store) comes from the store's
 * config (store-config.ts) and stays inside this class: outside it, a chunk is always named by its
 * plain SHA-256.
 */
import { createHash, createHmac } from 'node:crypto';
import { FerryError } from '../errors.js';
import { Semaphore } from '../util/semaphore.js';
import type { StoreBackend } from './backend.js';
import { type CatalogEntry, ChunkCatalog, type ChunkContainer } from './chunk-catalog.js';
import { applyDelta, type ChunkDelta } from './chunk-delta.js';
import { ingestChunkParts, type IngestInput } from './chunk-checks.js';
import { BATCHES_IN_FLIGHT, type ChunkCodecPool, sharedChunkCodecPool } from './chunk-codec-pool.js';
import { hashChunk, isAllZero, isHashHex } from './chunking.js';
import { decodeChunkObject, encodeChunkObject, plainObjectHeader } from './chunk-object.js';
import { DiskIndex } from './disk-index.js';
import { buildPack, isPackKey, newPackKey, readPackDirectory } from './pack.js';
import { isShared } from '../util/worker-pool.js';
import { openStoreConfig, PLAIN_STORE_SETTINGS, type StoreConfig, type StoreOpenOptions, type StoreSettings } from './store-config.js';

/** Largest index object decoded: far above the 256 MiB the API accepts, far below what a Buffer can hold. */
const MAX_INDEX_PAYLOAD = 1024 * 1024 * 1024;

/** The first bytes of an index stored raw, as stores did before indexes were wrapped like chunks. */
const RAW_INDEX_MAGIC = Buffer.from('FRYIDX1\n', 'latin1');

/** A pack is closed once its chunk objects reach this many bytes (a batch upload is at most 32 MiB). */
const PACK_TARGET_BYTES = 64 * 1024 * 1024;
/** Most bytes `getChunks` reads from a pack in one range read. */
const MAX_COALESCED_READ = 8 * 1024 * 1024;

/** A chunk a multi-chunk read wants: its place in the caller's list, its object name, and its catalog entry if any. */
interface WantedChunk {
  hashHex: string;
  position: number;
  name: string;
  entry: CatalogEntry | undefined;
}

/**
 * Packed chunks (each with a catalog entry) sorted by pack and offset and grouped into runs that lie
 * back to back in one pack, each run at most MAX_COALESCED_READ bytes: one range read per run.
 */
function coalescedRuns(packed: WantedChunk[]): WantedChunk[][] {
  packed.sort((a, b) => (a.entry!.container.key < b.entry!.container.key ? -1 : a.entry!.container.key > b.entry!.container.key ? 1 : a.entry!.offset - b.entry!.offset));
  const runs: WantedChunk[][] = [];
  for (let start = 0; start < packed.length; ) {
    const first = packed[start]!.entry!;
    let end = start + 1;
    let runEnd = first.offset + first.length;
    while (end < packed.length) {
      const next = packed[end]!.entry!;
      if (next.container !== first.container || next.offset !== runEnd || next.offset + next.length - first.offset > MAX_COALESCED_READ) break;
      runEnd = next.offset + next.length;
      end++;
    }
    runs.push(packed.slice(start, end));
    start = end;
  }
  return runs;
}
/** Range reads `readChunksInto` keeps in flight when they are large (a restore's runs of a pack). */
const RUN_READS_IN_FLIGHT = 4;
/**
 * Range reads in flight when they are small (at most SMALL_RUN_BYTES on average): a batch's delta
 * bases, one chunk each, scattered over many packs, where the latency of each read is what counts.
 */
const SMALL_RUN_READS_IN_FLIGHT = 16;
const SMALL_RUN_BYTES = 256 * 1024;
/** Backend calls in flight when checking, touching or cataloguing many objects. */
const IO_CONCURRENCY = 32;

/** One chunk to store: its claimed name (SHA-256 hex) and its bytes. */
export interface ChunkToStore {
  hashHex: string;
  /** The chunk's bytes; not read when `zstdFrame` is given (a decoded upload inflates them only when read). */
  data: Uint8Array;
  /**
   * A zstd frame of `data` (an agent's upload): the store checks the chunk by inflating this frame, in
   * its codec workers for a large batch, and stores the frame as it is when it is smaller.
   */
  zstdFrame?: Uint8Array;
  /** Set when `data` was rebuilt from a delta over this base chunk (named in a hash mismatch). */
  rebuiltFrom?: string;
}

/** One chunk uploaded as the blocks that changed from a base chunk the store holds (chunk-delta.ts). */
export interface DeltaChunkToStore {
  hashHex: string;
  delta: ChunkDelta;
}

/** A chunk as an upload brings it: whole, or as a delta the store resolves against its base. */
export type ChunkUpload = ChunkToStore | DeltaChunkToStore;

/** Upload batches being stored at once; the others wait their turn (see BATCHES_IN_FLIGHT). */
const batchSlots = new Semaphore(BATCHES_IN_FLIGHT);

/** Batches of at least this many payload bytes are checked and encoded in the codec pool, smaller ones inline. */
const POOL_INGEST_MIN_BYTES = 256 * 1024;

/**
 * Decides which of a batch's chunks the store already holds, keeping those alive for garbage collection
 * (`ChunkStore.touchChunks` by default; StoreGuard runs it under its lock). Answers in input order.
 */
export type PresenceGate = (hashHexes: readonly string[]) => Promise<boolean[]>;

/** A pack or loose object the catalog could not read when the store was opened. */
export interface DamagedContainer {
  key: string;
  message: string;
}

/** True for an upload that is a delta (a frame decoded from a batch may carry `delta: undefined`). */
function isDelta(upload: ChunkUpload): upload is DeltaChunkToStore {
  return (upload as Partial<DeltaChunkToStore>).delta !== undefined;
}

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
  private loadingCatalog: Promise<ChunkCatalog> | null = null;
  /** Packs and loose objects that could not be catalogued when the store was opened. */
  readonly damagedContainers: DamagedContainer[] = [];
  /**
   * The worker threads that check and encode large upload batches and decode chunks for `readChunksInto`;
   * null (the default) for the process's shared pool (`sharedChunkCodecPool`). Tests set their own.
   */
  codecPool: ChunkCodecPool | null = null;

  /** The codec pool this store checks, encodes and decodes chunks in. */
  private get pool(): ChunkCodecPool {
    return this.codecPool ?? sharedChunkCodecPool();
  }

  /**
   * A page-aligned shared buffer of at least `length` bytes for reading or decoding chunks into in bulk
   * (a restore's windows): one of the codec pool's reused buffers when it fits, the same ones upload
   * batches use, so a restore leaves no buffers of its own behind for the threads to collect. Give it
   * back with `giveSharedBuffer` once nothing uses it; after a failed read, drop it instead (a worker of
   * a broken pool may still be writing into it).
   */
  takeSharedBuffer(length: number): Buffer {
    return this.pool.takeShared(length);
  }

  /** Size of the reused shared buffers `takeSharedBuffer` hands out (a larger request gets a buffer of its own). */
  get sharedBufferBytes(): number {
    return this.pool.sharedBufferBytes;
  }

  /** Returns a buffer from `takeSharedBuffer` for reuse. */
  giveSharedBuffer(buffer: Buffer): void {
    this.pool.giveShared(buffer);
  }

  /**
   * A store with the given settings, trusted as they are (no config is read). Without settings: plain
   * objects and plain names, the format of stores from before configs existed. Servers use `open`.
   * The catalog is read from the backend on first use.
   */
  constructor(
    readonly backend: StoreBackend,
    private readonly settings: StoreSettings = PLAIN_STORE_SETTINGS,
    /** The store's config when opened with `open`; null when constructed with settings directly. */
    readonly config: StoreConfig | null = null,
  ) {}

  /**
   * Opens the store on `backend` under its config, creating the config if the store has none (see
   * `openStoreConfig` for every refusal: 'wrong-key', 'invalid-request', 'conflict', 'corrupt-data'),
   * and reads its catalog. A refused open writes nothing.
   */
  static async open(backend: StoreBackend, options: StoreOpenOptions = {}): Promise<ChunkStore> {
    const { config, settings } = await openStoreConfig(backend, options);
    const store = new ChunkStore(backend, settings, config);
    await store.catalog();
    return store;
  }

  /** True when objects are encrypted and chunk names keyed. */
  get encrypted(): boolean {
    return this.settings.codec.dataKey !== null;
  }

  /**
   * The catalog of stored chunk objects, read from the backend once (pack directories, then loose
   * chunk objects). A pack that cannot be read is left out and listed in `damagedContainers`; its
   * chunks count as missing, so verify names the points that need them and agents send them again.
   */
  catalog(): Promise<ChunkCatalog> {
    this.loadingCatalog ??= this.loadCatalog().catch((error: unknown) => {
      this.loadingCatalog = null; // a failed read (the medium) is tried again by the next caller
      throw error;
    });
    return this.loadingCatalog;
  }

  /**
   * Forgets the in-memory catalog and reads it again from the backend: for when something other than
   * this store changed the objects (a store restored from a backup, files aged or removed by a test).
   * After a reload, every chunk counts as touched when its pack was last written or touched.
   */
  async reloadCatalog(): Promise<void> {
    this.loadingCatalog = null;
    await this.catalog();
  }

  /**
   * Stores a chunk under its SHA-256, like `putChunks` with one chunk: chunk-hash-mismatch (nothing
   * stored) when the bytes do not hash to `expectedHashHex`, invalid-request for a name that is not
   * SHA-256 hex or an all-zero chunk (those are never stored). Idempotent.
   */
  async putChunk(expectedHashHex: string, data: Uint8Array): Promise<'stored' | 'already-present'> {
    const { stored } = await this.putChunks([{ hashHex: expectedHashHex, data }]);
    return stored === 1 ? 'stored' : 'already-present';
  }

  /**
   * Stores a batch of chunks: first every delta is rebuilt from its base (`resolveDeltas`:
   * delta-base-missing when a base cannot be read) and every chunk is checked and encoded
   * (`ingestChunk`: a compressed one inflated, its bytes hashing to its name, not all zeros; in the codec
   * pool for a large batch), so a batch with one bad chunk stores nothing; then `gate` says which the
   * store already holds; the rest are written as one pack (several for a batch beyond 64 MiB), durably,
   * before this resolves. A rebuilt chunk is compressed under the store's codec. At most
   * BATCHES_IN_FLIGHT batches are stored at once in the process (any store); a call beyond waits its
   * turn. Returns how many were received and how many newly stored.
   */
  async putChunks(uploads: readonly ChunkUpload[], gate: PresenceGate = (hashes) => this.touchChunks(hashes)): Promise<{ received: number; stored: number }> {
    return batchSlots.run(async () => {
      const { chunks, release } = await this.resolveDeltas(uploads);
      try {
        return await this.storeChunks(chunks, gate);
      } finally {
        release(); // stored (objects may refer to the rebuilt bytes until their pack is written)
      }
    });
  }

  /** `putChunks` once every upload is a whole chunk. */
  private async storeChunks(chunks: readonly ChunkToStore[], gate: PresenceGate): Promise<{ received: number; stored: number }> {
    const { objects, names, release } = await this.checkAndEncode(chunks);
    try {
      return await this.writeObjects(chunks, objects, names, gate);
    } finally {
      release(); // written, or failed: nothing reads the objects any more
    }
  }

  /** Writes the encoded `objects` of `chunks` the store does not hold yet (`gate`) as packs, durably. */
  private async writeObjects(chunks: readonly ChunkToStore[], objects: readonly Uint8Array[][], names: readonly string[], gate: PresenceGate): Promise<{ received: number; stored: number }> {
    const catalog = await this.catalog();
    const present = await gate(chunks.map((chunk) => chunk.hashHex));
    const toWrite: { name: string; object: Uint8Array[] }[] = [];
    const queued = new Set<string>();
    let pending = 0;
    const flush = async () => {
      const batch = toWrite.splice(0);
      pending = 0;
      if (batch.length === 0) return;
      const packKey = newPackKey();
      const pack = buildPack(packKey, batch, this.settings.codec);
      await this.backend.put(packKey, pack.parts);
      const now = Date.now();
      catalog.add({ key: packKey, kind: 'pack', size: pack.size, modifiedAt: now }, pack.entries, now);
    };
    for (const [position, chunk] of chunks.entries()) {
      if (present[position] || queued.has(chunk.hashHex)) continue;
      queued.add(chunk.hashHex);
      const object = objects[position]!;
      toWrite.push({ name: names[position]!, object });
      for (const part of object) pending += part.length;
      if (pending >= PACK_TARGET_BYTES) await flush();
    }
    await flush();
    return { received: chunks.length, stored: queued.size };
  }

  /**
   * Every chunk checked and encoded as its stored object, as parts (`ingestChunkParts`: a payload kept
   * as uploaded is not copied), in input order, with the object names: in the codec pool when the batch
   * is large, so the event loop stays free, else inline. `release` once the objects are written (the
   * pool's objects lie in a buffer it reuses). Throws the first refusal: invalid-request for a name that
   * is not SHA-256 hex, a frame that does not inflate or an all-zero chunk; chunk-hash-mismatch.
   */
  private async checkAndEncode(chunks: readonly ChunkToStore[]): Promise<{ objects: Uint8Array[][]; names: string[]; release: () => void }> {
    const names = chunks.map((chunk) => this.chunkObjectName(chunk.hashHex)); // invalid-request for a bad name
    // A chunk that came with a zstd frame (known or claimed to inflate to it) is checked through the
    // frame, which is then kept as its stored payload when smaller (encodeChunkObject's `zstdFrame`).
    const inputs: IngestInput[] = chunks.map((chunk, position) => ({
      hashHex: chunk.hashHex,
      payload: chunk.zstdFrame ?? chunk.data,
      compressed: chunk.zstdFrame !== undefined,
      objectKey: chunkKey(names[position]!),
      rebuiltFrom: chunk.rebuiltFrom ?? null,
    }));
    const payloadBytes = inputs.reduce((total, input) => total + input.payload.length, 0);
    if (payloadBytes >= POOL_INGEST_MIN_BYTES) return { ...(await this.pool.ingest(inputs, this.settings.codec)), names };
    const objects = inputs.map((input) => {
      const stored = ingestChunkParts(input, this.settings.codec);
      // Joined (a copy) at once: the parts may view a scratch buffer the next chunk reuses.
      return typeof stored === 'number' ? [plainObjectHeader(stored), input.payload] : [Buffer.concat(stored)];
    });
    return { objects, names, release: () => undefined };
  }

  /**
   * The uploads as whole chunks, in input order: a whole chunk as it is, a delta rebuilt from its base
   * (read and checked like `getChunk`, several at once; every base is read before anything is stored),
   * with `release`, to call once nothing reads the rebuilt chunks any more: they are rebuilt in the
   * shared buffer their bases were read into (in place, for a base only one delta uses). Does not check
   * the results against their names (`putChunks` does). Throws delta-base-missing, not retryable,
   * naming the chunk and its base, when a base is not in the store, does not read back sound, or is not
   * the delta's length: the agent then sends that chunk whole.
   */
  private async resolveDeltas(uploads: readonly ChunkUpload[]): Promise<{ chunks: ChunkToStore[]; release: () => void }> {
    const deltas = uploads.filter(isDelta);
    if (deltas.length === 0) return { chunks: uploads as ChunkToStore[], release: () => undefined };
    const baseNames = [...new Set(deltas.map((upload) => upload.delta.baseHashHex))];
    const bases = new Map<string, Buffer>();
    const pool = this.pool;
    let basesBuffer: Buffer | null = null;
    try {
      // Bases lie scattered over the packs of earlier points: read a few at a time and decoded and
      // checked in the codec pool, into one shared buffer (a base must be the delta's length).
      const lengths = baseNames.map((name) => deltas.find((upload) => upload.delta.baseHashHex === name)!.delta.chunkLength);
      const offsets: number[] = [];
      let total = 0;
      for (const length of lengths) {
        offsets.push(total);
        total += length;
      }
      const read = pool.takeShared(total);
      basesBuffer = read;
      // The stored bases are read into a reused buffer too (those that do not fit into fresh ones):
      // an incremental cycle reads thousands of them, and a fresh buffer for each is garbage as soon
      // as it is decoded, freed only when V8 next collects.
      const objects = pool.takeShared(total);
      await this.readChunksInto(baseNames, read, offsets, lengths, objects);
      pool.giveShared(objects); // read and decoded: nothing reads it any more
      baseNames.forEach((name, position) => bases.set(name, read.subarray(offsets[position]!, offsets[position]! + lengths[position]!)));
    } catch (error) {
      // `basesBuffer` (and the objects' buffer) are dropped, not reused: if the pool broke, a worker
      // still alive may be writing into them.
      if (!(error instanceof FerryError) || (error.code !== 'not-found' && error.code !== 'corrupt-data')) throw error;
      const base = typeof error.details?.hash === 'string' ? error.details.hash : null;
      const upload = deltas.find((each) => each.delta.baseHashHex === base) ?? deltas[0]!;
      throw new FerryError(
        'delta-base-missing',
        `chunk ${upload.hashHex} was sent as changes to chunk ${upload.delta.baseHashHex}, which the store cannot provide (${error.message}); batch rejected, nothing stored (send the chunk whole)`,
        { details: { hash: upload.hashHex, base: upload.delta.baseHashHex }, cause: error },
      );
    }
    // A base only one delta uses is rebuilt in place: no copy, no allocation per chunk.
    const uses = new Map<string, number>();
    for (const upload of deltas) uses.set(upload.delta.baseHashHex, (uses.get(upload.delta.baseHashHex) ?? 0) + 1);
    try {
      const chunks = uploads.map((upload) => {
        if (!isDelta(upload)) return upload;
        const base = bases.get(upload.delta.baseHashHex)!;
        const into = uses.get(upload.delta.baseHashHex) === 1 && base.length === upload.delta.chunkLength ? base : undefined;
        const data = applyDelta(upload.hashHex, base, upload.delta, into);
        return { hashHex: upload.hashHex, data, rebuiltFrom: upload.delta.baseHashHex };
      });
      const buffer = basesBuffer!;
      return { chunks, release: () => pool.giveShared(buffer) };
    } catch (error) {
      pool.giveShared(basesBuffer!);
      throw error;
    }
  }

  /**
   * Throws unless every chunk may be stored: chunk-hash-mismatch when its bytes do not hash to its
   * name (saying so when it was rebuilt from a delta), invalid-request for a name that is not SHA-256
   * hex or for an all-zero chunk.
   */
  checkChunks(chunks: readonly ChunkToStore[]): void {
    for (const chunk of chunks) {
      if (!isHashHex(chunk.hashHex)) throw new FerryError('invalid-request', `'${chunk.hashHex}' is not a SHA-256 hex name`);
      const actual = hashChunk(chunk.data).toString('hex');
      if (actual !== chunk.hashHex) {
        const rebuilt = chunk.rebuiltFrom ? ` once rebuilt from its changes to chunk ${chunk.rebuiltFrom}` : '';
        throw new FerryError('chunk-hash-mismatch', `chunk sent as ${chunk.hashHex} hashes to ${actual}${rebuilt}; rejected, nothing stored`, {
          details: { expected: chunk.hashHex, actual, ...(chunk.rebuiltFrom ? { base: chunk.rebuiltFrom } : {}) },
        });
      }
      if (isAllZero(chunk.data)) throw new FerryError('invalid-request', `chunk ${chunk.hashHex} is all zeros; zero chunks are never stored, index them as zero`);
    }
  }

  /**
   * For each name, whether the store holds that chunk; every chunk answered true has been touched (its
   * catalog time, and its pack's time on the backend), so garbage collection keeps it for as long as a
   * job that learnt of it may commit. A pack found missing on the backend is forgotten and its chunks
   * answered false, so they are sent again. Throws invalid-request for a malformed name.
   */
  async touchChunks(hashHexes: readonly string[]): Promise<boolean[]> {
    const catalog = await this.catalog();
    const names = hashHexes.map((hash) => this.chunkObjectName(hash));
    await this.confirmContainers(catalog, names, (key) => this.backend.touch(key));
    const now = Date.now();
    return names.map((name) => catalog.touch(name, now));
  }

  /** Reads a chunk, decodes it and checks its hash; throws not-found or corrupt-data. */
  async getChunk(hashHex: string): Promise<Buffer> {
    const catalog = await this.catalog();
    const name = this.chunkObjectName(hashHex);
    for (let attempt = 1; ; attempt++) {
      const entry = catalog.get(name);
      if (!entry) throw new FerryError('not-found', `chunk ${hashHex} is not in the store`, { details: { hash: hashHex } });
      let object: Buffer;
      try {
        object = await this.readEntry(entry);
      } catch (error) {
        if (!(error instanceof FerryError) || error.code !== 'not-found') throw error;
        // Garbage collection may have just moved the chunk to a new pack: look again once.
        if (!catalog.isCurrent(name, entry.container) && attempt === 1) continue;
        catalog.forgetContainer(entry.container.key); // gone behind our back: its chunks are missing
        throw new FerryError('not-found', `chunk ${hashHex} is not in the store (${entry.container.key} is gone)`, { details: { hash: hashHex } });
      }
      return this.decodeChunk(object, name, hashHex);
    }
  }

  /** Each of `hashHexes` with its position in the list, its object name and where the catalog has it (if it does). */
  private async locateWanted(hashHexes: readonly string[]): Promise<WantedChunk[]> {
    const catalog = await this.catalog();
    return hashHexes.map((hashHex, position) => {
      const name = this.chunkObjectName(hashHex);
      return { hashHex, position, name, entry: catalog.get(name) };
    });
  }

  /**
   * Reads several chunks, like `getChunk` for each (same errors), in input order. Entries that lie back
   * to back in one pack are fetched with one range read (at most `MAX_COALESCED_READ` bytes), which is
   * how a disk restores: its chunks were stored in disk order, so a restore reads packs sequentially
   * instead of opening the pack once per chunk.
   */
  async getChunks(hashHexes: readonly string[]): Promise<Buffer[]> {
    const wanted = await this.locateWanted(hashHexes);
    const results = new Array<Buffer>(hashHexes.length);
    const packed: WantedChunk[] = [];
    for (const chunk of wanted) {
      if (chunk.entry?.container.kind === 'pack') packed.push(chunk);
      else results[chunk.position] = await this.getChunk(chunk.hashHex); // not catalogued, or loose: one by one
    }
    for (const run of coalescedRuns(packed)) {
      const first = run[0]!.entry!;
      const last = run[run.length - 1]!.entry!;
      const runEnd = last.offset + last.length;
      let bytes: Buffer;
      try {
        bytes = await this.backend.getRange(first.container.key, first.offset, runEnd - first.offset);
      } catch (error) {
        if (!(error instanceof FerryError) || error.code !== 'not-found') throw error;
        for (const chunk of run) results[chunk.position] = await this.getChunk(chunk.hashHex); // moved or gone: decide one by one
        continue;
      }
      for (const chunk of run) {
        const at = chunk.entry!.offset - first.offset;
        results[chunk.position] = this.decodeChunk(bytes.subarray(at, at + chunk.entry!.length), chunk.name, chunk.hashHex);
      }
    }
    return results;
  }

  /**
   * Reads the chunks named `hashHexes` into `output` (a view of a SharedArrayBuffer), chunk i at
   * `outputAt[i]`, `chunkLengths[i]` bytes long: like `getChunks` (same errors, and a chunk must also
   * be exactly its length), but decoded and checked in the codec pool, each run of entries lying back
   * to back in a pack read with one range read while the previous runs decode. For restoring disks:
   * the event loop only reads and hands over bytes. With `readBuffer` (a view of a SharedArrayBuffer,
   * reused by the caller between calls) and a backend that reads into buffers, the stored objects are
   * read into it while they fit, so a restore allocates nothing per read.
   */
  async readChunksInto(hashHexes: readonly string[], output: Uint8Array, outputAt: readonly number[], chunkLengths: readonly number[], readBuffer?: Uint8Array): Promise<void> {
    const pool = this.pool;
    const outputBuffer = Buffer.from(output.buffer, output.byteOffset, output.byteLength);
    const wanted = await this.locateWanted(hashHexes);
    const readOneByOne = async (chunk: WantedChunk) => {
      const data = await this.getChunk(chunk.hashHex); // not catalogued, loose, or moved: the slow, careful path
      if (data.length !== chunkLengths[chunk.position]) {
        throw new FerryError('corrupt-data', `stored chunk ${chunk.hashHex} is ${data.length} bytes, not the ${chunkLengths[chunk.position]} bytes expected`, { details: { hash: chunk.hashHex } });
      }
      data.copy(outputBuffer, outputAt[chunk.position]!);
    };
    const packed: WantedChunk[] = [];
    for (const chunk of wanted) {
      if (chunk.entry?.container.kind === 'pack') packed.push(chunk);
      else await readOneByOne(chunk);
    }
    const runs = coalescedRuns(packed);
    // A few runs are read at once (scattered chunks, like a batch's delta bases, are many small reads),
    // each decoded in the pool as soon as it is read. Once this settles, nothing writes into `output`.
    let failure: unknown = null;
    let readBufferUsed = 0;
    const readInto = this.backend.getRangeInto?.bind(this.backend);
    const shared = readBuffer && isShared(readBuffer) ? Buffer.from(readBuffer.buffer, readBuffer.byteOffset, readBuffer.byteLength) : null;
    const runBytes = runs.reduce((total, run) => total + run.at(-1)!.entry!.offset + run.at(-1)!.entry!.length - run[0]!.entry!.offset, 0);
    const readsInFlight = runBytes <= runs.length * SMALL_RUN_BYTES ? SMALL_RUN_READS_IN_FLIGHT : RUN_READS_IN_FLIGHT;
    await mapLimited(runs, readsInFlight, async (run) => {
      if (failure) return;
      const first = run[0]!.entry!;
      const last = run.at(-1)!.entry!;
      const length = last.offset + last.length - first.offset;
      try {
        let bytes: Buffer;
        try {
          if (readInto && shared && readBufferUsed + length <= shared.length) {
            bytes = shared.subarray(readBufferUsed, readBufferUsed + length);
            readBufferUsed += length;
            await readInto(first.container.key, first.offset, bytes);
          } else {
            bytes = await this.backend.getRange(first.container.key, first.offset, length);
          }
        } catch (error) {
          if (!(error instanceof FerryError) || error.code !== 'not-found') throw error;
          for (const chunk of run) await readOneByOne(chunk); // moved or gone: decide one by one
          return;
        }
        const objects = run.map((chunk) => ({
          at: chunk.entry!.offset - first.offset,
          objectLength: chunk.entry!.length,
          objectKey: chunkKey(chunk.name),
          hashHex: chunk.hashHex,
          chunkLength: chunkLengths[chunk.position]!,
          outputAt: outputAt[chunk.position]!,
        }));
        await pool.decode(bytes, objects, output, this.settings.codec);
      } catch (error) {
        failure ??= error;
      }
    });
    if (failure) throw failure;
  }

  /** True when the chunk named `hashHex` is stored: catalogued, and its pack still on the backend. */
  async hasChunk(hashHex: string): Promise<boolean> {
    return (await this.missingChunks([hashHex])).length === 0;
  }

  /**
   * Of the given hashes, those the store does not hold (in input order, without duplicates). Checks
   * that the packs holding the others are still on the backend (one check per pack).
   */
  async missingChunks(hashHexes: readonly string[]): Promise<string[]> {
    const catalog = await this.catalog();
    const unique = [...new Set(hashHexes)];
    const names = unique.map((hash) => this.chunkObjectName(hash));
    await this.confirmContainers(catalog, names, (key) => this.backend.has(key));
    return unique.filter((_, position) => !catalog.get(names[position]!));
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
  // These speak in object names and backend keys, so that how a chunk's name maps to its object name
  // (plain or keyed with a secret) stays inside this class.

  /**
   * The name the chunk named `hashHex` is stored under: the hash itself in a plain store; in an
   * encrypted one HMAC-SHA256(naming key, hash), so no object name says anything about its content to
   * anyone without the key. The only place a chunk name becomes an object name. Throws invalid-request
   * for a name that is not 64 lowercase hex characters.
   */
  chunkObjectName(hashHex: string): string {
    if (!isHashHex(hashHex)) throw new FerryError('invalid-request', `'${hashHex}' is not a SHA-256 hex name`);
    const namingKey = this.settings.namingKey;
    if (namingKey === null) return hashHex;
    return createHmac('sha256', namingKey).update(Buffer.from(hashHex, 'hex')).digest('hex');
  }

  /** Where the chunk named `hashHex` is stored (backend key, offset, length), or null when it is not. */
  async locateChunk(hashHex: string): Promise<{ key: string; offset: number; length: number } | null> {
    const entry = (await this.catalog()).get(this.chunkObjectName(hashHex));
    return entry ? { key: entry.container.key, offset: entry.offset, length: entry.length } : null;
  }

  /**
   * The backend object key that holds the index named `indexHashHex`: always indexes/<hash>, also when
   * encrypted (the index's content is encrypted; its name is the hash of a list of chunk hashes, which
   * tells nothing to whoever does not already know the whole disk), so `listIndexHashes` can give names.
   */
  indexObjectKey(indexHashHex: string): string {
    return indexKey(indexHashHex);
  }

  /** Every index name (hash) in the store. */
  async *listIndexHashes(): AsyncIterable<string> {
    for await (const key of this.backend.list('indexes/')) yield key.slice('indexes/'.length);
  }

  /** Deletes one index object by key (garbage collection only: callers must have proved nothing references it). */
  async deleteObject(key: string): Promise<void> {
    await this.backend.delete(key);
  }

  /**
   * Deletes a pack or loose chunk object (garbage collection only: callers hold the guard exclusively
   * and have proved no point needs its current entries). The catalog forgets it first, so no reader is
   * sent to it afterwards.
   */
  async deleteContainer(container: ChunkContainer): Promise<void> {
    (await this.catalog()).forgetContainer(container.key);
    await this.backend.delete(container.key);
  }

  /**
   * Copies the chunk objects named `keep` (current entries of `container`) into a new pack, byte for
   * byte, then deletes `container` (garbage collection: reclaims the space of its other entries).
   * The new pack is durable and catalogued before the old one goes. Returns the bytes freed.
   */
  async repack(container: ChunkContainer, keep: readonly string[]): Promise<number> {
    const catalog = await this.catalog();
    const source = await this.backend.get(container.key);
    const objects = keep.map((name) => {
      const entry = catalog.get(name);
      if (entry?.container !== container) throw new FerryError('internal', `repack of ${container.key}: ${name} is not read from it`);
      return { name, object: source.subarray(entry.offset, entry.offset + entry.length) };
    });
    const packKey = newPackKey();
    const pack = buildPack(packKey, objects, this.settings.codec);
    await this.backend.put(packKey, pack.parts);
    // Moved entries keep their own touch times (touchedAt 0 never lowers one).
    catalog.add({ key: packKey, kind: 'pack', size: pack.size, modifiedAt: Date.now() }, pack.entries, 0, true);
    await this.deleteContainer(container);
    return container.size - pack.size;
  }

  // --- internals --------------------------------------------------------------------------------

  /** Decodes a stored chunk object and checks it against its name; throws corrupt-data. */
  private decodeChunk(object: Buffer, name: string, hashHex: string): Buffer {
    const data = decodeChunkObject(object, chunkKey(name), this.settings.codec);
    if (hashChunk(data).toString('hex') !== hashHex) {
      throw new FerryError('corrupt-data', `stored chunk ${hashHex} does not match its hash`, { details: { hash: hashHex } });
    }
    return data;
  }

  private async readEntry(entry: CatalogEntry): Promise<Buffer> {
    const { container } = entry;
    return container.kind === 'loose' ? this.backend.get(container.key) : this.backend.getRange(container.key, entry.offset, entry.length);
  }

  /**
   * Runs `check` (a backend has or touch) once for every container holding one of `names`; a container
   * the backend no longer has is forgotten, so its chunks count as missing from then on.
   */
  private async confirmContainers(catalog: ChunkCatalog, names: readonly string[], check: (key: string) => Promise<boolean>): Promise<void> {
    const containers = new Map<string, ChunkContainer>();
    for (const name of names) {
      const container = catalog.get(name)?.container;
      if (container) containers.set(container.key, container);
    }
    const keys = [...containers.keys()];
    const exists = await mapLimited(keys, IO_CONCURRENCY, check);
    keys.forEach((key, position) => {
      if (!exists[position]) catalog.forgetContainer(key);
    });
  }

  private async loadCatalog(): Promise<ChunkCatalog> {
    const catalog = new ChunkCatalog();
    this.damagedContainers.length = 0;
    const packKeys: string[] = [];
    for await (const key of this.backend.list('packs/')) if (isPackKey(key)) packKeys.push(key);
    await mapLimited(packKeys, IO_CONCURRENCY, async (key) => {
      const stat = await this.backend.stat(key);
      if (!stat) return;
      try {
        const entries = await readPackDirectory(this.backend, key, stat.size, this.settings.codec);
        // After a restart a chunk counts as touched when its pack last was: touches are kept per pack.
        catalog.add({ key, kind: 'pack', size: stat.size, modifiedAt: stat.modifiedAt }, entries, stat.modifiedAt);
      } catch (error) {
        if (error instanceof FerryError && error.code === 'not-found') return; // deleted since it was listed
        if (!(error instanceof FerryError) || error.code !== 'corrupt-data') throw error;
        this.damagedContainers.push({ key, message: error.message });
      }
    });
    const looseKeys: string[] = [];
    for await (const key of this.backend.list('chunks/')) looseKeys.push(key);
    await mapLimited(looseKeys, IO_CONCURRENCY, async (key) => {
      const name = key.slice(key.lastIndexOf('/') + 1);
      if (!isHashHex(name) || key !== chunkKey(name)) return; // not a chunk object: leave it alone
      const stat = await this.backend.stat(key);
      if (stat) catalog.add({ key, kind: 'loose', size: stat.size, modifiedAt: stat.modifiedAt }, [{ name, offset: 0, length: stat.size }], stat.modifiedAt);
    });
    return catalog;
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
