/**
 * The compute boundary of a recovery site: what brings a machine's recovered disks to life there.
 * Every driver implements `ComputeDriver` and passes the shared suite in
 * test/unit/compute-driver-conformance.ts.
 *
 * Contract:
 * - `plan` is pure: it names where each disk will be written, without touching anything.
 * - `materialize` writes every disk of the point to its planned place; a disk file appears only when
 *   complete. Calling it again for the same instance replaces what a failed attempt left (idempotent).
 * - `remove` deletes everything `materialize` made for that instance; removing twice is harmless.
 */
import type { ChunkStore } from '../store/chunk-store.js';
import type { DiskIndex } from '../store/disk-index.js';

/**
 * One recovered machine at a site: which machine, for what (a "test" failover, or a "failover"), and for
 * a failover which generation (the point it was written from: changing the point writes a new one).
 */
export interface RecoveryInstance {
  sitePath: string;
  machineName: string;
  purpose: 'test' | 'failover';
  generation?: string;
  /** Disk image format the site writes, as "raw" (default) or "vhd:fixed" (src/disks/formats.ts). */
  diskFormat?: string;
}

/** A disk to materialise and where it goes. */
export interface PlannedDisk {
  position: number;
  path: string;
  sizeBytes: number;
}

export interface ComputeDriver {
  readonly kind: string;
  plan(instance: RecoveryInstance, disks: readonly { position: number; sizeBytes: number }[]): PlannedDisk[];
  materialize(
    instance: RecoveryInstance,
    store: ChunkStore,
    disks: readonly { planned: PlannedDisk; index: DiskIndex }[],
    onProgress: (doneBytes: number) => void,
  ): Promise<PlannedDisk[]>;
  remove(instance: RecoveryInstance): Promise<void>;
}
