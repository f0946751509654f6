/**
 * What an agent remembers between cycles: for each disk, the index of the last point it committed, the
 * block fingerprints of that index's chunks, and its change tracker's mark from that capture. Chunks
 * whose hash matches that index at the same position are known to be on the server, so a cycle asks
 * the server only about chunks that changed; the fingerprints say which 4 KiB blocks of a changed chunk
 * changed, so only those are sent (block-fingerprints.ts); the mark lets a tracker say a disk did not
 * change at all. Losing this state costs reads, queries and bytes sent, not data.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DiskIndex } from '../store/disk-index.js';
import { BlockFingerprints } from './block-fingerprints.js';
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

  /**
   * The block fingerprints saved with `index` (the disk's last committed index, from `lastIndex`), or
   * null when there are none, they are unreadable, or they were saved with another index.
   */
  async lastFingerprints(diskId: string, index: DiskIndex): Promise<BlockFingerprints | null> {
    let data: Buffer;
    try {
      data = await fs.readFile(this.fingerprintsPath(diskId));
    } catch {
      return null;
    }
    return BlockFingerprints.decode(data, index, createHash('sha256').update(index.encode()).digest());
  }

  /** The change tracker's mark of the last committed capture, or null. */
  async lastMark(diskId: string): Promise<TrackerMark | null> {
    try {
      return JSON.parse(await fs.readFile(this.markPath(diskId), 'utf8')) as TrackerMark;
    } catch {
      return null;
    }
  }

  /**
   * Forgets a disk's index, fingerprints and mark: the next cycle reads everything and asks the server
   * about every chunk (a resync), and sends changed chunks whole. `why` is kept until the next saved
   * index, so that cycle can say why it resyncs; the default is the one reason the agent forgets today.
   */
  async forget(diskId: string, why = 'the store lacked chunks the agent had skipped as unchanged'): Promise<void> {
    await ensureDirectory(path.dirname(this.indexPath(diskId)));
    await fs.writeFile(this.forgottenPath(diskId), why); // not durable: losing it loses only the explanation
    await fs.rm(this.markPath(diskId), { force: true });
    await fs.rm(this.indexPath(diskId), { force: true });
    await fs.rm(this.fingerprintsPath(diskId), { force: true });
  }

  /** Why the disk's index was forgotten (`forget`), or null if it was not (or has been saved since). */
  async forgottenBecause(diskId: string): Promise<string | null> {
    return fs.readFile(this.forgottenPath(diskId), 'utf8').catch(() => null);
  }

  /**
   * Remembers a committed index, the block fingerprints of its chunks (when given: without them the
   * next cycle sends changed chunks whole) and the mark of its capture. The fingerprints are written
   * before the index and name it by hash, so a crash in between leaves the old index with fingerprints
   * that do not match it, which `lastFingerprints` ignores; the mark goes last (without it, nothing is
   * skipped).
   */
  async saveIndex(diskId: string, index: DiskIndex, mark: TrackerMark | null = null, fingerprints: BlockFingerprints | null = null): Promise<void> {
    await ensureDirectory(path.dirname(this.indexPath(diskId)));
    await fs.rm(this.markPath(diskId), { force: true });
    const encoded = index.encode();
    if (fingerprints?.fits(index)) {
      await writeFileDurable(this.fingerprintsPath(diskId), fingerprints.encode(createHash('sha256').update(encoded).digest()));
    } else {
      await fs.rm(this.fingerprintsPath(diskId), { force: true });
    }
    await writeFileDurable(this.indexPath(diskId), encoded);
    await fs.rm(this.forgottenPath(diskId), { force: true });
    if (mark) await writeFileDurable(this.markPath(diskId), JSON.stringify(mark));
  }

  private forgottenPath(diskId: string): string {
    return `${this.indexPath(diskId)}.forgotten`;
  }

  private fingerprintsPath(diskId: string): string {
    return `${this.indexPath(diskId)}.blocks`;
  }

  private markPath(diskId: string): string {
    return `${this.indexPath(diskId)}.mark.json`;
  }

  private indexPath(diskId: string): string {
    return path.join(this.dataDir, 'state', `${diskId.replace(/[^A-Za-z0-9_-]/g, '_')}.index`);
  }
}
