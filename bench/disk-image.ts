/**
 * The benchmark's disk: a raw image holding a realistic ext4 file system, built without root by
 * `mke2fs -d` from a generated tree, and the seeded block overwrites of the incremental cycles.
 *
 * The tree mixes what a server's disk holds: text (logs, pages, sources, configs; compressible),
 * incompressible binaries (executables, libraries, packed data), duplicated files (a package cache,
 * a backup copy of a directory) and many small files; the rest of the disk stays free (zeros). Every
 * byte comes from the seed, so two runs with the same size and seed build the same files. The image
 * is fully allocated, like a real block device: no holes for a tool to skip.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { seededRandom } from '../src/demo/sample-machines.js';
import { run } from './measure.js';

/** The demo's seeded PRNG (mulberry32), re-exported for the other bench modules. */
export { seededRandom };

/** A seeded stream of incompressible bytes (AES-256-CTR keystream). */
export class RandomBytes {
  private readonly cipher;
  constructor(seed: string) {
    const key = createHash('sha256').update(`ferry-bench:${seed}`).digest();
    this.cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  }
  next(length: number): Buffer {
    return this.cipher.update(Buffer.alloc(length));
  }
}

/** Words of a made-up language: a few thousand, so text compresses like real text (about 3:1). */
function vocabulary(random: () => number): Buffer[] {
  const syllables = 'ka ri to ne sa mu lo pe di va ro ze in an or et ul is ba gu fe mo ti ra en'.split(' ');
  const words: Buffer[] = [];
  for (let n = 0; n < 4000; n++) {
    let word = '';
    const count = 1 + Math.floor(random() * 4);
    for (let s = 0; s < count; s++) word += syllables[Math.floor(random() * syllables.length)];
    words.push(Buffer.from(word));
  }
  return words;
}

const LOG_LEVELS = ['INFO', 'INFO', 'INFO', 'DEBUG', 'WARN', 'ERROR'].map((level) => Buffer.from(level));

/** `length` bytes of text: prose lines, or log lines with timestamps and numbers. */
function text(random: () => number, words: Buffer[], length: number, style: 'prose' | 'log'): Buffer {
  const out = Buffer.allocUnsafe(length + 1024); // room for the last line
  let at = 0;
  let clock = 1_700_000_000 + Math.floor(random() * 10_000_000);
  while (at < length) {
    if (style === 'log') {
      clock += Math.floor(random() * 5);
      at += out.write(`${new Date(clock * 1000).toISOString()} `, at, 'latin1');
      const level = LOG_LEVELS[Math.floor(random() * LOG_LEVELS.length)]!;
      level.copy(out, at);
      at += level.length;
      at += out.write(` pid=${1000 + Math.floor(random() * 3000)} `, at, 'latin1');
    }
    const count = 5 + Math.floor(random() * 12);
    for (let w = 0; w < count; w++) {
      const word = words[Math.floor(random() * words.length)]!;
      word.copy(out, at);
      at += word.length;
      out[at++] = w === count - 1 ? 0x0a : random() < 0.08 ? 0x2c : 0x20;
      if (w === count - 1) break;
      if (random() < 0.05) at += out.write(`${Math.floor(random() * 100000)} `, at, 'latin1');
    }
  }
  return out.subarray(0, length);
}

/** What the generated tree holds, in bytes. */
export interface TreeSummary {
  files: number;
  textBytes: number;
  binaryBytes: number;
  duplicateBytes: number;
  smallFileBytes: number;
  totalBytes: number;
}

/**
 * Writes about `budget` bytes of files under `root`: 40% text, 35% binaries, 15% duplicates of
 * earlier files, 10% small files (0.2-8 KiB).
 */
