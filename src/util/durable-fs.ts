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
    else await writeAllAt(handle, data);
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

/**
 * Writes `parts` back to back, at `position` (a byte offset) or, when null, at the file's current
 * position, with as few system calls as possible: writev, at most IOV_MAX buffers at a time, resumed
 * after short writes.
 */
export async function writeAllAt(handle: fs.FileHandle, parts: readonly Uint8Array[], position: number | null = null): Promise<void> {
  const IOV_MAX = 1024;
  let pending = parts.filter((part) => part.byteLength > 0);
  let at = position;
  while (pending.length > 0) {
    const batch = pending.slice(0, IOV_MAX);
    let { bytesWritten } = await handle.writev(batch as Uint8Array[], at ?? undefined);
    if (at !== null) at += bytesWritten;
    let consumed = 0;
    while (consumed < batch.length && bytesWritten >= batch[consumed]!.byteLength) bytesWritten -= batch[consumed++]!.byteLength;
    const rest = pending.slice(consumed);
    if (bytesWritten > 0) rest[0] = rest[0]!.subarray(bytesWritten); // a short write ended inside this buffer
    pending = rest;
  }
}
