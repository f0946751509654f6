/**
 * VHDX (Hyper-V virtual hard disk v2) images: a reader for dynamic and fixed images and a streaming
 * writer of both, following the VHDX Format Specification v1.0 / [MS-VHDX]:
 * - 2.1 layout, 2.2.1 file type identifier ("vhdxfile" at offset 0);
 * - 2.2.2 headers (two copies at 64 and 128 KiB, CRC-32C; the valid one with the higher sequence number
 *   is current);
 * - 2.2.3 region table (two copies at 192 and 256 KiB, CRC-32C; BAT and metadata regions, 1 MiB
 *   aligned; an unknown region marked required is refused);
 * - 2.3 log: a header with a non-zero LogGuid has a log that must be replayed before the image is
 *   consistent. Ferry does not replay logs and refuses such images (corrupt-data); images Hyper-V
 *   closed cleanly and images qemu-img writes have none;
 * - 2.4/2.5 blocks and the BAT (payload entries, with one sector bitmap entry after each chunk of
 *   `chunkRatio` payload entries);
 * - 2.6 metadata region (file parameters, virtual disk size, virtual disk id (page 83 data), logical and
 *   physical sector size; an unknown item marked required is refused).
 * Differencing images (HasParent) are refused with invalid-request: their partially present blocks
 * need the parent's data and Ferry does not follow parent locators yet.
 *
 * Every table is bounded by the specification's limits and checked against the file size before it is
 * allocated; every BAT entry that points into the file is checked to lie in it, after the header
 * section and outside the log, BAT and metadata regions.
 */
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { FerryError } from '../errors.js';
import { crc32c } from './crc32c.js';
import type { DiskExtent, DiskImageFormatModule, DiskImageInput, DiskImageReader, DiskImageWriteOptions, DiskImageWriter } from './disk-image.js';
import { checkReadRange, checkedPieces, corruptImage as corrupt, ExtentMerger, ioErrorReason, readBytes, readExactly as readFileExactly, unreadableImage, writeImageFileAtomically } from './image-file.js';
import { wholeBlocks } from './image-writer.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const TiB = 1024 * 1024 * MiB;

/** The header section (file identifier, headers, region tables) spans the first MiB (2.1). */
const HEADER_SECTION_SIZE = MiB;
const FILE_TYPE_SIGNATURE = 'vhdxfile';
const HEADER_OFFSETS = [64 * KiB, 128 * KiB] as const;
const HEADER_SIZE = 4 * KiB;
const HEADER_SIGNATURE = 'head';
const REGION_TABLE_OFFSETS = [192 * KiB, 256 * KiB] as const;
const REGION_TABLE_SIZE = 64 * KiB;
const REGION_TABLE_SIGNATURE = 'regi';
const REGION_ENTRY_SIZE = 32;
/** Entry count limit of both the region table (2.2.3.1) and the metadata table (2.6.1.1). */
const MAX_TABLE_ENTRIES = 2047;
const METADATA_TABLE_SIZE = 64 * KiB;
const METADATA_SIGNATURE = 'metadata';
const METADATA_ENTRY_SIZE = 32;
const MAX_METADATA_ITEM_LENGTH = MiB;
const MIN_BLOCK_SIZE = MiB;
const MAX_BLOCK_SIZE = 256 * MiB;
/** 2.6.2.2: the virtual disk is at most 64 TB. */
const MAX_VIRTUAL_SIZE = 64 * TiB;
/** 2.4: one sector bitmap block describes 2^23 logical sectors. */
const SECTORS_PER_BITMAP_BLOCK = 2 ** 23;
/** Regions, the log and blocks are placed at multiples of 1 MiB (2.2.2, 2.2.3.2, 2.5.1). */
const ALIGNMENT = MiB;

/** Payload BAT entry states (2.5.1.1). 4 and 5 are reserved. */
const PAYLOAD_BLOCK_NOT_PRESENT = 0;
const PAYLOAD_BLOCK_UNDEFINED = 1;
const PAYLOAD_BLOCK_ZERO = 2;
const PAYLOAD_BLOCK_UNMAPPED = 3;
const PAYLOAD_BLOCK_FULLY_PRESENT = 6;
const PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7;
/** BAT entry bits 3..19 are reserved; set, they would put a block off its 1 MiB alignment. */
const BAT_RESERVED_MASK = 0x000ffff8;

/** Metadata table entry flags (2.6.1.2). */
const METADATA_IS_USER = 1;
const METADATA_IS_VIRTUAL_DISK = 2;
const METADATA_IS_REQUIRED = 4;
/** File parameters flags (2.6.2.1). */
const LEAVE_BLOCK_ALLOCATED = 1;
const HAS_PARENT = 2;

const SUPPORTED_SECTOR_SIZES = [512, 4096];

/** The writer's block size: see `createVhdxWriter`. */
const DEFAULT_WRITER_BLOCK_SIZE = MiB;
const WRITER_LOGICAL_SECTOR_SIZE = 512;
const WRITER_PHYSICAL_SECTOR_SIZE = 4096;
const WRITER_LOG_LENGTH = MiB;

