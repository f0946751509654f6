/**
 * Reference measures of the machine itself, printed with the results so a re-run can tell a faster
 * engine from a faster (or less loaded) machine: single-thread SHA-256 speed, and the latency of one
 * durable small-file write (tmp file, write, fsync, rename, fsync directory: what a store does to
 * keep one 64 KiB chunk safely) on the work dir's file system.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';

export interface ReferenceMeasures {
  /** SHA-256 of 64 KiB buffers on one thread, MiB/s. */
  sha256MiBPerSecond: number;
  /** Median time of one durable 64 KiB file write, milliseconds. */
  durableWrite64KiBMs: number;
  /** The same without any fsync, milliseconds. */
  plainWrite64KiBMs: number;
}

async function durableWrite(directory: string, name: string, data: Buffer, sync: boolean): Promise<void> {
  const temporary = path.join(directory, `.${name}.tmp`);
  const handle = await fs.open(temporary, 'w');
  await handle.write(data);
  if (sync) await handle.sync();
  await handle.close();
  await fs.rename(temporary, path.join(directory, name));
  if (sync) {
    const dir = await fs.open(directory, 'r');
    await dir.sync();
    await dir.close();
  }
}

function medianOf(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** Takes about a second or two; leaves nothing behind in `scratchDir`. */
export async function measureReference(scratchDir: string): Promise<ReferenceMeasures> {
  const data = Buffer.alloc(64 * 1024, 7);
  const hashStart = process.hrtime.bigint();
  for (let n = 0; n < 4096; n++) createHash('sha256').update(data).digest();
  const sha256MiBPerSecond = 256 / (Number(process.hrtime.bigint() - hashStart) / 1e9);

  const directory = path.join(scratchDir, 'reference-writes');
  await fs.rm(directory, { recursive: true, force: true });
  await fs.mkdir(directory, { recursive: true });
  const time = async (sync: boolean) => {
    const samples: number[] = [];
    for (let n = 0; n < 200; n++) {
      const start = process.hrtime.bigint();
      await durableWrite(directory, `${sync ? 's' : 'p'}${n}`, data, sync);
      samples.push(Number(process.hrtime.bigint() - start) / 1e6);
    }
    return medianOf(samples);
  };
  const durableWrite64KiBMs = await time(true);
  const plainWrite64KiBMs = await time(false);
  await fs.rm(directory, { recursive: true, force: true });
  return { sha256MiBPerSecond: Math.round(sha256MiBPerSecond), durableWrite64KiBMs: Math.round(durableWrite64KiBMs * 100) / 100, plainWrite64KiBMs: Math.round(plainWrite64KiBMs * 100) / 100 };
}
