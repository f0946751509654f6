/**
 * The peer tools Ferry is compared with, each run as its own documented command line:
 *
 *   cp IMAGE DEST                                        the local copy limit
 *   rsync IMAGE DEST                                     initial copy
 *   rsync --inplace --no-whole-file --stats IMAGE DEST   delta transfer
 *   restic backup IMAGE --json                           (repo: restic init, RESTIC_PASSWORD set)
 *   borg create --stats --json REPO::NAME IMAGE          (repo: borg init -e none)
 *
 * A tool that writes a plain file (cp, rsync) gets that file fsynced before the clock stops, as
 * Ferry's store and restic's and borg's repositories are durable when they return.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fsyncFile, run } from './measure.js';

/** Commands the benchmark needs, and the Debian package of each. */
const TOOLS: { command: string; apt: string; versionArgs: string[] }[] = [
  { command: 'cp', apt: 'coreutils', versionArgs: ['--version'] },
  { command: 'rsync', apt: 'rsync', versionArgs: ['--version'] },
  { command: 'restic', apt: 'restic', versionArgs: ['version'] },
  { command: 'borg', apt: 'borgbackup', versionArgs: ['--version'] },
  { command: 'mke2fs', apt: 'e2fsprogs', versionArgs: ['-V'] },
  { command: 'du', apt: 'coreutils', versionArgs: ['--version'] },
];

async function which(command: string): Promise<string | null> {
  for (const directory of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin']) {
    if (!directory) continue;
    const candidate = path.join(directory, command);
    if (await fs.access(candidate, fs.constants.X_OK).then(() => true, () => false)) return candidate;
  }
  return null;
}

/** Finds every tool; returns their versions, or throws naming what to install. */
export async function checkTools(): Promise<Record<string, string>> {
  const missing = [];
  const versions: Record<string, string> = {};
  for (const tool of TOOLS) {
    const found = await which(tool.command);
    if (!found) {
      missing.push(tool);
      continue;
    }
    const output = await run(found, tool.versionArgs).catch((error: Error) => ({ stdout: '', stderr: error.message }));
    versions[tool.command] = `${output.stdout}${output.stderr}`.split('\n').find((line) => line.trim())?.trim() ?? '?';
  }
  if (missing.length) {
    const names = missing.map((tool) => tool.command).join(', ');
    const packages = [...new Set(missing.map((tool) => tool.apt))].join(' ');
    throw new Error(`missing peer tools: ${names}. Install them with:\n  apt-get install -y ${packages}`);
  }
  return versions;
}

/** cp of the image to `dest` (then fsync). */
export async function cpCopy(image: string, dest: string): Promise<void> {
  await fs.rm(dest, { force: true });
  await run('cp', [image, dest]);
  await fsyncFile(dest);
}

/** rsync statistics that matter here. */
export interface RsyncStats {
  literalBytes: number;
  matchedBytes: number;
  totalBytesSent: number;
  totalBytesReceived: number;
}

function parseRsyncStats(output: string): RsyncStats {
  const number = (label: string) => Number((new RegExp(`${label}: ([\\d,]+)`).exec(output)?.[1] ?? '0').replaceAll(',', ''));
  return { literalBytes: number('Literal data'), matchedBytes: number('Matched data'), totalBytesSent: number('Total bytes sent'), totalBytesReceived: number('Total bytes received') };
}

/** `rsync IMAGE DEST` (then fsync): the initial copy. */
export async function rsyncInitial(image: string, dest: string): Promise<RsyncStats> {
  await fs.rm(dest, { force: true });
  const { stdout } = await run('rsync', ['--stats', image, dest]);
  await fsyncFile(dest);
  return parseRsyncStats(stdout);
}

/** `rsync --inplace --no-whole-file --stats IMAGE DEST` (then fsync): the delta transfer. */
export async function rsyncDelta(image: string, dest: string): Promise<RsyncStats> {
  const { stdout } = await run('rsync', ['--inplace', '--no-whole-file', '--stats', image, dest]);
  await fsyncFile(dest);
  return parseRsyncStats(stdout);
}

/** A restic repository under the work dir. */
export class Restic {
  constructor(private readonly repo: string, private readonly cacheDir: string) {}

  private get env(): NodeJS.ProcessEnv {
    return { ...process.env, RESTIC_REPOSITORY: this.repo, RESTIC_PASSWORD: 'ferry-bench', RESTIC_CACHE_DIR: this.cacheDir, RESTIC_PROGRESS_FPS: '0.2' };
  }

  async init(): Promise<void> {
    await fs.rm(this.repo, { recursive: true, force: true });
    await run('restic', ['init'], { env: this.env });
  }

  /** The repository format version (2 compresses with zstd; 1 does not compress). */
  async repositoryVersion(): Promise<number> {
    const { stdout } = await run('restic', ['cat', 'config'], { env: this.env });
    return (JSON.parse(stdout) as { version: number }).version;
  }

  /** `restic backup IMAGE --json`; returns the summary (data_added: bytes new to the repo, before compression). */
  async backup(image: string): Promise<{ dataAdded: number; totalBytesProcessed: number }> {
    const { stdout } = await run('restic', ['backup', image, '--json'], { env: this.env });
    const summary = stdout
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { message_type?: string; data_added?: number; total_bytes_processed?: number })
      .find((message) => message.message_type === 'summary');
    if (!summary) throw new Error(`restic backup printed no summary: ${stdout.slice(-500)}`);
    return { dataAdded: summary.data_added ?? 0, totalBytesProcessed: summary.total_bytes_processed ?? 0 };
  }
}

/** A borg repository under the work dir (no encryption, default lz4 compression). */
export class Borg {
  private archives = 0;
  constructor(private readonly repo: string, private readonly baseDir: string) {}

  private get env(): NodeJS.ProcessEnv {
    return { ...process.env, BORG_BASE_DIR: this.baseDir, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes', BORG_PASSPHRASE: '' };
  }

  async init(): Promise<void> {
    await fs.rm(this.repo, { recursive: true, force: true });
    await run('borg', ['init', '-e', 'none', this.repo], { env: this.env });
  }

  /** `borg create --stats --json REPO::cN IMAGE`; deduplicatedSize = bytes this archive added (compressed). */
  async create(image: string): Promise<{ deduplicatedSize: number; compressedSize: number; originalSize: number }> {
    const name = `c${this.archives++}`;
    const { stdout } = await run('borg', ['create', '--stats', '--json', `${this.repo}::${name}`, image], { env: this.env });
    const stats = (JSON.parse(stdout) as { archive: { stats: { deduplicated_size: number; compressed_size: number; original_size: number } } }).archive.stats;
    return { deduplicatedSize: stats.deduplicated_size, compressedSize: stats.compressed_size, originalSize: stats.original_size };
  }
}
