/**
 * The demo's sample machines: real ext4 disk images filled with generated but realistic content:
 * text (configs, pages, logs), incompressible binaries, duplicated files and free space.
 * Content is deterministic (a seeded generator), so two runs build identical disks.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { ensureDirectory } from '../util/durable-fs.js';
import { makeExt4Image } from './ext4-image.js';

/** One sample machine: its name and disk image paths. */
export interface SampleMachine {
  name: string;
  disks: string[];
}

const words = 'ferry replica site recovery point chunk disk machine policy agent server store index volume block sector page cache journal write read flush sync commit'.split(' ');

/** A small seeded PRNG (mulberry32). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function text(random: () => number, bytes: number): string {
  let out = '';
  while (out.length < bytes) {
    const line = Array.from({ length: 6 + Math.floor(random() * 10) }, () => words[Math.floor(random() * words.length)]).join(' ');
    out += `${line}\n`;
  }
  return out.slice(0, bytes);
}

function binary(random: () => number, bytes: number): Buffer {
  const data = Buffer.alloc(Math.ceil(bytes / 4) * 4);
  for (let offset = 0; offset < data.length; offset += 4) data.writeUInt32LE(Math.floor(random() * 4294967296), offset);
  return data.subarray(0, bytes);
}

/** Writes a tree of realistic files under `root`, about `megabytes` in all. */
export async function generateFileTree(root: string, seed: number, megabytes: number): Promise<void> {
  const random = seededRandom(seed);
  const budget = megabytes * 1024 * 1024;
  let used = 0;
  const put = async (relative: string, data: string | Buffer) => {
    const target = path.join(root, relative);
    await ensureDirectory(path.dirname(target));
    await fs.writeFile(target, data);
    used += data.length;
  };
  for (let n = 0; n < 20; n++) await put(`etc/app/conf-${n}.ini`, text(random, 2000 + Math.floor(random() * 6000)));
  for (let n = 0; n < 30 && used < budget * 0.4; n++) await put(`var/www/page-${n}.html`, `<html><body><pre>\n${text(random, 20_000 + Math.floor(random() * 60_000))}</pre></body></html>\n`);
  const shared = binary(random, 512 * 1024);
  for (let n = 0; n < 6 && used < budget * 0.8; n++) await put(`usr/bin/tool-${n}`, binary(random, 256 * 1024 + Math.floor(random() * 512 * 1024)));
  for (let n = 0; n < 3; n++) await put(`srv/dup/copy-${n}.bin`, shared); // duplicates: stored once
  await put('var/log/app.log', text(random, Math.max(1000, Math.min(budget - used, 1024 * 1024))));
  await ensureDirectory(path.join(root, 'app'));
  await put('app/counter.txt', 'no writes yet\n');
  await put('app/journal.log', '');
}

/** Builds `machines` under `directory` if they are not there yet; returns them. */
export async function buildSampleMachines(directory: string): Promise<SampleMachine[]> {
  const specs = [
    { name: 'web-01', disks: [{ sizeMiB: 64, contentMiB: 8 }] },
    { name: 'db-01', disks: [{ sizeMiB: 64, contentMiB: 6 }, { sizeMiB: 32, contentMiB: 3 }] },
  ];
  const machines: SampleMachine[] = [];
  for (const [machineNumber, spec] of specs.entries()) {
    const machineDirectory = path.join(directory, spec.name);
    await ensureDirectory(machineDirectory);
    const disks: string[] = [];
    for (const [position, disk] of spec.disks.entries()) {
      const image = path.join(machineDirectory, `disk${position}.img`);
      disks.push(image);
      if (await fs.stat(image).then(() => true, () => false)) continue;
      const tree = path.join(machineDirectory, `.tree${position}`);
      await fs.rm(tree, { recursive: true, force: true });
      await generateFileTree(tree, 1000 * machineNumber + position + 1, disk.contentMiB);
      await makeExt4Image(image, disk.sizeMiB * 1024 * 1024, tree, `${spec.name}-${position}`);
      await fs.rm(tree, { recursive: true, force: true });
    }
    machines.push({ name: spec.name, disks });
  }
  return machines;
}
