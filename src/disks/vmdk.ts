/**
 * VMDK (VMware virtual disk) images: a reader for the hosted formats VMware Workstation, ESXi exports and
 * qemu-img produce, and a streamOptimized writer (what vSphere imports and OVAs carry).
 *
 * Follows "Virtual Disk Format 5.0" (VMware, the VMDK specification): the text descriptor (section
 * "The Descriptor File": header keys, extent lines `RW <sectors> <type> "<file>" [<offset>]`), the hosted
 * sparse extent (section "Hosted Sparse Extents": SparseExtentHeader, grain directory, grain tables, the
 * zeroed-grain entry 1) and the stream-optimized compressed sparse extent (section "Stream-Optimized
 * Compressed Sparse Extents": grain markers `lba, size, deflate data`, metadata markers for grain tables,
 * the grain directory and the footer, the end-of-stream marker, gdOffset = GD_AT_END with the footer's
 * header taking precedence). qemu's block/vmdk.c was used to check facts (zlib-wrapped deflate, where it
 * reads the footer: 1536 bytes before the end).
 *
 * Read: monolithicSparse, streamOptimized (a KDMV file with an embedded descriptor), and descriptor files
 * (monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, vmfs, custom) whose extents are SPARSE
 * (hosted sparse), FLAT / VMFS (raw) or ZERO. Not read (refused with 'invalid-request'): delta links
 * (parentCID other than ffffffff, or a parentFileNameHint), VMFSSPARSE/SESPARSE/VMFSRDM/VMFSRAW extents,
 * NOACCESS extents, compressed grains without markers, compression other than deflate.
 *
 * Extent paths: a descriptor's extent file names are resolved relative to the descriptor's directory;
 * subdirectories are allowed, but an absolute path or one with a '..' segment is refused with
 * 'invalid-request' (a descriptor must not make Ferry read files outside the image's directory; copy the
 * extents beside the descriptor instead).
 *
 * Limits (hostile images are refused with 'corrupt-data', never allocated): a disk of at most 64 TiB, a
 * grain of at most 1 MiB (a power of two), at most 4096 entries per grain table, a descriptor of at most
 * 1 MiB, at most 4096 extents (each stays open while the reader is), a grain directory of at most 2^24
 * entries. The grain directory is loaded once (checked to lie in the file first, every entry checked to
 * point inside it); grain tables are read on demand into a bounded cache; every grain table entry is
 * checked when used; a compressed grain is inflated with its output bounded by the grain size (a read's
 * grains fetched with few large reads and inflated in worker threads: parallel-inflate.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { FerryError } from '../errors.js';
import type { DiskExtent, DiskImageFormatModule, DiskImageInput, DiskImageReader, DiskImageWriteOptions, DiskImageWriter } from './disk-image.js';
import { checkReadRange, checkedPieces, corruptImage as corrupt, ExtentMerger, ioErrorReason, writeImageFileAtomically } from './image-file.js';
import { type ImageFileWriter, wholeBlocks } from './image-writer.js';
import { type Inflated, inflateUnits, type StoredUnit } from './parallel-inflate.js';

const SECTOR = 512;
/** "KDMV" read as a little-endian uint32: the magic of a hosted sparse extent. */
const SPARSE_MAGIC = 0x564d444b;
/** The magic of an ESX (VMFSSPARSE) delta extent, "COWD": not supported. */
const COWD_MAGIC = 0x44574f43;
const DESCRIPTOR_SIGNATURE = '# Disk DescriptorFile';
/** gdOffset value saying the grain directory's location is in the footer (stream-optimized). */
const GD_AT_END = 0xffffffffffffffffn;
const FLAG_VALID_NEWLINE_TEST = 1 << 0;
const FLAG_COMPRESSED_GRAINS = 1 << 16;
const FLAG_MARKERS = 1 << 17;
const COMPRESSION_DEFLATE = 1;
const MARKER_END_OF_STREAM = 0;
const MARKER_GRAIN_TABLE = 1;
const MARKER_GRAIN_DIRECTORY = 2;
const MARKER_FOOTER = 3;
/** A grain table entry of 1 means "this grain is zero" (the zeroed-grain GTE). */
const ZERO_GRAIN_ENTRY = 1;

const MAX_CAPACITY_BYTES = 2 ** 46; // 64 TiB: VMDK's own limit is 62 TiB
const MAX_GRAIN_SECTORS = 2048; // 1 MiB
const MAX_ENTRIES_PER_GRAIN_TABLE = 4096;
const MAX_DESCRIPTOR_BYTES = 1024 * 1024;
/** Grain directory entries loaded at most (64 MiB): 64 TiB in 64 KiB grains, 512 per table, needs 2^21. */
const MAX_GRAIN_DIRECTORY_ENTRIES = 2 ** 24;
const MAX_EXTENTS = 4096;
/** Grain tables kept in memory per extent (each at most 16 KiB). */
const GRAIN_TABLE_CACHE_ENTRIES = 512;
/** Inflated grains kept per extent, so reads of a few bytes at a time do not inflate a grain again and again. */
const INFLATED_GRAIN_CACHE_ENTRIES = 8;
/** A grain marker: the grain's first sector (8 bytes) and its compressed length (4 bytes). */
const MARKER_BYTES = 12;
/** The parent CID of a disk with no parent. */
const NO_PARENT_CID = 'ffffffff';

const inflateZlib = promisify(zlib.inflate);
const inflateRaw = promisify(zlib.inflateRaw);
const deflateZlib = promisify(zlib.deflate);

// ---------------------------------------------------------------------------------------------------
// Errors

function unsupported(label: string, problem: string): FerryError {
  return new FerryError('invalid-request', `disk image ${label}: ${problem}`, { details: { path: label } });
}

/** 'disk-unreadable' naming the file and, for an extent file, the descriptor listing it (`context`). */
function unreadable(filePath: string, error: unknown, context = ''): FerryError {
  if (error instanceof FerryError) return error;
  return new FerryError('disk-unreadable', `disk ${filePath}${context} cannot be read (${ioErrorReason(error)})`, { cause: error, details: { path: filePath } });
}

// ---------------------------------------------------------------------------------------------------
// Positional reads within a file, or within a window of one (a disk inside an OVA)

/** A byte range of an open file read positionally: the whole file, or a member of an archive. */
class FileWindow {
  constructor(
    /** Names the window in errors: the file path, plus where the member lies if it is one. */
    readonly label: string,
    private readonly filePath: string,
    private readonly handle: fs.FileHandle,
    private readonly base: number,
    readonly size: number,
  ) {}

