/**
 * Materialises a disk of a recovery point as a raw image file: zero chunks become holes (the file is
 * sparse), every other chunk is read from the store, checked against its hash and written at its
 * offset. The file appears under its final name only once complete and fsynced.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fsyncDirectory } from '../util/durable-fs.js';
import type { ChunkStore } from './chunk-store.js';
import type { DiskIndex } from './disk-index.js';

/** How many chunk reads are in flight while restoring. */
const READ_AHEAD = 16;

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
    let nextPosition = 0;
    const worker = async () => {
      while (nextPosition < index.chunkCount) {
        const position = nextPosition++;
        if (!index.isZeroAt(position)) {
          const data = await store.getChunk(index.hashAt(position).toString('hex'));
          await handle.write(data, 0, data.length, position * index.chunkSize);
        }
        doneBytes += index.lengthAt(position);
        onProgress(doneBytes);
      }
    };
    await Promise.all(Array.from({ length: READ_AHEAD }, worker));
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
