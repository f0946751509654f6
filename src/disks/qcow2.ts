/**
 * qcow2 (QEMU/KVM) disk images: a reader for versions 2 and 3 and a streaming writer of version 3, per
 * QEMU's docs/interop/qcow2.txt ("Header", "Header extensions", "Feature name table", "Host cluster
 * management", "Cluster mapping" / "Compressed Clusters Descriptor", "Snapshots").
 *
 * Reading: header → L1 table → L2 tables (a small LRU cache) → clusters. A standard cluster is read from
 * the file, a cluster with the zero flag (v3) is a `zero` extent, a compressed cluster (zlib raw deflate,
 * or zstd when the compression-type feature says so) inflates to exactly one cluster, and an unallocated
 * cluster reads from the backing file (qcow2 or raw, resolved relative to the image's directory; zeros
 * past a shorter backing file's end) or, without one, as zeros. Extents of an image with a backing file
 * ask the backing reader, so an unallocated cluster is `data` where the backing file has data. A read
 * gathers the clusters it needs from the file and hands them to parallel-inflate.ts: nearby ones are
 * fetched with one read and zlib clusters inflated in worker threads (zstd ones on the spot).
 * - The 'dirty' incompatible bit (lazy refcounts) is accepted: it only says refcounts may be stale, and
 *   reading never uses refcounts. The 'corrupt' bit is refused with corrupt-data.
 * - Internal snapshots are ignored: the active L1 table (the header's) is what is read.
 * - Not supported, refused with 'invalid-request' naming the feature: encryption (AES or LUKS), an
 *   external data file, extended L2 entries (subclusters), unknown incompatible feature bits (named from
 *   the image's feature name table when it has one), unknown compression types, and backing formats
 *   other than qcow2 and raw.
 * - Hostile images (tables past the end of the file or overlapping the L1 table, unaligned offsets,
 *   absurd sizes, clusters that do not inflate to exactly one cluster, backing chain loops or chains
 *   deeper than 16) are refused with 'corrupt-data' naming the file; nothing is allocated from a size the
 *   image claims before it has been checked against the file's size and QEMU's own limits.
 *
 * Writing: qcow2 v3, 64 KiB clusters, refcount_bits 16, subformats 'v3' and 'v3-compressed' (zlib
 * clusters, stored uncompressed where compression does not save at least a sector). One pass over the
 * input: data clusters are appended as pieces come (all-zero clusters are not allocated; the appends
 * coalesce into large writes in the `ImageFileWriter`, image-writer.ts); the L2 tables
 * (only those covering data), refcount blocks and refcount table follow the data, and the header and the
 * L1 table (sized from input.size, reserved up front after the header) are written last.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { deflateRawSync } from 'node:zlib';
import zstd from 'zstd-napi/binding.js';
import { FerryError } from '../errors.js';
import type { DiskExtent, DiskImageFormatModule, DiskImageInput, DiskImageReader, DiskImageWriteOptions, DiskImageWriter } from './disk-image.js';
import { checkReadRange, checkedPieces, corruptImage as corrupt, ExtentMerger, ioErrorReason, readBytes, readExactly, writeImageFileAtomically } from './image-file.js';
import { type ImageFileWriter, wholeBlocks } from './image-writer.js';
import { type Inflated, inflateUnits, type StoredUnit } from './parallel-inflate.js';
import { openRawImage } from './raw-image.js';

const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
const V2_HEADER_LENGTH = 72;
const V3_MIN_HEADER_LENGTH = 104;
/** QEMU's limits (block/qcow2.h: MIN_CLUSTER_BITS, MAX_CLUSTER_BITS, QCOW_MAX_L1_SIZE). */
const MIN_CLUSTER_BITS = 9;
const MAX_CLUSTER_BITS = 21;
const MAX_L1_TABLE_BYTES = 32 * 1024 * 1024;
const MAX_BACKING_FILE_NAME = 1023;
/** How many images a backing chain may hold below the opened one. */
const MAX_BACKING_DEPTH = 16;
/** A run of plain clusters at least this long is read straight into the caller's buffer, not with the compressed ones. */
const DIRECT_RUN_BYTES = 256 * 1024;
/** Bytes of L2 tables the reader keeps cached (at least two tables). */
const L2_CACHE_BYTES = 4 * 1024 * 1024;
const SECTOR = 512;

/** Header extension types (qcow2.txt "Header extensions"). */
const EXTENSION_END = 0x00000000;
const EXTENSION_BACKING_FORMAT = 0xe2792aca;
const EXTENSION_FEATURE_NAMES = 0x6803f857;
const EXTENSION_EXTERNAL_DATA_FILE = 0x44415441;

/** Incompatible feature bits (qcow2.txt "Header", bytes 72-79). */
const INCOMPATIBLE_DIRTY = 0;
const INCOMPATIBLE_CORRUPT = 1;
const INCOMPATIBLE_EXTERNAL_DATA_FILE = 2;
const INCOMPATIBLE_COMPRESSION_TYPE = 3;
const INCOMPATIBLE_EXTENDED_L2 = 4;
const KNOWN_INCOMPATIBLE_BITS = [INCOMPATIBLE_DIRTY, INCOMPATIBLE_CORRUPT, INCOMPATIBLE_EXTERNAL_DATA_FILE, INCOMPATIBLE_COMPRESSION_TYPE, INCOMPATIBLE_EXTENDED_L2];

/** L1/L2 entry bits, as flags of the entry's 32-bit words (bit 63, 'copied', is not needed to read). */
const HIGH_COMPRESSED = 0x40000000; // bit 62
const LOW_ZERO = 0x1; // bit 0 (v3 standard clusters)
/** Bits 9-55 of an L1 or standard L2 entry: the host offset. */
const HIGH_OFFSET_MASK = 0x00ffffff;
const LOW_OFFSET_MASK = 0xfffffe00;

type CompressionType = 'zlib' | 'zstd';

/** A cluster (or a run of plain clusters) a read fetches from the file: where it lies, and where its bytes go. */
interface StoredCluster extends StoredUnit {
  kind: 'standard' | 'compressed';
  clusterIndex: number;
  /** Where the bytes go in the read's buffer, from which byte of the (first) cluster, and how many. */
  into: number;
  within: number;
  span: number;
}

