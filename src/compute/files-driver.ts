/** The "files" compute driver: recovered disks are raw image files under SITE/<machine>/<purpose>/. */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { ensureDirectory } from '../util/durable-fs.js';
import { restoreDiskToFile } from '../store/restore.js';
import type { ComputeDriver, PlannedDisk, RecoveryInstance } from './driver.js';

/** Writes recovered disks as sparse raw files; the user (or another tool) starts the machine from them. */
export class FilesDriver implements ComputeDriver {
  readonly kind = 'files';

  plan(instance: RecoveryInstance, disks: readonly { position: number; sizeBytes: number }[]): PlannedDisk[] {
    const directory = instanceDirectory(instance);
    return disks.map((disk) => ({ position: disk.position, sizeBytes: disk.sizeBytes, path: path.join(directory, `disk${disk.position}.raw`) }));
  }

  async materialize(...[instance, store, disks, onProgress]: Parameters<ComputeDriver['materialize']>): Promise<PlannedDisk[]> {
    await ensureDirectory(instanceDirectory(instance));
    let finishedBytes = 0;
    for (const { planned, index } of disks) {
      await restoreDiskToFile(store, index, planned.path, (doneBytes) => onProgress(finishedBytes + doneBytes));
      finishedBytes += index.diskSize;
    }
    return disks.map((disk) => disk.planned);
  }

  async remove(instance: RecoveryInstance): Promise<void> {
    await fs.rm(instanceDirectory(instance), { recursive: true, force: true });
    // Leave SITE/<machine>/ if other instances live there; remove it when empty.
    await fs.rmdir(path.dirname(instanceDirectory(instance))).catch(() => undefined);
  }
}

function instanceDirectory(instance: RecoveryInstance): string {
  return path.join(instance.sitePath, instance.machineName, instance.purpose === 'test' ? 'test-failover' : instance.purpose);
}
