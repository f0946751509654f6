/**
 * What an agent remembers between cycles: for each disk, the index of the last point it committed and
 * its change tracker's mark from that capture. Chunks whose hash matches that index at the same
 * position are known to be on the server, so a cycle asks the server only about chunks that changed;
 * the mark lets a tracker say a disk did not change at all. Losing this state costs reads and
 * queries, not data.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DiskIndex } from '../store/disk-index.js';
import type { TrackerMark } from './change-tracking.js';
import { ensureDirectory, writeFileDurable } from '../util/durable-fs.js';

/** The agent's per-disk memory under DATA_DIR/state/. */
export class AgentState {
  constructor(private readonly dataDir: string) {}

  /** The last committed index of a disk, or null if none (or unreadable: then the server is asked). */
  async lastIndex(diskId: string): Promise<DiskIndex | null> {
    try {
      return DiskIndex.decode(await fs.readFile(this.indexPath(diskId)), 'store');
    } catch {
      return null;
    }
  }

  /** The change tracker's mark of the last committed capture, or null. */
  async lastMark(diskId: string): Promise<TrackerMark | null> {
    try {
      return JSON.parse(await fs.readFile(this.markPath(diskId), 'utf8')) as TrackerMark;
    } catch {
      return null;
    }
  }

  /** Forgets a disk's index and mark: the next cycle reads everything and asks the server about every chunk. */
  async forget(diskId: string): Promise<void> {
    await fs.rm(this.markPath(diskId), { force: true });
    await fs.rm(this.indexPath(diskId), { force: true });
  }

  /** Remembers a committed index and the mark of its capture (the mark last: without it, nothing is skipped). */
  async saveIndex(diskId: string, index: DiskIndex, mark: TrackerMark | null = null): Promise<void> {
    await ensureDirectory(path.dirname(this.indexPath(diskId)));
    await fs.rm(this.markPath(diskId), { force: true });
    await writeFileDurable(this.indexPath(diskId), index.encode());
    if (mark) await writeFileDurable(this.markPath(diskId), JSON.stringify(mark));
  }

  private markPath(diskId: string): string {
    return `${this.indexPath(diskId)}.mark.json`;
  }

  private indexPath(diskId: string): string {
    return path.join(this.dataDir, 'state', `${diskId.replace(/[^A-Za-z0-9_-]/g, '_')}.index`);
  }
}
