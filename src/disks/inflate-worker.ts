/**
 * Worker thread of the disk image inflation pool (parallel-inflate.ts): inflates a batch of compressed
 * units (qcow2 clusters, VMDK grains) read in place from a shared input buffer, each into its place in a
 * shared output buffer, off the event loop of the process converting or reading the image. What a unit
 * inflates to is `inflateNow`'s, the same function a small read runs on the event loop.
 */
import { parentPort } from 'node:worker_threads';
import { toWorkerFailure, type WorkerReply } from '../util/worker-pool.js';
import { type Compression, inflateNow } from './parallel-inflate.js';

/** Units back to back in `input`: unit i is `lengths[i]` bytes at `at[i]`, inflated to at most `maxLengths[i]` bytes at `outputAt[i]` of `output`. */
export interface InflateBatchRequest {
  /** A view of a SharedArrayBuffer. */
  input: Uint8Array;
  at: number[];
  lengths: number[];
  compressions: Compression[];
  maxLengths: number[];
  /** A view of a SharedArrayBuffer the caller reads afterwards (set when the batch is sent). */
  output: Uint8Array | null;
  outputAt: number[];
}

/** Per unit: the length it inflated to, or -1 with why it failed (`tooLarge`: beyond its maximum length). */
export interface InflateBatchResult {
  lengths: number[];
  failures: (string | null)[];
  tooLarge: boolean[];
}

function inflateBatch(request: InflateBatchRequest): InflateBatchResult {
  const input = Buffer.from(request.input.buffer, request.input.byteOffset, request.input.byteLength);
  const output = Buffer.from(request.output!.buffer, request.output!.byteOffset, request.output!.byteLength);
  const result: InflateBatchResult = { lengths: [], failures: [], tooLarge: [] };
  request.at.forEach((at, index) => {
    const inflated = inflateNow({ compression: request.compressions[index]!, data: input.subarray(at, at + request.lengths[index]!), maxLength: request.maxLengths[index]! });
    if ('data' in inflated) {
      inflated.data.copy(output, request.outputAt[index]!);
      result.lengths.push(inflated.data.length);
      result.failures.push(null);
      result.tooLarge.push(false);
    } else {
      result.lengths.push(-1);
      result.failures.push(inflated.failure);
      result.tooLarge.push(inflated.tooLarge);
    }
  });
  return result;
}

parentPort?.on('message', (request: InflateBatchRequest & { id: number }) => {
  try {
    parentPort!.postMessage({ id: request.id, result: inflateBatch(request) } satisfies WorkerReply<InflateBatchResult>);
  } catch (error) {
    parentPort!.postMessage({ id: request.id, error: toWorkerFailure(error) } satisfies WorkerReply<InflateBatchResult>);
  }
});
