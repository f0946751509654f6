/**
 * Microsoft VHD images (qemu-img calls the format 'vpc'): reading fixed, dynamic and differencing disks,
 * writing fixed (Azure-ready) and dynamic ones.
 *
 * Follows the "Virtual Hard Disk Image Format Specification" (Microsoft, version 1.0, 2006):
 * - Hard Disk Footer Format: the 512-byte footer ("conectix", big-endian fields, one's-complement
 *   checksum) ends every VHD; a dynamic or differencing disk also keeps a copy at offset 0;
 * - Dynamic Disk Header Format: the 1024-byte header ("cxsparse") the footer's data offset points at,
 *   with the block size, the Block Allocation Table's offset and length, and for a differencing disk the
 *   parent's unique id, name and the parent locator entries (platform codes W2ru, W2ku, MacX);
 * - Block Allocation Table and Data Blocks: 32-bit sector offsets (0xFFFFFFFF: not allocated), each
 *   block a sector bitmap (bit set, most significant first: the sector is stored in the block) then the
 *   block's data;
 * - Implementing a Dynamic Disk / Differencing Disks: a clear bit (or an unallocated block) reads as
 *   zeros in a dynamic disk and from the parent in a differencing disk;
 * - Appendix, CHS calculation: the geometry written in footers.
 *
 * Virtual size: the footer's Current Size, as Hyper-V, Azure and qemu-img (for every image it creates)
 * read it. qemu reads the CHS geometry instead for some creators ('vpc ', 'qemu' and unknown ones) unless
 * the geometry is the maximum; qemu-img itself writes a current size equal to the geometry's for those,
 * so the two agree on qemu's images. An old Virtual PC image whose geometry covers less than its
 * current size reads here with its full current size (a few more sectors than qemu shows, never fewer).
 *
 * Not supported: the 511-byte footer of pre-2004 Virtual PC images and saved-state images are read like
 * any other (a 511-byte footer is refused as corrupt-data: no footer found).
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError } from '../errors.js';
import type { DiskExtent, DiskImageFormatModule, DiskImageInput, DiskImageReader, DiskImageWriteOptions, DiskImageWriter } from './disk-image.js';
import { checkReadRange, checkedPieces, corruptImage as corrupt, ExtentMerger, ioErrorReason, readExactly as readFileExactly, unreadableImage as unreadable, writeImageFileAtomically } from './image-file.js';
import { type ImageFileWriter, wholeBlocks } from './image-writer.js';
import { type DataRange, fileDataRanges } from './file-data-map.js';
import { scanZeroExtents } from './raw-image.js';

const SECTOR = 512;
const MiB = 1024 * 1024;
const FOOTER_SIZE = 512;
const DYNAMIC_HEADER_SIZE = 1024;
const FOOTER_COOKIE = 'conectix';
const DYNAMIC_HEADER_COOKIE = 'cxsparse';
const FILE_FORMAT_VERSION = 0x00010000;
const DYNAMIC_HEADER_VERSION = 0x00010000;
const UNALLOCATED = 0xffffffff;
/** VHD timestamps count seconds from 2000-01-01T00:00:00Z. */
const VHD_EPOCH_MS = Date.UTC(2000, 0, 1);
/** The block size this writer uses, and Hyper-V's default. */
const DEFAULT_BLOCK_SIZE = 2 * MiB;
/** Largest dynamic disk: 2040 GiB, what Hyper-V and qemu allow (block offsets are 32-bit sector numbers). */
const MAX_DYNAMIC_SIZE = 0xff000000 * SECTOR;
/** Most BAT entries loaded (64 MiB of table): far above 2040 GiB in 512 KiB blocks (4 Mi entries). */
const MAX_TABLE_ENTRIES = 16 * 1024 * 1024;
/** Longest parent locator read: a path, in UTF-16. */
const MAX_LOCATOR_BYTES = 64 * 1024;
/** Most images in a differencing chain. */
const MAX_CHAIN_DEPTH = 32;
/** Sector bitmaps kept in memory per reader. */
const BITMAP_CACHE_ENTRIES = 256;
/** The most sectors per track, heads and cylinders the CHS geometry can express. */
const MAX_GEOMETRY_SECTORS = 65535 * 16 * 255;

const diskTypes = { fixed: 2, dynamic: 3, differencing: 4 } as const;
type VhdSubformat = keyof typeof diskTypes;

/** The fields of a hard disk footer this module uses. */
interface VhdFooter {
  diskType: VhdSubformat;
  /** Offset of the dynamic disk header; null when all ones (a fixed disk). */
  dataOffset: number | null;
  currentSize: number;
  uniqueId: Buffer;
}