/** What one guest cluster maps to. */
type ClusterMapping =
  | { kind: 'unallocated' }
  | { kind: 'zero' }
  | { kind: 'standard'; hostOffset: number }
  | { kind: 'compressed'; hostOffset: number; storedLength: number };

/** The header fields the reader uses, validated. */
interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  clusterSize: number;
  size: number;
  l1Entries: number;
  l1TableOffset: number;
  compression: CompressionType;
  backingFileName: string | null;
  backingFormat: string | null;
}

/** Sniffs a qcow2 image: the "QFI\xfb" magic followed by version 2 or 3. */
export function sniffQcow2(head: Buffer, fileSize: number): boolean {
  if (head.length < 8 || fileSize < V2_HEADER_LENGTH) return false;
  const version = head.readUInt32BE(4);
  return head.readUInt32BE(0) === QCOW2_MAGIC && (version === 2 || version === 3);
}

/**
 * Opens a qcow2 image (v2 or v3) for reading, with its backing chain. Throws 'disk-unreadable' when the
 * image or a backing file cannot be opened (the message names it), 'corrupt-data' for a malformed or
 * hostile image (naming the file and the problem) or a backing chain loop, 'invalid-request' for what
 * Ferry does not read (encryption, external data files, extended L2 entries, unknown features).
 */
export async function openQcow2(imagePath: string): Promise<DiskImageReader> {
  return openQcow2InChain(imagePath, [], null);
}

/** `chain` holds the real paths of the images above this one (for loop detection), `parent` the image naming it. */
async function openQcow2InChain(imagePath: string, chain: readonly string[], parent: string | null): Promise<Qcow2Reader> {
  const realPath = await realPathOf(imagePath, parent);
  if (chain.includes(realPath)) {
    throw corrupt(chain[0]!, `backing chain loop: ${[...chain, realPath].join(' -> ')}`);
  }
  if (chain.length > MAX_BACKING_DEPTH) throw corrupt(chain[0]!, `backing chain deeper than ${MAX_BACKING_DEPTH} images`);
  const handle = await openForReading(imagePath, parent);
  let backing: DiskImageReader | null = null;
  try {
    const fileSize = (await handle.stat()).size;
    const header = await readHeader(handle, imagePath, fileSize);
    const l1Table = await readL1Table(handle, imagePath, fileSize, header);
    if (header.backingFileName !== null) {
      const backingPath = path.isAbsolute(header.backingFileName) ? header.backingFileName : path.resolve(path.dirname(imagePath), header.backingFileName);
      backing = await openBacking(backingPath, header.backingFormat, [...chain, realPath], imagePath);
    }
    return new Qcow2Reader(imagePath, handle, fileSize, header, l1Table, backing);
  } catch (error) {
    await backing?.close().catch(() => undefined);
    await handle.close().catch(() => undefined);
    throw error;
  }
}

async function realPathOf(imagePath: string, parent: string | null): Promise<string> {
  try {
    return await fs.realpath(imagePath);
  } catch (error) {
    throw cannotOpen(imagePath, parent, error);
  }
}

async function openForReading(imagePath: string, parent: string | null): Promise<fs.FileHandle> {
  try {
    return await fs.open(imagePath, 'r');
  } catch (error) {
    throw cannotOpen(imagePath, parent, error);
  }
}

function cannotOpen(imagePath: string, parent: string | null, error: unknown): FerryError {
  const reason = ioErrorReason(error);
  const what = parent === null ? `disk image ${imagePath}` : `backing file ${imagePath} of disk image ${parent}`;
  return new FerryError('disk-unreadable', `${what} cannot be opened (${reason})`, { cause: error, details: { path: imagePath } });
}

/** Opens a backing file in the format its child names (qcow2 or raw), or sniffs it when none is named. */
async function openBacking(backingPath: string, format: string | null, chain: readonly string[], child: string): Promise<DiskImageReader> {
  let backingFormat = format;
  if (backingFormat === null) {
    const handle = await openForReading(backingPath, child);
    try {
      const head = Buffer.alloc(8);
      const { bytesRead } = await handle.read(head, 0, 8, 0);
      backingFormat = sniffQcow2(head.subarray(0, bytesRead), (await handle.stat()).size) ? 'qcow2' : 'raw';
    } finally {
      await handle.close();
    }
  }
  if (backingFormat === 'qcow2') return openQcow2InChain(backingPath, chain, child);
  if (backingFormat === 'raw') {
    await realPathOf(backingPath, child); // names the missing file as a backing file
    // All of a raw backing file is data: the child's extents come from its own tables, never from reading the backing file.
    return openRawImage(backingPath, { scanZeros: false });
  }
  throw new FerryError('invalid-request', `disk image ${child}: backing file ${backingPath} has format '${backingFormat}'; Ferry reads qcow2 and raw backing files only`);
}