  /** Reads up to `length` bytes at `position` of the window; resolves with how many bytes it got. */
  async read(buffer: Buffer, bufferOffset: number, length: number, position: number): Promise<number> {
    const wanted = Math.max(0, Math.min(length, this.size - position));
    let filled = 0;
    try {
      while (filled < wanted) {
        const { bytesRead } = await this.handle.read(buffer, bufferOffset + filled, wanted - filled, this.base + position + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
    } catch (error) {
      throw unreadable(this.filePath, error);
    }
    return filled;
  }

  /** Reads exactly `length` bytes at `position`, or throws corrupt-data saying `what` lies past the end. */
  async readExact(length: number, position: number, what: string): Promise<Buffer> {
    if (position < 0 || position + length > this.size) throw corrupt(this.label, `${what} (bytes ${position}..${position + length}) lies past the end of the file (${this.size} bytes)`);
    const buffer = Buffer.alloc(length);
    const got = await this.read(buffer, 0, length, position);
    if (got < length) throw corrupt(this.label, `${what} (bytes ${position}..${position + length}) lies past the end of the file: the file shrank`);
    return buffer;
  }
}

async function openHandle(filePath: string, context = ''): Promise<{ handle: fs.FileHandle; size: number }> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(filePath, 'r');
  } catch (error) {
    throw unreadable(filePath, error, context);
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new Error('not a regular file');
    return { handle, size: stat.size };
  } catch (error) {
    await handle.close();
    throw unreadable(filePath, error, context);
  }
}

// ---------------------------------------------------------------------------------------------------
// The descriptor

/** One extent line of a descriptor: `RW 16384 SPARSE "disk-s001.vmdk"` or `RW 16384 FLAT "disk-flat.vmdk" 0`. */
interface DescriptorExtent {
  access: 'RW' | 'RDONLY' | 'NOACCESS';
  sectors: number;
  type: string;
  fileName: string | undefined;
  offsetSectors: number;
}

/** What Ferry uses from a descriptor. */
interface VmdkDescriptor {
  createType: string;
  parentCid: string;
  parentFileNameHint: string | undefined;
  extents: DescriptorExtent[];
}

const EXTENT_LINE = /^(RW|RDONLY|NOACCESS)\s+(\d{1,20})\s+([A-Z]+)(?:\s+"([^"]*)"(?:\s+(\d{1,20}))?)?\s*$/;

/**
 * Parses a descriptor's text. `withExtents` is false for the descriptor embedded in a monolithic sparse
 * file, whose extent line only names the file itself (which may have been renamed since).
 */
function parseDescriptor(text: string, label: string, withExtents: boolean): VmdkDescriptor {
  const values = new Map<string, string>();
  const extents: DescriptorExtent[] = [];
  const lines = text.split(/\r?\n/);
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    if (/^(RW|RDONLY|NOACCESS)\s/.test(line)) {
      if (!withExtents) continue;
      const match = EXTENT_LINE.exec(line);
      if (!match) throw corrupt(label, `descriptor line ${index + 1} is not an extent line VMware defines: ${JSON.stringify(line.slice(0, 200))}`);
      const sectors = Number(match[2]);
      const offsetSectors = Number(match[5] ?? '0');
      if (!Number.isSafeInteger(sectors) || sectors * SECTOR > MAX_CAPACITY_BYTES || !Number.isSafeInteger(offsetSectors) || offsetSectors * SECTOR > 2 ** 53) {
        throw corrupt(label, `descriptor line ${index + 1} gives an absurd extent size or offset: ${JSON.stringify(line.slice(0, 200))}`);
      }
      if (extents.length >= MAX_EXTENTS) throw corrupt(label, `the descriptor lists more than ${MAX_EXTENTS} extents`);
      extents.push({ access: match[1] as DescriptorExtent['access'], sectors, type: match[3]!, fileName: match[4], offsetSectors });
      continue;
    }
    const equals = line.indexOf('=');
    if (equals > 0) values.set(line.slice(0, equals).trim(), unquote(line.slice(equals + 1).trim()));
  }
  const createType = values.get('createType');
  if (createType === undefined) throw corrupt(label, 'the descriptor has no createType');
  if (!/^[A-Za-z0-9_]{1,64}$/.test(createType)) throw corrupt(label, `the descriptor's createType is not a VMDK disk type: ${JSON.stringify(createType.slice(0, 80))}`);
  if (withExtents && extents.length === 0) throw corrupt(label, 'the descriptor lists no extents');
  return { createType, parentCid: (values.get('parentCID') ?? NO_PARENT_CID).toLowerCase(), parentFileNameHint: values.get('parentFileNameHint'), extents };
}

function unquote(value: string): string {
  return value.length >= 2 && value.startsWith('"') && value.endsWith('"') ? value.slice(1, -1) : value;
}

/** Refuses a delta link (a snapshot: the disk's content depends on a parent disk). */
function refuseDeltaLink(descriptor: VmdkDescriptor, label: string): void {
  if (descriptor.parentCid !== NO_PARENT_CID || descriptor.parentFileNameHint !== undefined) {
    throw unsupported(label, 'VMDK snapshots (delta links) are not supported yet');
  }
}

/**
 * Resolves an extent file name against the descriptor's directory; refuses an absolute path or a '..'
 * segment (see the module comment).
 */
function resolveExtentPath(descriptorPath: string, fileName: string): string {
  const escapes = fileName === '' || fileName.includes('\0') || path.isAbsolute(fileName) || /^[A-Za-z]:/.test(fileName) || fileName.startsWith('\\') || fileName.split(/[\\/]/).includes('..');
  if (escapes) throw unsupported(descriptorPath, `extent path ${JSON.stringify(fileName.slice(0, 200))} leaves the descriptor's directory (absolute paths and '..' are refused; put the extent files beside the descriptor)`);
  return path.join(path.dirname(descriptorPath), fileName);
}

// ---------------------------------------------------------------------------------------------------
// Hosted sparse extents (monolithicSparse, twoGbMaxExtentSparse pieces, streamOptimized)

/** The fields of a SparseExtentHeader Ferry uses, checked. */
interface SparseHeader {
  version: number;
  flags: number;
  capacitySectors: number;
  grainSectors: number;
  descriptorOffset: number;
  descriptorSectors: number;
  entriesPerGrainTable: number;
  grainDirectorySector: bigint;
  compressed: boolean;
}

