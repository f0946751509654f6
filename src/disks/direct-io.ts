/**
 * Disk bytes read and written around the page cache (O_DIRECT), for one pass over a whole disk: what
 * `ferry image convert`, every image writer, the restore of a point to a raw disk and the agent's
 * replication cycles do with their bulk data.
 *
 * Why: such a pass touches each byte once; through the page cache the kernel first allocates, zeroes
 * or fills, and later writes back a page for every 4 KiB, which on a loaded or virtualised host costs
 * more CPU, and varies more, than the copy itself (measured: 1.5 GB written and fsynced in 2 s, 2 s of
 * system time, against 0.75 s and 0.1 s with O_DIRECT; a cold 2 GiB read, 1 s of system time against
 * 0.1 s), and it evicts what the page cache held. Reading direct, the device writes data straight into
 * the caller's buffer, and the kernel zero-fills it for a hole (a sparse file's holes that file-data-map.ts
 * could not map are read like data).
 *
 * O_DIRECT wants the buffer's address, the file offset and the length aligned (to the device's logical
 * block size): buffers come from `alignedBuffer` or `alignedSharedBuffer` (WebAssembly memory, which is
 * page-aligned), and only reads and writes at offsets that are multiples of `DIRECT_ALIGNMENT`, from
 * such memory, go direct (a read's length is rounded up to a multiple: the file's end gives a short
 * read; a write's whole blocks go direct and an unaligned tail the ordinary way). Everything else, and
 * everything on a file system that refuses O_DIRECT (at open, or with EINVAL later), goes through an
 * ordinary handle to the same file: the same bytes, only slower. Durability is unchanged: an fsync of
 * the file covers what was written either way.
 */
import { constants, promises as fs } from 'node:fs';
import { FerryError } from '../errors.js';
import { writeAllAt } from '../util/durable-fs.js';
import { type DiskSource, diskUnreadable, openRawDisk } from './disk-source.js';

/** Offsets given to `DirectReader.read` must be multiples of this; lengths are rounded up to one. */
export const DIRECT_ALIGNMENT = 4096;

const WASM_PAGE = 64 * 1024;

/** The one WebAssembly API used here (the project's TypeScript libraries do not declare WebAssembly). */
declare const WebAssembly: {
  Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => { readonly buffer: ArrayBuffer | SharedArrayBuffer };
};

/**
 * A buffer of `bytes` bytes (a multiple of DIRECT_ALIGNMENT), page-aligned, over a WebAssembly memory of
 * its own (never grown, so the buffer stays valid; freed with it). Its contents start as zeros, and every
 * page is resident from the start, so make buffers when they are needed, not ahead: faulting pages in is
 * not free either. When the memory cannot be had (address space for WebAssembly is limited), an
 * ordinary buffer: direct I/O with it falls back to ordinary I/O.
 *
 * Why resident at once: the kernel turns a direct transfer into one device request per `max_segments`
 * (sysfs, 254 on a virtio disk) runs of physically contiguous pages. Pages faulted in one pass right
 * after the mapping is made mostly come from the same free block, one after another, so a request
 * carries megabytes; pages faulted one by one later, while the I/O threads and the garbage collector
 * allocate too, are scattered, and an 8 MiB write became about 16 requests of 4 KiB pages each.
 * Measured on a virtual disk (2026-12-07, a 1.4 GB raw-to-raw conversion): 2600 write requests became
 * 390, and the conversion took 2.1-2.5 s instead of 2.9 s. Such a buffer is written whole soon anyway;
 * what changes is when its page faults are paid: all at once, here. On a virtual machine a fault can
 * cost 10 µs (measured here: 8 MiB took 23 ms), so callers make their buffers one at a time as they
 * need them, while earlier transfers run, not a batch before the first.
 */
export function alignedBuffer(bytes: number): Buffer {
  if (bytes % DIRECT_ALIGNMENT !== 0) throw new FerryError('internal', `aligned buffers must be a multiple of ${DIRECT_ALIGNMENT} bytes, not ${bytes}`);
  const memory = webAssemblyMemory(bytes, false);
  if (!memory) return Buffer.alloc(bytes);
  new Uint8Array(memory).fill(0); // faults every page in now, in one pass (see above); the contents stay zeros
  return Buffer.from(memory, 0, bytes);
}

