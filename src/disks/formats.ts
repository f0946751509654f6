/**
 * The registry of disk image formats: opens an image by sniffing what it is (or as the format named),
 * finds the writer of a format, and parses the "format:subformat" names operators give (`vhd:fixed`).
 * Each format lives in its own module (raw-image.ts, vhd.ts, vhdx.ts, vmdk.ts, qcow2.ts), all behind the
 * interface in disk-image.ts.
 */
import { promises as fs } from 'node:fs';
import { FerryError } from '../errors.js';
import { diskUnreadable } from './disk-source.js';
import type { DiskFormat, DiskImageFormatModule, DiskImageReader, DiskImageWriter } from './disk-image.js';
import { qcow2ImageFormat } from './qcow2.js';
import { rawImageFormat } from './raw-image.js';
import { vhdImageFormat } from './vhd.js';
import { vhdxImageFormat } from './vhdx.js';
import { vmdkImageFormat } from './vmdk.js';

/** Every format, in the order they are sniffed: raw last, as what is left when nothing else matches. */
const modules: readonly DiskImageFormatModule[] = [qcow2ImageFormat, vhdxImageFormat, vmdkImageFormat, vhdImageFormat, rawImageFormat];

/** Bytes read from the start of a file to recognise its format. */
const SNIFF_BYTES = 64 * 1024;
/** A VHD's footer: its last 512 bytes, starting with the cookie "conectix". */
const VHD_FOOTER_BYTES = 512;

/** A format and, if given, its subformat: what "vhd:fixed" names. */
export interface FormatSpec {
  format: DiskFormat;
  subformat: string | undefined;
}

/** The module of `format`. */
export function formatModule(format: DiskFormat): DiskImageFormatModule {
  const found = modules.find((module) => module.format === format);
  if (!found) throw new FerryError('invalid-request', `unknown disk format '${format}'`);
  return found;
}

/** Parses "vhd" or "vhd:fixed"; invalid-request for an unknown format. */
export function parseFormatSpec(spec: string): FormatSpec {
  const [format, subformat] = spec.split(':', 2) as [string, string | undefined];
  if (!modules.some((module) => module.format === format)) {
    throw new FerryError('invalid-request', `unknown disk format '${format}' (known: ${modules.map((module) => module.format).join(', ')})`);
  }
  return { format: format as DiskFormat, subformat };
}

/** The writer for a "format[:subformat]" name; invalid-request when the format or subformat cannot be written. */
export function writerFor(spec: string): { writer: DiskImageWriter; subformat: string } {
  const { format, subformat } = parseFormatSpec(spec);
  const writer = formatModule(format).writer;
  if (!writer) throw new FerryError('invalid-request', `Ferry reads ${format} images but does not write them`);
  const chosen = subformat ?? writer.subformats[0]!;
  if (!writer.subformats.includes(chosen)) {
    throw new FerryError('invalid-request', `${format} images are written as ${writer.subformats.join(' or ')}, not '${chosen}'`);
  }
  return { writer, subformat: chosen };
}

/** Checks a "format[:subformat]" name can be written (for a site's setting); throws invalid-request if not. */
export function checkWritableFormat(spec: string): void {
  writerFor(spec);
}

/** The file name extension images of `format` usually have. */
export function fileExtension(format: DiskFormat): string {
  return format === 'raw' ? 'raw' : format;
}

/** Which format the file at `path` is, by its first bytes (raw when nothing else matches). */
export async function sniffDiskFormat(path: string): Promise<DiskFormat> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(path, 'r');
  } catch (error) {
    throw diskUnreadable(path, error);
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) return 'raw'; // a block device holds a raw disk
    const head = Buffer.alloc(Math.min(SNIFF_BYTES, stat.size));
    await handle.read(head, 0, head.length, 0);
    const sniffed = modules.find((module) => module.sniff(head, stat.size))?.format;
    if (sniffed) return sniffed;
    // A fixed VHD is a raw disk with a 512-byte footer at the end and nothing at the start: look there too.
    if (stat.size >= VHD_FOOTER_BYTES) {
      const tail = Buffer.alloc(VHD_FOOTER_BYTES);
      await handle.read(tail, 0, VHD_FOOTER_BYTES, stat.size - VHD_FOOTER_BYTES);
      if (tail.subarray(0, 8).toString('latin1') === 'conectix') return 'vhd';
    }
    return 'raw';
  } finally {
    await handle.close();
  }
}

/**
 * Opens a disk image for reading: as `format` when given, else as what its first bytes say. A raw file
 * or a block device opens as raw. Errors as the format's opener ('disk-unreadable', 'corrupt-data').
 */
export async function openDiskImage(path: string, format?: DiskFormat): Promise<DiskImageReader> {
  return formatModule(format ?? (await sniffDiskFormat(path))).open(path);
}

/**
 * True when everything an open image reads is in its own file: raw, VHDX, VHD fixed or dynamic, VMDK
 * monolithicSparse or streamOptimized, qcow2. False for images that read other files too (a VMDK
 * descriptor with its extents, a differencing VHD and its parents): for those, neither a clone of the
 * file nor its change time describes the disk. A qcow2 overlay's backing file is taken as immutable, as
 * qemu treats it.
 */
export function spansOneFile(reader: DiskImageReader): boolean {
  if (reader.format === 'vmdk') return reader.subformat === 'monolithicSparse' || reader.subformat === 'streamOptimized';
  if (reader.format === 'vhd') return reader.subformat !== 'differencing';
  return true;
}

/** What the disk at `path` is: its format, subformat, virtual size, and whether it is one file (see `spansOneFile`). */
export async function probeDiskImage(path: string): Promise<{ format: DiskFormat; subformat: string; size: number; oneFile: boolean }> {
  const reader = await openDiskImage(path);
  try {
    return { format: reader.format, subformat: reader.subformat, size: reader.size, oneFile: spansOneFile(reader) };
  } finally {
    await reader.close();
  }
}