/** A dynamic disk header's fields this module uses. */
interface DynamicHeader {
  tableOffset: number;
  maxTableEntries: number;
  blockSize: number;
  parentUniqueId: Buffer;
  parentName: string;
  parentLocators: ParentLocator[];
}

interface ParentLocator {
  platformCode: string;
  dataLength: number;
  dataOffset: number;
}

/** A byte range of the image file holding metadata, which no data block may overlap. */
interface MetadataRange {
  start: number;
  end: number;
  what: string;
}

/** The one's complement of the sum of every byte of `bytes` but the four of the checksum field at `checksumAt`. */
function vhdChecksum(bytes: Buffer, checksumAt: number): number {
  let sum = 0;
  for (let index = 0; index < bytes.length; index++) if (index < checksumAt || index >= checksumAt + 4) sum += bytes[index]!;
  return ~sum >>> 0;
}

/** A 64-bit big-endian field as a number; null when it does not fit in a safe integer. */
function readSafeUInt64(bytes: Buffer, at: number): number | null {
  const value = bytes.readBigUInt64BE(at);
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : null;
}

/** Parses a 512-byte footer; returns what is wrong with it as a string when it is not a valid footer. */
function parseFooter(bytes: Buffer): VhdFooter | string {
  if (bytes.toString('latin1', 0, 8) !== FOOTER_COOKIE) return 'no VHD footer ("conectix")';
  const stored = bytes.readUInt32BE(64);
  const computed = vhdChecksum(bytes, 64);
  if (stored !== computed) return `footer checksum mismatch (stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)})`;
  const version = bytes.readUInt32BE(12);
  if (version >>> 16 !== 1) return `footer file format version 0x${version.toString(16)} is not 1.x`;
  const typeCode = bytes.readUInt32BE(60);
  const diskType = (Object.keys(diskTypes) as VhdSubformat[]).find((name) => diskTypes[name] === typeCode);
  if (!diskType) return `disk type ${typeCode} is not fixed (2), dynamic (3) or differencing (4)`;
  const currentSize = readSafeUInt64(bytes, 48);
  if (currentSize === null || currentSize % SECTOR !== 0) return `virtual size ${bytes.readBigUInt64BE(48)} is not a plausible number of 512-byte sectors`;
  const dataOffset = bytes.readBigUInt64BE(16) === 0xffffffffffffffffn ? null : readSafeUInt64(bytes, 16);
  return { diskType, dataOffset, currentSize, uniqueId: Buffer.from(bytes.subarray(68, 84)) };
}

/** Parses a 1024-byte dynamic disk header; returns what is wrong as a string when it is not valid. */
function parseDynamicHeader(bytes: Buffer): DynamicHeader | string {
  if (bytes.toString('latin1', 0, 8) !== DYNAMIC_HEADER_COOKIE) return 'no dynamic disk header ("cxsparse") where the footer says';
  const stored = bytes.readUInt32BE(36);
  const computed = vhdChecksum(bytes, 36);
  if (stored !== computed) return `dynamic disk header checksum mismatch (stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)})`;
  const version = bytes.readUInt32BE(24);
  if (version !== DYNAMIC_HEADER_VERSION) return `dynamic disk header version 0x${version.toString(16)} is not 1.0`;
  const tableOffset = readSafeUInt64(bytes, 16);
  if (tableOffset === null) return 'BAT offset is past any file';
  const blockSize = bytes.readUInt32BE(32);
  // Power of two from a sector to 256 MiB: Hyper-V uses 512 KiB or 2 MiB; a larger block's bitmap grows.
  if (blockSize < SECTOR || blockSize > 256 * MiB || (blockSize & (blockSize - 1)) !== 0) return `block size ${blockSize} is not a power of two from 512 bytes to 256 MiB`;
  const parentLocators: ParentLocator[] = [];
  for (let entry = 0; entry < 8; entry++) {
    const at = 576 + entry * 24;
    if (bytes.readUInt32BE(at) === 0) continue;
    const dataOffset = readSafeUInt64(bytes, at + 16);
    if (dataOffset === null) return `parent locator ${entry} points past any file`;
    parentLocators.push({ platformCode: bytes.toString('latin1', at, at + 4), dataLength: bytes.readUInt32BE(at + 8), dataOffset });
  }
  return {
    tableOffset,
    maxTableEntries: bytes.readUInt32BE(28),
    blockSize,
    parentUniqueId: Buffer.from(bytes.subarray(40, 56)),
    parentName: utf16BigEndian(bytes.subarray(64, 576)),
    parentLocators,
  };
}