function parseSparseHeader(header: Buffer, label: string, where: string): SparseHeader {
  if (header.readUInt32LE(0) !== SPARSE_MAGIC) throw corrupt(label, `${where} has no KDMV magic`);
  const version = header.readUInt32LE(4);
  if (version < 1 || version > 3) throw unsupported(label, `VMDK sparse extent version ${version} is not supported (1 to 3 are)`);
  const flags = header.readUInt32LE(8);
  const capacity = header.readBigUInt64LE(12);
  const grainSectors = header.readBigUInt64LE(20);
  const descriptorOffset = header.readBigUInt64LE(28);
  const descriptorSectors = header.readBigUInt64LE(36);
  const entriesPerGrainTable = header.readUInt32LE(44);
  const grainDirectorySector = header.readBigUInt64LE(56);
  const compressAlgorithm = header.readUInt16LE(77);
  if (capacity * BigInt(SECTOR) > BigInt(MAX_CAPACITY_BYTES)) throw corrupt(label, `${where} claims a capacity of ${capacity} sectors (more than 64 TiB)`);
  if (grainSectors < 1n || grainSectors > BigInt(MAX_GRAIN_SECTORS) || (grainSectors & (grainSectors - 1n)) !== 0n) {
    throw corrupt(label, `${where} gives a grain size of ${grainSectors} sectors (a power of two up to ${MAX_GRAIN_SECTORS} is expected)`);
  }
  if (entriesPerGrainTable < 1 || entriesPerGrainTable > MAX_ENTRIES_PER_GRAIN_TABLE) {
    throw corrupt(label, `${where} gives ${entriesPerGrainTable} entries per grain table (1 to ${MAX_ENTRIES_PER_GRAIN_TABLE} are accepted)`);
  }
  if (descriptorOffset > 2n ** 32n || descriptorSectors > BigInt(MAX_DESCRIPTOR_BYTES / SECTOR)) {
    throw corrupt(label, `${where} places its descriptor at sector ${descriptorOffset}, ${descriptorSectors} sectors long (absurd)`);
  }
  const compressed = (flags & FLAG_COMPRESSED_GRAINS) !== 0;
  if (compressed && compressAlgorithm !== COMPRESSION_DEFLATE) throw unsupported(label, `VMDK grain compression ${compressAlgorithm} is not supported (deflate is)`);
  if (compressed && (flags & FLAG_MARKERS) === 0) throw unsupported(label, 'VMDK compressed grains without markers are not supported');
  return {
    version,
    flags,
    capacitySectors: Number(capacity),
    grainSectors: Number(grainSectors),
    descriptorOffset: Number(descriptorOffset),
    descriptorSectors: Number(descriptorSectors),
    entriesPerGrainTable,
    grainDirectorySector,
    compressed,
  };
}

/** zlib's compressBound: the most deflate can make of `length` bytes, so a longer compressed grain is refused. */
function compressBound(length: number): number {
  return length + (length >>> 12) + (length >>> 14) + (length >>> 25) + 13;
}

/** A compressed grain a read fetches: where its marker lies (and how much may follow), and where its bytes go. */
interface StoredGrain extends StoredUnit {
  grainIndex: number;
  /** Where the bytes go in the read's buffer, from which byte of the grain, and how many. */
  target: number;
  within: number;
  count: number;
}

/** A range of an extent: where data is stored and where it is zero; relative to the extent's start. */
type Allocation = DiskExtent;

/** One hosted sparse extent: its header, grain directory, and grain tables read on demand. */
class SparseExtent {
  private readonly grainTableCache = new Map<number, Uint32Array>();
  private readonly inflatedGrainCache = new Map<number, Buffer>();
  readonly grainBytes: number;
  readonly capacityBytes: number;
  private readonly grainTableBytes: number;
  private readonly grainTableSpan: number;

  private constructor(
    readonly window: FileWindow,
    readonly header: SparseHeader,
    private readonly grainDirectory: Uint32Array,
  ) {
    this.grainBytes = header.grainSectors * SECTOR;
    this.capacityBytes = header.capacitySectors * SECTOR;
    this.grainTableBytes = header.entriesPerGrainTable * 4;
    this.grainTableSpan = header.entriesPerGrainTable * this.grainBytes;
  }

  /** Reads and checks the header (the footer's, for a stream-optimized extent whose GD is at the end) and the grain directory. */
  static async open(window: FileWindow): Promise<SparseExtent> {
    const label = window.label;
    let header = parseSparseHeader(await window.readExact(SECTOR, 0, 'the sparse extent header'), label, 'the sparse extent header');
    if (header.grainDirectorySector === GD_AT_END) header = await SparseExtent.readFooter(window, header);
    if (header.grainDirectorySector === GD_AT_END || header.grainDirectorySector === 0n) throw corrupt(label, 'the sparse extent header gives no grain directory');
    const grainTableSpanSectors = header.entriesPerGrainTable * header.grainSectors;
    const directoryEntries = Math.ceil(header.capacitySectors / grainTableSpanSectors);
    const directoryPosition = Number(header.grainDirectorySector) * SECTOR;
    if (directoryEntries > MAX_GRAIN_DIRECTORY_ENTRIES) {
      throw corrupt(label, `the grain directory would hold ${directoryEntries} entries (more than ${MAX_GRAIN_DIRECTORY_ENTRIES}): grains of ${header.grainSectors} sectors, ${header.entriesPerGrainTable} per table`);
    }
    if (header.grainDirectorySector > BigInt(window.size) || directoryPosition + directoryEntries * 4 > window.size) {
      throw corrupt(label, `the grain directory (${directoryEntries} entries at sector ${header.grainDirectorySector}) lies past the end of the file (${window.size} bytes)`);
    }
    const raw = await window.readExact(directoryEntries * 4, directoryPosition, 'the grain directory');
    const grainDirectory = new Uint32Array(directoryEntries);
    for (let index = 0; index < directoryEntries; index++) {
      const sector = raw.readUInt32LE(index * 4);
      if (sector !== 0 && sector * SECTOR + header.entriesPerGrainTable * 4 > window.size) {
        throw corrupt(label, `grain directory entry ${index} points past the end of the file (sector ${sector}, file of ${window.size} bytes)`);
      }
      grainDirectory[index] = sector;
    }
    return new SparseExtent(window, header, grainDirectory);
  }

