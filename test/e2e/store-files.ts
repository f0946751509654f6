/**
 * Reading a server's store directly, as an operator with a shell could: every chunk entry of every pack
 * of a plain (unencrypted) store, so tests can damage or remove exactly the data they mean to.
 */
import path from 'node:path';
import { FilesystemBackend } from '../../src/store/fs-backend.js';
import { PLAIN_CODEC } from '../../src/store/chunk-object.js';
import { isPackKey, readPackDirectory } from '../../src/store/pack.js';

/** One chunk object inside a pack file. */
export interface StoredChunkEntry {
  /** The chunk's SHA-256 (a plain store names objects by it). */
  hash: string;
  /** The pack file holding it, and where. */
  packFile: string;
  offset: number;
  length: number;
}

/** Every chunk entry of every pack under DATA_DIR/store, in pack-key order. */
export async function storedChunkEntries(dataDir: string): Promise<StoredChunkEntry[]> {
  const root = path.join(dataDir, 'store');
  const backend = new FilesystemBackend(root);
  const entries: StoredChunkEntry[] = [];
  for await (const key of backend.list('packs/')) {
    if (!isPackKey(key)) continue;
    const stat = await backend.stat(key);
    if (!stat) continue;
    for (const entry of await readPackDirectory(backend, key, stat.size, PLAIN_CODEC)) {
      entries.push({ hash: entry.name, packFile: path.join(root, ...key.split('/')), offset: entry.offset, length: entry.length });
    }
  }
  return entries;
}
