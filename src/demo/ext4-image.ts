/**
 * ext4 disk images without root, through e2fsprogs: `mke2fs -d` builds a file system from a directory,
 * `debugfs -w` changes files inside an image, `debugfs -R cat` reads them, `e2fsck -fn` checks one.
 * Used by the demo's sample machines and by the tests.
 */
import { execFile } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { FerryError } from '../errors.js';

const run = promisify(execFile);

/** Finds an e2fsprogs tool on PATH or in /sbin, /usr/sbin; throws with the package to install. */
export function e2fsTool(name: 'mke2fs' | 'debugfs' | 'e2fsck'): string {
  for (const directory of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin']) {
    const candidate = path.join(directory, name);
    if (directory && existsSync(candidate)) return candidate;
  }
  throw new FerryError('io-error', `${name} not found: install e2fsprogs (apt-get install e2fsprogs)`, { retryable: false });
}

/** Builds an ext4 image of `sizeBytes` at `imagePath` holding the files under `sourceDir`. */
export async function makeExt4Image(imagePath: string, sizeBytes: number, sourceDir: string, label = 'ferry'): Promise<void> {
  await fs.rm(imagePath, { force: true });
  await run(e2fsTool('mke2fs'), ['-q', '-F', '-t', 'ext4', '-L', label, '-E', 'root_owner=0:0', '-d', sourceDir, imagePath, `${Math.floor(sizeBytes / 1024)}k`]);
}

/** Replaces (or creates) files inside an image: each `fsPath` gets the bytes of `data`. Parent directories must exist. */
export async function writeFilesInImage(imagePath: string, files: { fsPath: string; data: string | Uint8Array }[]): Promise<void> {
  const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-debugfs-'));
  try {
    const commands: string[] = [];
    for (const [position, file] of files.entries()) {
      const local = path.join(scratch, `file${position}`);
      await fs.writeFile(local, file.data);
      const directory = path.posix.dirname(file.fsPath);
      commands.push(`cd ${directory}`, `rm ${path.posix.basename(file.fsPath)}`, `write ${local} ${path.posix.basename(file.fsPath)}`);
    }
    const commandFile = path.join(scratch, 'commands');
    await fs.writeFile(commandFile, `${commands.join('\n')}\n`);
    await run(e2fsTool('debugfs'), ['-w', '-f', commandFile, imagePath]);
  } finally {
    await fs.rm(scratch, { recursive: true, force: true });
  }
}

/** Reads one file out of an image; throws io-error if it does not exist there. */
export async function readFileInImage(imagePath: string, fsPath: string): Promise<Buffer> {
  const { stdout, stderr } = await run(e2fsTool('debugfs'), ['-R', `cat ${fsPath}`, imagePath], { encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 });
  if (stdout.length === 0 && /not found|File not found/i.test(stderr.toString())) {
    throw new FerryError('io-error', `${fsPath} not found in ${imagePath}`);
  }
  return stdout;
}

/** Runs `e2fsck -fn` (force, read-only); resolves with its verdict and output. */
export async function checkExt4Image(imagePath: string): Promise<{ clean: boolean; output: string }> {
  try {
    const { stdout, stderr } = await run(e2fsTool('e2fsck'), ['-fn', imagePath]);
    return { clean: true, output: `${stdout}${stderr}` };
  } catch (error) {
    const failure = error as { stdout?: string; stderr?: string };
    return { clean: false, output: `${failure.stdout ?? ''}${failure.stderr ?? ''}` };
  }
}