function utf16BigEndian(bytes: Buffer): string {
  const swapped = Buffer.from(bytes.subarray(0, bytes.length & ~1)).swap16();
  return swapped.toString('utf16le').replace(/\0[\s\S]*$/, '');
}

/** Reads exactly `length` bytes at `position` of the file; corrupt-data if the file ends first. */
function readExactly(handle: fs.FileHandle, imagePath: string, target: Buffer, targetOffset: number, length: number, position: number): Promise<void> {
  return readFileExactly(handle, imagePath, target, targetOffset, length, position, (endsAt) => `the file ends at ${endsAt}, inside ${length} bytes expected at ${position}`);
}

/** An open VHD of any type; a differencing disk holds its parent open. */
class VhdReader implements DiskImageReader {
  readonly format = 'vhd' as const;
  private readonly bitmapCache = new Map<number, Buffer>();
  /** A fixed disk's file data ranges (file-data-map.ts), asked for once, when first mapped. */
  private fileData: Promise<DataRange[] | null> | null = null;
  private closed = false;

  constructor(
    readonly path: string,
    private readonly handle: fs.FileHandle,
    readonly subformat: VhdSubformat,
    readonly size: number,
    /** Dynamic and differencing disks: the block size, the BAT (block index to sector), the bitmap's size on disk. */
    private readonly blocks: { blockSize: number; table: Uint32Array; bitmapBytes: number } | null,
    private readonly parent: VhdReader | null,
    /** The footer's unique id: what a child names its parent by. */
    readonly uniqueId: Buffer,
  ) {}

  async read(buffer: Buffer, length: number, offset: number): Promise<void> {
    checkReadRange(this.path, this.size, buffer, length, offset);
    await this.readInto(buffer, 0, length, offset);
  }

  extents(): AsyncIterable<DiskExtent> {
    return mergeExtents(this.mapRange(0, this.size));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.handle.close();
    } finally {
      await this.parent?.close();
    }
  }

  /** Fills target[at, at + length) with the disk's bytes at [offset, offset + length), a range within the disk. */
  private async readInto(target: Buffer, at: number, length: number, offset: number): Promise<void> {
    if (!this.blocks) return readExactly(this.handle, this.path, target, at, length, offset);
    const { blockSize, table, bitmapBytes } = this.blocks;
    for (let done = 0; done < length; ) {
      const position = offset + done;
      const blockIndex = Math.floor(position / blockSize);
      const within = position - blockIndex * blockSize;
      const take = Math.min(length - done, blockSize - within);
      const sector = table[blockIndex]!;
      if (sector === UNALLOCATED) await this.readUnstored(target, at + done, take, position);
      else {
        const bitmap = await this.bitmap(blockIndex);
        for (const run of bitmapRuns(bitmap, within, within + take)) {
          const runAt = at + done + (run.start - within);
          if (run.stored) await readExactly(this.handle, this.path, target, runAt, run.end - run.start, sector * SECTOR + bitmapBytes + run.start);
          else await this.readUnstored(target, runAt, run.end - run.start, blockIndex * blockSize + run.start);
        }
      }
      done += take;
    }
  }

  /** What a range this disk does not store reads as: zeros, or for a differencing disk its parent's bytes (zeros past its end). */
  private async readUnstored(target: Buffer, at: number, length: number, offset: number): Promise<void> {
    const fromParent = this.parent ? Math.max(0, Math.min(length, this.parent.size - offset)) : 0;
    if (fromParent > 0) await this.parent!.readInto(target, at, fromParent, offset);
    target.fill(0, at + fromParent, at + length);
  }

  /** The extents of [start, end), not merged. */
  private async *mapRange(start: number, end: number): AsyncGenerator<DiskExtent> {
    if (!this.blocks) {
      // A fixed disk is a raw disk with a footer: zeros are the file's holes and what reading finds, as for raw.
      this.fileData ??= fileDataRanges(this.path, this.size);
      const fileData = await this.fileData;
      yield* scanZeroExtents({ size: this.size, read: (buffer, length, offset) => this.readInto(buffer, 0, length, offset) }, start, end, fileData);
      return;
    }
    const { blockSize, table } = this.blocks;
    for (let position = start; position < end; ) {
      const blockIndex = Math.floor(position / blockSize);
      const blockStart = blockIndex * blockSize;
      const blockEnd = Math.min(end, blockStart + blockSize);
      if (table[blockIndex] === UNALLOCATED) yield* this.mapUnstored(position, blockEnd);
      else {
        for (const run of bitmapRuns(await this.bitmap(blockIndex), position - blockStart, blockEnd - blockStart)) {
          if (run.stored) yield { offset: blockStart + run.start, length: run.end - run.start, kind: 'data' };
          else yield* this.mapUnstored(blockStart + run.start, blockStart + run.end);
        }
      }
      position = blockEnd;
    }
  }

  private async *mapUnstored(start: number, end: number): AsyncGenerator<DiskExtent> {
    const parentEnd = this.parent ? Math.max(start, Math.min(end, this.parent.size)) : start;
    if (parentEnd > start) yield* this.parent!.mapRange(start, parentEnd);
    if (end > parentEnd) yield { offset: parentEnd, length: end - parentEnd, kind: 'zero' };
  }

  /** The sector bitmap of an allocated block, from a small cache. */
  private async bitmap(blockIndex: number): Promise<Buffer> {
    const cached = this.bitmapCache.get(blockIndex);
    if (cached) return cached;
    const { blockSize, table } = this.blocks!;
    const bitmap = Buffer.alloc(Math.ceil(blockSize / SECTOR / 8));
    await readExactly(this.handle, this.path, bitmap, 0, bitmap.length, table[blockIndex]! * SECTOR);
    if (this.bitmapCache.size >= BITMAP_CACHE_ENTRIES) this.bitmapCache.delete(this.bitmapCache.keys().next().value!);
    this.bitmapCache.set(blockIndex, bitmap);
    return bitmap;
  }
}

