/**
 * `StoreBackend` on a local directory: one file per object, written tmp -> fsync -> rename -> fsync dir.
 * Range reads keep recently used files open for a moment (`OpenFiles`): rebuilding an incremental
 * cycle's deltas reads thousands of small bases scattered over a few hundred packs, and an open and a
 * close per read cost more than the read.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { ensureDirectory, writeFileDurable } from '../util/durable-fs.js';
import { assertValidKey, assertValidPrefix, assertValidRange, type ObjectStat, type StoreBackend } from './backend.js';

/** A store backend keeping each object as a file under `root`. */
export class FilesystemBackend implements StoreBackend {
  readonly location: string;
  private readonly knownDirectories = new Set<string>();
  private readonly openFiles = new OpenFiles();

  constructor(private readonly root: string) {
    this.location = path.resolve(root);
  }

  /** Closes the files kept open for range reads; the backend stays usable (they are opened again). */
  async close(): Promise<void> {
    await this.openFiles.closeAll();
  }

  async put(key: string, data: Uint8Array | readonly Uint8Array[]): Promise<void> {
    const filePath = this.pathOf(key); // validates the key before any I/O
    const directory = path.dirname(filePath);
    await this.openFiles.forget(filePath); // a file kept open would still read the object this replaces
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
    let file: OpenFile;
    try {
      file = await this.openFiles.acquire(filePath);
    } catch (error) {
      if (isAbsent(error)) throw new FerryError('not-found', `object '${key}' not found in store ${this.location}`);
      throw ioError(`read ${key}`, error);
    }
    try {
      // An empty range reads nothing, so only the size can tell whether it lies past the end.
      if (length === 0 && offset > (await file.handle.stat()).size) {
        throw new FerryError('corrupt-data', `object '${key}' ends before byte ${offset}: it is truncated`);
      }
      let filled = 0;
      while (filled < length) {
        const { bytesRead } = await file.handle.read(target, filled, length - filled, offset + filled);
        if (bytesRead === 0) {
          throw new FerryError('corrupt-data', `object '${key}' ends at byte ${offset + filled}, before the ${length} bytes asked for at ${offset}: it is truncated`);
        }
        filled += bytesRead;
      }
    } catch (error) {
      if (error instanceof FerryError) throw error;
      throw ioError(`read ${key}`, error);
    } finally {
      this.openFiles.release(file);
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
    await this.openFiles.forget(filePath);
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

/** A file held open for range reads, with the number of reads using it now. */
interface OpenFile {
  path: string;
  handle: fs.FileHandle;
  users: number;
  lastUsed: number;
  /** Set once it is to be closed: closed when the last user releases it. */
  retired: boolean;
}

/** Files idle this long are closed. */
const OPEN_FILE_IDLE_MS = 2_000;
/** At most this many files are kept open (the least recently used idle one is closed first). */
const MAX_OPEN_FILES = 64;

/**
 * Files kept open between range reads, for a moment. Objects are immutable, so a file kept open reads
 * the same bytes its path would. `put` and `delete` through the backend forget the path first; a file
 * deleted by another process stays readable through its old handle for at most OPEN_FILE_IDLE_MS (the
 * bytes it returns are still that object's, never another's).
 */
class OpenFiles {
  private readonly files = new Map<string, OpenFile>();
  private readonly opening = new Map<string, Promise<OpenFile>>();
  private sweeper: NodeJS.Timeout | null = null;

  /** The open file at `filePath` for one read; give it back with `release`. Throws what `open` throws. */
  async acquire(filePath: string): Promise<OpenFile> {
    const known = this.files.get(filePath);
    if (known && !known.retired) {
      known.users++;
      return known;
    }
    let opening = this.opening.get(filePath);
    if (!opening) {
      opening = fs.open(filePath, 'r').then((handle) => {
        const file: OpenFile = { path: filePath, handle, users: 0, lastUsed: Date.now(), retired: false };
        this.files.set(filePath, file);
        this.trim();
        this.startSweeper();
        return file;
      });
      this.opening.set(filePath, opening);
      const settled = () => this.opening.delete(filePath);
      opening.then(settled, settled);
    }
    const file = await opening;
    file.users++;
    return file;
  }

  /** Gives back a file `acquire` returned. */
  release(file: OpenFile): void {
    file.users--;
    file.lastUsed = Date.now();
    if (file.retired && file.users === 0) void file.handle.close().catch(() => undefined);
  }

  /** Stops reusing the file at `filePath` (it is about to be replaced or deleted). */
  async forget(filePath: string): Promise<void> {
    await this.opening.get(filePath)?.catch(() => undefined);
    const file = this.files.get(filePath);
    if (file) this.retire(file);
  }

  /** Closes every file (those in use once their reads end). */
  async closeAll(): Promise<void> {
    await Promise.all([...this.opening.values()].map((opening) => opening.catch(() => undefined)));
    for (const file of [...this.files.values()]) this.retire(file);
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
  }

  private retire(file: OpenFile): void {
    if (this.files.get(file.path) === file) this.files.delete(file.path);
    if (file.retired) return;
    file.retired = true;
    if (file.users === 0) void file.handle.close().catch(() => undefined);
  }

  /** Closes the least recently used idle files while more than MAX_OPEN_FILES are open. */
  private trim(): void {
    if (this.files.size <= MAX_OPEN_FILES) return;
    const idle = [...this.files.values()].filter((file) => file.users === 0).sort((a, b) => a.lastUsed - b.lastUsed);
    for (const file of idle.slice(0, this.files.size - MAX_OPEN_FILES)) this.retire(file);
  }

  private startSweeper(): void {
    if (this.sweeper) return;
    this.sweeper = setInterval(() => {
      const cutoff = Date.now() - OPEN_FILE_IDLE_MS;
      for (const file of [...this.files.values()]) if (file.users === 0 && file.lastUsed < cutoff) this.retire(file);
      if (this.files.size === 0 && this.sweeper) {
        clearInterval(this.sweeper);
        this.sweeper = null;
      }
    }, OPEN_FILE_IDLE_MS / 2);
    this.sweeper.unref(); // never keeps a process alive
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