/** Reads and validates the header and its extensions (all within the first cluster). */
async function readHeader(handle: fs.FileHandle, imagePath: string, fileSize: number): Promise<Qcow2Header> {
  if (fileSize < V2_HEADER_LENGTH) throw corrupt(imagePath, `file of ${fileSize} bytes is too short for a qcow2 header`);
  const fixed = await readAt(handle, imagePath, Math.min(fileSize, 4096), 0);
  if (fixed.readUInt32BE(0) !== QCOW2_MAGIC) throw corrupt(imagePath, 'no qcow2 magic');
  const version = fixed.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new FerryError('invalid-request', `disk image ${imagePath}: qcow2 version ${version} is not supported (2 and 3 are)`);
  const clusterBits = fixed.readUInt32BE(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw corrupt(imagePath, `cluster_bits ${clusterBits} is outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}`);
  }
  const clusterSize = 2 ** clusterBits;
  // QEMU exposes whole 512-byte sectors only (total_sectors = size / 512): so does Ferry.
  const size = Math.floor(headerU64(fixed, 24, imagePath, 'virtual size') / SECTOR) * SECTOR;
  if (fixed.readUInt32BE(32) !== 0) throw new FerryError('invalid-request', `disk image ${imagePath} is encrypted (crypt_method ${fixed.readUInt32BE(32)}); Ferry does not read encrypted qcow2 images`);

  let headerLength = V2_HEADER_LENGTH;
  let incompatible = 0n;
  let compressionTypeByte = 0;
  if (version === 3) {
    headerLength = fixed.readUInt32BE(100);
    if (headerLength < V3_MIN_HEADER_LENGTH || headerLength > Math.min(clusterSize, fixed.length)) {
      throw corrupt(imagePath, `header_length ${headerLength} is outside ${V3_MIN_HEADER_LENGTH}..${Math.min(clusterSize, fixed.length)}`);
    }
    incompatible = fixed.readBigUInt64BE(72);
    const refcountOrder = fixed.readUInt32BE(96);
    if (refcountOrder > 6) throw corrupt(imagePath, `refcount_order ${refcountOrder} is above 6`);
    if (headerLength > V3_MIN_HEADER_LENGTH) compressionTypeByte = fixed[104]!;
  }

  // Header extensions and the backing file name lie in the first cluster (QEMU reads nothing beyond it).
  const firstCluster = fixed.length >= clusterSize || fixed.length === fileSize ? fixed.subarray(0, clusterSize) : await readAt(handle, imagePath, Math.min(fileSize, clusterSize), 0);
  const extensions = parseHeaderExtensions(firstCluster, headerLength, imagePath);
  checkIncompatibleFeatures(incompatible, extensions.featureNames, imagePath);
  if (extensions.externalDataFile) {
    throw new FerryError('invalid-request', `disk image ${imagePath} uses an external data file; Ferry does not read qcow2 external data files`);
  }

  let compression: CompressionType = 'zlib';
  if (compressionTypeByte === 1) compression = 'zstd';
  else if (compressionTypeByte !== 0) throw new FerryError('invalid-request', `disk image ${imagePath}: compression type ${compressionTypeByte} is not supported (zlib and zstd are)`);
  if (compression !== 'zlib' && (incompatible & (1n << BigInt(INCOMPATIBLE_COMPRESSION_TYPE))) === 0n) {
    throw corrupt(imagePath, `compression type ${compression} without the compression-type incompatible feature bit`);
  }

  let backingFileName: string | null = null;
  const backingOffset = headerU64(fixed, 8, imagePath, 'backing_file_offset');
  if (backingOffset !== 0) {
    const nameLength = fixed.readUInt32BE(16);
    if (nameLength === 0 || nameLength > MAX_BACKING_FILE_NAME) throw corrupt(imagePath, `backing file name length ${nameLength} is outside 1..${MAX_BACKING_FILE_NAME}`);
    if (backingOffset + nameLength > firstCluster.length) throw corrupt(imagePath, `backing file name at ${backingOffset} lies outside the first cluster`);
    backingFileName = firstCluster.toString('utf8', backingOffset, backingOffset + nameLength);
    if (backingFileName.includes('\0')) throw corrupt(imagePath, 'backing file name holds a NUL byte');
  }

  const l1Entries = fixed.readUInt32BE(36);
  const l1TableOffset = headerU64(fixed, 40, imagePath, 'l1_table_offset');
  const l2Coverage = clusterSize * (clusterSize / 8);
  const l1Needed = Math.ceil(size / l2Coverage);
  if (l1Entries > MAX_L1_TABLE_BYTES / 8) throw corrupt(imagePath, `L1 table of ${l1Entries} entries exceeds QEMU's limit of ${MAX_L1_TABLE_BYTES / 8}`);
  if (l1Entries < l1Needed) throw corrupt(imagePath, `L1 table of ${l1Entries} entries is too small for a virtual size of ${size} bytes (needs ${l1Needed})`);
  if (l1Entries > 0) {
    if (l1TableOffset % clusterSize !== 0 || l1TableOffset === 0) throw corrupt(imagePath, `L1 table offset ${l1TableOffset} is not a cluster-aligned offset past the header`);
    if (l1TableOffset + l1Entries * 8 > fileSize) throw corrupt(imagePath, `L1 table (${l1Entries} entries at ${l1TableOffset}) extends past the end of the file (${fileSize} bytes)`);
  }
  return { version, clusterBits, clusterSize, size, l1Entries, l1TableOffset, compression, backingFileName, backingFormat: extensions.backingFormat };
}

/** What the header extensions say (unknown extensions are ignored, as the spec allows). */
interface HeaderExtensions {
  backingFormat: string | null;
  featureNames: Map<number, string>;
  externalDataFile: boolean;
}

function parseHeaderExtensions(firstCluster: Buffer, start: number, imagePath: string): HeaderExtensions {
  const result: HeaderExtensions = { backingFormat: null, featureNames: new Map(), externalDataFile: false };
  let at = start;
  while (at + 8 <= firstCluster.length) {
    const type = firstCluster.readUInt32BE(at);
    const length = firstCluster.readUInt32BE(at + 4);
    if (type === EXTENSION_END) return result;
    const dataStart = at + 8;
    if (dataStart + length > firstCluster.length) throw corrupt(imagePath, `header extension 0x${type.toString(16)} at ${at} extends past the first cluster`);
    const data = firstCluster.subarray(dataStart, dataStart + length);
    if (type === EXTENSION_BACKING_FORMAT) result.backingFormat = data.toString('utf8').replace(/\0+$/, '');
    else if (type === EXTENSION_EXTERNAL_DATA_FILE) result.externalDataFile = true;
    else if (type === EXTENSION_FEATURE_NAMES) {
      // 48-byte entries: type (0 = incompatible), bit number, 46-byte NUL-padded name.
      for (let entry = 0; entry + 48 <= data.length; entry += 48) {
        if (data[entry] === 0) result.featureNames.set(data[entry + 1]!, data.toString('utf8', entry + 2, entry + 48).replace(/\0.*$/s, ''));
      }
    }
    at = dataStart + Math.ceil(length / 8) * 8;
  }
  return result; // no end marker before the end of the cluster: nothing more to read
}

