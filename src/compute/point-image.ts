/**
 * A recovery point's disk as the input of a disk image writer (src/disks/disk-image.ts): its chunks
 * from the store in disk order, all-zero chunks left out (writers keep them as holes or unallocated
 * blocks). Reads run one batch ahead of the writer, so the store and the writer work at once.
 */
import type { DiskImageInput } from '../disks/disk-image.js';
import type { ChunkStore } from '../store/chunk-store.js';
import type { DiskIndex } from '../store/disk-index.js';

/** Chunks read from the store at once (4 MiB at 64 KiB chunks). */
const BATCH_CHUNKS = 64;

/** The point disk `index` as writer input, read from `store`; each chunk's hash is checked as the store reads it. */
export function pointDiskInput(store: ChunkStore, index: DiskIndex): DiskImageInput {
  return {
    size: index.diskSize,
    async *pieces() {
      const batches: number[][] = [];
      let batch: number[] = [];
      for (let position = 0; position < index.chunkCount; position++) {
        if (index.isZeroAt(position)) continue;
        batch.push(position);
        if (batch.length === BATCH_CHUNKS) {
          batches.push(batch);
          batch = [];
        }
      }
      if (batch.length > 0) batches.push(batch);
      const read = (positions: number[]) => store.getChunks(positions.map((position) => index.hashAt(position).toString('hex')));
      let pending = batches.length > 0 ? read(batches[0]!) : null;
      try {
        for (let number = 0; number < batches.length; number++) {
          const chunks = await pending!;
          pending = number + 1 < batches.length ? read(batches[number + 1]!) : null;
          for (const [slot, position] of batches[number]!.entries()) yield { offset: position * index.chunkSize, data: chunks[slot]! };
        }
      } finally {
        // A writer that stopped early (aborted, failed) leaves a read in flight: its outcome no longer matters.
        pending?.catch(() => undefined);
      }
    },
  };
}
