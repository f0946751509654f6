/**
 * Reading all of a machine's disks as of one instant. A snapshot is taken right after the pre-point
 * hook and released when reading is done; the post-point hook can run as soon as it is taken, so an
 * application is paused only for that instant, not for the whole read. Methods, tried in order:
 *
 * - `reflink`: every disk is an image file on a file system that clones (xfs, btrfs): each is cloned
 *   (copy-on-write, milliseconds) and the clones are read. One disk is one instant; several disks are
 *   cloned one after another, so only a hook that held the machine quiet makes them one instant.
 * - `fsfreeze`: every disk is a block device whose file systems are mounted here: they are all frozen
 *   (writes wait, the on-disk state is consistent) for the span of the read, bounded by `maxFreezeSeconds`
 *   after which a watchdog thaws them even if this process died. All disks share one instant.
 * - `none`: the disks are read live.
 *
 * `atOneInstant` says whether the result may be labelled crash-consistent; `stillValid()` tells, after
 * the read, whether that held to the end (a freeze that hit its bound did not).
 */
import { execFile, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from '../util/logger.js';

const run = promisify(execFile);

/** How a set of disks is read. */
export interface DiskSnapshot {
  method: 'reflink' | 'fsfreeze' | 'none';
  /** True when every disk is captured as of one instant. */
  atOneInstant: boolean;
  /** When the instant was (ms since epoch). */
  takenAt: number;
  /** What to read, in disk order: clones for reflink, the disks themselves otherwise. */
  readPaths: string[];
  /** Why the method chosen is what it is, for the point's note. */
  note: string | null;
  /** After reading: true if the snapshot held for the whole read. */
  stillValid(): boolean;
  /** Thaws or removes what the snapshot made. Idempotent; never throws. */
  release(): Promise<void>;
}

/** Options of `snapshotDisks`. */
export interface SnapshotOptions {
  /** Names clone files, so a crashed job's leftovers can be recognised. */
  jobId: string;
  /** Longest a file system may stay frozen. */
  maxFreezeSeconds: number;
  /** The agent's own data directory: a file system holding it is never frozen (the agent would block on itself). */
  agentDataDir: string;
  log: Logger;
  /** False when some disk is an image that reads other files (see formats.ts `spansOneFile`): no clones then. */
  imagesSpanOneFile?: boolean;
}

/** Captures `diskPaths` by the best method available. */
export async function snapshotDisks(diskPaths: string[], options: SnapshotOptions): Promise<DiskSnapshot> {
  const stats = await Promise.all(diskPaths.map((diskPath) => fs.stat(diskPath)));
  if (stats.every((stat) => stat.isFile()) && options.imagesSpanOneFile === false) {
    return live(diskPaths, 'a disk image reads other files too (a VMDK descriptor and its extents, or a differencing chain), which a clone of it would not hold: read live');
  }
  if (stats.every((stat) => stat.isFile())) {
    const reflink = await tryReflink(diskPaths, options);
    if (reflink) return reflink;
    return live(diskPaths, 'disk images are on a file system without reflink clones: read live');
  }
  if (stats.every((stat) => stat.isBlockDevice())) {
    const frozen = await tryFreeze(diskPaths, stats.map((stat) => stat.rdev), options);
    // A block device's own page cache is not updated when a file system on it writes file data: blocks
    // read in an earlier cycle would come back stale. Drop it, after the freeze flushed the file system.
    await flushDeviceCaches(diskPaths, options.log);
    if (typeof frozen !== 'string') return frozen;
    return live(diskPaths, frozen);
  }
  return live(diskPaths, 'disks are a mix of files and devices: read live');
}

/** Drops the page cache of each block device (BLKFLSBUF), so reads see what is on the device now. */
async function flushDeviceCaches(devices: string[], log: Logger): Promise<void> {
  for (const device of devices) {
    await run('blockdev', ['--flushbufs', device]).catch((error: Error) => log.warn(`could not flush the cache of ${device}: ${error.message.split('\n')[0]}`));
  }
}

/** Clone files a crashed job left next to `diskPath`. */
export async function removeStaleClones(diskPath: string): Promise<void> {
  const directory = path.dirname(diskPath);
  const suffix = `-${path.basename(diskPath)}`;
  const entries = await fs.readdir(directory).catch(() => [] as string[]);
  for (const entry of entries) {
    if (entry.startsWith('.ferry-snapshot-') && entry.endsWith(suffix)) await fs.rm(path.join(directory, entry), { force: true });
  }
}

function live(diskPaths: string[], note: string): DiskSnapshot {
  return { method: 'none', atOneInstant: false, takenAt: Date.now(), readPaths: diskPaths, note, stillValid: () => false, release: async () => {} };
}

async function tryReflink(diskPaths: string[], options: SnapshotOptions): Promise<DiskSnapshot | null> {
  const clones: string[] = [];
  const release = async () => {
    for (const clone of clones.splice(0)) await fs.rm(clone, { force: true }).catch(() => undefined);
  };
  const takenAt = Date.now();
  try {
    for (const diskPath of diskPaths) {
      const clone = path.join(path.dirname(diskPath), `.ferry-snapshot-${options.jobId}-${path.basename(diskPath)}`);
      clones.push(clone);
      await fs.copyFile(diskPath, clone, fs.constants.COPYFILE_FICLONE_FORCE);
    }
  } catch (error) {
    await release();
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'EXDEV' && code !== 'EINVAL' && code !== 'ENOSYS') {
      options.log.warn(`reflink snapshot failed: ${(error as Error).message}`);
    }
    return null;
  }
  const one = diskPaths.length === 1;
  return {
    method: 'reflink',
    atOneInstant: one,
    takenAt,
    readPaths: [...clones],
    note: one ? null : 'disk images were cloned one after another: one instant only if a pre-point hook held the machine quiet',
    stillValid: () => one,
    release,
  };
}