/** Refuses the corrupt bit (corrupt-data) and features this reader does not implement (invalid-request). */
function checkIncompatibleFeatures(incompatible: bigint, featureNames: Map<number, string>, imagePath: string): void {
  const has = (bit: number) => (incompatible & (1n << BigInt(bit))) !== 0n;
  if (has(INCOMPATIBLE_CORRUPT)) throw corrupt(imagePath, "the image's corrupt bit is set (QEMU found its metadata inconsistent; run qemu-img check -r)");
  if (has(INCOMPATIBLE_EXTERNAL_DATA_FILE)) {
    throw new FerryError('invalid-request', `disk image ${imagePath} uses an external data file (incompatible feature bit 2); Ferry does not read qcow2 external data files`);
  }
  if (has(INCOMPATIBLE_EXTENDED_L2)) {
    throw new FerryError('invalid-request', `disk image ${imagePath} uses extended L2 entries (subclusters, incompatible feature bit 4); Ferry does not read them`);
  }
  const unknown: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if (has(bit) && !KNOWN_INCOMPATIBLE_BITS.includes(bit)) unknown.push(featureNames.has(bit) ? `bit ${bit} '${featureNames.get(bit)}'` : `bit ${bit}`);
  }
  if (unknown.length > 0) throw new FerryError('invalid-request', `disk image ${imagePath} uses unknown incompatible qcow2 features: ${unknown.join(', ')}`);
}

async function readL1Table(handle: fs.FileHandle, imagePath: string, fileSize: number, header: Qcow2Header): Promise<Buffer> {
  // Bounded above: the header check limited it to QEMU's 32 MiB and to what the file holds.
  if (header.l1Entries === 0) return Buffer.alloc(0);
  return readAt(handle, imagePath, header.l1Entries * 8, header.l1TableOffset, fileSize);
}

/** A small least-recently-used cache (a Map keeps insertion order: the first key is the oldest). */
class LruCache<K, V> {
  private readonly entries = new Map<K, V>();
  constructor(private readonly capacity: number) {}

  get(key: K): V | undefined {
    const value = this.entries.get(key);
    if (value !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, value);
    }
    return value;
  }

  set(key: K, value: V): void {
    this.entries.delete(key);
    this.entries.set(key, value);
    if (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value as K);
  }

  clear(): void {
    this.entries.clear();
  }
}

/** The qcow2 reader: maps guest clusters through the L1 and L2 tables, reading through positional reads. */
class Qcow2Reader implements DiskImageReader {
  readonly format = 'qcow2' as const;
  readonly subformat: string;
  readonly size: number;
  private readonly clusterSize: number;
  private readonly l2Entries: number;
  private readonly l2Cache: LruCache<number, Buffer>;
  private lastInflated: { hostOffset: number; data: Buffer } | null = null;
  private closed = false;

  constructor(
    readonly path: string,
    private readonly handle: fs.FileHandle,
    private readonly fileSize: number,
    private readonly header: Qcow2Header,
    private readonly l1Table: Buffer,
    private readonly backing: DiskImageReader | null,
  ) {
    this.subformat = `v${header.version}`;
    this.size = header.size;
    this.clusterSize = header.clusterSize;
    this.l2Entries = header.clusterSize / 8;
    this.l2Cache = new LruCache(Math.max(2, Math.floor(L2_CACHE_BYTES / header.clusterSize)));
  }

  async read(buffer: Buffer, length: number, offset: number): Promise<void> {
    checkReadRange(this.path, this.size, buffer, length, offset);
    const end = offset + length;
    // Clusters stored in the file (plain or compressed) are gathered, then fetched and inflated together;
    // long runs of plain clusters are read straight into the buffer, meanwhile.
    const stored: StoredCluster[] = [];
    const runs: Promise<void>[] = [];
    let position = offset;
    while (position < end) {
      const clusterIndex = Math.floor(position / this.clusterSize);
      const within = position - clusterIndex * this.clusterSize;
      let span = Math.min(this.clusterSize - within, end - position);
      const mapping = await this.mapCluster(clusterIndex);
      const into = position - offset;
      if (mapping.kind === 'zero' || mapping.kind === 'unallocated') {
        // Runs of zero or unallocated clusters are filled (or read from the backing file) at once.
        while (position + span < end && (await this.mapCluster(clusterIndex + Math.ceil((within + span) / this.clusterSize))).kind === mapping.kind) {
          span += Math.min(this.clusterSize, end - position - span);
        }
      }
      switch (mapping.kind) {
        case 'zero':
          buffer.fill(0, into, into + span);
          break;
        case 'unallocated':
          await this.readBacking(buffer, into, span, position);
          break;
        case 'compressed':
          if (this.lastInflated?.hostOffset === mapping.hostOffset) this.lastInflated.data.copy(buffer, into, within, within + span);
          // The last sector may extend past the end of the file (QEMU does not pad it): what is missing is not needed.
          else stored.push({ kind: 'compressed', position: mapping.hostOffset, length: Math.min(mapping.storedLength, this.fileSize - mapping.hostOffset), clusterIndex, into, within, span });
          break;
        case 'standard': {
          // Clusters that follow each other in the file too are read as one.
          let nextHost = mapping.hostOffset + this.clusterSize;
          while (position + span < end) {
            const next = await this.mapCluster(clusterIndex + Math.ceil((within + span) / this.clusterSize));
            if (next.kind !== 'standard' || next.hostOffset !== nextHost) break;
            span += Math.min(this.clusterSize, end - position - span);
            nextHost += this.clusterSize;
          }
          // A last guest cluster that is partial may end past the end of the file: its tail is outside the disk.
          const fileOffset = mapping.hostOffset + within;
          const available = Math.max(0, Math.min(span, this.fileSize - fileOffset));
          if (available < DIRECT_RUN_BYTES) stored.push({ kind: 'standard', position: fileOffset, length: available, clusterIndex, into, within, span });
          else {
            const run = this.readFileInto(buffer, into, span, fileOffset);
            run.catch(() => undefined); // awaited below
            runs.push(run);
          }
          break;
        }
      }
      position += span;
    }
    if (stored.length > 0) await this.readStored(buffer, stored);
    await Promise.all(runs);
  }

