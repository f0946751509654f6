/**
 * Reading VM descriptors for `ferry machine import`: a VMware .vmx (disks in controller order, CD-ROMs
 * and absent devices left out, NICs by network, CPUs and memory).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseVmx } from '../../src/orchestration/imports.js';

describe('VMware .vmx', () => {
  test('name, CPUs, memory, disks in controller order without CD-ROMs, NICs by network', () => {
    const vmx = [
      '.encoding = "UTF-8"',
      'displayName = "web-01"',
      'numvcpus = "4"',
      'memsize = "8192"',
      'sata0:1.fileName = "data.vmdk"',
      'sata0:1.present = "TRUE"',
      'scsi0:1.fileName = "web-01_1.vmdk"',
      'scsi0:0.fileName = "web-01.vmdk"',
      'scsi0:0.present = "TRUE"',
      'ide1:0.fileName = "/iso/debian.iso"',
      'ide1:0.deviceType = "cdrom-image"',
      'scsi0:2.fileName = "gone.vmdk"',
      'scsi0:2.present = "FALSE"',
      'ethernet0.present = "TRUE"',
      'ethernet0.networkName = "VM Network"',
      'ethernet1.present = "TRUE"',
      'ethernet1.networkName = "backup"',
      'ethernet2.present = "FALSE"',
      'ethernet2.networkName = "unused"',
    ].join('\n');
    const described = parseVmx(vmx, '/vms/web-01');
    assert.deepEqual(described, {
      name: 'web-01',
      cpus: 4,
      memoryMiB: 8192,
      nics: [{ network: 'VM Network' }, { network: 'backup' }],
      disks: ['/vms/web-01/web-01.vmdk', '/vms/web-01/web-01_1.vmdk', '/vms/web-01/data.vmdk'],
    });
  });

  test('what the .vmx does not say is null (one CPU is VMware\'s default); CRLF lines are read', () => {
    const described = parseVmx('displayName = "tiny"\r\nscsi0:0.fileName = "tiny.vmdk"\r\nmemsize = "lots"\r\n', '/vms');
    assert.equal(described.cpus, 1);
    assert.equal(described.memoryMiB, null);
    assert.deepEqual(described.nics, []);
    assert.deepEqual(described.disks, ['/vms/tiny.vmdk']);
  });
});
