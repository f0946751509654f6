/**
 * The disk format registry (src/disks/formats.ts): every format qemu-img makes is recognised by its
 * bytes (a fixed VHD by its footer at the end) and opens to the same disk; "format:subformat" names
 * find their writer or are refused saying what exists.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openDiskImage, parseFormatSpec, sniffDiskFormat, writerFor } from '../../src/disks/formats.js';
import { makeSourceDisk, qemuImg, readAll, requireQemuImg } from './disk-image-conformance.js';
import { ferryError, makeTempDir } from './helpers.js';

describe('disk format registry', () => {
  let directory = '';
  let source = '';
  before(async () => {
    directory = await makeTempDir('ferry-formats-');
    source = await makeSourceDisk(directory, 16);
  });
  after(() => fs.rm(directory, { recursive: true, force: true }));

  const cases = [
    { name: 'raw', qemu: ['-O', 'raw'], format: 'raw' },
    { name: 'vhd-fixed', qemu: ['-O', 'vpc', '-o', 'subformat=fixed,force_size=on'], format: 'vhd' },
    { name: 'vhd-dynamic', qemu: ['-O', 'vpc', '-o', 'subformat=dynamic'], format: 'vhd' },
    { name: 'vhdx', qemu: ['-O', 'vhdx'], format: 'vhdx' },
    { name: 'vmdk-stream', qemu: ['-O', 'vmdk', '-o', 'subformat=streamOptimized'], format: 'vmdk' },
    { name: 'vmdk-flat', qemu: ['-O', 'vmdk', '-o', 'subformat=monolithicFlat'], format: 'vmdk' },
    { name: 'qcow2', qemu: ['-O', 'qcow2'], format: 'qcow2' },
  ];
  for (const each of cases) {
    test(`${each.name}: sniffed as ${each.format} and opened to the same disk`, async (t) => {
      if (!(await requireQemuImg(t))) return;
      const image = path.join(directory, `${each.name}.img`);
      await qemuImg(['convert', '-f', 'raw', ...each.qemu, source, image]);
      assert.equal(await sniffDiskFormat(image), each.format);
      const reader = await openDiskImage(image);
      try {
        assert.equal(reader.format, each.format);
        const content = await readAll(reader);
        const expected = await fs.readFile(source);
        assert.ok(content.subarray(0, expected.length).equals(expected));
      } finally {
        await reader.close();
      }
    });
  }

  test('format names: known ones find their writer and default subformat; others are refused naming what exists', () => {
    assert.deepEqual(parseFormatSpec('vhd:fixed'), { format: 'vhd', subformat: 'fixed' });
    assert.equal(writerFor('vhd').subformat, 'dynamic');
    assert.equal(writerFor('vhd:fixed').subformat, 'fixed');
    assert.equal(writerFor('vmdk').subformat, 'streamOptimized');
    assert.throws(() => writerFor('vdi'), ferryError('invalid-request', ["unknown disk format 'vdi'", 'raw', 'qcow2']));
    assert.throws(() => writerFor('vmdk:monolithicFlat'), ferryError('invalid-request', ['streamOptimized', "not 'monolithicFlat'"]));
  });

  test('a missing file is disk-unreadable naming it', async () => {
    await assert.rejects(openDiskImage(path.join(directory, 'nope.vmdk')), ferryError('disk-unreadable', ['nope.vmdk']));
  });
});