  /** Fetches and inflates `stored` clusters (parallel-inflate.ts) into `buffer`. */
  private async readStored(buffer: Buffer, stored: StoredCluster[]): Promise<void> {
    await inflateUnits(
      stored,
      (target, at) => readExactly(this.handle, this.path, target, 0, target.length, at, (endsAt) => `file ends at ${endsAt}, before the ${target.length} bytes at ${at} it should hold`),
      (unit, bytes) => {
        if (unit.kind === 'standard') return bytes;
        if (this.header.compression === 'zstd') return inflateZstdCluster(bytes, this.clusterSize, (reason) => this.compressedClusterProblem(unit, reason));
        return { compression: 'deflate', data: bytes, maxLength: this.clusterSize };
      },
      (unit, inflated) => {
        const data = this.inflatedData(unit, inflated);
        if (unit.kind === 'standard') {
          data.copy(buffer, unit.into);
          buffer.fill(0, unit.into + data.length, unit.into + unit.span);
          return;
        }
        data.copy(buffer, unit.into, unit.within, unit.within + unit.span);
        // Kept for reads of a few bytes at a time, which would otherwise inflate a cluster again and again.
        if (unit.span < this.clusterSize) this.lastInflated = { hostOffset: unit.position, data: Buffer.from(data) };
      },
    );
  }

  async *extents(): AsyncIterable<DiskExtent> {
    const merger = new ExtentMerger();
    const backing = this.backing ? new BackingExtentCursor(this.backing) : null;
    for await (const run of this.clusterRuns()) {
      if (run.kind !== 'unallocated') yield* merger.add(run.offset, run.length, run.kind);
      else if (!backing) yield* merger.add(run.offset, run.length, 'zero');
      else for await (const part of backing.over(run.offset, run.offset + run.length)) yield* merger.add(part.offset, part.length, part.kind);
    }
    yield* merger.finish();
  }

  /** Ascending runs of guest clusters of one kind: data (standard or compressed), zero, or unallocated. */
  private async *clusterRuns(): AsyncGenerator<{ offset: number; length: number; kind: 'data' | 'zero' | 'unallocated' }> {
    const clusters = Math.ceil(this.size / this.clusterSize);
    let runStart = 0;
    let runKind: 'data' | 'zero' | 'unallocated' | null = null;
    let clusterIndex = 0;
    while (clusterIndex < clusters) {
      let kind: 'data' | 'zero' | 'unallocated';
      let count = 1;
      if (clusterIndex % this.l2Entries === 0 && (await this.l2Table(clusterIndex / this.l2Entries)) === null) {
        kind = 'unallocated'; // a whole L2 table's range at once
        count = Math.min(this.l2Entries, clusters - clusterIndex);
      } else {
        const mapping = (await this.mapCluster(clusterIndex)).kind;
        kind = mapping === 'standard' || mapping === 'compressed' ? 'data' : mapping;
      }
      if (kind !== runKind) {
        if (runKind !== null) yield { offset: runStart, length: clusterIndex * this.clusterSize - runStart, kind: runKind };
        runStart = clusterIndex * this.clusterSize;
        runKind = kind;
      }
      clusterIndex += count;
    }
    if (runKind !== null) yield { offset: runStart, length: this.size - runStart, kind: runKind };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.l2Cache.clear();
    this.lastInflated = null;
    try {
      await this.backing?.close();
    } finally {
      await this.handle.close();
    }
  }

  /** The L2 table of one L1 entry, or null when it is unallocated; validated, cached. */
  private async l2Table(l1Index: number): Promise<Buffer | null> {
    const cached = this.l2Cache.get(l1Index);
    if (cached) return cached;
    const high = this.l1Table.readUInt32BE(l1Index * 8);
    const low = this.l1Table.readUInt32BE(l1Index * 8 + 4);
    const tableOffset = (high & HIGH_OFFSET_MASK) * 2 ** 32 + ((low & LOW_OFFSET_MASK) >>> 0);
    if (tableOffset === 0) return null;
    const where = `L1 entry ${l1Index}`;
    if (tableOffset % this.clusterSize !== 0) throw corrupt(this.path, `${where}: L2 table offset ${tableOffset} is not cluster aligned`);
    if (tableOffset + this.clusterSize > this.fileSize) throw corrupt(this.path, `${where} points past the end of the file (L2 table at ${tableOffset}, file of ${this.fileSize} bytes)`);
    this.checkOutsideL1Table(tableOffset, this.clusterSize, where);
    const table = await readAt(this.handle, this.path, this.clusterSize, tableOffset, this.fileSize);
    this.l2Cache.set(l1Index, table);
    return table;
  }

  /** Where guest cluster `clusterIndex` is, its L2 entry validated against the file. */
  private async mapCluster(clusterIndex: number): Promise<ClusterMapping> {
    const l1Index = Math.floor(clusterIndex / this.l2Entries);
    const table = await this.l2Table(l1Index);
    if (table === null) return { kind: 'unallocated' };
    const entryIndex = clusterIndex % this.l2Entries;
    const high = table.readUInt32BE(entryIndex * 8);
    const low = table.readUInt32BE(entryIndex * 8 + 4);
    const where = `L2 entry ${entryIndex} of L1 entry ${l1Index} (guest cluster ${clusterIndex})`;
    if (high & HIGH_COMPRESSED) return this.compressedMapping(table.readBigUInt64BE(entryIndex * 8), where);
    if (low & LOW_ZERO) {
      if (this.header.version < 3) throw corrupt(this.path, `${where} has the zero flag, which version 2 images do not have`);
      return { kind: 'zero' };
    }
    const hostOffset = (high & HIGH_OFFSET_MASK) * 2 ** 32 + ((low & LOW_OFFSET_MASK) >>> 0);
    if (hostOffset === 0) return { kind: 'unallocated' };
    if (hostOffset % this.clusterSize !== 0) throw corrupt(this.path, `${where}: cluster offset ${hostOffset} is not cluster aligned`);
    // The last guest cluster may be partial: only its part inside the disk must be in the file.
    const needed = Math.min(this.clusterSize, this.size - clusterIndex * this.clusterSize);
    if (hostOffset + needed > this.fileSize) throw corrupt(this.path, `${where} points past the end of the file (cluster at ${hostOffset}, file of ${this.fileSize} bytes)`);
    this.checkOutsideL1Table(hostOffset, this.clusterSize, where);
    return { kind: 'standard', hostOffset };
  }