/**
 * A Buffer of `bytes` bytes over page-aligned shared memory (a shared WebAssembly memory, whose buffer is
 * a SharedArrayBuffer): worker threads read and write it in place like any shared buffer, and O_DIRECT
 * reads can fill it. Contents start as zeros; the memory is the kernel's (mmap), returned when the last
 * view of it is collected, never held back by malloc. Where such memory cannot be had, an ordinary
 * SharedArrayBuffer (direct reads into it fall back to ordinary ones).
 *
 * Unlike `alignedBuffer`'s, its pages are faulted in as they are first used: the server keeps such
 * buffers for upload bodies, which often fill only part of one. With them made resident whole, the
 * bench server's peaks were higher in one run (2026-12-07: 299 MB in the cycles and 378 MB under churn,
 * against 250-265 and 332-350 MB without, one run each).
 */
export function alignedSharedBuffer(bytes: number): Buffer {
  return Buffer.from(webAssemblyMemory(bytes, true) ?? new SharedArrayBuffer(bytes), 0, bytes);
}

/** The memories `webAssemblyMemory` made: page-aligned, so views of them at aligned offsets can take direct I/O. */
const pageAlignedMemory = new WeakSet<ArrayBuffer | SharedArrayBuffer>();

/** Page-aligned, zeroed WebAssembly memory of at least `bytes` bytes (whole 64 KiB pages), or null where it cannot be had. */
function webAssemblyMemory(bytes: number, shared: boolean): ArrayBuffer | SharedArrayBuffer | null {
  const pages = Math.max(1, Math.ceil(bytes / WASM_PAGE));
  try {
    // A shared memory must declare its maximum; it is never grown, so views of it stay valid.
    const memory = new WebAssembly.Memory(shared ? { initial: pages, maximum: pages, shared } : { initial: pages }).buffer;
    pageAlignedMemory.add(memory);
    return memory;
  } catch {
    return null;
  }
}

/**
 * True when `view` starts on a DIRECT_ALIGNMENT boundary in memory: a view, at an aligned offset, of
 * memory from `alignedBuffer` or `alignedSharedBuffer`. Other memory may happen to be aligned, but its
 * address cannot be known here, and a direct transfer from unaligned memory fails (EINVAL).
 */
export function alignedInMemory(view: Uint8Array): boolean {
  return pageAlignedMemory.has(view.buffer) && view.byteOffset % DIRECT_ALIGNMENT === 0;
}

/**
 * Positional writes to an open file, around the page cache where they can be. `write(bytes, position)`
 * writes the whole DIRECT_ALIGNMENT blocks of `bytes` direct (O_DIRECT) when `position` is a multiple of
 * DIRECT_ALIGNMENT and `bytes` is memory from `alignedBuffer` or `alignedSharedBuffer` (or a view of it
 * at an aligned offset), and the rest (an unaligned tail, or all) through the ordinary `handle`; so does
 * every write once the kernel has refused a direct one (EINVAL: the file system wants another
 * alignment). Either way the bytes land at `position`, and an fsync of `handle` makes them durable (see
 * the header). The caller owns `handle`; `close()` closes only the O_DIRECT one. Errors other than that
 * EINVAL are the system's, as they are.
 */
export class DirectWriter {
  /** False once the kernel refused a direct write; the handle stays open until `close()` (other writes may be using it). */
  private directAllowed: boolean;

  private constructor(
    private readonly handle: fs.FileHandle,
    private direct: fs.FileHandle | null,
  ) {
    this.directAllowed = direct !== null;
  }

  /** Opens `filePath` (which exists, open as `handle`) a second time, for O_DIRECT writes where the file system allows them. */
  static async open(handle: fs.FileHandle, filePath: string): Promise<DirectWriter> {
    const direct = await fs.open(filePath, constants.O_WRONLY | constants.O_DIRECT).catch(() => null);
    return new DirectWriter(handle, direct);
  }

  /** True while writes can go direct: the file system allowed O_DIRECT, and has not refused a write yet. */
  get writesDirect(): boolean {
    return this.directAllowed;
  }

  /** Writes all of `bytes` at `position`: direct when aligned and allowed, else (and for what a direct write left) through the page cache. */
  async write(bytes: Uint8Array, position: number): Promise<void> {
    let rest = bytes;
    let at = position;
    // The whole 4 KiB blocks at the start go direct when they start aligned; an unaligned tail follows them the ordinary way.
    const directLength = at % DIRECT_ALIGNMENT === 0 && alignedInMemory(rest) ? rest.length - (rest.length % DIRECT_ALIGNMENT) : 0;
    if (this.direct && this.directAllowed && directLength > 0) {
      try {
        const { bytesWritten } = await this.direct.write(rest, 0, directLength, at);
        rest = rest.subarray(bytesWritten);
        at += bytesWritten;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
        this.directAllowed = false; // not for this file system: write as usual from now on
      }
    }
    if (rest.length > 0) await writeAllAt(this.handle, [rest], at);
  }