interface Mount {
  mountPoint: string;
  device: string; // "major:minor"
}

async function mountsOf(devices: Set<string>): Promise<Mount[]> {
  const text = await fs.readFile('/proc/self/mountinfo', 'utf8');
  const mounts: Mount[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    if (fields.length > 4 && devices.has(fields[2]!)) mounts.push({ device: fields[2]!, mountPoint: fields[4]!.replace(/\\040/g, ' ') });
  }
  return mounts;
}

/** "major:minor" of a block device and of each of its partitions. */
async function deviceAndPartitions(rdev: number): Promise<string[]> {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 1048576) & 0xfff) << 8);
  const self = `${major}:${minor}`;
  const sysPath = await fs.realpath(`/sys/dev/block/${self}`).catch(() => null);
  if (!sysPath) return [self];
  const numbers = [self];
  for (const entry of await fs.readdir(sysPath).catch(() => [] as string[])) {
    const dev = await fs.readFile(path.join(sysPath, entry, 'dev'), 'utf8').catch(() => null);
    if (dev && (await fs.stat(path.join(sysPath, entry, 'partition')).then(() => true, () => false))) numbers.push(dev.trim());
  }
  return numbers;
}

async function tryFreeze(diskPaths: string[], rdevs: number[], options: SnapshotOptions): Promise<DiskSnapshot | string> {
  const devices = new Set((await Promise.all(rdevs.map(deviceAndPartitions))).flat());
  const mounts = await mountsOf(devices);
  const mountPoints = [...new Set(mounts.map((mount) => mount.mountPoint))];
  // Every disk must have a mounted file system to freeze; an unmounted one may be written by anything.
  for (const [position, rdev] of rdevs.entries()) {
    const own = new Set(await deviceAndPartitions(rdev));
    if (!mounts.some((mount) => own.has(mount.device))) return `disk ${diskPaths[position]} has no mounted file system to freeze: read live`;
  }
  const agentDevice = (await fs.stat(options.agentDataDir).catch(() => null))?.dev;
  for (const mountPoint of mountPoints) {
    if (mountPoint === '/') return 'will not freeze the root file system: read live';
    if (agentDevice !== undefined && (await fs.stat(mountPoint)).dev === agentDevice) {
      return `will not freeze ${mountPoint}: it holds the agent's own data directory: read live`;
    }
  }
  const frozen: { mountPoint: string; watchdog: ReturnType<typeof spawn> }[] = [];
  const thawAll = async () => {
    for (const { mountPoint, watchdog } of frozen.splice(0)) {
      try {
        process.kill(-watchdog.pid!, 'SIGKILL');
      } catch {
        // the watchdog already thawed and exited
      }
      await run('fsfreeze', ['--unfreeze', mountPoint]).catch(() => undefined); // EINVAL when already thawed
    }
  };
  const takenAt = Date.now();
  try {
    for (const mountPoint of mountPoints) {
      // Armed before freezing: if this process dies, the file system is thawed anyway.
      const watchdog = spawn('sh', ['-c', `sleep ${options.maxFreezeSeconds}; fsfreeze --unfreeze "$0"`, mountPoint], { detached: true, stdio: 'ignore' });
      watchdog.unref();
      frozen.push({ mountPoint, watchdog });
      await run('fsfreeze', ['--freeze', mountPoint], { timeout: 30_000 });
    }
  } catch (error) {
    await thawAll();
    return `fsfreeze failed (${(error as Error).message.split('\n')[0]}): read live`;
  }
  const deadline = takenAt + options.maxFreezeSeconds * 1000 - 1000;
  return {
    method: 'fsfreeze',
    atOneInstant: true,
    takenAt,
    readPaths: diskPaths,
    note: null,
    stillValid: () => Date.now() < deadline,
    release: thawAll,
  };
}
