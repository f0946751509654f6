/**
 * Change tracking: what a cycle can learn about a disk without reading it. Every tracker implements
 * `ChangeTracker`; the agent asks each disk's tracker whether anything may have changed since the last
 * committed point, and reads the whole disk unless the answer is a certain "nothing".
 *
 * - `fullScan` knows nothing and always says "unknown": every byte is read and hashed (works everywhere;
 *   only changed chunks are sent).
 * - `fileChangeTime` is the cheap path for image files: a file's ctime moves on every write and cannot be
 *   set back by tools (unlike mtime), so an unchanged ctime means an unchanged file. To be safe against
 *   coarse timestamps it only trusts a ctime that was already 2 s older than the previous capture.
 * Hypervisor changed-block tracking (QEMU dirty bitmaps) will add a tracker that answers with ranges.
 */
import { promises as fs } from 'node:fs';
import { probeDiskImage } from '../disks/formats.js';

/** What a tracker remembers about a disk as of a capture, kept with the committed index. */
export interface TrackerMark {
  tracker: string;
  /** When the mark was taken, just before the capture (ms since epoch). */
  takenAt: number;
  size: number;
  /** ctime in nanoseconds, as a decimal string (beyond Number's precision). */
  changeTimeNs: string;
}

/** The answer to "what changed since the mark?". */
export type ChangeAnswer = 'nothing' | 'unknown';

export interface ChangeTracker {
  readonly name: string;
  /** Observes the disk just before it is captured; null when this tracker has nothing to remember. */
  mark(diskPath: string): Promise<TrackerMark | null>;
  /** Called after the new capture: 'nothing' only when no byte can have changed since `previous` was taken. */
  changedSince(diskPath: string, previous: TrackerMark | null): Promise<ChangeAnswer>;
}

/** Reads everything, every time. */
export const fullScan: ChangeTracker = {
  name: 'full-scan',
  mark: async () => null,
  changedSince: async () => 'unknown',
};

/** The quiet margin a ctime must have had before the previous capture to be trusted. */
const QUIET_NS = 2_000_000_000n;

/** Unchanged-file detection by ctime, for regular files only. */
export const fileChangeTime: ChangeTracker = {
  name: 'file-ctime',
  async mark(diskPath) {
    const takenAt = Date.now();
    const stat = await fs.stat(diskPath, { bigint: true });
    if (!stat.isFile()) return null;
    return { tracker: 'file-ctime', takenAt, size: Number(stat.size), changeTimeNs: stat.ctimeNs.toString() };
  },
  async changedSince(diskPath, previous) {
    if (!previous || previous.tracker !== 'file-ctime') return 'unknown';
    const stat = await fs.stat(diskPath, { bigint: true });
    if (!stat.isFile() || Number(stat.size) !== previous.size || stat.ctimeNs.toString() !== previous.changeTimeNs) return 'unknown';
    // A write just before the previous mark could share its coarse timestamp: trust only a ctime that was old then.
    const quietBeforeMark = BigInt(previous.takenAt) * 1_000_000n - BigInt(previous.changeTimeNs) >= QUIET_NS;
    return quietBeforeMark ? 'nothing' : 'unknown';
  },
};

/**
 * The tracker for a disk: the ctime path for image files whose data is all in that one file, a full scan
 * for anything else (block devices, and images that read other files: a VMDK descriptor's extents, a
 * differencing VHD's parents, whose changes the descriptor's ctime does not show).
 */
export async function trackerFor(diskPath: string): Promise<ChangeTracker> {
  const stat = await fs.stat(diskPath).catch(() => null);
  if (!stat?.isFile()) return fullScan;
  const image = await probeDiskImage(diskPath).catch(() => null);
  return image?.oneFile ? fileChangeTime : fullScan;
}