  /** The footer of a stream-optimized extent: marker, header copy (which takes precedence), end-of-stream marker. */
  private static async readFooter(window: FileWindow, header: SparseHeader): Promise<SparseHeader> {
    if (!header.compressed) throw corrupt(window.label, 'the grain directory is "at the end" but the extent is not stream-optimized');
    const tail = await window.readExact(3 * SECTOR, window.size - 3 * SECTOR, 'the stream-optimized footer');
    const markerType = tail.readUInt32LE(12);
    const endMarker = tail.subarray(2 * SECTOR, 2 * SECTOR + 16);
    if (tail.readUInt32LE(8) !== 0 || markerType !== MARKER_FOOTER || !endMarker.equals(Buffer.alloc(16))) {
      throw corrupt(window.label, 'the stream-optimized footer (footer marker, header copy, end-of-stream marker in the last 1536 bytes) is missing or damaged');
    }
    return parseSparseHeader(tail.subarray(SECTOR, 2 * SECTOR), window.label, 'the footer');
  }

  /** The embedded descriptor's text, if the extent has one. */
  async embeddedDescriptor(): Promise<string | undefined> {
    if (this.header.descriptorOffset === 0 || this.header.descriptorSectors === 0) return undefined;
    const raw = await this.window.readExact(this.header.descriptorSectors * SECTOR, this.header.descriptorOffset * SECTOR, 'the embedded descriptor');
    const end = raw.indexOf(0);
    return raw.subarray(0, end === -1 ? raw.length : end).toString('utf8');
  }

  /** Bytes of grain `grainIndex` that lie within the capacity (the last grain may be cut short). */
  private grainLength(grainIndex: number): number {
    return Math.min(this.grainBytes, this.capacityBytes - grainIndex * this.grainBytes);
  }

  private async grainTable(directoryIndex: number): Promise<Uint32Array | undefined> {
    const sector = this.grainDirectory[directoryIndex] ?? 0;
    if (sector === 0) return undefined;
    const cached = this.grainTableCache.get(directoryIndex);
    if (cached) return cached;
    const raw = await this.window.readExact(this.grainTableBytes, sector * SECTOR, `grain table ${directoryIndex}`);
    const table = new Uint32Array(this.header.entriesPerGrainTable);
    for (let index = 0; index < table.length; index++) table[index] = raw.readUInt32LE(index * 4);
    if (this.grainTableCache.size >= GRAIN_TABLE_CACHE_ENTRIES) this.grainTableCache.clear();
    this.grainTableCache.set(directoryIndex, table);
    return table;
  }

  /** The grain table entry of a grain: 0 (unallocated), 1 (zero grain), or the sector its data starts at. */
  private async grainEntry(grainIndex: number): Promise<number> {
    const table = await this.grainTable(Math.floor(grainIndex / this.header.entriesPerGrainTable));
    const entry = table?.[grainIndex % this.header.entriesPerGrainTable] ?? 0;
    if (entry <= ZERO_GRAIN_ENTRY) return entry;
    const descriptorEnd = this.header.descriptorOffset + this.header.descriptorSectors;
    if (entry < 1 || (entry >= this.header.descriptorOffset && entry < descriptorEnd)) {
      throw corrupt(this.window.label, `the grain table entry of grain ${grainIndex} points into the header or descriptor (sector ${entry})`);
    }
    if (entry * SECTOR >= this.window.size) throw corrupt(this.window.label, `the grain table entry of grain ${grainIndex} points past the end of the file (sector ${entry}, file of ${this.window.size} bytes)`);
    return entry;
  }

  /** Fills `buffer[bufferOffset, +length)` from the extent's bytes at `position` (within its capacity or past it: zeros). */
  async read(buffer: Buffer, bufferOffset: number, length: number, position: number): Promise<void> {
    const grains: StoredGrain[] = []; // compressed grains: fetched and inflated together at the end
    let done = 0;
    while (done < length) {
      const at = position + done;
      const grainIndex = Math.floor(at / this.grainBytes);
      const within = at - grainIndex * this.grainBytes;
      const count = Math.min(this.grainBytes - within, length - done);
      const target = bufferOffset + done;
      if (at >= this.capacityBytes) {
        buffer.fill(0, target, bufferOffset + length);
        break;
      }
      const entry = await this.grainEntry(grainIndex);
      if (entry <= ZERO_GRAIN_ENTRY) buffer.fill(0, target, target + count);
      else if (this.header.compressed) {
        const cached = this.inflatedGrainCache.get(grainIndex);
        const markerPosition = entry * SECTOR;
        if (cached) cached.copy(buffer, target, within, within + count);
        // The marker and the most a grain can take (its length is in the marker): the reader takes what it needs.
        else grains.push({ position: markerPosition, length: Math.min(this.window.size - markerPosition, MARKER_BYTES + compressBound(this.grainBytes) + SECTOR), grainIndex, target, within, count });
      } else {
        const grainPosition = entry * SECTOR;
        if (grainPosition + this.grainLength(grainIndex) > this.window.size) {
          throw corrupt(this.window.label, `grain ${grainIndex} (at byte ${grainPosition}) lies past the end of the file (${this.window.size} bytes)`);
        }
        const available = Math.min(count, Math.max(0, this.grainLength(grainIndex) - within));
        const got = await this.window.read(buffer, target, available, grainPosition + within);
        if (got < available) throw corrupt(this.window.label, `grain ${grainIndex} lies past the end of the file: the file shrank`);
        buffer.fill(0, target + available, target + count);
      }
      done += count;
    }
    if (grains.length === 0) return;
    await inflateUnits(
      grains,
      async (target, at) => {
        if ((await this.window.read(target, 0, target.length, at)) < target.length) throw corrupt(this.window.label, `compressed grains at bytes ${at}..${at + target.length} lie past the end of the file: the file shrank`);
      },
      (grain, stored) => ({ compression: 'zlib-or-deflate', data: this.compressedGrain(grain, stored), maxLength: this.grainBytes }),
      (grain, inflated) => {
        const data = this.inflatedGrain(grain, inflated);
        data.copy(buffer, grain.target, grain.within, grain.within + grain.count);
        // Kept for reads of a few bytes at a time, which would otherwise inflate a grain again and again.
        if (grain.count < this.grainBytes) {
          if (this.inflatedGrainCache.size >= INFLATED_GRAIN_CACHE_ENTRIES) this.inflatedGrainCache.delete(this.inflatedGrainCache.keys().next().value!);
          const kept = Buffer.alloc(this.grainBytes);
          data.copy(kept);
          this.inflatedGrainCache.set(grain.grainIndex, kept);
        }
      },
    );
  }