  /** Compressed cluster descriptor: bits 0..x-1 host offset, x..61 additional sectors, x = 62 - (cluster_bits - 8). */
  private compressedMapping(entry: bigint, where: string): ClusterMapping {
    const offsetBits = BigInt(62 - (this.header.clusterBits - 8));
    const hostOffset = Number(entry & ((1n << offsetBits) - 1n));
    const sectorField = Number((entry >> offsetBits) & ((1n << BigInt(this.header.clusterBits - 8)) - 1n));
    const storedLength = (sectorField + 1) * SECTOR - (hostOffset % SECTOR);
    if (hostOffset < this.clusterSize) throw corrupt(this.path, `${where}: compressed cluster at ${hostOffset} lies in the header`);
    if (hostOffset >= this.fileSize) throw corrupt(this.path, `${where} points past the end of the file (compressed cluster at ${hostOffset}, file of ${this.fileSize} bytes)`);
    this.checkOutsideL1Table(hostOffset, storedLength, where);
    return { kind: 'compressed', hostOffset, storedLength };
  }

  private checkOutsideL1Table(offset: number, length: number, where: string): void {
    const l1Start = this.header.l1TableOffset;
    const l1End = l1Start + this.header.l1Entries * 8;
    if (offset < l1End && offset + length > l1Start) throw corrupt(this.path, `${where} points into the L1 table (at ${offset})`);
  }

  /** A stored cluster's bytes once inflated: a compressed one must inflate to exactly one cluster (corrupt-data otherwise). */
  private inflatedData(unit: StoredCluster, inflated: Inflated): Buffer {
    if ('failure' in inflated) throw this.compressedClusterProblem(unit, inflated.tooLarge ? 'inflates beyond one cluster' : `does not inflate (${inflated.failure})`);
    if (unit.kind === 'compressed' && inflated.data.length !== this.clusterSize) {
      throw this.compressedClusterProblem(unit, `inflates to ${inflated.data.length} bytes, not one cluster (${this.clusterSize})`);
    }
    return inflated.data;
  }

  private compressedClusterProblem(unit: StoredCluster, reason: string): FerryError {
    return corrupt(this.path, `compressed guest cluster ${unit.clusterIndex} (at ${unit.position}): ${reason}`);
  }

  private async readFileInto(buffer: Buffer, into: number, length: number, fileOffset: number): Promise<void> {
    // A last guest cluster that is partial may end past the end of the file: its tail is outside the disk.
    const available = Math.max(0, Math.min(length, this.fileSize - fileOffset));
    await readExactly(this.handle, this.path, buffer, into, available, fileOffset, (endsAt) => `file ends at ${endsAt}, before the ${available} bytes at ${fileOffset} it should hold`);
    buffer.fill(0, into + available, into + length);
  }

  private async readBacking(buffer: Buffer, into: number, length: number, position: number): Promise<void> {
    const fromBacking = this.backing ? Math.max(0, Math.min(length, this.backing.size - position)) : 0;
    if (fromBacking > 0) await this.backing!.read(buffer.subarray(into, into + fromBacking), fromBacking, position);
    buffer.fill(0, into + fromBacking, into + length);
  }
}

let zstdContext: zstd.DCtx | null = null;

/** zstd (one or more frames, as QEMU reads them): must inflate to exactly one cluster; output is bounded. */
function inflateZstdCluster(stored: Buffer, clusterSize: number, problem: (reason: string) => FerryError): Buffer {
  zstdContext ??= new zstd.DCtx();
  zstdContext.reset(zstd.ResetDirective.sessionOnly);
  const data = Buffer.alloc(clusterSize);
  let produced = 0;
  let consumed = 0;
  let frameRemaining = 1;
  try {
    while (produced < clusterSize) {
      let step: [number, number, number];
      try {
        step = zstdContext.decompressStream(data.subarray(produced), stored.subarray(consumed));
      } catch (error) {
        // After a complete frame, what follows is the sector's padding, not another frame: the data is short.
        if (frameRemaining === 0 && produced > 0) throw problem(`inflates to ${produced} bytes, not one cluster (${clusterSize})`);
        throw error;
      }
      const [remaining, wrote, read] = step;
      if (wrote === 0 && read === 0) throw problem(`inflates to ${produced} bytes, not one cluster (${clusterSize})`);
      produced += wrote;
      consumed += read;
      frameRemaining = remaining;
    }
    // The cluster is full: the frame must end here (a checksum may still be unread), not hold more data.
    const probe = Buffer.alloc(1);
    while (frameRemaining !== 0) {
      const [remaining, wrote, read] = zstdContext.decompressStream(probe, stored.subarray(consumed));
      if (wrote > 0) throw problem('inflates beyond one cluster');
      if (read === 0) throw problem('its zstd frame does not end after one cluster');
      consumed += read;
      frameRemaining = remaining;
    }
  } catch (error) {
    if (error instanceof FerryError) throw error;
    throw problem(`does not inflate (${(error as Error).message})`);
  }
  return data;
}

/** Walks a backing reader's extents for ascending ranges of the child; past the backing file's end is zero. */
class BackingExtentCursor {
  private readonly iterator: AsyncIterator<DiskExtent>;
  private current: DiskExtent | null = null;
  private done = false;

  constructor(private readonly backing: DiskImageReader) {
    this.iterator = backing.extents()[Symbol.asyncIterator]();
  }

  async *over(start: number, end: number): AsyncGenerator<DiskExtent> {
    let position = start;
    while (position < end) {
      if (position >= this.backing.size) {
        yield { offset: position, length: end - position, kind: 'zero' };
        return;
      }
      while (!this.done && (this.current === null || this.current.offset + this.current.length <= position)) {
        const next = await this.iterator.next();
        if (next.done) this.done = true;
        else this.current = next.value;
      }
      if (this.done || this.current === null || this.current.offset > position) {
        // A backing reader whose extents do not cover its disk: what it does not map reads as data.
        const until = Math.min(end, this.done || this.current === null ? this.backing.size : this.current.offset, this.backing.size);
        yield { offset: position, length: until - position, kind: 'data' };
        position = until;
        continue;
      }
      const until = Math.min(end, this.current.offset + this.current.length);
      yield { offset: position, length: until - position, kind: this.current.kind };
      position = until;
    }
  }
}

