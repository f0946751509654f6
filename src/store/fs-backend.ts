/** `StoreBackend` on a local directory: one file per object, written tmp -> fsync -> rename -> fsync dir. */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { ensureDirectory, writeFileDurable } from '../util/durable-fs.js';
import { assertValidKey, assertValidPrefix, assertValidRange, type ObjectStat, type StoreBackend } from './backend.js';

/** A store backend keeping each object as a file under `root`. */
export class FilesystemBackend implements StoreBackend {
  readonly location: string;
  private readonly knownDirectories = new Set<string>();

  constructor(private readonly root: string) {
    this.location = path.resolve(root);
  }

  async put(key: string, data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    const filePath = this.pathOf(key); // validates the key before any I/O
    const directory = path.dirname(filePath);
    await this.io(`write ${key}`, async () => {
      if (!this.knownDirectories.has(directory)) {
        await ensureDirectory(directory);
        this.knownDirectories.add(directory);
      }
      try {
        await writeFileDurable(filePath, data);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
        // The directory went away behind our back (removed by hand, store restored): make it again.
        await ensureDirectory(directory);
        await writeFileDurable(filePath, data);
      }
    });
  }

  async get(key: string): Promise<Buffer> {
    const filePath = this.pathOf(key);
    try {
      return await fs.readFile(filePath);
    } catch (error) {
      if (isAbsent(error)) {
        throw new FerryError('not-found', `object '${key}' not found in store ${this.location}`);
      }
      throw ioError(`read ${key}`, error);
    }
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(length);
    await this.getRangeInto(key, offset, buffer, length);
    return buffer;
  }

  async getRangeInto(key: string, offset: number, target: Uint8Array, length = target.length): Promise<void> {
    const filePath = this.pathOf(key);
    assertValidRange(key, offset, length);
    let handle;
    try {
      handle = await fs.open(filePath, 'r');
    } catch (error) {
      if (isAbsent(error)) throw new FerryError('not-found', `object '${key}' not found in store ${this.location}`);
      throw ioError(`read ${key}`, error);
    }
    try {
      // An empty range reads nothing, so only the size can tell whether it lies past the end.
      if (length === 0 && offset > (await handle.stat()).size) {
        throw new FerryError('corrupt-data', `object '${key}' ends before byte ${offset}: it is truncated`);
      }
      let filled = 0;
      while (filled < length) {
        const { bytesRead } = await handle.read(target, filled, length - filled, offset + filled);
        if (bytesRead === 0) {
          throw new FerryError('corrupt-data', `object '${key}' ends at byte ${offset + filled}, before the ${length} bytes asked for at ${offset}: it is truncated`);
        }
        filled += bytesRead;
      }
    } catch (error) {
      if (error instanceof FerryError) throw error;
      throw ioError(`read ${key}`, error);
    } finally {
      await handle.close();
    }
  }

  async has(key: string): Promise<boolean> {
    const filePath = this.pathOf(key);
    try {
      return (await fs.stat(filePath)).isFile(); // a directory is a key prefix, not an object
    } catch (error) {
      if (isAbsent(error)) return false;
      throw ioError(`check ${key}`, error);
    }
  }

  async delete(key: string): Promise<void> {
    const filePath = this.pathOf(key);
    try {
      await fs.unlink(filePath);
    } catch (error) {
      if (!isAbsent(error)) throw ioError(`delete ${key}`, error);
    }
  }

  async stat(key: string): Promise<ObjectStat | null> {
    const filePath = this.pathOf(key);
    try {
      const stats = await fs.stat(filePath);
      return stats.isFile() ? { size: stats.size, modifiedAt: stats.mtimeMs } : null;
    } catch (error) {
      if (isAbsent(error)) return null;
      throw ioError(`stat ${key}`, error);
    }
  }

  async touch(key: string): Promise<boolean> {
    const filePath = this.pathOf(key);
    try {
      // A directory (a key prefix) is not an object, and utimes would happily touch one: look first.
      // utimes never creates a file, so an object deleted in between comes back as ENOENT: absent.
      if (!(await fs.stat(filePath)).isFile()) return false;
      const now = new Date();
      await fs.utimes(filePath, now, now);
      return true;
    } catch (error) {
      if (isAbsent(error)) return false;
      throw ioError(`touch ${key}`, error);
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    assertValidPrefix(prefix);
    // Walk only the directory the prefix points into, then filter by the rest of the prefix.
    const slash = prefix.lastIndexOf('/');
    const base = slash === -1 ? '' : prefix.slice(0, slash);
    const startDirectory = path.join(this.root, base);
    for await (const relative of walk(startDirectory)) {
      const key = base === '' ? relative : `${base}/${relative}`;
      if (key.startsWith(prefix) && !path.basename(key).startsWith('.')) yield key;
    }
  }

  private pathOf(key: string): string {
    assertValidKey(key);
    return path.join(this.root, ...key.split('/'));
  }

  private async io<T>(what: string, operation: () => Promise<T>): Promise<T> {
    try {
      return await operation();
    } catch (error) {
      throw ioError(what, error);
    }
  }
}

/** Errors meaning "no object there": missing, a directory (a key prefix), or a file where a directory would be. */
function isAbsent(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'EISDIR' || code === 'ENOTDIR';
}

function ioError(what: string, error: unknown): FerryError {
  return new FerryError('io-error', `store could not ${what}: ${(error as Error).message}`, { cause: error });
}

async function* walk(directory: string, relative = ''): AsyncIterable<string> {
  let entries;
  try {
    entries = await fs.readdir(directory, { withFileTypes: true });
  } catch (error) {
    if (isAbsent(error)) return;
    throw ioError(`list ${directory}`, error);
  }
  entries.sort((a, b) => a.name.localeCompare(b.name));
  for (const entry of entries) {
    const child = relative === '' ? entry.name : `${relative}/${entry.name}`;
    if (entry.isDirectory()) yield* walk(path.join(directory, entry.name), child);
    else if (entry.isFile()) yield child;
  }
}
