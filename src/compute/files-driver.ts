/**
 * The "files" compute driver: recovered disks are image files under SITE/<machine>/test-failover/
 * (a test failover) or SITE/<machine>/failover/<generation>/ (a failover, one directory per point), in
 * the site's disk format: raw (sparse) by default, or any format Ferry writes (`ferry site add
 * --disk-format vhd:fixed`), named disk<N>.<format>.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { ensureDirectory } from '../util/durable-fs.js';
import { restoreDiskToFile } from '../store/restore.js';
import { fileExtension, parseFormatSpec, writerFor } from '../disks/formats.js';
import { pointDiskInput } from './point-image.js';
import type { ComputeDriver, PlannedDisk, RecoveryInstance } from './driver.js';

/** Writes recovered disks as image files (sparse raw unless the site says otherwise); the user (or another tool) starts the machine from them. */
export class FilesDriver implements ComputeDriver {
  readonly kind = 'files';

  plan(instance: RecoveryInstance, disks: readonly { position: number; sizeBytes: number }[]): PlannedDisk[] {
    const directory = instanceDirectory(instance);
    const extension = fileExtension(parseFormatSpec(instance.diskFormat ?? 'raw').format);
    return disks.map((disk) => ({ position: disk.position, sizeBytes: disk.sizeBytes, path: path.join(directory, `disk${disk.position}.${extension}`) }));
  }

  async materialize(...[instance, store, disks, onProgress]: Parameters<ComputeDriver['materialize']>): Promise<PlannedDisk[]> {
    await ensureDirectory(instanceDirectory(instance));
    let finishedBytes = 0;
    const format = instance.diskFormat ?? 'raw';
    for (const { planned, index } of disks) {
      const progress = (doneBytes: number) => onProgress(finishedBytes + doneBytes);
      if (format === 'raw') await restoreDiskToFile(store, index, planned.path, progress);
      else {
        const { writer, subformat } = writerFor(format);
        await writer.write(planned.path, pointDiskInput(store, index), { subformat, onProgress: progress });
      }
      finishedBytes += index.diskSize;
    }
    return disks.map((disk) => disk.planned);
  }

  async remove(instance: RecoveryInstance): Promise<void> {
    await fs.rm(instanceDirectory(instance), { recursive: true, force: true });
    // Leave the parents if other instances live there; remove each when empty.
    const machineDirectory = path.join(instance.sitePath, instance.machineName);
    for (let directory = path.dirname(instanceDirectory(instance)); directory.startsWith(machineDirectory); directory = path.dirname(directory)) {
      if (!(await fs.rmdir(directory).then(() => true).catch(() => false))) break;
    }
  }
}

function instanceDirectory(instance: RecoveryInstance): string {
  if (instance.purpose === 'test') return path.join(instance.sitePath, instance.machineName, 'test-failover');
  if (!instance.generation || !/^[A-Za-z0-9_-]+$/.test(instance.generation)) throw new Error(`a failover instance needs a plain generation name, not '${instance.generation}'`);
  return path.join(instance.sitePath, instance.machineName, 'failover', instance.generation);
}
