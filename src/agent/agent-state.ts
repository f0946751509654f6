/**
 * What an agent remembers between cycles: for each disk, the index of the last point it committed.
 * Chunks whose hash matches that index at the same position are known to be on the server, so a
 * cycle asks the server only about chunks that changed. Losing this state costs a query, not data.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DiskIndex } from '../store/disk-index.js';
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

  /** Forgets a disk's index: the next cycle asks the server about every chunk. */
  async forget(diskId: string): Promise<void> {
    await fs.rm(this.indexPath(diskId), { force: true });
  }

  /** Remembers a committed index. */
  async saveIndex(diskId: string, index: DiskIndex): Promise<void> {
    await ensureDirectory(path.dirname(this.indexPath(diskId)));
    await writeFileDurable(this.indexPath(diskId), index.encode());
  }

  private indexPath(diskId: string): string {
    return path.join(this.dataDir, 'state', `${diskId.replace(/[^A-Za-z0-9_-]/g, '_')}.index`);
  }
}