/** Reads exactly `length` bytes at `offset`; a file shorter than its checked size is corrupt (it shrank). */
async function readAt(handle: fs.FileHandle, imagePath: string, length: number, offset: number, fileSize?: number): Promise<Buffer> {
  if (fileSize !== undefined && offset + length > fileSize) throw corrupt(imagePath, `read of ${length} bytes at ${offset} past the end of the file (${fileSize} bytes)`);
  return readBytes(handle, imagePath, length, offset, (endsAt) => `file ends at ${endsAt}, before the ${length} bytes at ${offset} it should hold`);
}

/** A 64-bit header field that must be a safe integer (larger values cannot describe a real file). */
function headerU64(header: Buffer, at: number, imagePath: string, what: string): number {
  const value = header.readBigUInt64BE(at);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(imagePath, `${what} ${value} is absurd (beyond 2^53)`);
  return Number(value);
}

// ---------------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------------

const WRITE_CLUSTER_BITS = 16;
const WRITE_CLUSTER = 2 ** WRITE_CLUSTER_BITS;
const WRITE_L2_ENTRIES = WRITE_CLUSTER / 8;
const WRITE_HEADER_LENGTH = 112; // v3 header with the compression type byte, padded to a multiple of 8
const REFCOUNT_ORDER = 4; // 16-bit refcounts
const REFCOUNTS_PER_BLOCK = WRITE_CLUSTER / 2;
/** Compressed cluster descriptor shift for 64 KiB clusters: x = 62 - (16 - 8). */
const WRITE_COMPRESSED_OFFSET_BITS = 62n - BigInt(WRITE_CLUSTER_BITS - 8);
/** Bit 63 of L1 and standard L2 entries: the cluster's refcount is exactly one. */
const COPIED = 1n << 63n;
/** Bit 62 of L2 entries: the cluster is compressed. */
const COMPRESSED = 1n << 62n;

/** Subformats the qcow2 writer produces: plain v3 (the default) and v3 with zlib-compressed clusters. */
export const qcow2WriterSubformats = ['v3', 'v3-compressed'] as const;

/**
 * Writes `input` as a qcow2 v3 image at `imagePath` (64 KiB clusters, 16-bit refcounts; all-zero
 * clusters unallocated; subformat 'v3-compressed' stores clusters zlib-compressed where that is smaller).
 * One pass over input.pieces(); memory holds the L2 tables that cover data, the refcounts of the
 * clusters written and one batch of data. Written to a temporary file in the same directory, fsynced,
 * renamed into place, the directory fsynced; on error or abort (options.signal, checked between pieces)
 * the temporary file is removed. Resolves with the image's size on disk. Throws 'invalid-request' for an
 * unknown subformat, a bad size or pieces out of order or outside the disk, 'io-error' for write failures.
 */
export async function writeQcow2(imagePath: string, input: DiskImageInput, options: DiskImageWriteOptions = {}): Promise<number> {
  const subformat = options.subformat ?? qcow2WriterSubformats[0];
  if (!(qcow2WriterSubformats as readonly string[]).includes(subformat)) {
    throw new FerryError('invalid-request', `qcow2 subformat '${subformat}' is not one Ferry writes (${qcow2WriterSubformats.join(', ')})`);
  }
  if (!Number.isSafeInteger(input.size) || input.size < 0 || Math.ceil(input.size / (WRITE_CLUSTER * WRITE_L2_ENTRIES)) * 8 > MAX_L1_TABLE_BYTES) {
    throw new FerryError('invalid-request', `qcow2 image size ${input.size} is not a size qcow2 can hold`);
  }
  return writeImageFileAtomically(imagePath, options.signal, async (_handle, writer) => {
    const builder = new Qcow2Builder(writer, input.size, subformat === 'v3-compressed');
    await builder.consume(imagePath, input, options);
    await builder.finish();
  });
}

/** Refcounts of the host clusters written so far, growing as the file does. */
class RefcountArray {
  private counts = new Uint16Array(1024);
  length = 0;

  increment(cluster: number): void {
    if (cluster >= this.counts.length) {
      const grown = new Uint16Array(Math.max(this.counts.length * 2, cluster + 1));
      grown.set(this.counts);
      this.counts = grown;
    }
    this.counts[cluster]! += 1;
    this.length = Math.max(this.length, cluster + 1);
  }

  get(cluster: number): number {
    return cluster < this.length ? this.counts[cluster]! : 0;
  }
}

/**
 * Lays out one image: header (cluster 0), L1 table (from cluster 1, sized from the disk's size), data
 * clusters as they come, then L2 tables, refcount blocks and the refcount table.
 */
class Qcow2Builder {
  private readonly l1Entries: number;
  private readonly l1Clusters: number;
  private readonly l2Tables = new Map<number, Buffer>();
  private readonly refcounts = new RefcountArray();
  /** Next free byte of the file (cluster aligned except right after compressed data). */
  private writePosition: number;

  constructor(
    private readonly writer: ImageFileWriter,
    private readonly size: number,
    private readonly compressed: boolean,
  ) {
    this.l1Entries = Math.max(1, Math.ceil(size / (WRITE_CLUSTER * WRITE_L2_ENTRIES)));
    this.l1Clusters = Math.ceil((this.l1Entries * 8) / WRITE_CLUSTER);
    for (let cluster = 0; cluster <= this.l1Clusters; cluster++) this.refcounts.increment(cluster);
    this.writePosition = (1 + this.l1Clusters) * WRITE_CLUSTER;
  }

  /** Reads every piece once, storing each guest cluster that holds data (appended: the writes coalesce). */
  async consume(imagePath: string, input: DiskImageInput, options: DiskImageWriteOptions): Promise<void> {
    for await (const cluster of wholeBlocks(checkedPieces(imagePath, input, options), WRITE_CLUSTER)) await this.storeCluster(cluster.index, cluster.data);
  }

