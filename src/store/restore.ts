/**
 * Materialises a disk of a recovery point as a raw image file: zero chunks become holes (the file is
 * sparse), every other chunk is read from the store, checked against its hash and written at its
 * offset. The file appears under its final name only once complete and fsynced.
 *
 * The index is restored a window of chunks at a time, several windows at once: a window's chunks are
 * read with `ChunkStore.getChunks` (chunks stored back to back in a pack come in one read) and
 * written with one `writev` per run of consecutive non-zero chunks.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fsyncDirectory, writeAllAt } from '../util/durable-fs.js';
import type { ChunkStore } from './chunk-store.js';
import type { DiskIndex } from './disk-index.js';

/** Chunks restored together (16 MiB at 64 KiB chunks). */
const WINDOW_CHUNKS = 256;
/** Windows being read, checked and written at once. */
const WINDOWS_IN_FLIGHT = 3;

/** Writes `index`'s disk to `outputPath` as a sparse raw file; `onProgress` gets bytes done so far. */
export async function restoreDiskToFile(
  store: ChunkStore,
  index: DiskIndex,
  outputPath: string,
  onProgress: (doneBytes: number) => void = () => {},
): Promise<void> {
  const partialPath = `${outputPath}.partial`;
  const handle = await fs.open(partialPath, 'w');
  try {
    await handle.truncate(index.diskSize);
    let doneBytes = 0;
    let nextWindow = 0;
    const worker = async () => {
      while (nextWindow < index.chunkCount) {
        const first = nextWindow;
        nextWindow += WINDOW_CHUNKS;
        const last = Math.min(first + WINDOW_CHUNKS, index.chunkCount);
        await restoreWindow(store, index, handle, first, last);
        for (let position = first; position < last; position++) doneBytes += index.lengthAt(position);
        onProgress(doneBytes);
      }
    };
    await Promise.all(Array.from({ length: WINDOWS_IN_FLIGHT }, worker));
    await handle.sync();
  } catch (error) {
    await handle.close();
    await fs.rm(partialPath, { force: true });
    throw error;
  }
  await handle.close();
  await fs.rename(partialPath, outputPath);
  await fsyncDirectory(path.dirname(outputPath));
}

/** Reads the non-zero chunks at positions [first, last) and writes them, one writev per consecutive run. */
async function restoreWindow(store: ChunkStore, index: DiskIndex, handle: fs.FileHandle, first: number, last: number): Promise<void> {
  const positions: number[] = [];
  for (let position = first; position < last; position++) if (!index.isZeroAt(position)) positions.push(position);
  if (positions.length === 0) return;
  const chunks = await store.getChunks(positions.map((position) => index.hashAt(position).toString('hex')));
  for (let start = 0; start < positions.length; ) {
    let end = start + 1;
    while (end < positions.length && positions[end] === positions[end - 1]! + 1) end++;
    await writeAllAt(handle, chunks.slice(start, end), positions[start]! * index.chunkSize);
    start = end;
  }
}
