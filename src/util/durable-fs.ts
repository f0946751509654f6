/**
 * Durable file writes: data is fsynced before it is published by an atomic rename, and the directory
 * is fsynced after, so a crash at any moment leaves either the old file or the complete new one.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';

/**
 * Writes `data` (or a list of buffers, one after another) to `filePath` atomically and durably (tmp file,
 * fsync, rename, fsync directory).
 */
export async function writeFileDurable(filePath: string, data: Uint8Array | string | readonly Uint8Array[], mode = 0o644): Promise<void> {
  const directory = path.dirname(filePath);
  const temporaryPath = path.join(directory, `.${path.basename(filePath)}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await fs.open(temporaryPath, 'w', mode);
  try {
    if (typeof data === 'string' || data instanceof Uint8Array) await handle.writeFile(data);
    else await writeAll(handle, data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await fs.rename(temporaryPath, filePath);
  } catch (error) {
    await fs.rm(temporaryPath, { force: true });
    throw error;
  }
  await fsyncDirectory(directory);
}

/** Fsyncs a directory so a rename or unlink inside it survives a crash. */
export async function fsyncDirectory(directory: string): Promise<void> {
  const handle = await fs.open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Creates a directory (and parents) if missing. */
export async function ensureDirectory(directory: string, mode?: number): Promise<void> {
  await fs.mkdir(directory, { recursive: true, ...(mode === undefined ? {} : { mode }) });
}

/** Writes every buffer in order with as few system calls as possible (writev, resumed after short writes). */
async function writeAll(handle: fs.FileHandle, parts: readonly Uint8Array[]): Promise<void> {
  const IOV_MAX = 1024;
  let pending = parts.filter((part) => part.byteLength > 0);
  while (pending.length > 0) {
    const batch = pending.slice(0, IOV_MAX);
    let { bytesWritten } = await handle.writev(batch as Uint8Array[]);
    let consumed = 0;
    while (consumed < batch.length && bytesWritten >= batch[consumed]!.byteLength) bytesWritten -= batch[consumed++]!.byteLength;
    const rest = pending.slice(consumed);
    if (bytesWritten > 0) rest[0] = rest[0]!.subarray(bytesWritten); // a short write ended inside this buffer
    pending = rest;
  }
}
