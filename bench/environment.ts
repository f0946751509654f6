/** What the benchmark ran on: machine, kernel, disk, file system, and the Ferry build measured. */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run } from './measure.js';

export interface Environment {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  kernel: string;
  os: string;
  node: string;
  /** Mount source, file system type and options of the work dir. */
  workDirFs: string;
  /** lsblk line of the underlying disk (name, rotational, size, model). */
  disk: string;
  ferry: { bin: string; commit: string; dirty: boolean | null };
}

async function quiet(command: string, args: string[]): Promise<string> {
  return run(command, args).then((output) => output.stdout.trim(), () => '');
}

/** Describes this machine and the Ferry build at `ferryBin`. */
export async function describeEnvironment(workDir: string, ferryBin: string): Promise<Environment> {
  const release = await fs.readFile('/etc/os-release', 'utf8').catch(() => '');
  const mount = await quiet('findmnt', ['-n', '-o', 'SOURCE,FSTYPE,OPTIONS', '-T', workDir]);
  const source = mount.split(/\s+/)[0] ?? '';
  const disk = source.startsWith('/dev/') ? await quiet('lsblk', ['-d', '-n', '-o', 'NAME,ROTA,SIZE,MODEL', source]) : '';
  const repo = path.resolve(path.dirname(ferryBin), '..');
  const commit = await quiet('git', ['-C', repo, 'rev-parse', '--short', 'HEAD']);
  const status = commit ? await quiet('git', ['-C', repo, 'status', '--porcelain', '--', 'src', 'bin', 'package.json']) : '';
  return {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? '?',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    os: /PRETTY_NAME="([^"]+)"/.exec(release)?.[1] ?? os.type(),
    node: process.version,
    workDirFs: mount,
    disk: disk ? `${disk} (ROTA 1 = rotational as reported by the kernel)` : '?',
    ferry: { bin: ferryBin, commit: commit || 'unknown', dirty: commit ? status.length > 0 : null },
  };
}
