/**
 * Reading source disks. A `DiskSource` is one disk opened for reading: its size and positional reads.
 * Raw image files and block devices are read directly. VM image formats (VMDK, VHD/VHDX, qcow2) will
 * add implementations, and with them a shared reader conformance suite.
 *
 * Contract: `size` is fixed while open; `read` fills `length` bytes at `offset` (zeros past the end of
 * a file shorter than `size`); failures are FerryError 'disk-unreadable' naming the path.
 */
import { promises as fs } from 'node:fs';
import { FerryError } from '../errors.js';

export interface DiskSource {
  readonly path: string;
  readonly size: number;
  read(buffer: Buffer, length: number, offset: number): Promise<void>;
  close(): Promise<void>;
}

/** Opens a raw image file or a block device; throws disk-unreadable if it is missing or not readable. */
export async function openRawDisk(diskPath: string): Promise<DiskSource> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(diskPath, 'r');
  } catch (error) {
    throw diskUnreadable(diskPath, error);
  }
  try {
    const stat = await handle.stat();
    let size: number;
    if (stat.isBlockDevice()) size = await blockDeviceSize(stat.rdev);
    else if (stat.isFile()) size = stat.size;
    else throw new Error('not a regular file or block device');
    return new RawDiskSource(diskPath, handle, size);
  } catch (error) {
    await handle.close();
    throw diskUnreadable(diskPath, error);
  }
}

/** Size of a disk without keeping it open: what an agent reports at registration. */
export async function probeDiskSize(diskPath: string): Promise<number> {
  const source = await openRawDisk(diskPath);
  await source.close();
  return source.size;
}

class RawDiskSource implements DiskSource {
  constructor(
    readonly path: string,
    private readonly handle: fs.FileHandle,
    readonly size: number,
  ) {}

  async read(buffer: Buffer, length: number, offset: number): Promise<void> {
    let filled = 0;
    try {
      while (filled < length) {
        const { bytesRead } = await this.handle.read(buffer, filled, length - filled, offset + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
    } catch (error) {
      throw diskUnreadable(this.path, error);
    }
    // A file that shrank while being read: the missing tail reads as zeros, as a sparse disk would.
    if (filled < length) buffer.fill(0, filled, length);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** Reads the size of a block device from sysfs (512-byte sectors), by its device number. */
async function blockDeviceSize(rdev: number): Promise<number> {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 1048576) & 0xfff) << 8);
  const sectors = Number((await fs.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
  return sectors * 512;
}

/** FerryError 'disk-unreadable' for a disk (file or device) that cannot be opened or read: "disk PATH cannot be read (CODE)". */
export function diskUnreadable(diskPath: string, error: unknown): FerryError {
  const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
  return new FerryError('disk-unreadable', `disk ${diskPath} cannot be read (${reason})`, { cause: error, details: { path: diskPath } });
}
