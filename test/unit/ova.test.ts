/**
 * OVA packages (src/disks/ova.ts): an OVA written from a real ext4 disk is a tar that GNU tar lists in
 * order and extracts, its VMDKs compare equal with qemu-img, its OVF reads back as the machine, its
 * manifest's digests match; disks are read in place; hostile OVFs and archives are refused.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, test } from 'node:test';
import type { DiskImageInput } from '../../src/disks/disk-image.js';
import { listOva, openOvaDisk, openOvaMember, readOvf, writeOva, type OvaMachine } from '../../src/disks/ova.js';
import { FerryError, type ErrorCode } from '../../src/errors.js';
import { makeSourceDisk, qemuImg, rawInput, readAll, requireQemuImg } from './disk-image-conformance.js';
import { tempDirFor } from './helpers.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

const machine: OvaMachine = { name: 'web server 01', cpus: 4, memoryMiB: 6144, nics: [{ network: 'VM Network' }, { network: 'backend & storage' }, { network: 'VM Network' }] };

function rejectsWith(attempt: () => unknown, code: ErrorCode, pattern: RegExp): void {
  assert.throws(attempt, (error: unknown) => {
    assert.ok(error instanceof FerryError, `a FerryError, not ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.match(error.message, pattern);
    return true;
  });
}

describe('ova: writing', () => {
  test('an OVA of an ext4 disk and a second disk: tar lists and extracts it, qemu-img compares the disks, the OVF and manifest read back', { timeout: 60_000 }, async (t) => {
    if (!(await requireQemuImg(t))) return;
    const directory = await tempDirFor(t, 'ferry-ova-');
    const source = await makeSourceDisk(directory, 16);
    const sourceBytes = await fs.readFile(source);
    const second = Buffer.alloc(3 * MiB + 512);
    randomBytes(MiB).copy(second, MiB);
    await fs.writeFile(path.join(directory, 'second.raw'), second);
    const ova = path.join(directory, 'export.ova');
    let progress = 0;
    const size = await writeOva(ova, machine, [rawInput(sourceBytes), rawInput(second)], { onProgress: (done) => (progress = done) });
    assert.equal(size, (await fs.stat(ova)).size);
    assert.equal(size % 10240, 0, 'padded to whole tar records');
    assert.equal(progress, sourceBytes.length + second.length);

    const listing = (await run('tar', ['-tvf', ova])).stdout.trim().split('\n');
    const names = listing.map((line) => line.split(/\s+/).at(-1));
    assert.deepEqual(names, ['web_server_01.ovf', 'web_server_01-disk1.vmdk', 'web_server_01-disk2.vmdk', 'web_server_01.mf']);

    const members = await listOva(ova);
    assert.deepEqual(members.map((member) => member.name), names);
    const extracted = path.join(directory, 'extracted');
    await fs.mkdir(extracted);
    await run('tar', ['-xf', ova, '-C', extracted]);
    for (const member of members) assert.equal((await fs.stat(path.join(extracted, member.name))).size, member.size, `${member.name}'s size`);

    const disk1 = path.join(extracted, 'web_server_01-disk1.vmdk');
    const disk2 = path.join(extracted, 'web_server_01-disk2.vmdk');
    await qemuImg(['compare', '-f', 'vmdk', '-F', 'raw', disk1, source]);
    await qemuImg(['compare', '-f', 'vmdk', '-F', 'raw', disk2, path.join(directory, 'second.raw')]);
    await qemuImg(['check', '-f', 'vmdk', disk1]);

    const ovf = readOvf(await fs.readFile(path.join(extracted, 'web_server_01.ovf'), 'utf8'));
    assert.deepEqual(ovf, {
      name: machine.name,
      cpus: 4,
      memoryMiB: 6144,
      nics: machine.nics,
      disks: [
        { fileHref: 'web_server_01-disk1.vmdk', capacityBytes: sourceBytes.length },
        { fileHref: 'web_server_01-disk2.vmdk', capacityBytes: second.length },
      ],
    });
    const ovfText = await fs.readFile(path.join(extracted, 'web_server_01.ovf'), 'utf8');
    assert.match(ovfText, /ovf:format="http:\/\/www\.vmware\.com\/interfaces\/specifications\/vmdk\.html#streamOptimized"/);
    assert.match(ovfText, new RegExp(`<File ovf:href="web_server_01-disk1.vmdk" ovf:id="file1" ovf:size="${members[1]!.size}"/>`));
    assert.match(ovfText, /<rasd:ResourceSubType>lsilogic<\/rasd:ResourceSubType>/);
    if (await run('xmllint', ['--version']).then(() => true, () => false)) await run('xmllint', ['--noout', path.join(extracted, 'web_server_01.ovf')]);

    const manifest = await fs.readFile(path.join(extracted, 'web_server_01.mf'), 'utf8');
    const lines = manifest.trim().split('\n');
    assert.equal(lines.length, 3);
    for (const line of lines) {
      const match = /^SHA256\((.+)\)= ([0-9a-f]{64})$/.exec(line);
      assert.ok(match, line);
      const digest = createHash('sha256').update(await fs.readFile(path.join(extracted, match[1]!))).digest('hex');
      assert.equal(match[2], digest, `the digest of ${match[1]}`);
    }

    // The disks read in place, without extracting.
    const member = await openOvaMember(ova, 'web_server_01-disk1.vmdk');
    assert.deepEqual(member, { offset: members[1]!.offset, size: members[1]!.size });
    const reader = await openOvaDisk(ova, 'web_server_01-disk1.vmdk');
    try {
      assert.equal(reader.subformat, 'streamOptimized');
      assert.ok((await readAll(reader)).equals(sourceBytes));
      let zeroBytes = 0;
      for await (const extent of reader.extents()) if (extent.kind === 'zero') zeroBytes += extent.length;
      assert.ok(zeroBytes > sourceBytes.length / 4, 'free space is reported as holes');
    } finally {
      await reader.close();
    }
    await assert.rejects(openOvaMember(ova, 'absent.vmdk'), (error: unknown) => error instanceof FerryError && error.code === 'invalid-request');
  });

  test('without a manifest; an aborted or refused write leaves nothing behind', async (t) => {
    const directory = await tempDirFor(t, 'ferry-ova-');
    const disk = Buffer.alloc(2 * MiB);
    randomBytes(MiB).copy(disk);
    const ova = path.join(directory, 'plain.ova');
    await writeOva(ova, { ...machine, nics: [] }, [rawInput(disk)], { manifest: false });
    assert.deepEqual((await listOva(ova)).map((member) => member.name), ['web_server_01.ovf', 'web_server_01-disk1.vmdk']);
    assert.deepEqual(readOvf((await fs.readFile(ova)).subarray(512, 512 + (await listOva(ova))[0]!.size).toString('utf8')).nics, []);

    const controller = new AbortController();
    const aborting: DiskImageInput = {
      size: 4 * MiB,
      async *pieces() {
        yield { offset: 0, data: disk.subarray(0, MiB) };
        controller.abort(new Error('stop'));
        yield { offset: MiB, data: disk.subarray(MiB) };
      },
    };
    const aborted = path.join(directory, 'aborted.ova');
    await assert.rejects(writeOva(aborted, machine, [rawInput(disk), aborting], { signal: controller.signal }), /stop/);
    await assert.rejects(writeOva(aborted, { ...machine, cpus: 0 }, [rawInput(disk)]), (error: unknown) => error instanceof FerryError && error.code === 'invalid-request' && /cpus/.test(error.message));
    await assert.rejects(writeOva(aborted, machine, []), (error: unknown) => error instanceof FerryError && error.code === 'invalid-request');
    assert.deepEqual((await fs.readdir(directory)).sort(), ['plain.ova']);
  });

  test('more than 15 disks go on a second SCSI controller', async (t) => {
    const directory = await tempDirFor(t, 'ferry-ova-');
    const disks = Array.from({ length: 16 }, () => ({ size: MiB, async *pieces() {} }));
    const ova = path.join(directory, 'many.ova');
    await writeOva(ova, machine, disks, { manifest: false });
    const [descriptor] = await listOva(ova);
    const text = (await fs.readFile(ova)).subarray(descriptor!.offset, descriptor!.offset + descriptor!.size).toString('utf8');
    assert.equal(text.match(/<rasd:ResourceType>6<\/rasd:ResourceType>/g)?.length, 2);
    assert.ok(!/<rasd:AddressOnParent>7<\/rasd:AddressOnParent>\s*<rasd:ElementName>Hard Disk/.test(text), 'unit 7 is the controller');
    assert.equal(readOvf(text).disks.length, 16);
  });
});

/** A minimal OVF around `hardware` items and `extra` sections, VMware style. */
function ovfWith(options: { disks?: string; hardware?: string; prolog?: string } = {}): string {
  return `${options.prolog ?? '<?xml version="1.0" encoding="UTF-8"?>'}
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:href="vm-disk1.vmdk" ovf:id="file1" ovf:size="1000"/><File ovf:href="vm-disk2.vmdk" ovf:id="file2"/></References>
  <DiskSection><Info>Disks</Info>
    ${options.disks ?? '<Disk ovf:capacity="40" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"/><Disk ovf:capacity="1048576" ovf:diskId="vmdisk2" ovf:fileRef="file2"/>'}
  </DiskSection>
  <VirtualSystem ovf:id="vm1"><Info>A VM</Info><Name>db &amp; cache &#x41;</Name>
    <VirtualHardwareSection><Info>hw</Info>
      ${options.hardware ?? `<Item><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>8</rasd:VirtualQuantity></Item>
      <Item><rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><!-- a comment --><rasd:Connection><![CDATA[LAN <1>]]></rasd:Connection><rasd:ResourceType>10</rasd:ResourceType></Item>`}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>`;
}

