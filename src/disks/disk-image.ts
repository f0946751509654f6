/**
 * VM disk image formats: the one interface every reader and writer implements (raw, VHD, VHDX, VMDK,
 * qcow2), and the registry that opens an image by its format or by sniffing its first bytes.
 *
 * Reading: a `DiskImageReader` is a `DiskSource` (so replication reads it like any disk) that also maps
 * where its data is: `extents` lists the virtual disk's ranges as `data` (stored in the image, which may
 * still hold zeros) or `zero` (unallocated: reads as zeros, need not be read at all). Every reader
 * passes the shared suite in test/unit/disk-image-reader-conformance.ts, checked against qemu-img.
 *
 * Writing: `DiskImageWriter.write` turns a stream of a virtual disk's data (ascending, non-overlapping
 * pieces; what is not given is zero) into an image file of its format. Writers pass the shared suite in
 * test/unit/disk-image-writer-conformance.ts (`qemu-img check` and `qemu-img compare` accept the result).
 *
 * Hostile input (truncated files, tables pointing past the end or at each other, loops in backing chains,
 * absurd sizes, bad checksums) is refused with FerryError 'corrupt-data' naming the file and the problem:
 * no crash, no hang, memory bounded by the format's metadata, never by a size an image claims.
 */
import type { DiskSource } from './disk-source.js';

/** The formats Ferry reads and writes. */
export const diskFormats = ['raw', 'vhd', 'vhdx', 'vmdk', 'qcow2'] as const;
export type DiskFormat = (typeof diskFormats)[number];

/** A range of the virtual disk: `data` is stored in the image, `zero` is unallocated and reads as zeros. */
export interface DiskExtent {
  offset: number;
  length: number;
  kind: 'data' | 'zero';
}

/**
 * An image opened for reading. Contract (besides DiskSource's: `size` is the virtual disk's size, `read`
 * fills `length` bytes at a virtual `offset`, zeros where nothing is allocated, and refuses a range past
 * `size` with 'invalid-request'):
 * - `format` and `subformat` say what was opened (e.g. 'vmdk' / 'streamOptimized', 'vhd' / 'dynamic');
 * - `extents()` yields ranges in ascending order, adjacent, covering exactly [0, size), with adjacent
 *   ranges of one kind merged; a `zero` range reads as zeros;
 * - `close()` closes every file the reader opened (extents, backing files); calling it twice is harmless.
 */
export interface DiskImageReader extends DiskSource {
  readonly format: DiskFormat;
  readonly subformat: string;
  extents(): AsyncIterable<DiskExtent>;
}

/** A virtual disk's content as a writer consumes it: pieces in ascending order; what no piece covers is zero. */
export interface DiskImageInput {
  /** The virtual disk's size in bytes. */
  size: number;
  /**
   * Ascending, non-overlapping pieces of data, each within [0, size). A piece may hold zeros. A piece's
   * buffer is the writer's to read until it asks for the next piece: the input may then reuse it (a
   * writer copies what it needs longer, e.g. grains being compressed).
   */
  pieces(): AsyncIterable<{ offset: number; data: Buffer }>;
}

/** Options every writer accepts; each format documents which others it reads. */
export interface DiskImageWriteOptions {
  /** Variant of the format, e.g. 'fixed' or 'dynamic' (vhd), 'streamOptimized' (vmdk). Default: the format's own. */
  subformat?: string;
  /** Called now and then with the virtual bytes consumed so far. */
  onProgress?: (doneBytes: number) => void;
  signal?: AbortSignal;
}

/**
 * Writes `input` as an image file at `path` (created, or replaced: the image appears complete, written
 * to a temporary name, fsynced, then renamed). Resolves with the image's size on disk in bytes.
 */
export interface DiskImageWriter {
  readonly format: DiskFormat;
  /** The subformats this writer can produce; the first is the default. */
  readonly subformats: readonly string[];
  write(path: string, input: DiskImageInput, options?: DiskImageWriteOptions): Promise<number>;
}

/** Opens an image of a known format for reading. */
export type DiskImageOpener = (path: string) => Promise<DiskImageReader>;

/** Sniffs whether `head` (the first bytes of a file, at least 4 KiB when the file is that long) is this format. */
export type DiskImageSniffer = (head: Buffer, fileSize: number) => boolean;

/**
 * What one format module exports (src/disks/<format>.ts), and formats.ts collects: its name, how to
 * recognise it, how to open it, and its writer (null for a format Ferry only reads).
 */
export interface DiskImageFormatModule {
  format: DiskFormat;
  sniff: DiskImageSniffer;
  open: DiskImageOpener;
  writer: DiskImageWriter | null;
}