export async function generateTree(root: string, budget: number, seed: number): Promise<TreeSummary> {
  const random = seededRandom(seed);
  const words = vocabulary(random);
  const summary: TreeSummary = { files: 0, textBytes: 0, binaryBytes: 0, duplicateBytes: 0, smallFileBytes: 0, totalBytes: 0 };
  const written: string[] = [];
  const put = async (relative: string, data: Buffer, kind: 'textBytes' | 'binaryBytes' | 'duplicateBytes' | 'smallFileBytes') => {
    const target = path.join(root, relative);
    await fs.mkdir(path.dirname(target), { recursive: true });
    await fs.writeFile(target, data);
    summary.files++;
    summary[kind] += data.length;
    summary.totalBytes += data.length;
    if (kind !== 'smallFileBytes') written.push(relative);
  };
  const size = (min: number, max: number) => Math.floor(min * Math.pow(max / min, random())); // log-uniform
  const cap = (bytes: number, left: number) => Math.max(1, Math.min(bytes, left));

  // Text: logs (large), documentation and web pages (medium), sources.
  const textBudget = budget * 0.4;
  for (let n = 0; summary.textBytes < textBudget; n++) {
    const left = textBudget - summary.textBytes;
    const pick = random();
    if (pick < 0.3) await put(`var/log/app/service-${n}.log`, text(random, words, cap(size(512 * 1024, 24 * 2 ** 20), left), 'log'), 'textBytes');
    else if (pick < 0.6) await put(`usr/share/doc/pkg-${n % 97}/guide-${n}.txt`, text(random, words, cap(size(8 * 1024, 1024 * 1024), left), 'prose'), 'textBytes');
    else if (pick < 0.8) await put(`srv/www/site-${n % 13}/page-${n}.html`, text(random, words, cap(size(4 * 1024, 256 * 1024), left), 'prose'), 'textBytes');
    else await put(`home/dev/src/module-${n % 31}/file-${n}.c`, text(random, words, cap(size(2 * 1024, 128 * 1024), left), 'prose'), 'textBytes');
  }
  // Binaries: executables and libraries (medium), packed data and archives (large).
  const binaryBudget = budget * 0.35;
  for (let n = 0; summary.binaryBytes < binaryBudget; n++) {
    const left = binaryBudget - summary.binaryBytes;
    const pick = random();
    const bytes = new RandomBytes(`${seed}:bin:${n}`);
    if (pick < 0.5) await put(`usr/lib/x86_64-linux-gnu/lib${n}.so`, bytes.next(cap(size(32 * 1024, 4 * 2 ** 20), left)), 'binaryBytes');
    else if (pick < 0.8) await put(`usr/bin/tool-${n}`, bytes.next(cap(size(16 * 1024, 2 * 2 ** 20), left)), 'binaryBytes');
    else await put(`opt/app/data/blob-${n}.pack`, bytes.next(cap(size(4 * 2 ** 20, 48 * 2 ** 20), left)), 'binaryBytes');
  }
  // Duplicates: whole-file copies of earlier files under other paths.
  const duplicateBudget = budget * 0.15;
  for (let n = 0; summary.duplicateBytes < duplicateBudget && written.length > 0 && n < 100_000; n++) {
    const source = written[Math.floor(random() * written.length)]!;
    const data = await fs.readFile(path.join(root, source));
    if (data.length > duplicateBudget - summary.duplicateBytes + 1024 * 1024) continue;
    await put(`${random() < 0.5 ? 'var/cache/pkgs' : 'home/dev/backup'}/${n}-${path.basename(source)}`, data, 'duplicateBytes');
  }
  // Small files: configs, dotfiles, metadata.
  const smallBudget = budget * 0.1;
  for (let n = 0; summary.smallFileBytes < smallBudget; n++) {
    await put(`etc/conf.d/group-${n % 211}/item-${n}.conf`, text(random, words, size(200, 8 * 1024), 'prose'), 'smallFileBytes');
  }
  return summary;
}

/** Finds an e2fsprogs tool on PATH or in /sbin, /usr/sbin. */
export async function mke2fsPath(): Promise<string | null> {
  for (const directory of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin']) {
    if (!directory) continue;
    const candidate = path.join(directory, 'mke2fs');
    if (await fs.access(candidate).then(() => true, () => false)) return candidate;
  }
  return null;
}

/**
 * Builds a fully allocated raw image of `sizeBytes` at `imagePath` with an ext4 file system holding
 * the files under `treeDir`. The file is zero-filled first and mke2fs is told not to discard, so
 * free space is real zeros on disk, as on a block device.
 */
export async function buildImage(imagePath: string, sizeBytes: number, treeDir: string): Promise<void> {
  const mke2fs = await mke2fsPath();
  if (!mke2fs) throw new Error('mke2fs not found: apt-get install -y e2fsprogs');
  await fs.rm(imagePath, { force: true });
  const handle = await fs.open(imagePath, 'w');
  const zeros = Buffer.alloc(8 * 2 ** 20);
  for (let offset = 0; offset < sizeBytes; offset += zeros.length) await handle.write(zeros, 0, Math.min(zeros.length, sizeBytes - offset), offset);
  await handle.sync();
  await handle.close();
  await run(mke2fs, ['-q', '-F', '-t', 'ext4', '-L', 'bench', '-E', 'nodiscard,root_owner=0:0', '-d', treeDir, imagePath, `${sizeBytes / 1024}k`]);
}

/**
 * Overwrites `fraction` of the image's 4 KiB blocks, chosen at random without repeats, with random
 * bytes. The same `seed` always changes the same blocks to the same bytes.
 */
export async function overwriteRandomBlocks(imagePath: string, fraction: number, seed: string): Promise<{ blocks: number; bytes: number }> {
  const { size } = await fs.stat(imagePath);
  const blockCount = Math.floor(size / 4096);
  const wanted = Math.round(blockCount * fraction);
  const random = seededRandom(Number.parseInt(createHash('sha256').update(seed).digest('hex').slice(0, 8), 16));
  const chosen = new Set<number>();
  while (chosen.size < wanted) chosen.add(Math.floor(random() * blockCount));
  const blocks = [...chosen].sort((a, b) => a - b);
  const data = new RandomBytes(`change:${seed}`).next(blocks.length * 4096);
  const handle = await fs.open(imagePath, 'r+');
  try {
    for (const [n, block] of blocks.entries()) await handle.write(data, n * 4096, 4096, block * 4096);
  } finally {
    await handle.close();
  }
  return { blocks: blocks.length, bytes: blocks.length * 4096 };
}
