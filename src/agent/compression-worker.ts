/**
 * Worker thread of the agent's compression pool (compression-pool.ts): compresses the chunks of one
 * message with zstd and answers with the frames, so compression runs on other cores than the agent's
 * event loop, which reads, hashes and sends.
 *
 * Message in:  { id, data: Uint8Array (the chunks back to back), lengths: number[], level }
 * Message out: { id, data: Uint8Array (the frames back to back), lengths: number[] } where a length of
 *              -1 means "not smaller when compressed: send that chunk raw"; or { id, error: string }.
 */
import { parentPort } from 'node:worker_threads';
import { compressChunk } from '../store/chunk-object.js';

/** A request to compress `lengths.length` chunks laid out back to back in `data`. */
export interface CompressionRequest {
  id: number;
  data: Uint8Array;
  lengths: number[];
  level: number;
}

/** The frames of a request back to back, -1 for a chunk left raw; or why it failed. */
export type CompressionResponse = { id: number; data: Uint8Array; lengths: number[] } | { id: number; error: string };

parentPort?.on('message', (request: CompressionRequest) => {
  try {
    const frames: Buffer[] = [];
    const lengths: number[] = [];
    let offset = 0;
    for (const length of request.lengths) {
      const frame = compressChunk(request.data.subarray(offset, offset + length), request.level);
      offset += length;
      if (frame) frames.push(frame);
      lengths.push(frame ? frame.length : -1);
    }
    const data = new Uint8Array(Buffer.concat(frames));
    parentPort!.postMessage({ id: request.id, data, lengths } satisfies CompressionResponse, [data.buffer]);
  } catch (error) {
    parentPort!.postMessage({ id: request.id, error: (error as Error).message } satisfies CompressionResponse);
  }
});