  /** Writes the metadata after the data, then the L1 table and header; resolves with the file's size. */
  async finish(): Promise<number> {
    await this.padToCluster();
    const metadataStart = this.writePosition;
    const metadata: Buffer[] = [];
    const l1Table = Buffer.alloc(this.l1Clusters * WRITE_CLUSTER);
    for (const l1Index of [...this.l2Tables.keys()].sort((a, b) => a - b)) {
      const tableOffset = this.allocateCluster();
      l1Table.writeBigUInt64BE(BigInt(tableOffset) | COPIED, l1Index * 8);
      metadata.push(this.l2Tables.get(l1Index)!);
    }
    // Refcount blocks and table must also count themselves: grow them until they cover everything.
    const usedClusters = this.writePosition / WRITE_CLUSTER;
    let blocks = 0;
    let tableClusters = 0;
    for (;;) {
      const total = usedClusters + blocks + tableClusters;
      const neededBlocks = Math.ceil(total / REFCOUNTS_PER_BLOCK);
      const neededTableClusters = Math.ceil((neededBlocks * 8) / WRITE_CLUSTER);
      if (neededBlocks === blocks && neededTableClusters === tableClusters) break;
      blocks = neededBlocks;
      tableClusters = neededTableClusters;
    }
    const firstBlock = usedClusters;
    for (let cluster = 0; cluster < blocks + tableClusters; cluster++) this.allocateCluster();
    const totalClusters = this.writePosition / WRITE_CLUSTER;
    for (let block = 0; block < blocks; block++) {
      const refcountBlock = Buffer.alloc(WRITE_CLUSTER);
      for (let entry = 0; entry < REFCOUNTS_PER_BLOCK; entry++) {
        const cluster = block * REFCOUNTS_PER_BLOCK + entry;
        if (cluster >= totalClusters) break;
        refcountBlock.writeUInt16BE(this.refcounts.get(cluster), entry * 2);
      }
      metadata.push(refcountBlock);
    }
    const refcountTable = Buffer.alloc(tableClusters * WRITE_CLUSTER);
    for (let block = 0; block < blocks; block++) refcountTable.writeBigUInt64BE(BigInt((firstBlock + block) * WRITE_CLUSTER), block * 8);
    metadata.push(refcountTable);
    const refcountTableOffset = (firstBlock + blocks) * WRITE_CLUSTER;
    let at = metadataStart;
    for (const part of metadata) {
      await this.writer.write(at, part);
      at += part.length;
    }
    await this.writer.write(0, Buffer.concat([this.header(refcountTableOffset, tableClusters), l1Table]));
    return this.writePosition;
  }

  private header(refcountTableOffset: number, refcountTableClusters: number): Buffer {
    const header = Buffer.alloc(WRITE_CLUSTER); // zeros after the header: the end-of-extensions marker
    header.writeUInt32BE(QCOW2_MAGIC, 0);
    header.writeUInt32BE(3, 4);
    header.writeUInt32BE(WRITE_CLUSTER_BITS, 20);
    // QEMU reads whole sectors only: the virtual size is rounded up to one (the tail reads as zeros).
    header.writeBigUInt64BE(BigInt(Math.ceil(this.size / SECTOR) * SECTOR), 24);
    header.writeUInt32BE(this.l1Entries, 36);
    header.writeBigUInt64BE(BigInt(WRITE_CLUSTER), 40);
    header.writeBigUInt64BE(BigInt(refcountTableOffset), 48);
    header.writeUInt32BE(refcountTableClusters, 56);
    header.writeUInt32BE(REFCOUNT_ORDER, 96);
    header.writeUInt32BE(WRITE_HEADER_LENGTH, 100);
    // byte 104: compression type 0 (zlib); no features, snapshots or extensions.
    return header;
  }

  private async storeCluster(guestIndex: number, data: Buffer): Promise<void> {
    let entry: bigint;
    const packed = this.compressed ? deflateRawSync(data, { windowBits: 12, memLevel: 9 }) : null;
    // QEMU inflates with a 4 KiB window (windowBits -12): compress with no larger one.
    if (packed && packed.length + SECTOR <= WRITE_CLUSTER) {
      const sectors = Math.ceil(packed.length / SECTOR);
      const hostOffset = this.writePosition;
      entry = COMPRESSED | (BigInt(sectors - 1) << WRITE_COMPRESSED_OFFSET_BITS) | BigInt(hostOffset);
      // Every host cluster the compressed sectors touch is referenced once more (as qemu-img check counts).
      const lastByte = hostOffset + sectors * SECTOR - 1;
      for (let cluster = Math.floor(hostOffset / WRITE_CLUSTER); cluster <= Math.floor(lastByte / WRITE_CLUSTER); cluster++) this.refcounts.increment(cluster);
      await this.append(packed);
      await this.append(Buffer.alloc(sectors * SECTOR - packed.length));
    } else {
      await this.padToCluster();
      const hostOffset = this.allocateCluster();
      await this.writer.write(hostOffset, data);
      entry = COPIED | BigInt(hostOffset);
    }
    const l1Index = Math.floor(guestIndex / WRITE_L2_ENTRIES);
    let table = this.l2Tables.get(l1Index);
    if (!table) this.l2Tables.set(l1Index, (table = Buffer.alloc(WRITE_CLUSTER)));
    table.writeBigUInt64BE(entry, (guestIndex % WRITE_L2_ENTRIES) * 8);
  }

  /** Takes the next (cluster-aligned) cluster with refcount 1 (its bytes are the caller's to write); returns its offset. */
  private allocateCluster(): number {
    const hostOffset = this.writePosition;
    this.refcounts.increment(hostOffset / WRITE_CLUSTER);
    this.writePosition += WRITE_CLUSTER;
    return hostOffset;
  }

  /** Fills the rest of a cluster partly used by compressed data, so the next allocation is aligned. */
  private async padToCluster(): Promise<void> {
    const remainder = this.writePosition % WRITE_CLUSTER;
    if (remainder !== 0) await this.append(Buffer.alloc(WRITE_CLUSTER - remainder));
  }

  /** Writes `data` at the end of what is laid out so far. */
  private async append(data: Buffer): Promise<void> {
    const at = this.writePosition;
    this.writePosition += data.length;
    await this.writer.write(at, data);
  }
}

/** The qcow2 writer (DiskImageWriter): see `writeQcow2`. */
export const qcow2Writer: DiskImageWriter = {
  format: 'qcow2',
  subformats: qcow2WriterSubformats,
  write: writeQcow2,
};

/** The qcow2 format module: sniffs the magic, opens v2/v3 images with their backing chains, writes v3. */
export const qcow2ImageFormat: DiskImageFormatModule = {
  format: 'qcow2',
  sniff: sniffQcow2,
  open: openQcow2,
  writer: qcow2Writer,
};