  /** The compressed bytes of a grain, from its marker and what follows it: the marker checked. */
  private compressedGrain(grain: StoredGrain, stored: Buffer): Buffer {
    const { grainIndex, position: markerPosition } = grain;
    const label = this.window.label;
    if (stored.length < MARKER_BYTES) {
      throw corrupt(label, `the marker of grain ${grainIndex} (bytes ${markerPosition}..${markerPosition + MARKER_BYTES}) lies past the end of the file (${this.window.size} bytes)`);
    }
    const lba = stored.readBigUInt64LE(0);
    const compressedLength = stored.readUInt32LE(8);
    if (lba !== BigInt(grainIndex) * BigInt(this.header.grainSectors)) throw corrupt(label, `grain ${grainIndex}'s marker names sector ${lba}, not ${grainIndex * this.header.grainSectors}`);
    if (compressedLength === 0 || compressedLength > compressBound(this.grainBytes) + SECTOR) {
      throw corrupt(label, `grain ${grainIndex}'s marker gives a compressed size of ${compressedLength} bytes for a ${this.grainBytes}-byte grain`);
    }
    if (MARKER_BYTES + compressedLength > stored.length) {
      throw corrupt(label, `compressed grain ${grainIndex} (bytes ${markerPosition + MARKER_BYTES}..${markerPosition + MARKER_BYTES + compressedLength}) lies past the end of the file (${this.window.size} bytes)`);
    }
    return stored.subarray(MARKER_BYTES, MARKER_BYTES + compressedLength);
  }

  /** A grain's inflated bytes (at least the part of the grain inside the disk; zeros after what it inflated to), or corrupt-data. */
  private inflatedGrain(grain: StoredGrain, inflated: Inflated): Buffer {
    const { grainIndex } = grain;
    const label = this.window.label;
    if ('failure' in inflated) {
      throw corrupt(label, inflated.tooLarge ? `compressed grain ${grainIndex} inflates to more than the grain size (${this.grainBytes} bytes)` : `compressed grain ${grainIndex} (at byte ${grain.position}) does not inflate (${inflated.failure})`);
    }
    const data = inflated.data;
    if (data.length < this.grainLength(grainIndex)) throw corrupt(label, `compressed grain ${grainIndex} inflates to ${data.length} bytes, less than its ${this.grainLength(grainIndex)}`);
    if (data.length >= grain.within + grain.count) return data;
    const padded = Buffer.alloc(this.grainBytes); // a short last grain: what it does not hold is zero
    data.copy(padded);
    return padded;
  }

  /** Where the extent's first `length` bytes are stored and where they are zero (extent-relative, merged). */
  async *allocation(length: number): AsyncGenerator<Allocation> {
    const merger = new ExtentMerger();
    const stored = Math.min(length, this.capacityBytes);
    for (let directoryIndex = 0; directoryIndex * this.grainTableSpan < stored; directoryIndex++) {
      const spanStart = directoryIndex * this.grainTableSpan;
      const spanLength = Math.min(this.grainTableSpan, stored - spanStart);
      const table = await this.grainTable(directoryIndex);
      if (!table) {
        yield* merger.add(spanStart, spanLength, 'zero');
        continue;
      }
      for (let entryIndex = 0; entryIndex * this.grainBytes < spanLength; entryIndex++) {
        const entry = table[entryIndex] ?? 0;
        const grainStart = entryIndex * this.grainBytes;
        yield* merger.add(spanStart + grainStart, Math.min(this.grainBytes, spanLength - grainStart), entry <= ZERO_GRAIN_ENTRY ? 'zero' : 'data');
      }
    }
    if (length > stored) yield* merger.add(stored, length - stored, 'zero');
    yield* merger.finish();
  }
}

// ---------------------------------------------------------------------------------------------------
// The reader

/** One piece of the virtual disk: an extent of the descriptor placed at `start`. */
type DiskPart =
  | { kind: 'sparse'; start: number; length: number; extent: SparseExtent }
  | { kind: 'flat'; start: number; length: number; window: FileWindow; fileOffset: number }
  | { kind: 'zero'; start: number; length: number };

class VmdkReader implements DiskImageReader {
  readonly format = 'vmdk' as const;
  private closed = false;

  constructor(
    readonly path: string,
    readonly subformat: string,
    readonly size: number,
    private readonly parts: readonly DiskPart[],
    private readonly handles: readonly fs.FileHandle[],
  ) {}

  async read(buffer: Buffer, length: number, offset: number): Promise<void> {
    checkReadRange(this.path, this.size, buffer, length, offset);
    const end = offset + length;
    for (const part of this.parts) {
      const from = Math.max(offset, part.start);
      const to = Math.min(end, part.start + part.length);
      if (from >= to) continue;
      const target = from - offset;
      const count = to - from;
      if (part.kind === 'zero') buffer.fill(0, target, target + count);
      else if (part.kind === 'sparse') await part.extent.read(buffer, target, count, from - part.start);
      else {
        const got = await part.window.read(buffer, target, count, part.fileOffset + (from - part.start));
        if (got < count) throw corrupt(part.window.label, 'the flat extent lies past the end of its file: the file shrank');
      }
    }
  }

  async *extents(): AsyncIterable<DiskExtent> {
    const merger = new ExtentMerger();
    for (const part of this.parts) {
      if (part.kind === 'sparse') {
        for await (const range of part.extent.allocation(part.length)) yield* merger.add(part.start + range.offset, range.length, range.kind);
      } else yield* merger.add(part.start, part.length, part.kind === 'flat' ? 'data' : 'zero');
    }
    yield* merger.finish();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled(this.handles.map((handle) => handle.close()));
  }
}

/** Names a sparse file's subformat when it has no descriptor to say so. */
function subformatOfSparse(extent: SparseExtent): string {
  return extent.header.compressed ? 'streamOptimized' : 'monolithicSparse';
}

/** Opens a KDMV file (or a KDMV member of an archive) as a whole disk: monolithicSparse or streamOptimized. */
async function openMonolithicSparse(readerPath: string, window: FileWindow, handles: fs.FileHandle[]): Promise<VmdkReader> {
  const extent = await SparseExtent.open(window);
  const text = await extent.embeddedDescriptor();
  let subformat = subformatOfSparse(extent);
  if (text !== undefined && text.trimStart().startsWith(DESCRIPTOR_SIGNATURE)) {
    const descriptor = parseDescriptor(text, window.label, false);
    refuseDeltaLink(descriptor, window.label);
    subformat = descriptor.createType;
  }
  const size = extent.capacityBytes;
  return new VmdkReader(readerPath, subformat, size, size > 0 ? [{ kind: 'sparse', start: 0, length: size, extent }] : [], handles);
}