describe('ova: reading OVF descriptors', () => {
  test('reads units, entity and character references, CDATA, and disks in hardware order', () => {
    assert.deepEqual(readOvf(ovfWith()), {
      name: 'db & cache A',
      cpus: 2,
      memoryMiB: 8192,
      nics: [{ network: 'LAN <1>' }],
      disks: [
        { fileHref: 'vm-disk2.vmdk', capacityBytes: MiB },
        { fileHref: 'vm-disk1.vmdk', capacityBytes: 40 * 2 ** 30 },
      ],
    });
  });

  test('DOCTYPE, entity declarations and unknown entity references are refused (no expansion)', () => {
    const laughs = '<!DOCTYPE Envelope [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>';
    rejectsWith(() => readOvf(ovfWith({ prolog: `<?xml version="1.0"?>\n${laughs}` })), 'corrupt-data', /DOCTYPE and entity declarations are refused/);
    rejectsWith(() => readOvf(ovfWith({ prolog: '<?xml version="1.0"?><!DOCTYPE x SYSTEM "file:///etc/passwd">' })), 'corrupt-data', /DOCTYPE/);
    rejectsWith(() => readOvf(ovfWith().replace('<Info>A VM</Info>', '<Info>&xxe;</Info>')), 'corrupt-data', /entity reference &xxe; is refused/);
  });

  test('absurd sizes and counts are refused', () => {
    rejectsWith(() => readOvf('<Envelope>' + ' '.repeat(5 * MiB) + '</Envelope>'), 'corrupt-data', /larger than/);
    rejectsWith(() => readOvf('<Envelope>' + '<a>'.repeat(100) + '</a>'.repeat(100) + '</Envelope>'), 'corrupt-data', /nested deeper/);
    rejectsWith(() => readOvf(ovfWith({ disks: '<Disk ovf:capacity="99999999" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"/>' })), 'corrupt-data', /more than 64 TiB/);
    rejectsWith(() => readOvf(ovfWith({ disks: '<Disk ovf:capacity="${size}" ovf:diskId="vmdisk1" ovf:fileRef="file1"/>' })), 'corrupt-data', /capacity/);
    rejectsWith(() => readOvf(ovfWith({ disks: '<Disk ovf:capacity="1" ovf:capacityAllocationUnits="furlongs" ovf:diskId="vmdisk1" ovf:fileRef="file1"/>' })), 'corrupt-data', /furlongs/);
    rejectsWith(() => readOvf(ovfWith({ hardware: '<Item><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1000000</rasd:VirtualQuantity></Item>' })), 'corrupt-data', /CPU count/);
    rejectsWith(() => readOvf(ovfWith({ hardware: '<Item><rasd:AllocationUnits>byte * 2^40</rasd:AllocationUnits><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1000</rasd:VirtualQuantity></Item>' })), 'corrupt-data', /memory size/);
  });

  test('malformed or inconsistent descriptors are refused', () => {
    rejectsWith(() => readOvf('<Envelope><a></b></Envelope>'), 'corrupt-data', /does not match/);
    rejectsWith(() => readOvf('<Envelope>'), 'corrupt-data', /ends before/);
    rejectsWith(() => readOvf('<Other/>'), 'corrupt-data', /not <Envelope>/);
    rejectsWith(() => readOvf(ovfWith({ disks: '<Disk ovf:capacity="1" ovf:diskId="vmdisk1" ovf:fileRef="file9"/>' })), 'corrupt-data', /References does not list/);
    rejectsWith(() => readOvf(ovfWith({ disks: '<Disk ovf:capacity="1" ovf:diskId="vmdisk1"/>' })), 'invalid-request', /blank disks/);
    rejectsWith(() => readOvf(ovfWith({ hardware: '<Item><rasd:HostResource>ovf:/disk/nope</rasd:HostResource><rasd:ResourceType>17</rasd:ResourceType></Item>' })), 'corrupt-data', /DiskSection does not define/);
  });
});

