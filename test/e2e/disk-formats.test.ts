/**
 * VM disk formats end to end, through the CLI with a real server (its site agent replicates imported
 * machines from their image files, agentlessly): a VMware VM (.vmx + monolithicSparse VMDK) and a Hyper-V
 * export folder (VHDX) are imported, protected, and failed over into a site that writes Azure-ready fixed
 * VHDs, which qemu-img compares equal to the source disks; a point is exported as an OVA (a tar with the
 * OVF, a streamOptimized VMDK and a manifest) and as qcow2 (qemu-img check and compare accept it); a
 * damaged image is refused at import, naming it. qemu-img comes from qemu-utils (CI installs it).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import type { MachineView } from '../../src/protocol/views.js';
import { qemuImg, requireQemuImg } from '../unit/disk-image-conformance.js';
import { ext4Disk, ferry, ferryJson, startServer, tempDir, waitFor } from './harness.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

test('import a VMware and a Hyper-V VM, replicate their images agentlessly, fail over to fixed VHDs, export OVA and qcow2', { timeout: 240_000 }, async (t) => {
  if (!(await requireQemuImg(t))) return;
  const root = await tempDir(t);
  const vmwareSource = await ext4Disk(root, 'vmw', 24, { 'data.bin': randomBytes(4 * MiB), 'etc/hostname': 'vmw-01\n' });
  const hyperVSource = await ext4Disk(root, 'hv', 20, { 'data.bin': randomBytes(3 * MiB), 'etc/hostname': 'hv-01\n' });

  // A VMware VM directory: a .vmx naming a monolithicSparse VMDK, a CD-ROM and two NICs.
  const vmDir = path.join(root, 'vmware', 'vmw-01');
  await fs.mkdir(vmDir, { recursive: true });
  await qemuImg(['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', vmwareSource, path.join(vmDir, 'vmw-01.vmdk')]);
  const vmx = ['displayName = "vmw-01"', 'numvcpus = "2"', 'memsize = "2048"', 'scsi0:0.fileName = "vmw-01.vmdk"', 'ide1:0.fileName = "/iso/x.iso"', 'ide1:0.deviceType = "cdrom-image"', 'ethernet0.present = "TRUE"', 'ethernet0.networkName = "VM Network"', 'ethernet1.present = "TRUE"', 'ethernet1.networkName = "backup"'];
  await fs.writeFile(path.join(vmDir, 'vmw-01.vmx'), vmx.join('\n') + '\n');
  // A Hyper-V export: "Virtual Hard Disks/hv-01.vhdx" (its .vmcx, a binary, is not read: CPUs and memory are given).
  const hvDir = path.join(root, 'hyper-v', 'hv-01');
  await fs.mkdir(path.join(hvDir, 'Virtual Hard Disks'), { recursive: true });
  await qemuImg(['convert', '-f', 'raw', '-O', 'vhdx', hyperVSource, path.join(hvDir, 'Virtual Hard Disks', 'hv-01.vhdx')]);

  const server = await startServer(t, path.join(root, 'server'));
  // The site agent registers as the server starts; an import before that is refused, retryable.
  let imported: MachineView | null = null;
  await waitFor(async () => {
    const attempt = await ferry(server, ['machine', 'import', path.join(vmDir, 'vmw-01.vmx'), '--json']);
    if (attempt.code === 0) imported = attempt.json().machine as MachineView;
    else if (!/site agent has not registered/.test(attempt.stderr)) throw new Error(attempt.stderr);
    return imported !== null;
  }, 'the import once the site agent has registered', 30_000);
  assert.ok(imported);
  imported = imported as MachineView;
  assert.equal(imported.agent.name, 'ferry-site-agent', 'replicated by the server itself: agentless');
  assert.deepEqual(imported.hardware, { cpus: 2, memoryMiB: 2048, nics: [{ network: 'VM Network' }, { network: 'backup' }] });
  assert.equal(imported.disks.length, 1, 'the CD-ROM is not a disk');
  assert.equal(imported.disks[0]!.sizeBytes, 24 * MiB);
  const hv = await ferryJson(server, ['machine', 'import', hvDir, '--cpus', '2', '--memory', '1G', '--nic', 'LAN']);
  assert.equal(hv.import.machine, 'hv-01');
  assert.equal(hv.import.disks[0].format, 'vhdx:dynamic');
  assert.deepEqual(hv.import.missing, []);
  const again = await ferry(server, ['machine', 'import', hvDir, '--json']);
  assert.equal(again.code, 4, 'a machine of that name exists');

  // A damaged image is refused before anything is registered.
  const broken = path.join(root, 'broken');
  await fs.mkdir(path.join(broken, 'Virtual Hard Disks'), { recursive: true });
  const brokenDisk = path.join(broken, 'Virtual Hard Disks', 'broken.vhdx');
  await fs.copyFile(path.join(hvDir, 'Virtual Hard Disks', 'hv-01.vhdx'), brokenDisk);
  await fs.truncate(brokenDisk, 100_000);
  const refused = await ferry(server, ['machine', 'import', broken, '--json']);
  assert.equal(refused.json().error.code, 'corrupt-data', refused.stderr);
  assert.match(refused.stderr, /broken\.vhdx/);
  assert.equal((await ferry(server, ['status', 'broken', '--json'])).code, 3, 'nothing registered');

  // Replicate both from their images, and fail over into Azure-ready fixed VHDs.
  await ferryJson(server, ['site', 'add', 'azure', '--path', path.join(root, 'azure'), '--disk-format', 'vhd:fixed']);
  for (const machine of ['vmw-01', 'hv-01']) await ferryJson(server, ['protect', machine, '--site', 'azure', '--wait']);
  const vmwTest = await ferryJson(server, ['failover', 'vmw-01', '--test', '--wait']);
  const vhd = vmwTest.disks[0].path as string;
  assert.ok(vhd.endsWith('.vhd'), vhd);
  await qemuImg(['compare', '-f', 'vpc', '-F', 'raw', vhd, vmwareSource]);
  const info = JSON.parse(await qemuImg(['info', '--output=json', '-f', 'vpc', vhd])) as { 'virtual-size': number };
  assert.equal(info['virtual-size'] % MiB, 0, 'a whole number of MiB, as Azure wants');
  const hvFailover = await ferryJson(server, ['failover', 'hv-01', '--unplanned', '--wait']);
  await qemuImg(['compare', '-f', 'vpc', '-F', 'raw', hvFailover.failover.disks[0].path, hyperVSource]);

  // Export: an OVA for vSphere, and qcow2 for KVM.
  const ova = path.join(root, 'out', 'vmw-01.ova');
  const exported = await ferryJson(server, ['export', 'vmw-01', '--format', 'ova', '--out', ova]);
  assert.equal(exported.job.state, 'succeeded');
  const members = (await run('tar', ['-tf', ova])).stdout.trim().split('\n');
  assert.equal(members.length, 3, members.join(', '));
  assert.ok(members[0]!.endsWith('.ovf') && members[1]!.endsWith('.vmdk') && members[2]!.endsWith('.mf'), members.join(', '));
  const extracted = path.join(root, 'out', 'ova');
  await fs.mkdir(extracted);
  await run('tar', ['-xf', ova, '-C', extracted]);
  await qemuImg(['compare', '-f', 'vmdk', '-F', 'raw', path.join(extracted, members[1]!), vmwareSource]);
  const ovf = await fs.readFile(path.join(extracted, members[0]!), 'utf8');
  assert.match(ovf, /backup/, 'the OVF names the NICs');
  const qcow2 = path.join(root, 'out', 'hv-01.qcow2');
  await ferryJson(server, ['export', 'hv-01', '--format', 'qcow2', '--out', qcow2]);
  await qemuImg(['check', '-f', 'qcow2', qcow2]);
  await qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', qcow2, hyperVSource]);

  const noHardware = await ferry(server, ['export', 'hv-01', '--format', 'vdi', '--out', path.join(root, 'x.vdi'), '--json']);
  assert.equal(noHardware.code, 2, 'an unknown format is refused');
  const status = await ferryJson<MachineView>(server, ['status', 'hv-01']);
  assert.equal(status.state, 'failed-over');
});