/** Opens a text descriptor and every extent it lists. */
async function openDescriptorFile(descriptorPath: string, text: string, handles: fs.FileHandle[]): Promise<VmdkReader> {
  const descriptor = parseDescriptor(text, descriptorPath, true);
  refuseDeltaLink(descriptor, descriptorPath);
  const parts: DiskPart[] = [];
  let start = 0;
  for (const [index, line] of descriptor.extents.entries()) {
    const length = line.sectors * SECTOR;
    if (start + length > MAX_CAPACITY_BYTES) throw corrupt(descriptorPath, `the extents add up to more than 64 TiB`);
    if (line.access === 'NOACCESS') throw unsupported(descriptorPath, `extent ${index + 1} is NOACCESS: VMDK disks with inaccessible extents are not supported`);
    if (line.type === 'ZERO') {
      parts.push({ kind: 'zero', start, length });
    } else if (line.type === 'SPARSE' || line.type === 'FLAT' || line.type === 'VMFS') {
      if (line.fileName === undefined) throw corrupt(descriptorPath, `extent ${index + 1} (${line.type}) names no file`);
      const extentPath = resolveExtentPath(descriptorPath, line.fileName);
      const { handle, size } = await openHandle(extentPath, ` (extent ${index + 1} of VMDK descriptor ${descriptorPath})`);
      handles.push(handle);
      const window = new FileWindow(extentPath, extentPath, handle, 0, size);
      if (line.type === 'SPARSE') {
        const magic = await window.readExact(4, 0, 'the sparse extent header');
        if (magic.readUInt32LE(0) === COWD_MAGIC) throw unsupported(extentPath, 'ESX sparse (COWD) extents are not supported');
        const extent = await SparseExtent.open(window);
        if (extent.header.capacitySectors < line.sectors) {
          throw corrupt(extentPath, `the sparse extent holds ${extent.header.capacitySectors} sectors but descriptor ${descriptorPath} says ${line.sectors}`);
        }
        if (length > 0) parts.push({ kind: 'sparse', start, length, extent });
      } else {
        const fileOffset = line.offsetSectors * SECTOR;
        if (fileOffset + length > size) {
          throw corrupt(extentPath, `the flat extent is ${size} bytes, shorter than the ${fileOffset + length} bytes descriptor ${descriptorPath} says`);
        }
        if (length > 0) parts.push({ kind: 'flat', start, length, window, fileOffset });
      }
    } else {
      throw unsupported(descriptorPath, `VMDK extents of type ${line.type} are not supported (SPARSE, FLAT, VMFS and ZERO are)`);
    }
    start += length;
  }
  return new VmdkReader(descriptorPath, descriptor.createType, start, parts, handles);
}

/**
 * Opens a VMDK for reading: a KDMV sparse file (monolithicSparse, streamOptimized) or a text descriptor
 * (monolithicFlat, twoGbMaxExtentSparse, ...) whose extent files lie in its directory. The reader's
 * subformat is the descriptor's createType. Errors: 'disk-unreadable' if the file or an extent file
 * cannot be opened (the message names it), 'corrupt-data' for a malformed or hostile image,
 * 'invalid-request' for what is not supported (delta links, extent types, paths leaving the directory).
 */
export async function openVmdk(imagePath: string): Promise<DiskImageReader> {
  const handles: fs.FileHandle[] = [];
  try {
    const { handle, size } = await openHandle(imagePath);
    handles.push(handle);
    const window = new FileWindow(imagePath, imagePath, handle, 0, size);
    const head = Buffer.alloc(Math.min(size, 64));
    await window.read(head, 0, head.length, 0);
    if (head.length >= 4 && head.readUInt32LE(0) === SPARSE_MAGIC) return await openMonolithicSparse(imagePath, window, handles);
    if (head.toString('latin1').startsWith(DESCRIPTOR_SIGNATURE)) {
      if (size > MAX_DESCRIPTOR_BYTES) throw corrupt(imagePath, `a ${size}-byte descriptor file (more than ${MAX_DESCRIPTOR_BYTES} bytes)`);
      const text = await window.readExact(size, 0, 'the descriptor');
      const end = text.indexOf(0);
      handles.splice(0, 1);
      await handle.close(); // the descriptor is read: only the extents stay open
      return await openDescriptorFile(imagePath, text.subarray(0, end === -1 ? text.length : end).toString('utf8'), handles);
    }
    throw corrupt(imagePath, 'not a VMDK: neither a sparse extent (KDMV) nor a descriptor ("# Disk DescriptorFile")');
  } catch (error) {
    await Promise.allSettled(handles.map((each) => each.close()));
    throw error;
  }
}

/**
 * Opens a sparse VMDK (monolithicSparse or streamOptimized: one KDMV extent with an embedded
 * descriptor) stored at bytes [offset, offset + size) of the file at `filePath`, e.g. a disk inside an
 * OVA, without extracting it. Offsets inside the VMDK are relative to `offset`. Errors as `openVmdk`;
 * a descriptor file (the disk's data in other files) is refused with 'invalid-request'.
 */
export async function openVmdkAt(filePath: string, offset: number, size: number): Promise<DiskImageReader> {
  const { handle, size: fileSize } = await openHandle(filePath);
  try {
    const label = `${filePath} (bytes ${offset}..${offset + size})`;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(size) || offset < 0 || size < 0 || offset + size > fileSize) {
      throw new FerryError('invalid-request', `disk image ${label}: the range lies outside the ${fileSize}-byte file`);
    }
    const window = new FileWindow(label, filePath, handle, offset, size);
    const magic = await window.readExact(4, 0, 'the sparse extent header');
    if (magic.readUInt32LE(0) !== SPARSE_MAGIC) throw unsupported(label, 'only a sparse VMDK (KDMV: monolithicSparse, streamOptimized) can be read inside another file');
    return await openMonolithicSparse(filePath, window, [handle]);
  } catch (error) {
    await handle.close();
    throw error;
  }
}

/** Recognises a VMDK by its first bytes: a sparse extent's "KDMV" or a text descriptor's first line. */
export function sniffVmdk(head: Buffer): boolean {
  if (head.length >= 4 && head.readUInt32LE(0) === SPARSE_MAGIC) return true;
  return head.subarray(0, DESCRIPTOR_SIGNATURE.length).toString('latin1') === DESCRIPTOR_SIGNATURE;
}