/**
 * Splits [start, end) (byte offsets within a block) into runs of sectors whose bit in `bitmap` agrees:
 * `stored` when the bit is set (most significant bit first, as the specification says).
 */
function* bitmapRuns(bitmap: Buffer, start: number, end: number): Generator<{ start: number; end: number; stored: boolean }> {
  const isStored = (sector: number) => (bitmap[sector >> 3]! & (0x80 >> (sector & 7))) !== 0;
  let runStart = start;
  let stored = isStored(Math.floor(start / SECTOR));
  for (let sector = Math.floor(start / SECTOR) + 1; sector * SECTOR < end; sector++) {
    // Whole bytes of one kind are skipped at once: bitmaps of written blocks are mostly all ones.
    if ((sector & 7) === 0 && bitmap[sector >> 3] === (stored ? 0xff : 0) && (sector + 8) * SECTOR <= end) {
      sector += 7;
      continue;
    }
    if (isStored(sector) !== stored) {
      yield { start: runStart, end: sector * SECTOR, stored };
      runStart = sector * SECTOR;
      stored = !stored;
    }
  }
  yield { start: runStart, end, stored };
}

/** Merges adjacent extents of one kind. */
async function* mergeExtents(extents: AsyncIterable<DiskExtent>): AsyncGenerator<DiskExtent> {
  const merger = new ExtentMerger();
  for await (const extent of extents) yield* merger.add(extent.offset, extent.length, extent.kind);
  yield* merger.finish();
}

/**
 * Opens a VHD (fixed, dynamic or differencing) for reading. Contract:
 * - the footer (at the end; for a dynamic or differencing disk whose end footer is damaged or missing,
 *   its copy at offset 0) and the dynamic disk header must carry the right cookie and checksum;
 * - every BAT entry must point at a block (bitmap and the data the disk's size needs) inside the file and
 *   outside the footers, the dynamic header, the BAT and the parent locators;
 * - a differencing disk's parent is found through its parent locators (W2ru relative path, then W2ku
 *   absolute path, then MacX, then the header's parent name; relative paths resolve against the child's
 *   directory, and a Windows drive path is tried as its file name beside the child), opened with this
 *   opener, and must carry the unique id the child names; a loop in the chain is refused.
 * Errors: FerryError 'corrupt-data' naming the file and the problem for a malformed or hostile image (no
 * table sized by a claimed disk size is allocated before it is checked against the file's size);
 * 'disk-unreadable' when the file, or a differencing disk's parent, cannot be opened (the message names
 * every parent path tried).
 */
export async function openVhd(imagePath: string): Promise<DiskImageReader> {
  return openVhdInChain(imagePath, []);
}

/** Opens `imagePath`, a member of a differencing chain whose children (real paths) are `children`. */
async function openVhdInChain(imagePath: string, children: readonly string[]): Promise<VhdReader> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(imagePath, 'r');
  } catch (error) {
    throw unreadable(imagePath, `cannot be opened (${ioErrorReason(error)})`, error);
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw unreadable(imagePath, 'is not a regular file');
    return await readStructure(imagePath, handle, stat.size, children);
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw error;
  }
}

