/**
 * Where a sparse file's data is: the ranges the file system has allocated, so that a raw disk image (or
 * a fixed VHD, whose data is raw) can be read without reading its holes. This is what qemu-img does
 * with lseek(SEEK_DATA/SEEK_HOLE); node:fs has no SEEK_DATA, so the map comes from xfs_io (xfsprogs),
 * whose `seek -a -r` command walks the file with exactly those two calls:
 *
 *     xfs_io -r -c "seek -a -r 0" FILE      →   Whence  Result
 *                                                HOLE    0
 *                                                DATA    10485760
 *                                                HOLE    13631488
 *
 * SEEK_DATA is the file system's own answer, dirty pages in the page cache included (unlike FIEMAP
 * without a sync), and on a file system that does not implement it the whole file is reported as data:
 * the map can only ever say "read more", never skip a written byte. The map is a snapshot: a file being
 * written while it is read needs a snapshot of its own first (agents take one, see snapshots.ts).
 *
 * Anything unexpected (xfs_io missing, an error, output it does not understand, too many ranges, too
 * long) gives no map (null), and the caller reads the whole file, as it would without this module.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';

/** A range of a file that holds data (everything outside such ranges reads as zeros). */
export interface DataRange {
  offset: number;
  length: number;
}

/**
 * Data ranges are widened to multiples of this (and holes narrower than it read as data): large aligned
 * reads, O_DIRECT-friendly offsets whatever the file system's block size, and few ranges.
 */
export const DATA_MAP_ALIGNMENT = 64 * 1024;
/** More ranges than this (after widening) is a file too fragmented to be worth mapping: read it whole. */
const MAX_RANGES = 1_000_000;
/** The map of any file takes far less; a hung tool must not hang a conversion. */
const DEFAULT_TIMEOUT_MS = 30_000;

/** How to run the mapping tool (tests name another command, or a shorter time limit). */
export interface DataMapOptions {
  /** Default: xfs_io. */
  command?: string;
  /** Default: 30 s; a tool still running then is killed, and there is no map. */
  timeoutMs?: number;
}

/**
 * The data ranges of the regular file at `filePath` within [0, size): ascending, non-overlapping,
 * not adjacent, each widened to DATA_MAP_ALIGNMENT (clipped to `size`). Null when the file system's
 * map cannot be had (see the module comment): the caller must then treat all of [0, size) as data.
 */
export async function fileDataRanges(filePath: string, size: number, options: DataMapOptions = {}): Promise<DataRange[] | null> {
  // Only a regular file: on a device xfs_io reports "HOLE 0" (and an error, yet exits 0).
  const stat = await fs.stat(filePath).catch(() => null);
  if (!stat?.isFile()) return null;
  const output = await runSeekCommand(options.command ?? 'xfs_io', filePath, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  if (output === null) return null;
  return parseSeekOutput(output, size);
}

/**
 * Runs `xfs_io -r -c "seek -a -r 0" FILE` and resolves with its standard output, or null on any failure:
 * an exit status other than 0, a signal, or anything on standard error (xfs_io reports a failed lseek
 * there and still exits 0).
 */
function runSeekCommand(command: string, filePath: string, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    // Each line is at most ~30 bytes: the range cap bounds the output too.
    const maxOutputBytes = MAX_RANGES * 64;
    const child = spawn(command, ['-r', '-c', 'seek -a -r 0', filePath], { stdio: ['ignore', 'pipe', 'pipe'] });
    // Not spawn's own `timeout` option: its timer outlives a command that failed to start (Node 20).
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      finish(null);
    }, timeoutMs);
    const chunks: Buffer[] = [];
    let outputBytes = 0;
    let settled = false;
    const finish = (result: string | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(result);
    };
    child.stdout.on('data', (chunk: Buffer) => {
      outputBytes += chunk.length;
      if (outputBytes > maxOutputBytes) {
        child.kill('SIGKILL');
        finish(null);
      } else chunks.push(chunk);
    });
    let complained = false;
    child.stderr.on('data', () => {
      complained = true;
    });
    child.on('error', () => finish(null));
    child.on('close', (code, signal) => finish(code === 0 && signal === null && !complained ? Buffer.concat(chunks).toString('utf8') : null));
  });
}

/**
 * The data ranges in xfs_io's `seek -a -r` output, widened and merged as `fileDataRanges` promises;
 * null when the output is not that command's (no header, a line it does not know, offsets not
 * ascending). Exported for tests.
 */
export function parseSeekOutput(output: string, size: number): DataRange[] | null {
  const lines = output.split('\n').map((line) => line.trim()).filter((line) => line.length > 0);
  if (!/^Whence\s+Result$/.test(lines[0] ?? '')) return null;
  // Transitions in file order: each says what kind of range starts at its offset. "DATA EOF" (an empty
  // file) starts nothing.
  const transitions: Array<{ kind: 'DATA' | 'HOLE'; offset: number }> = [];
  for (const line of lines.slice(1)) {
    const match = /^(DATA|HOLE)\s+(\d+|EOF)$/.exec(line);
    if (!match) return null;
    if (match[2] === 'EOF') continue;
    const offset = Number(match[2]);
    const previous = transitions.at(-1);
    if (!Number.isSafeInteger(offset) || (previous && offset <= previous.offset)) return null;
    transitions.push({ kind: match[1] as 'DATA' | 'HOLE', offset });
  }
  const ranges: DataRange[] = [];
  transitions.forEach((transition, position) => {
    if (transition.kind !== 'DATA') return;
    // A data range runs to the next transition; the last one, to the end of the file.
    const end = Math.min(size, transitions[position + 1]?.offset ?? size);
    const start = Math.floor(transition.offset / DATA_MAP_ALIGNMENT) * DATA_MAP_ALIGNMENT;
    const alignedEnd = Math.min(size, Math.ceil(end / DATA_MAP_ALIGNMENT) * DATA_MAP_ALIGNMENT);
    if (start >= alignedEnd) return;
    const last = ranges.at(-1);
    if (last && start <= last.offset + last.length) last.length = Math.max(last.length, alignedEnd - last.offset);
    else ranges.push({ offset: start, length: alignedEnd - start });
  });
  return ranges.length > MAX_RANGES ? null : ranges;
}