// ---------------------------------------------------------------------------------------------------
// The streamOptimized writer

/** Grain size the writer uses: 128 sectors (64 KiB), what VMware and qemu use. */
const WRITE_GRAIN_SECTORS = 128;
const WRITE_GRAIN_BYTES = WRITE_GRAIN_SECTORS * SECTOR;
const WRITE_ENTRIES_PER_GRAIN_TABLE = 512;
/** Sectors reserved for the embedded descriptor (as qemu and VMware do: room to edit it in place). */
const WRITE_DESCRIPTOR_SECTORS = 20;
/** Where grains start: VMware's stream-optimized files keep the first 64 KiB for the header and descriptor. */
const WRITE_OVERHEAD_SECTORS = 128;
/** Grains compressed at once (zlib runs on libuv's thread pool); they are written in order. */
const COMPRESSIONS_IN_FLIGHT = 4;
/** Grain table entries are 32-bit sector numbers: a stream-optimized file cannot pass 2 TiB. */
const MAX_STREAM_FILE_BYTES = 2 ** 32 * SECTOR;

/** Where the writer's output goes: sequential writes, and how many bytes were written so far. */
export interface VmdkByteSink {
  /** Bytes written so far (the position of the next byte, relative to the VMDK's first byte). */
  readonly position: number;
  write(data: Buffer): Promise<void>;
}

/**
 * A sink writing through an image file's `ImageFileWriter` (image-writer.ts) from byte `base` on: the
 * writes follow one another, so they coalesce into large ones. `observe` sees every byte in order (e.g. to
 * hash them). Write failures are 'io-error' naming `filePath`.
 */
export class FileSink implements VmdkByteSink {
  private written = 0;

  constructor(
    private readonly filePath: string,
    private readonly writer: ImageFileWriter,
    private readonly base: number,
    private readonly observe?: (data: Buffer) => void,
  ) {}

  get position(): number {
    return this.written;
  }

  async write(data: Buffer): Promise<void> {
    if (data.length === 0) return;
    this.observe?.(data);
    const at = this.base + this.written;
    this.written += data.length;
    await this.failsAsIoError(this.writer.write(at, data));
  }

  /** Writes everything queued and waits for it. */
  async flush(): Promise<void> {
    await this.failsAsIoError(this.writer.flush());
  }

  private async failsAsIoError(operation: Promise<void>): Promise<void> {
    try {
      await operation;
    } catch (error) {
      throw new FerryError('io-error', `cannot write ${this.filePath} (${ioErrorReason(error)})`, { cause: error, details: { path: this.filePath } });
    }
  }
}

/** A SparseExtentHeader as the writer writes it (in the header and, with the GD's place, in the footer). */
function streamHeader(capacitySectors: number, grainDirectorySector: bigint): Buffer {
  const header = Buffer.alloc(SECTOR);
  header.writeUInt32LE(SPARSE_MAGIC, 0);
  header.writeUInt32LE(3, 4); // version 3: stream-optimized
  header.writeUInt32LE(FLAG_VALID_NEWLINE_TEST | FLAG_COMPRESSED_GRAINS | FLAG_MARKERS, 8);
  header.writeBigUInt64LE(BigInt(capacitySectors), 12);
  header.writeBigUInt64LE(BigInt(WRITE_GRAIN_SECTORS), 20);
  header.writeBigUInt64LE(1n, 28); // descriptor right after the header
  header.writeBigUInt64LE(BigInt(WRITE_DESCRIPTOR_SECTORS), 36);
  header.writeUInt32LE(WRITE_ENTRIES_PER_GRAIN_TABLE, 44);
  header.writeBigUInt64LE(0n, 48); // no redundant grain directory
  header.writeBigUInt64LE(grainDirectorySector, 56);
  header.writeBigUInt64LE(BigInt(WRITE_OVERHEAD_SECTORS), 64);
  header.writeUInt8(0, 72); // clean shutdown
  header.write('\n \r\n', 73, 'latin1'); // the newline-corruption test characters
  header.writeUInt16LE(COMPRESSION_DEFLATE, 77);
  return header;
}

/** A metadata marker: `sectors` of metadata of `type` follow it. */
function metadataMarker(sectors: number, type: number): Buffer {
  const marker = Buffer.alloc(SECTOR);
  marker.writeBigUInt64LE(BigInt(sectors), 0);
  marker.writeUInt32LE(0, 8);
  marker.writeUInt32LE(type, 12);
  return marker;
}