/** Reads and checks an open image's footer, header and BAT, opens its parent: the reader. */
async function readStructure(imagePath: string, handle: fs.FileHandle, fileSize: number, children: readonly string[]): Promise<VhdReader> {
  if (fileSize < FOOTER_SIZE) throw corrupt(imagePath, `the file is ${fileSize} bytes, too short for a VHD footer`);
  const endFooterBytes = Buffer.alloc(FOOTER_SIZE);
  await readExactly(handle, imagePath, endFooterBytes, 0, FOOTER_SIZE, fileSize - FOOTER_SIZE);
  let footer = parseFooter(endFooterBytes);
  const endFooterValid = typeof footer !== 'string';
  if (typeof footer === 'string' && fileSize >= 2 * FOOTER_SIZE) {
    // The specification keeps a copy of the footer at offset 0 of dynamic disks for recovering from a damaged end footer.
    const copyBytes = Buffer.alloc(FOOTER_SIZE);
    await readExactly(handle, imagePath, copyBytes, 0, FOOTER_SIZE, 0);
    const copy = parseFooter(copyBytes);
    if (typeof copy !== 'string' && copy.diskType !== 'fixed') footer = copy;
  }
  if (typeof footer === 'string') throw corrupt(imagePath, `${footer} at the end of the file (offset ${fileSize - FOOTER_SIZE})`);
  // Where data may lie: up to the end footer, or the end of the file when that footer is gone.
  const dataLimit = endFooterValid ? fileSize - FOOTER_SIZE : fileSize;
  const size = footer.currentSize;

  if (footer.diskType === 'fixed') {
    if (size > dataLimit) throw corrupt(imagePath, `the footer claims a ${size}-byte disk but the file holds ${dataLimit} bytes of data`);
    return new VhdReader(imagePath, handle, 'fixed', size, null, null, footer.uniqueId);
  }

  const headerOffset = footer.dataOffset;
  if (headerOffset === null || headerOffset < FOOTER_SIZE || headerOffset + DYNAMIC_HEADER_SIZE > dataLimit) {
    throw corrupt(imagePath, `the footer points at a dynamic disk header at ${headerOffset ?? 'an invalid offset'}, outside the file's ${dataLimit} bytes of data`);
  }
  const headerBytes = Buffer.alloc(DYNAMIC_HEADER_SIZE);
  await readExactly(handle, imagePath, headerBytes, 0, DYNAMIC_HEADER_SIZE, headerOffset);
  const header = parseDynamicHeader(headerBytes);
  if (typeof header === 'string') throw corrupt(imagePath, `${header} (at ${headerOffset})`);

  const { blockSize } = header;
  const blockCount = Math.ceil(size / blockSize);
  if (header.maxTableEntries < blockCount) throw corrupt(imagePath, `the BAT has ${header.maxTableEntries} entries, too few for a ${size}-byte disk in ${blockSize}-byte blocks`);
  if (size > MAX_DYNAMIC_SIZE || blockCount > MAX_TABLE_ENTRIES) throw corrupt(imagePath, `a ${size}-byte dynamic disk in ${blockSize}-byte blocks is larger than VHD allows (2040 GiB)`);
  const tableEnd = header.tableOffset + blockCount * 4;
  const metadata: MetadataRange[] = [
    { start: 0, end: FOOTER_SIZE, what: 'the footer copy' },
    { start: headerOffset, end: headerOffset + DYNAMIC_HEADER_SIZE, what: 'the dynamic disk header' },
  ];
  if (header.tableOffset < FOOTER_SIZE || tableEnd > dataLimit) throw corrupt(imagePath, `the BAT (${blockCount * 4} bytes at ${header.tableOffset}) lies outside the file's ${dataLimit} bytes of data`);
  const headerClash = overlapping(metadata, header.tableOffset, tableEnd);
  if (headerClash) throw corrupt(imagePath, `the BAT at ${header.tableOffset} overlaps ${headerClash.what}`);
  metadata.push({ start: header.tableOffset, end: tableEnd, what: 'the BAT' });

  const subformat: VhdSubformat = footer.diskType;
  const locators = subformat === 'differencing' ? header.parentLocators : [];
  for (const [index, locator] of locators.entries()) {
    if (locator.dataLength === 0) continue;
    if (locator.dataLength > MAX_LOCATOR_BYTES || locator.dataOffset + locator.dataLength > dataLimit) {
      throw corrupt(imagePath, `parent locator ${index} (${locator.dataLength} bytes at ${locator.dataOffset}) lies outside the file's ${dataLimit} bytes of data`);
    }
    metadata.push({ start: locator.dataOffset, end: locator.dataOffset + locator.dataLength, what: `parent locator ${index}` });
  }

  const tableBytes = Buffer.alloc(blockCount * 4);
  await readExactly(handle, imagePath, tableBytes, 0, tableBytes.length, header.tableOffset);
  const bitmapBytes = Math.ceil(blockSize / SECTOR / 8 / SECTOR) * SECTOR;
  const table = new Uint32Array(blockCount);
  for (let blockIndex = 0; blockIndex < blockCount; blockIndex++) {
    const sector = tableBytes.readUInt32BE(blockIndex * 4);
    table[blockIndex] = sector;
    if (sector === UNALLOCATED) continue;
    const start = sector * SECTOR;
    // Only the part of the last block the disk covers need be in the file.
    const end = start + bitmapBytes + Math.min(blockSize, size - blockIndex * blockSize);
    if (end > dataLimit) throw corrupt(imagePath, `BAT entry ${blockIndex} points past the end of the file (block at ${start}, ${end - start} bytes, ${dataLimit} bytes of data)`);
    const clash = overlapping(metadata, start, end);
    if (clash) throw corrupt(imagePath, `BAT entry ${blockIndex} points into ${clash.what} (block at ${start})`);
  }

  const parent = subformat === 'differencing' ? await openParent(imagePath, handle, header, locators, children) : null;
  if (parent && !parent.uniqueId.equals(header.parentUniqueId)) {
    await parent.close();
    throw corrupt(imagePath, `its parent ${parent.path} has unique id ${parent.uniqueId.toString('hex')}, not ${header.parentUniqueId.toString('hex')} as the child records: not its parent, or the parent changed`);
  }
  return new VhdReader(imagePath, handle, subformat, size, { blockSize, table, bitmapBytes }, parent, footer.uniqueId);
}