  /** Closes the O_DIRECT handle (the caller closes its own); call once no write is in flight. Closing twice is harmless. */
  async close(): Promise<void> {
    const direct = this.direct;
    this.direct = null;
    this.directAllowed = false;
    await direct?.close();
  }
}

/**
 * A file open for O_DIRECT reads (or ordinary ones, where refused). `read(buffer, length, position)`
 * fills buffer[0, length) with the file's bytes at `position`, zeros past the file's end. The read is
 * direct when `position` is a multiple of DIRECT_ALIGNMENT and `buffer` (from `alignedBuffer` or
 * `alignedSharedBuffer`) holds `length` rounded up to one; otherwise, or when the kernel refuses, it is an
 * ordinary read. Failures are FerryError 'disk-unreadable' naming the file.
 */
export class DirectReader {
  private direct: fs.FileHandle | null;

  private constructor(
    readonly path: string,
    private readonly buffered: fs.FileHandle,
    direct: fs.FileHandle | null,
  ) {
    this.direct = direct;
  }

  /** Opens `filePath` twice: with O_DIRECT (when the file system allows it) and without, for the fallback. */
  static async open(filePath: string): Promise<DirectReader> {
    let buffered: fs.FileHandle;
    try {
      buffered = await fs.open(filePath, 'r');
    } catch (error) {
      throw diskUnreadable(filePath, error);
    }
    const direct = await fs.open(filePath, constants.O_RDONLY | constants.O_DIRECT).catch(() => null);
    return new DirectReader(filePath, buffered, direct);
  }

  /** True while reads can go direct: the file system allowed O_DIRECT, and has not refused a read yet. */
  get readsDirect(): boolean {
    return this.direct !== null;
  }

  async read(buffer: Buffer, length: number, position: number): Promise<void> {
    let filled = 0;
    try {
      const room = Math.ceil(length / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT <= buffer.length;
      if (this.direct && position % DIRECT_ALIGNMENT === 0 && room && alignedInMemory(buffer)) filled = await this.readDirect(buffer, length, position);
      while (filled < length) {
        const { bytesRead } = await this.buffered.read(buffer, filled, length - filled, position + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
    } catch (error) {
      throw diskUnreadable(this.path, error);
    }
    buffer.fill(0, filled, length); // past the end of a file shorter than the disk: zeros
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.buffered.close(), this.direct?.close()]);
  }

  /** Reads what O_DIRECT gives; resolves with how many of the `length` bytes it filled (all but past the end). */
  private async readDirect(buffer: Buffer, length: number, position: number): Promise<number> {
    const aligned = Math.ceil(length / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
    let filled = 0;
    while (filled < aligned) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.direct!.read(buffer, filled, aligned - filled, position + filled));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
        // The file system wants another alignment, or no O_DIRECT at all: read as usual from here on.
        const direct = this.direct;
        this.direct = null;
        await direct?.close().catch(() => undefined);
        return Math.min(filled, length);
      }
      if (bytesRead === 0 || bytesRead % DIRECT_ALIGNMENT !== 0) return Math.min(filled + bytesRead, length); // the file's end
      filled += bytesRead;
    }
    return length;
  }
}

/**
 * Opens a raw disk (a regular file or a block device) for one pass over all of it, as `openRawDisk`
 * does (same size, same errors), but read with O_DIRECT through a `DirectReader`: what a replication
 * cycle reads is read once, so copying it through the page cache is pure cost (measured: a cold 2 GiB
 * read costs 1 s of system CPU buffered, 0.1 s direct). Reads into buffers from `alignedSharedBuffer`
 * at aligned offsets go direct; others are ordinary reads.
 */
export async function openDirectRawDisk(diskPath: string): Promise<DiskSource & { readonly readsDirect: boolean }> {
  const probe = await openRawDisk(diskPath);
  await probe.close();
  const reader = await DirectReader.open(diskPath);
  return {
    path: diskPath,
    size: probe.size,
    get readsDirect() {
      return reader.readsDirect;
    },
    read: (buffer, length, offset) => reader.read(buffer, length, offset),
    close: () => reader.close(),
  };
}
