/**
 * Converting between formats (src/disks/convert.ts): every pair of a qemu-made source (VMDK
 * streamOptimized, VHDX, compressed qcow2, dynamic VHD, raw) and a written target (raw, VHD fixed and
 * dynamic, VHDX, VMDK, qcow2) gives an image qemu-img compares equal to the original disk.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { convertImage } from '../../src/disks/convert.js';
import { makeSourceDisk, qemuImg, requireQemuImg } from './disk-image-conformance.js';
import { makeTempDir } from './helpers.js';

const sources = [
  { name: 'vmdk', qemu: ['-O', 'vmdk', '-o', 'subformat=streamOptimized'] },
  { name: 'vhdx', qemu: ['-O', 'vhdx'] },
  { name: 'qcow2', qemu: ['-O', 'qcow2', '-c'] },
  { name: 'vhd', qemu: ['-O', 'vpc', '-o', 'subformat=dynamic'] },
  { name: 'raw', qemu: ['-O', 'raw'] },
];
const targets = [
  { spec: 'raw', qemu: 'raw' },
  { spec: 'vhd:fixed', qemu: 'vpc' },
  { spec: 'vhd:dynamic', qemu: 'vpc' },
  { spec: 'vhdx', qemu: 'vhdx' },
  { spec: 'vmdk', qemu: 'vmdk' },
  { spec: 'qcow2', qemu: 'qcow2' },
];

describe('image conversion', () => {
  let directory = '';
  let disk = '';
  before(async () => {
    directory = await makeTempDir('ferry-convert-');
    disk = await makeSourceDisk(directory, 16);
  });
  after(() => fs.rm(directory, { recursive: true, force: true }));

  for (const source of sources) {
    test(`${source.name} to every written format: qemu-img compares each equal to the disk`, async (t) => {
      if (!(await requireQemuImg(t))) return;
      const sourceImage = path.join(directory, `image.${source.name}`);
      await qemuImg(['convert', '-f', 'raw', ...source.qemu, disk, sourceImage]);
      for (const target of targets) {
        const output = path.join(directory, `${source.name}-to-${target.spec.replace(':', '-')}.img`);
        const result = await convertImage(sourceImage, output, target.spec);
        assert.ok(result.source.size >= 16 * 1024 * 1024, `virtual size ${result.source.size} (VHD rounds up to its geometry)`);
        await qemuImg(['compare', '-f', target.qemu, '-F', 'raw', output, disk]);
        await fs.rm(output);
      }
    });
  }
});