function overlapping(ranges: readonly MetadataRange[], start: number, end: number): MetadataRange | undefined {
  return ranges.find((range) => start < range.end && range.start < end);
}

/** Finds, checks for loops and opens a differencing disk's parent. */
async function openParent(imagePath: string, handle: fs.FileHandle, header: DynamicHeader, locators: readonly ParentLocator[], children: readonly string[]): Promise<VhdReader> {
  const self = await fs.realpath(imagePath);
  const chain = [...children, self];
  if (chain.length > MAX_CHAIN_DEPTH) throw corrupt(imagePath, `the differencing chain is deeper than ${MAX_CHAIN_DEPTH} images`);
  const candidates = await parentCandidates(imagePath, handle, header, locators);
  if (candidates.length === 0) throw corrupt(imagePath, 'a differencing disk without any parent locator or parent name');
  for (const candidate of candidates) {
    const real = await fs.realpath(candidate.path).catch(() => null);
    if (real === null) continue;
    if (chain.includes(real)) throw corrupt(imagePath, `the differencing chain loops: ${[...chain, real].join(' -> ')}`);
    return openVhdInChain(candidate.path, chain);
  }
  throw unreadable(imagePath, `its parent disk cannot be found (tried ${candidates.map((candidate) => `${candidate.path} from ${candidate.source}`).join(', ')})`, undefined, {
    parentPaths: candidates.map((candidate) => candidate.path),
  });
}