/** The embedded descriptor of a stream-optimized disk (SCSI, LSI Logic, as vSphere expects). */
function streamDescriptor(capacitySectors: number, extentFileName: string): Buffer {
  const cylinders = Math.min(65535, Math.max(1, Math.floor(capacitySectors / (255 * 63))));
  const safeName = extentFileName.replace(/["\r\n]/g, '_');
  const text = [
    DESCRIPTOR_SIGNATURE,
    'version=1',
    'encoding="UTF-8"',
    `CID=${randomBytes(4).toString('hex')}`,
    `parentCID=${NO_PARENT_CID}`,
    'createType="streamOptimized"',
    '',
    '# Extent description',
    `RW ${capacitySectors} SPARSE "${safeName}"`,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.adapterType = "lsilogic"',
    `ddb.geometry.cylinders = "${cylinders}"`,
    'ddb.geometry.heads = "255"',
    'ddb.geometry.sectors = "63"',
    `ddb.longContentID = "${createHash('sha256').update(randomBytes(16)).digest('hex').slice(0, 32)}"`,
    'ddb.virtualHWVersion = "4"',
    '',
  ].join('\n');
  const area = Buffer.alloc(WRITE_DESCRIPTOR_SECTORS * SECTOR);
  if (Buffer.byteLength(text) > area.length) throw new FerryError('invalid-request', `VMDK extent file name too long: ${extentFileName}`);
  area.write(text, 0, 'utf8');
  return area;
}

function padToSector(length: number): number {
  return Math.ceil(length / SECTOR) * SECTOR;
}

/**
 * Writes `input` as a stream-optimized VMDK to `sink`, in one pass: header and embedded descriptor,
 * deflate-compressed grains with markers (all-zero grains left out), each grain table after its grains,
 * the grain directory, the footer and the end-of-stream marker. Memory: the grain directory (4 bytes per
 * 32 MiB of disk), one grain table and a few grains. `extentFileName` is what the embedded descriptor
 * names. Errors: 'invalid-request' for pieces out of order or out of range, or an image over 2 TiB;
 * the signal's reason when aborted; the sink's errors.
 */
export async function writeStreamOptimizedTo(sink: VmdkByteSink, input: DiskImageInput, extentFileName: string, options: Pick<DiskImageWriteOptions, 'onProgress' | 'signal'> = {}): Promise<void> {
  if (!Number.isSafeInteger(input.size) || input.size < 0 || input.size > MAX_CAPACITY_BYTES) {
    throw new FerryError('invalid-request', `a VMDK holds at most 64 TiB, not ${input.size} bytes`);
  }
  const capacitySectors = Math.ceil(input.size / SECTOR);
  const grainCount = Math.ceil(capacitySectors / WRITE_GRAIN_SECTORS);
  const grainDirectory = new Uint32Array(Math.ceil(grainCount / WRITE_ENTRIES_PER_GRAIN_TABLE));
  const grainTableSectors = (WRITE_ENTRIES_PER_GRAIN_TABLE * 4) / SECTOR;
  let grainTable = new Uint32Array(WRITE_ENTRIES_PER_GRAIN_TABLE);
  let grainTableIndex = -1; // the grain table being filled (-1: none yet)

  await sink.write(streamHeader(capacitySectors, GD_AT_END));
  await sink.write(streamDescriptor(capacitySectors, extentFileName));
  await sink.write(Buffer.alloc((WRITE_OVERHEAD_SECTORS - 1 - WRITE_DESCRIPTOR_SECTORS) * SECTOR));

  const sectorOfNextWrite = (): number => {
    if (sink.position + WRITE_GRAIN_BYTES * 2 > MAX_STREAM_FILE_BYTES) throw new FerryError('invalid-request', 'a stream-optimized VMDK cannot grow past 2 TiB');
    return sink.position / SECTOR;
  };
  const writeGrainTable = async (): Promise<void> => {
    if (grainTableIndex < 0) return;
    await sink.write(metadataMarker(grainTableSectors, MARKER_GRAIN_TABLE));
    grainDirectory[grainTableIndex] = sectorOfNextWrite();
    const tableBytes = Buffer.alloc(grainTable.length * 4);
    grainTable.forEach((sector, index) => tableBytes.writeUInt32LE(sector, index * 4));
    await sink.write(tableBytes);
    grainTable = new Uint32Array(WRITE_ENTRIES_PER_GRAIN_TABLE);
    grainTableIndex = -1;
  };
  const writeGrain = async (grainIndex: number, compressed: Buffer): Promise<void> => {
    const tableIndex = Math.floor(grainIndex / WRITE_ENTRIES_PER_GRAIN_TABLE);
    if (tableIndex !== grainTableIndex) {
      await writeGrainTable();
      grainTableIndex = tableIndex;
    }
    grainTable[grainIndex % WRITE_ENTRIES_PER_GRAIN_TABLE] = sectorOfNextWrite();
    const record = Buffer.alloc(padToSector(12 + compressed.length));
    record.writeBigUInt64LE(BigInt(grainIndex * WRITE_GRAIN_SECTORS), 0);
    record.writeUInt32LE(compressed.length, 8);
    compressed.copy(record, 12);
    await sink.write(record);
  };

  // Grains are compressed a few at a time and written in order.
  const inFlight: { grainIndex: number; compressed: Promise<Buffer> }[] = [];
  const drainOne = async (): Promise<void> => {
    const next = inFlight.shift()!;
    await writeGrain(next.grainIndex, await next.compressed);
  };
  const submitGrain = async (grainIndex: number, grain: Buffer): Promise<void> => {
    const compressed = deflateZlib(grain);
    compressed.catch(() => undefined); // awaited in order below; an early failure must not be unhandled
    inFlight.push({ grainIndex, compressed });
    if (inFlight.length >= COMPRESSIONS_IN_FLIGHT) await drainOne();
  };

  try {
    // All-zero grains are left out (wholeBlocks skips them). A grain is compressed while the next pieces
    // are read: it is copied, as the input may reuse its buffers.
    for await (const grain of wholeBlocks(checkedPieces(extentFileName, input, options), WRITE_GRAIN_BYTES)) await submitGrain(grain.index, Buffer.from(grain.data));
    while (inFlight.length > 0) await drainOne();
  } finally {
    // Leave no compression running unobserved after a failure.
    await Promise.allSettled(inFlight.map((each) => each.compressed));
  }
  await writeGrainTable();

  const directoryBytes = Buffer.alloc(padToSector(Math.max(grainDirectory.length * 4, 1)));
  grainDirectory.forEach((sector, index) => directoryBytes.writeUInt32LE(sector, index * 4));
  await sink.write(metadataMarker(directoryBytes.length / SECTOR, MARKER_GRAIN_DIRECTORY));
  const directorySector = sectorOfNextWrite();
  await sink.write(directoryBytes);
  await sink.write(metadataMarker(1, MARKER_FOOTER));
  await sink.write(streamHeader(capacitySectors, BigInt(directorySector)));
  await sink.write(metadataMarker(0, MARKER_END_OF_STREAM));
}

/**
 * Writes `input` as a stream-optimized VMDK at `imagePath` (atomically: a temporary file in the same
 * directory, fsynced, renamed, the directory fsynced; on any error or abort nothing is left). Only the
 * subformat 'streamOptimized' is written (invalid-request otherwise). Resolves with the file's size.
 */
export async function writeVmdk(imagePath: string, input: DiskImageInput, options: DiskImageWriteOptions = {}): Promise<number> {
  const subformat = options.subformat ?? 'streamOptimized';
  if (subformat !== 'streamOptimized') throw new FerryError('invalid-request', `VMDK images are written as streamOptimized, not '${subformat}'`);
  return writeImageFileAtomically(imagePath, options.signal, async (_handle, writer) => {
    const sink = new FileSink(imagePath, writer, 0);
    await writeStreamOptimizedTo(sink, input, path.basename(imagePath), options);
    await sink.flush();
  });
}

/** The VMDK writer: stream-optimized only (what vSphere imports and OVAs carry). */
export const vmdkWriter: DiskImageWriter = {
  format: 'vmdk',
  subformats: ['streamOptimized'],
  write: writeVmdk,
};

/** VMDK: reads sparse, flat and stream-optimized disks; writes stream-optimized ones. */
export const vmdkImageFormat: DiskImageFormatModule = {
  format: 'vmdk',
  sniff: sniffVmdk,
  open: openVmdk,
  writer: vmdkWriter,
};