describe('ova: reading archives', () => {
  test('a bad header checksum or a member running past the end is refused', async (t) => {
    const directory = await tempDirFor(t, 'ferry-ova-');
    const ova = path.join(directory, 'x.ova');
    await writeOva(ova, machine, [rawInput(Buffer.alloc(MiB, 1))], { manifest: false });
    const pristine = await fs.readFile(ova);
    const damaged = path.join(directory, 'damaged.ova');
    const flipped = Buffer.from(pristine);
    flipped[3] = flipped[3]! ^ 0x20;
    await fs.writeFile(damaged, flipped);
    await assert.rejects(listOva(damaged), (error: unknown) => error instanceof FerryError && error.code === 'corrupt-data' && /bad checksum/.test(error.message) && error.message.includes(damaged));
    const members = await listOva(ova);
    await fs.writeFile(damaged, pristine.subarray(0, members[1]!.offset + 1000));
    await assert.rejects(listOva(damaged), (error: unknown) => error instanceof FerryError && error.code === 'corrupt-data' && /runs past the end/.test(error.message));
    await assert.rejects(listOva(path.join(directory, 'absent.ova')), (error: unknown) => error instanceof FerryError && error.code === 'disk-unreadable');
  });

  test('reads archives GNU tar writes: long names (pax or GNU) and directories', async (t) => {
    const directory = await tempDirFor(t, 'ferry-ova-');
    const tree = path.join(directory, 'tree');
    const longName = `${'n'.repeat(120)}.vmdk`;
    await fs.mkdir(path.join(tree, 'sub'), { recursive: true });
    await fs.writeFile(path.join(tree, 'a.ovf'), '<Envelope/>');
    await fs.writeFile(path.join(tree, longName), randomBytes(3000));
    for (const format of ['pax', 'gnu']) {
      const archive = path.join(directory, `${format}.ova`);
      await run('tar', ['--format', format, '-cf', archive, '-C', tree, 'a.ovf', longName, 'sub']);
      const members = await listOva(archive);
      assert.deepEqual(members.map((member) => [member.name, member.size]), [['a.ovf', 11], [longName, 3000]], format);
      const bytes = await fs.readFile(archive);
      assert.ok(bytes.subarray(members[1]!.offset, members[1]!.offset + 3000).equals(await fs.readFile(path.join(tree, longName))));
    }
  });
});
