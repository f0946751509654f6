/**
 * Durable file writes: data is fsynced before it is published by an atomic rename, and the directory
 * is fsynced after, so a crash at any moment leaves either the old file or the complete new one.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';

/** Writes `data` to `filePath` atomically and durably (tmp file, fsync, rename, fsync directory). */
export async function writeFileDurable(filePath: string, data: Uint8Array | string, mode = 0o644): Promise<void> {
  const directory = path.dirname(filePath);
  const temporaryPath = path.join(directory, `.${path.basename(filePath)}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await fs.open(temporaryPath, 'w', mode);
  try {
    await handle.writeFile(data);
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