/** A GUID in its on-disk form: the first three fields little-endian, the rest as written. */
function guidBytes(text: string): Buffer {
  const bytes = Buffer.from(text.replace(/-/g, ''), 'hex');
  bytes.subarray(0, 4).reverse();
  bytes.subarray(4, 6).reverse();
  bytes.subarray(6, 8).reverse();
  return bytes;
}

/** The usual text form of an on-disk GUID, for messages. */
function guidText(bytes: Buffer): string {
  const copy = Buffer.from(bytes.subarray(0, 16));
  copy.subarray(0, 4).reverse();
  copy.subarray(4, 6).reverse();
  copy.subarray(6, 8).reverse();
  const hex = copy.toString('hex').toUpperCase();
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Region GUIDs (2.2.3.2). */
const BAT_REGION_GUID = guidBytes('2DC27766-F623-4200-9D64-115E9BFD4A08');
const METADATA_REGION_GUID = guidBytes('8B7CA206-4790-4B9A-B8FE-575F050F886E');

/** System metadata item GUIDs (2.6.2) and the bytes each needs. */
const FILE_PARAMETERS_GUID = guidBytes('CAA16737-FA36-4D43-B3B6-33F0AA44E76B');
const VIRTUAL_DISK_SIZE_GUID = guidBytes('2FA54224-CD1B-4876-B211-5DBED83BF4B8');
const VIRTUAL_DISK_ID_GUID = guidBytes('BECA12AB-B2E6-4523-93EF-C309E000C746');
const LOGICAL_SECTOR_SIZE_GUID = guidBytes('8141BF1D-A96F-4709-BA47-F233A8FAAB5F');
const PHYSICAL_SECTOR_SIZE_GUID = guidBytes('CDA348C7-445D-4471-9CC9-E9885251C556');
const PARENT_LOCATOR_GUID = guidBytes('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C');

const knownMetadataItems = [
  { name: 'file parameters', guid: FILE_PARAMETERS_GUID, length: 8 },
  { name: 'virtual disk size', guid: VIRTUAL_DISK_SIZE_GUID, length: 8 },
  { name: 'virtual disk id', guid: VIRTUAL_DISK_ID_GUID, length: 16 },
  { name: 'logical sector size', guid: LOGICAL_SECTOR_SIZE_GUID, length: 4 },
  { name: 'physical sector size', guid: PHYSICAL_SECTOR_SIZE_GUID, length: 4 },
] as const;
type KnownItemName = (typeof knownMetadataItems)[number]['name'];

/** A region of the file: [offset, offset + length). */
interface FileRange {
  name: string;
  offset: number;
  length: number;
}

/** The geometry the BAT follows from (2.5): blocks, the chunk ratio and how many entries there are. */
interface BatGeometry {
  blockSize: number;
  dataBlockCount: number;
  chunkRatio: number;
  entryCount: number;
}

/** BAT geometry of a non-differencing image of `virtualSize` bytes (2.5, "dynamic and fixed VHDX"). */
function batGeometry(virtualSize: number, blockSize: number, logicalSectorSize: number): BatGeometry {
  const chunkRatio = (SECTORS_PER_BITMAP_BLOCK * logicalSectorSize) / blockSize;
  const dataBlockCount = Math.ceil(virtualSize / blockSize);
  const entryCount = dataBlockCount === 0 ? 0 : dataBlockCount + Math.floor((dataBlockCount - 1) / chunkRatio);
  return { blockSize, dataBlockCount, chunkRatio, entryCount };
}

/** Index in the BAT of payload block `block`: a sector bitmap entry follows each chunk of payload entries. */
function batIndexOfBlock(block: number, chunkRatio: number): number {
  return block + Math.floor(block / chunkRatio);
}

function isPowerOfTwo(value: number): boolean {
  return Number.isInteger(value) && value > 0 && (value & (value - 1)) === 0;
}

function unreadable(imagePath: string, error: unknown): FerryError {
  return unreadableImage(imagePath, `cannot be read (${ioErrorReason(error)})`, error);
}

/** Reads exactly `length` bytes at `position`; a file that ends first is corrupt (its size was checked before). */
function readExactly(handle: fs.FileHandle, imagePath: string, length: number, position: number, what: string): Promise<Buffer> {
  return readBytes(handle, imagePath, length, position, () => `the file ends inside the ${what}`);
}

/** A uint64 field as a number, or null when it is beyond what a file offset or disk size can be. */
function readUint64(buffer: Buffer, offset: number): number | null {
  const value = buffer.readBigUInt64LE(offset);
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? null : Number(value);
}

/** Whether a checksummed structure's stored CRC-32C matches (computed with the checksum field zeroed). */
function checksumMatches(structure: Buffer, checksumOffset: number): boolean {
  const stored = structure.readUInt32LE(checksumOffset);
  const copy = Buffer.from(structure);
  copy.writeUInt32LE(0, checksumOffset);
  return crc32c(copy) === stored;
}

/** Writes the CRC-32C of `structure` (with its checksum field zero) into the checksum field. */
function sealChecksum(structure: Buffer, checksumOffset: number): Buffer {
  structure.writeUInt32LE(0, checksumOffset);
  structure.writeUInt32LE(crc32c(structure), checksumOffset);
  return structure;
}

function overlaps(a: { offset: number; length: number }, b: { offset: number; length: number }): boolean {
  return a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

/** The current header's fields the reader uses (2.2.2). */
interface VhdxHeader {
  sequenceNumber: bigint;
  logGuid: Buffer;
  version: number;
  logLength: number;
  logOffset: number | null;
}

function parseHeader(buffer: Buffer): VhdxHeader {
  return {
    sequenceNumber: buffer.readBigUInt64LE(8),
    logGuid: buffer.subarray(48, 64),
    version: buffer.readUInt16LE(66),
    logLength: buffer.readUInt32LE(68),
    logOffset: readUint64(buffer, 72),
  };
}

/** Reads both headers and returns the current one: valid (signature, CRC-32C), highest sequence number. */
async function readCurrentHeader(handle: fs.FileHandle, imagePath: string): Promise<VhdxHeader> {
  const candidates: { raw: Buffer; header: VhdxHeader }[] = [];
  for (const offset of HEADER_OFFSETS) {
    const raw = await readExactly(handle, imagePath, HEADER_SIZE, offset, 'headers');
    if (raw.toString('latin1', 0, 4) === HEADER_SIGNATURE && checksumMatches(raw, 4)) candidates.push({ raw, header: parseHeader(raw) });
  }
  const [first, second] = candidates;
  if (!first) throw corrupt(imagePath, 'neither VHDX header is valid (bad signature or CRC-32C checksum)');
  let current = first;
  if (second) {
    if (second.header.sequenceNumber > first.header.sequenceNumber) current = second;
    // Equal sequence numbers are ambiguous unless the two copies are identical (Disk2VHD writes such).
    else if (second.header.sequenceNumber === first.header.sequenceNumber && !second.raw.equals(first.raw)) {
      throw corrupt(imagePath, 'the two VHDX headers differ but have the same sequence number');
    }
  }
  return current.header;
}

/** A region table entry (2.2.3.2). */
interface RegionEntry {
  guid: Buffer;
  offset: number | null;
  length: number;
  required: boolean;
}

/** Reads the first region table copy that is valid (signature, CRC-32C, entry count). */
async function readRegionTable(handle: fs.FileHandle, imagePath: string): Promise<RegionEntry[]> {
  for (const offset of REGION_TABLE_OFFSETS) {
    const raw = await readExactly(handle, imagePath, REGION_TABLE_SIZE, offset, 'region table');
    if (raw.toString('latin1', 0, 4) !== REGION_TABLE_SIGNATURE || !checksumMatches(raw, 4)) continue;
    const entryCount = raw.readUInt32LE(8);
    if (entryCount > MAX_TABLE_ENTRIES) continue;
    const entries: RegionEntry[] = [];
    for (let index = 0; index < entryCount; index++) {
      const at = 16 + index * REGION_ENTRY_SIZE;
      entries.push({ guid: raw.subarray(at, at + 16), offset: readUint64(raw, at + 16), length: raw.readUInt32LE(at + 24), required: (raw.readUInt32LE(at + 28) & 1) === 1 });
    }
    return entries;
  }
  throw corrupt(imagePath, 'neither region table copy is valid (bad signature, CRC-32C checksum or entry count)');
}

/** Finds the BAT and metadata regions, checking each lies 1 MiB aligned in the file and refusing unknown required ones. */
function locateRegions(imagePath: string, entries: RegionEntry[], fileSize: number): { bat: FileRange; metadata: FileRange } {
  let bat: FileRange | undefined;
  let metadata: FileRange | undefined;
  for (const entry of entries) {
    const name = entry.guid.equals(BAT_REGION_GUID) ? 'BAT region' : entry.guid.equals(METADATA_REGION_GUID) ? 'metadata region' : null;
    if (name === null) {
      if (entry.required) throw corrupt(imagePath, `unknown required region ${guidText(entry.guid)} (a VHDX feature Ferry does not know)`);
      continue;
    }
    if ((name === 'BAT region' && bat) || (name === 'metadata region' && metadata)) throw corrupt(imagePath, `the region table lists the ${name} twice`);
    const { offset, length } = entry;
    if (offset === null || offset % ALIGNMENT !== 0 || offset < HEADER_SECTION_SIZE || length === 0 || length % ALIGNMENT !== 0) {
      throw corrupt(imagePath, `the ${name} is not 1 MiB aligned after the header section (offset ${String(offset ?? 'beyond 2^53')}, length ${length})`);
    }
    if (offset + length > fileSize) throw corrupt(imagePath, `the ${name} (offset ${offset}, length ${length}) lies past the end of the file (${fileSize} bytes)`);
    const range = { name, offset, length };
    if (name === 'BAT region') bat = range;
    else metadata = range;
  }
  if (!bat) throw corrupt(imagePath, 'the region table has no BAT region');
  if (!metadata) throw corrupt(imagePath, 'the region table has no metadata region');
  if (overlaps(bat, metadata)) throw corrupt(imagePath, 'the BAT and metadata regions overlap');
  return { bat, metadata };
}

/** What the metadata region says about the virtual disk (2.6.2). */
interface VhdxMetadata {
  blockSize: number;
  leaveBlockAllocated: boolean;
  virtualSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  virtualDiskId: Buffer;
}

/** Reads the metadata table and its system items; refuses differencing images and unknown required items. */
async function readMetadata(handle: fs.FileHandle, imagePath: string, region: FileRange): Promise<VhdxMetadata> {
  const table = await readExactly(handle, imagePath, METADATA_TABLE_SIZE, region.offset, 'metadata table');
  if (table.toString('latin1', 0, 8) !== METADATA_SIGNATURE) throw corrupt(imagePath, 'the metadata table has no "metadata" signature');
  const entryCount = table.readUInt16LE(10);
  if (entryCount > MAX_TABLE_ENTRIES) throw corrupt(imagePath, `the metadata table claims ${entryCount} entries (at most ${MAX_TABLE_ENTRIES})`);
  const items = new Map<KnownItemName, Buffer>();
  let hasParentLocator = false;
  for (let index = 0; index < entryCount; index++) {
    const at = 32 + index * METADATA_ENTRY_SIZE;
    const guid = table.subarray(at, at + 16);
    const offset = table.readUInt32LE(at + 16);
    const length = table.readUInt32LE(at + 20);
    const flags = table.readUInt32LE(at + 24);
    const isUser = (flags & METADATA_IS_USER) !== 0;
    const known = isUser ? undefined : knownMetadataItems.find((item) => item.guid.equals(guid));
    if (!isUser && guid.equals(PARENT_LOCATOR_GUID)) {
      hasParentLocator = true;
      continue;
    }
    if (!known) {
      if (flags & METADATA_IS_REQUIRED) throw corrupt(imagePath, `unknown required metadata item ${guidText(guid)} (a VHDX feature Ferry does not know)`);
      continue;
    }
    if (items.has(known.name)) throw corrupt(imagePath, `the metadata table lists the ${known.name} twice`);
    if (length < known.length || length > MAX_METADATA_ITEM_LENGTH) throw corrupt(imagePath, `the ${known.name} metadata item is ${length} bytes long (needs ${known.length})`);
    if (offset < METADATA_TABLE_SIZE || offset + length > region.length) throw corrupt(imagePath, `the ${known.name} metadata item (offset ${offset}, length ${length}) lies outside the metadata region`);
    items.set(known.name, await readExactly(handle, imagePath, known.length, region.offset + offset, `${known.name} metadata item`));
  }
  const item = (name: KnownItemName): Buffer => {
    const found = items.get(name);
    if (!found) throw corrupt(imagePath, `the required ${name} metadata item is missing`);
    return found;
  };

  const fileParameters = item('file parameters');
  const fileFlags = fileParameters.readUInt32LE(4);
  if (fileFlags & HAS_PARENT || hasParentLocator) {
    throw new FerryError('invalid-request', `disk image ${imagePath}: differencing VHDX is not supported yet (it has a parent disk)`, { details: { path: imagePath } });
  }
  const blockSize = fileParameters.readUInt32LE(0);
  if (!isPowerOfTwo(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE) {
    throw corrupt(imagePath, `block size ${blockSize} is not a power of two between 1 MiB and 256 MiB`);
  }
  const logicalSectorSize = item('logical sector size').readUInt32LE(0);
  if (!SUPPORTED_SECTOR_SIZES.includes(logicalSectorSize)) throw corrupt(imagePath, `logical sector size ${logicalSectorSize} is neither 512 nor 4096`);
  const physicalSectorSize = item('physical sector size').readUInt32LE(0);
  if (!SUPPORTED_SECTOR_SIZES.includes(physicalSectorSize)) throw corrupt(imagePath, `physical sector size ${physicalSectorSize} is neither 512 nor 4096`);
  const virtualSize = readUint64(item('virtual disk size'), 0);
  if (virtualSize === null || virtualSize > MAX_VIRTUAL_SIZE) throw corrupt(imagePath, `virtual disk size ${item('virtual disk size').readBigUInt64LE(0)} is over the 64 TiB limit`);
  if (virtualSize % logicalSectorSize !== 0) throw corrupt(imagePath, `virtual disk size ${virtualSize} is not a multiple of the ${logicalSectorSize}-byte sector`);
  return {
    blockSize,
    leaveBlockAllocated: (fileFlags & LEAVE_BLOCK_ALLOCATED) !== 0,
    virtualSize,
    logicalSectorSize,
    physicalSectorSize,
    virtualDiskId: item('virtual disk id'),
  };
}

/** Checks the header's log: refuses a pending log (non-zero LogGuid), returns where the log lies (or null). */
function checkLog(imagePath: string, header: VhdxHeader, fileSize: number): FileRange | null {
  if (header.logGuid.some((byte) => byte !== 0)) {
    throw corrupt(imagePath, `the image has a log that must be replayed before it can be read (log GUID ${guidText(header.logGuid)}): Ferry does not replay VHDX logs; open it once in Hyper-V or qemu-img to replay it`);
  }
  if (header.logLength === 0) return null;
  const offset = header.logOffset;
  if (offset === null || offset % ALIGNMENT !== 0 || offset < HEADER_SECTION_SIZE || header.logLength % ALIGNMENT !== 0 || offset + header.logLength > fileSize) {
    throw corrupt(imagePath, `the log (offset ${String(offset ?? 'beyond 2^53')}, length ${header.logLength}) is not 1 MiB aligned within the file`);
  }
  return { name: 'log', offset, length: header.logLength };
}

/**
 * Checks every payload entry of the BAT: a known state valid for a non-differencing image, reserved bits
 * clear (the offset is 1 MiB aligned), and a present block lying in the file outside every structure.
 */
function checkBat(imagePath: string, bat: Buffer, geometry: BatGeometry, virtualSize: number, fileSize: number, structures: FileRange[]): void {
  for (let block = 0; block < geometry.dataBlockCount; block++) {
    const at = batIndexOfBlock(block, geometry.chunkRatio) * 8;
    const low = bat.readUInt32LE(at);
    const state = low & 7;
    if (low & BAT_RESERVED_MASK) throw corrupt(imagePath, `BAT entry of block ${block} has reserved bits set: its offset is not 1 MiB aligned`);
    if (state === PAYLOAD_BLOCK_PARTIALLY_PRESENT) throw corrupt(imagePath, `block ${block} is partially present, which only a differencing image may be`);
    if (state !== PAYLOAD_BLOCK_FULLY_PRESENT) {
      if (state !== PAYLOAD_BLOCK_NOT_PRESENT && state !== PAYLOAD_BLOCK_UNDEFINED && state !== PAYLOAD_BLOCK_ZERO && state !== PAYLOAD_BLOCK_UNMAPPED) {
        throw corrupt(imagePath, `BAT entry of block ${block} has the reserved state ${state}`);
      }
      continue;
    }
    const offset = ((low >>> 20) + bat.readUInt32LE(at + 4) * 4096) * MiB;
    // The last block may be cut at the virtual size; what lies beyond it is never read.
    const length = Math.min(geometry.blockSize, virtualSize - block * geometry.blockSize);
    if (offset + length > fileSize) throw corrupt(imagePath, `BAT entry of block ${block} points past the end of the file (offset ${offset}, file ${fileSize} bytes)`);
    const inside = structures.find((structure) => overlaps(structure, { offset, length: geometry.blockSize }));
    if (inside) throw corrupt(imagePath, `BAT entry of block ${block} points inside the ${inside.name} (offset ${offset})`);
  }
}

/** An opened VHDX image: see `openVhdx`. */
class VhdxReader implements DiskImageReader {
  readonly format = 'vhdx' as const;
  private closed = false;

  constructor(
    readonly path: string,
    private readonly handle: fs.FileHandle,
    readonly subformat: string,
    readonly size: number,
    private readonly geometry: BatGeometry,
    /** The BAT as stored: entries are decoded when used, so memory is what the file holds, not more. */
    private readonly bat: Buffer,
  ) {}

  /** The file offset of `block`'s data, or null when the block reads as zeros. */
  private blockOffset(block: number): number | null {
    const at = batIndexOfBlock(block, this.geometry.chunkRatio) * 8;
    const low = this.bat.readUInt32LE(at);
    if ((low & 7) !== PAYLOAD_BLOCK_FULLY_PRESENT) return null;
    return ((low >>> 20) + this.bat.readUInt32LE(at + 4) * 4096) * MiB;
  }

  async read(buffer: Buffer, length: number, offset: number): Promise<void> {
    if (this.closed) throw new FerryError('invalid-request', `disk image ${this.path} is closed`);
    checkReadRange(this.path, this.size, buffer, length, offset);
    const { blockSize } = this.geometry;
    let done = 0;
    while (done < length) {
      const position = offset + done;
      const block = Math.floor(position / blockSize);
      const within = position - block * blockSize;
      const count = Math.min(blockSize - within, length - done);
      const fileOffset = this.blockOffset(block);
      if (fileOffset === null) {
        buffer.fill(0, done, done + count);
        done += count;
        continue;
      }
      // Blocks stored one after another in the file are read as one.
      let span = count;
      for (let next = block + 1; done + span < length && this.blockOffset(next) === fileOffset + (next - block) * blockSize; next++) {
        span += Math.min(blockSize, length - done - span);
      }
      // The blocks were checked to lie in the file when it was opened: a short read means it shrank since.
      await readFileExactly(this.handle, this.path, buffer, done, span, fileOffset + within, () => `the file ends inside block ${block} or a block after it (it was truncated while open)`);
      done += span;
    }
  }

  async *extents(): AsyncIterable<DiskExtent> {
    const { blockSize, dataBlockCount } = this.geometry;
    const merger = new ExtentMerger();
    for (let block = 0; block < dataBlockCount; block++) {
      const offset = block * blockSize;
      yield* merger.add(offset, Math.min(blockSize, this.size - offset), this.blockOffset(block) === null ? 'zero' : 'data');
    }
    yield* merger.finish();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

/** True when `head` starts with the VHDX file type identifier "vhdxfile" (2.2.1). */
export function sniffVhdx(head: Buffer, _fileSize: number): boolean {
  return head.length >= 8 && head.toString('latin1', 0, 8) === FILE_TYPE_SIGNATURE;
}

/**
 * Opens a dynamic or fixed VHDX image for reading. Its subformat is 'fixed' when LeaveBlockAllocated is
 * set, else 'dynamic'. Blocks not present, undefined, zero or unmapped read as zeros and are `zero`
 * extents; fully present blocks are `data`. Throws 'disk-unreadable' when the file cannot be opened,
 * 'corrupt-data' naming the file and the problem for a malformed image (bad checksums on both copies,
 * tables or blocks outside the file, out-of-range sizes, unknown required regions or metadata items) and
 * for an image with a log to replay, and 'invalid-request' for a differencing image.
 */
export async function openVhdx(imagePath: string): Promise<DiskImageReader> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(imagePath, 'r');
  } catch (error) {
    throw unreadable(imagePath, error);
  }
  try {
    let fileSize: number;
    try {
      const stat = await handle.stat();
      if (!stat.isFile()) throw new Error('not a regular file');
      fileSize = stat.size;
    } catch (error) {
      throw unreadable(imagePath, error);
    }
    if (fileSize < REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE) throw corrupt(imagePath, `the file is ${fileSize} bytes, too short for a VHDX header section`);
    const identifier = await readExactly(handle, imagePath, 8, 0, 'file type identifier');
    if (identifier.toString('latin1') !== FILE_TYPE_SIGNATURE) throw corrupt(imagePath, 'no "vhdxfile" file type identifier: not a VHDX image');

    const header = await readCurrentHeader(handle, imagePath);
    if (header.version !== 1) throw corrupt(imagePath, `VHDX version ${header.version} is not 1`);
    const log = checkLog(imagePath, header, fileSize);
    const regions = locateRegions(imagePath, await readRegionTable(handle, imagePath), fileSize);
    const structures: FileRange[] = [{ name: 'header section', offset: 0, length: HEADER_SECTION_SIZE }, regions.bat, regions.metadata];
    if (log) {
      const clash = structures.find((structure) => overlaps(structure, log));
      if (clash) throw corrupt(imagePath, `the log overlaps the ${clash.name}`);
      structures.push(log);
    }

    const metadata = await readMetadata(handle, imagePath, regions.metadata);
    const geometry = batGeometry(metadata.virtualSize, metadata.blockSize, metadata.logicalSectorSize);
    const batBytes = geometry.entryCount * 8;
    // The region was checked to lie in the file, so this allocation is bounded by the file's size.
    if (batBytes > regions.bat.length) throw corrupt(imagePath, `the BAT region (${regions.bat.length} bytes) is too small for ${geometry.entryCount} entries of a ${metadata.virtualSize}-byte disk`);
    const bat = await readExactly(handle, imagePath, batBytes, regions.bat.offset, 'BAT');
    checkBat(imagePath, bat, geometry, metadata.virtualSize, fileSize, structures);
    return new VhdxReader(imagePath, handle, metadata.leaveBlockAllocated ? 'fixed' : 'dynamic', metadata.virtualSize, geometry, bat);
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw error;
  }
}

/** Where the writer puts each structure of an image (all 1 MiB aligned). */
interface WriterLayout {
  virtualSize: number;
  geometry: BatGeometry;
  logOffset: number;
  batOffset: number;
  batLength: number;
  metadataOffset: number;
  metadataLength: number;
  dataOffset: number;
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

/** The writer's layout: header section, log, BAT, metadata, then the blocks, like Hyper-V and qemu-img. */
function planLayout(diskSize: number, blockSize: number): WriterLayout {
  const virtualSize = roundUp(diskSize, WRITER_LOGICAL_SECTOR_SIZE);
  const geometry = batGeometry(virtualSize, blockSize, WRITER_LOGICAL_SECTOR_SIZE);
  const logOffset = HEADER_SECTION_SIZE;
  const batOffset = logOffset + WRITER_LOG_LENGTH;
  const batLength = Math.max(ALIGNMENT, roundUp(geometry.entryCount * 8, ALIGNMENT));
  const metadataOffset = batOffset + batLength;
  const metadataLength = MiB;
  return { virtualSize, geometry, logOffset, batOffset, batLength, metadataOffset, metadataLength, dataOffset: metadataOffset + metadataLength };
}

/** The file type identifier: signature and the creator, UTF-16 (2.2.1). */
function buildFileIdentifier(): Buffer {
  const identifier = Buffer.alloc(8 + 512);
  identifier.write(FILE_TYPE_SIGNATURE, 0, 'latin1');
  identifier.write('Ferry', 8, 'utf16le');
  return identifier;
}

function buildHeader(sequenceNumber: number, fileWriteGuid: Buffer, dataWriteGuid: Buffer, layout: WriterLayout): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  header.write(HEADER_SIGNATURE, 0, 'latin1');
  header.writeBigUInt64LE(BigInt(sequenceNumber), 8);
  fileWriteGuid.copy(header, 16);
  dataWriteGuid.copy(header, 32);
  // LogGuid (48..63) stays zero: the log is empty, nothing to replay. LogVersion (64) is 0.
  header.writeUInt16LE(1, 66);
  header.writeUInt32LE(WRITER_LOG_LENGTH, 68);
  header.writeBigUInt64LE(BigInt(layout.logOffset), 72);
  return sealChecksum(header, 4);
}

function buildRegionTable(layout: WriterLayout): Buffer {
  const table = Buffer.alloc(REGION_TABLE_SIZE);
  table.write(REGION_TABLE_SIGNATURE, 0, 'latin1');
  table.writeUInt32LE(2, 8);
  const regions = [
    { guid: BAT_REGION_GUID, offset: layout.batOffset, length: layout.batLength },
    { guid: METADATA_REGION_GUID, offset: layout.metadataOffset, length: layout.metadataLength },
  ];
  regions.forEach((region, index) => {
    const at = 16 + index * REGION_ENTRY_SIZE;
    region.guid.copy(table, at);
    table.writeBigUInt64LE(BigInt(region.offset), at + 16);
    table.writeUInt32LE(region.length, at + 24);
    table.writeUInt32LE(1, at + 28); // required: both are known to every implementation
  });
  return sealChecksum(table, 4);
}

/** The metadata table followed by its items (at 64 KiB into the region), as one buffer. */
function buildMetadata(layout: WriterLayout, leaveBlockAllocated: boolean): Buffer {
  const fileParameters = Buffer.alloc(8);
  fileParameters.writeUInt32LE(layout.geometry.blockSize, 0);
  fileParameters.writeUInt32LE(leaveBlockAllocated ? LEAVE_BLOCK_ALLOCATED : 0, 4);
  const virtualDiskSize = Buffer.alloc(8);
  virtualDiskSize.writeBigUInt64LE(BigInt(layout.virtualSize));
  const logicalSectorSize = Buffer.alloc(4);
  logicalSectorSize.writeUInt32LE(WRITER_LOGICAL_SECTOR_SIZE);
  const physicalSectorSize = Buffer.alloc(4);
  physicalSectorSize.writeUInt32LE(WRITER_PHYSICAL_SECTOR_SIZE);
  const items = [
    { guid: FILE_PARAMETERS_GUID, data: fileParameters, flags: METADATA_IS_REQUIRED },
    { guid: VIRTUAL_DISK_SIZE_GUID, data: virtualDiskSize, flags: METADATA_IS_VIRTUAL_DISK | METADATA_IS_REQUIRED },
    { guid: VIRTUAL_DISK_ID_GUID, data: guidBytes(randomUUID()), flags: METADATA_IS_VIRTUAL_DISK | METADATA_IS_REQUIRED },
    { guid: LOGICAL_SECTOR_SIZE_GUID, data: logicalSectorSize, flags: METADATA_IS_VIRTUAL_DISK | METADATA_IS_REQUIRED },
    { guid: PHYSICAL_SECTOR_SIZE_GUID, data: physicalSectorSize, flags: METADATA_IS_VIRTUAL_DISK | METADATA_IS_REQUIRED },
  ];
  const itemBytes = items.reduce((total, item) => total + item.data.length, 0);
  const metadata = Buffer.alloc(METADATA_TABLE_SIZE + itemBytes);
  metadata.write(METADATA_SIGNATURE, 0, 'latin1');
  metadata.writeUInt16LE(items.length, 10);
  let itemOffset = METADATA_TABLE_SIZE;
  items.forEach((item, index) => {
    const at = 32 + index * METADATA_ENTRY_SIZE;
    item.guid.copy(metadata, at);
    metadata.writeUInt32LE(itemOffset, at + 16);
    metadata.writeUInt32LE(item.data.length, at + 20);
    metadata.writeUInt32LE(item.flags, at + 24);
    item.data.copy(metadata, itemOffset);
    itemOffset += item.data.length;
  });
  return metadata;
}

/** Marks payload block `block` FULLY_PRESENT at byte `offset` (a multiple of 1 MiB) in `bat`. */
function setBatEntry(bat: Buffer, chunkRatio: number, block: number, offset: number): void {
  const at = batIndexOfBlock(block, chunkRatio) * 8;
  const offsetMiB = offset / MiB;
  bat.writeUInt32LE((((offsetMiB % 4096) << 20) | PAYLOAD_BLOCK_FULLY_PRESENT) >>> 0, at);
  bat.writeUInt32LE(Math.floor(offsetMiB / 4096), at + 4);
}

/** Options of `createVhdxWriter`. */
export interface VhdxWriterOptions {
  /** Payload block size in bytes: a power of two from 1 MiB to 256 MiB. Default 1 MiB. */
  blockSize?: number;
}

/**
 * A VHDX writer. Subformats: 'dynamic' (default: blocks that are all zero are not allocated, so the
 * image holds only data) and 'fixed' (LeaveBlockAllocated set, every block allocated in order; blocks
 * of zeros are left as holes of the file system, so the image is sparse on disk though fully
 * provisioned in the format).
 *
 * The block size defaults to 1 MiB, not the 32 MiB Hyper-V picks, so zero space is skipped at the same
 * granularity replication reads it and small disks stay small; Hyper-V and qemu read any block size the
 * specification allows. The virtual size is the input's size rounded up to the 512-byte logical sector;
 * sector sizes are 512 logical / 4096 physical. Memory: one block plus the BAT (8 bytes a block: 16 MiB
 * for a 2 TiB disk).
 * Throws 'invalid-request' for an unknown subformat, an empty or over-64-TiB disk, or pieces out of
 * order or past the size; 'io-error' when the file cannot be written; the signal's reason when aborted.
 */
export function createVhdxWriter(options: VhdxWriterOptions = {}): DiskImageWriter {
  const blockSize = options.blockSize ?? DEFAULT_WRITER_BLOCK_SIZE;
  if (!isPowerOfTwo(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE) {
    throw new FerryError('invalid-request', `VHDX block size ${blockSize} is not a power of two between 1 MiB and 256 MiB`);
  }
  return {
    format: 'vhdx',
    subformats: ['dynamic', 'fixed'],
    write: (imagePath, input, writeOptions) => writeVhdxImage(imagePath, input, writeOptions ?? {}, blockSize),
  };
}

/** The VHDX writer with 1 MiB blocks (see `createVhdxWriter`). */
export const vhdxWriter: DiskImageWriter = createVhdxWriter();

/** Writes `input` as a VHDX image at `path` with `vhdxWriter`; resolves with the image's size in bytes. */
export function writeVhdx(imagePath: string, input: DiskImageInput, options?: DiskImageWriteOptions): Promise<number> {
  return vhdxWriter.write(imagePath, input, options);
}

async function writeVhdxImage(imagePath: string, input: DiskImageInput, options: DiskImageWriteOptions, blockSize: number): Promise<number> {
  const subformat = options.subformat ?? 'dynamic';
  if (subformat !== 'dynamic' && subformat !== 'fixed') throw new FerryError('invalid-request', `VHDX images are written as dynamic or fixed, not '${subformat}'`);
  if (!Number.isSafeInteger(input.size) || input.size <= 0 || input.size > MAX_VIRTUAL_SIZE) {
    throw new FerryError('invalid-request', `a VHDX disk must be between 1 byte and 64 TiB, not ${input.size} bytes`);
  }
  const layout = planLayout(input.size, blockSize);
  const fixed = subformat === 'fixed';
  return writeImageFileAtomically(imagePath, options.signal, async (handle, writer) => {
    // The BAT is built as blocks are placed: all zero (NOT_PRESENT payload blocks, sector bitmap
    // entries not present) until a block is written. A fixed image has every block, in order.
    const { chunkRatio, dataBlockCount } = layout.geometry;
    const bat = Buffer.alloc(layout.geometry.entryCount * 8);
    const fixedBlockOffset = (block: number) => layout.dataOffset + block * blockSize;
    let nextBlockOffset = layout.dataOffset;
    if (fixed) {
      for (let block = 0; block < dataBlockCount; block++) setBatEntry(bat, chunkRatio, block, fixedBlockOffset(block));
      nextBlockOffset = fixedBlockOffset(dataBlockCount);
    }

    // Blocks holding only zeros are not written; the others are placed in order (a dynamic image's one
    // after another), so their writes coalesce.
    for await (const block of wholeBlocks(checkedPieces(imagePath, input, options), blockSize)) {
      let offset = fixedBlockOffset(block.index);
      if (!fixed) {
        offset = nextBlockOffset;
        nextBlockOffset += blockSize;
        setBatEntry(bat, chunkRatio, block.index, offset);
      }
      await writer.write(offset, block.data);
    }

    const fileWriteGuid = guidBytes(randomUUID());
    const dataWriteGuid = guidBytes(randomUUID());
    await writer.write(layout.batOffset, bat);
    await writer.write(layout.metadataOffset, buildMetadata(layout, fixed));
    const regionTable = buildRegionTable(layout);
    for (const offset of REGION_TABLE_OFFSETS) await writer.write(offset, regionTable);
    await writer.write(HEADER_OFFSETS[0], buildHeader(0, fileWriteGuid, dataWriteGuid, layout));
    await writer.write(HEADER_OFFSETS[1], buildHeader(1, fileWriteGuid, dataWriteGuid, layout));
    await writer.write(0, buildFileIdentifier());
    await writer.flush();
    // Unwritten blocks of a fixed image and the empty log stay holes: they read as zeros.
    await handle.truncate(nextBlockOffset);
  });
}

/** The VHDX format module: sniffs "vhdxfile", opens dynamic and fixed images, writes both. */
export const vhdxImageFormat: DiskImageFormatModule = { format: 'vhdx', sniff: sniffVhdx, open: openVhdx, writer: vhdxWriter };