/** Where the parent may be, in order of preference, each with where the path came from. */
async function parentCandidates(imagePath: string, handle: fs.FileHandle, header: DynamicHeader, locators: readonly ParentLocator[]): Promise<{ path: string; source: string }[]> {
  const directory = path.dirname(imagePath);
  const found: { path: string; source: string }[] = [];
  const add = (candidate: string, source: string) => {
    if (candidate && !found.some((each) => each.path === candidate)) found.push({ path: candidate, source });
  };
  const fromWindowsPath = (windowsPath: string, source: string) => {
    const slashed = windowsPath.replace(/\\/g, '/');
    if (/^[A-Za-z]:\//.test(slashed) || slashed.startsWith('//')) add(path.join(directory, path.posix.basename(slashed)), `${source} (file name of ${windowsPath})`);
    else add(path.resolve(directory, slashed), source);
  };
  const read = async (locator: ParentLocator) => {
    const bytes = Buffer.alloc(locator.dataLength);
    await readExactly(handle, imagePath, bytes, 0, bytes.length, locator.dataOffset);
    return bytes;
  };
  const byCode = (code: string) => locators.filter((locator) => locator.platformCode === code && locator.dataLength > 0);
  for (const locator of byCode('W2ru')) fromWindowsPath((await read(locator)).toString('utf16le').replace(/\0[\s\S]*$/, ''), 'the W2ru locator');
  for (const locator of byCode('W2ku')) fromWindowsPath((await read(locator)).toString('utf16le').replace(/\0[\s\S]*$/, ''), 'the W2ku locator');
  for (const locator of byCode('MacX')) {
    const url = (await read(locator)).toString('utf8').replace(/\0[\s\S]*$/, '');
    const filePath = url.replace(/^file:\/\/(localhost)?/, '');
    try {
      add(path.resolve(directory, decodeURI(filePath)), 'the MacX locator');
    } catch {
      // A malformed URL is one locator fewer.
    }
  }
  if (header.parentName) fromWindowsPath(header.parentName, 'the parent name');
  return found;
}

/** Whether `head` (the start of a file of `fileSize` bytes) is a VHD. */
export function sniffVhd(head: Buffer, fileSize: number): boolean {
  // A dynamic or differencing disk starts with its footer's copy. A fixed disk's footer is only at the end,
  // which the head holds only for a file no longer than it: larger fixed disks sniff as raw.
  if (head.length >= FOOTER_SIZE && head.toString('latin1', 0, 8) === FOOTER_COOKIE) return true;
  return head.length === fileSize && fileSize >= FOOTER_SIZE && typeof parseFooter(head.subarray(fileSize - FOOTER_SIZE)) !== 'string';
}

/** The CHS geometry for `totalSectors`, by the specification's appendix. */
function chsGeometry(totalSectors: number): { cylinders: number; heads: number; sectorsPerTrack: number } {
  const sectors = Math.min(totalSectors, MAX_GEOMETRY_SECTORS);
  let sectorsPerTrack: number;
  let heads: number;
  let cylinderTimesHeads: number;
  if (sectors >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylinderTimesHeads = Math.floor(sectors / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylinderTimesHeads = Math.floor(sectors / sectorsPerTrack);
    heads = Math.max(4, Math.floor((cylinderTimesHeads + 1023) / 1024));
    if (cylinderTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylinderTimesHeads = Math.floor(sectors / sectorsPerTrack);
    }
    if (cylinderTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylinderTimesHeads = Math.floor(sectors / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylinderTimesHeads / heads), heads, sectorsPerTrack };
}

/**
 * A footer for a disk of `size` bytes. The creator is written as 'win ' (Hyper-V), the value for which
 * Hyper-V, Azure and qemu all take the current size, rather than the CHS geometry, as the disk's size.
 */
function buildFooter(diskType: 'fixed' | 'dynamic', size: number, dataOffset: number | null, uniqueId: Buffer): Buffer {
  const footer = Buffer.alloc(FOOTER_SIZE);
  footer.write(FOOTER_COOKIE, 0, 'latin1');
  footer.writeUInt32BE(2, 8); // features: the reserved bit, always set
  footer.writeUInt32BE(FILE_FORMAT_VERSION, 12);
  footer.writeBigUInt64BE(dataOffset === null ? 0xffffffffffffffffn : BigInt(dataOffset), 16);
  footer.writeUInt32BE(Math.max(0, Math.floor((Date.now() - VHD_EPOCH_MS) / 1000)) >>> 0, 24);
  footer.write('win ', 28, 'latin1');
  footer.writeUInt32BE(0x000a0000, 32); // creator version 10.0
  footer.write('Wi2k', 36, 'latin1');
  footer.writeBigUInt64BE(BigInt(size), 40); // original size
  footer.writeBigUInt64BE(BigInt(size), 48); // current size
  const geometry = chsGeometry(size / SECTOR);
  footer.writeUInt16BE(geometry.cylinders, 56);
  footer.writeUInt8(geometry.heads, 58);
  footer.writeUInt8(geometry.sectorsPerTrack, 59);
  footer.writeUInt32BE(diskTypes[diskType], 60);
  uniqueId.copy(footer, 68);
  footer.writeUInt32BE(vhdChecksum(footer, 64), 64);
  return footer;
}

function buildDynamicHeader(tableOffset: number, maxTableEntries: number, blockSize: number): Buffer {
  const header = Buffer.alloc(DYNAMIC_HEADER_SIZE);
  header.write(DYNAMIC_HEADER_COOKIE, 0, 'latin1');
  header.writeBigUInt64BE(0xffffffffffffffffn, 8);
  header.writeBigUInt64BE(BigInt(tableOffset), 16);
  header.writeUInt32BE(DYNAMIC_HEADER_VERSION, 24);
  header.writeUInt32BE(maxTableEntries, 28);
  header.writeUInt32BE(blockSize, 32);
  header.writeUInt32BE(vhdChecksum(header, 36), 36);
  return header;
}

const roundUp = (value: number, unit: number) => Math.ceil(value / unit) * unit;

/**
 * Writes `input` as a VHD at `imagePath` (atomically: temporary file, fsync, rename, fsync directory).
 * Subformats:
 * - 'dynamic' (default): 2 MiB blocks; a block holding only zeros is not allocated; each written block
 *   has an all-ones sector bitmap; the virtual size is `input.size` rounded up to a sector; at most
 *   2040 GiB ('invalid-request' beyond). Layout: footer copy, header, BAT, blocks (data 4 KiB-aligned), footer.
 * - 'fixed' (Azure-ready): the virtual size is `input.size` rounded up to a whole MiB, and the footer's
 *   current size is exactly that; the data, then the footer. Zero runs are left as holes in the file,
 *   which is still a valid fixed VHD (holes read as zeros) and smaller on disk.
 * Another subformat is refused with 'invalid-request'. Honours `signal` (checked between pieces) and
 * reports progress; resolves with the image file's size.
 */
export async function writeVhd(imagePath: string, input: DiskImageInput, options: DiskImageWriteOptions = {}): Promise<number> {
  const subformat = options.subformat ?? 'dynamic';
  if (subformat === 'fixed') return writeImageFileAtomically(imagePath, options.signal, (handle, writer) => writeFixed(handle, writer, imagePath, input, options));
  if (subformat === 'dynamic') {
    if (input.size > MAX_DYNAMIC_SIZE) throw new FerryError('invalid-request', `a dynamic VHD holds at most 2040 GiB, not ${input.size} bytes (write 'fixed' instead)`);
    return writeImageFileAtomically(imagePath, options.signal, (_handle, writer) => writeDynamic(writer, imagePath, input, options));
  }
  throw new FerryError('invalid-request', `VHD images are written as dynamic or fixed, not '${subformat}'`);
}

async function writeFixed(handle: fs.FileHandle, writer: ImageFileWriter, imagePath: string, input: DiskImageInput, options: DiskImageWriteOptions): Promise<void> {
  for await (const piece of checkedPieces(imagePath, input, options)) await writer.writeNonZero(piece.offset, piece.data);
  const size = roundUp(input.size, MiB);
  await writer.flush();
  await handle.truncate(size);
  await writer.write(size, buildFooter('fixed', size, null, randomBytes(16)));
}

async function writeDynamic(writer: ImageFileWriter, imagePath: string, input: DiskImageInput, options: DiskImageWriteOptions): Promise<void> {
  const blockSize = DEFAULT_BLOCK_SIZE;
  const size = roundUp(input.size, SECTOR);
  const blockCount = Math.ceil(size / blockSize);
  const tableOffset = FOOTER_SIZE + DYNAMIC_HEADER_SIZE;
  const table = Buffer.alloc(roundUp(blockCount * 4, SECTOR), 0xff);
  const bitmap = Buffer.alloc(roundUp(blockSize / SECTOR / 8, SECTOR), 0xff);
  // The first bitmap sits just before a 4 KiB boundary, so every block's data is 4 KiB-aligned.
  let nextBlockAt = roundUp(tableOffset + table.length + bitmap.length, 4096) - bitmap.length;
  // Blocks holding only zeros are not allocated; the others follow one another, so their writes coalesce.
  for await (const block of wholeBlocks(checkedPieces(imagePath, input, options), blockSize)) {
    await writer.write(nextBlockAt, bitmap);
    await writer.write(nextBlockAt + bitmap.length, block.data);
    table.writeUInt32BE(nextBlockAt / SECTOR, block.index * 4);
    nextBlockAt += bitmap.length + blockSize;
  }
  const footer = buildFooter('dynamic', size, FOOTER_SIZE, randomBytes(16));
  await writer.write(0, Buffer.concat([footer, buildDynamicHeader(tableOffset, blockCount, blockSize), table]));
  await writer.write(nextBlockAt, footer);
}

/** The VHD writer: subformats 'dynamic' (the default) and 'fixed' (see `writeVhd`). */
export const vhdWriter: DiskImageWriter = { format: 'vhd', subformats: ['dynamic', 'fixed'], write: writeVhd };

/** The VHD format: sniffed by `sniffVhd`, opened by `openVhd`, written by `writeVhd`. */
export const vhdImageFormat: DiskImageFormatModule = { format: 'vhd', sniff: sniffVhd, open: openVhd, writer: vhdWriter };
