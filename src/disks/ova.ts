/**
 * OVA packages: writing a machine as an OVA (what vSphere, VirtualBox and most hypervisors import), and
 * reading what Ferry needs from OVF descriptors and OVA archives (the machine's CPUs, memory, NICs, disks;
 * where each member lies in the archive).
 *
 * Follows DMTF DSP0243 (OVF 1.x): the OVA is a POSIX ustar archive whose first member is the OVF descriptor,
 * then the files in the order of its References, then (optionally) the manifest (section "OVF Packages":
 * the manifest and certificate may come right after the descriptor or at the end; Ferry puts the manifest at
 * the end, so the disks' SHA-256 digests are computed while they stream). The descriptor has References,
 * DiskSection (disks in VMware's streamOptimized format, written by vmdk.ts), NetworkSection and one
 * VirtualSystem with a VirtualHardwareSection (CPU, memory, SCSI controllers, disks, NICs as CIM RASD items).
 *
 * Writing is one pass and never holds a disk in memory: each disk is written straight into the archive
 * after a placeholder tar header that is filled in once its size is known; the descriptor's space is
 * reserved first (its length with the largest possible file sizes) and written last, padded with spaces.
 * A member of 8 GiB or more has its size in the tar header in base-256 (the GNU/star extension every
 * common tar reader supports; ustar's octal field stops at 8 GiB).
 *
 * Reading an OVF is done by a small purpose-built XML parser: bounded in size, depth and element count,
 * and it refuses DOCTYPE and entity declarations (no entity expansion, no external entities); only XML's
 * predefined entities and character references are decoded.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { FerryError } from '../errors.js';
import type { DiskImageInput, DiskImageReader, DiskImageWriteOptions } from './disk-image.js';
import { ioErrorReason, throwIfAborted, writeImageFileAtomically } from './image-file.js';
import { FileSink, openVmdkAt, writeStreamOptimizedTo } from './vmdk.js';

const BLOCK = 512;
/** The format URI OVF uses for a stream-optimized VMDK. */
export const STREAM_OPTIMIZED_VMDK_FORMAT = 'http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized';

/** The machine an OVA describes. */
export interface OvaMachine {
  name: string;
  cpus: number;
  memoryMiB: number;
  /** One entry per network adapter: the name of the network it connects to. */
  nics: { network: string }[];
}

/** Options of `writeOva`. */
export interface OvaWriteOptions extends Pick<DiskImageWriteOptions, 'signal'> {
  /** Called now and then with the virtual bytes of all disks consumed so far. */
  onProgress?: (doneBytes: number) => void;
  /** Adds a .mf manifest with the SHA-256 of every other member (default true). */
  manifest?: boolean;
}

/** A member of an OVA: its name and where its bytes lie in the archive file. */
export interface OvaMember {
  name: string;
  /** Byte offset of the member's data in the archive file. */
  offset: number;
  /** The member's size in bytes. */
  size: number;
}

/** What `readOvf` reads from an OVF descriptor; null where the descriptor does not say. */
export interface OvfMachine {
  name: string | null;
  cpus: number | null;
  memoryMiB: number | null;
  nics: { network: string }[];
  /** The disks, in the order of the virtual hardware's disk items (else of the DiskSection). */
  disks: { fileHref: string; capacityBytes: number }[];
}

const MAX_CPUS = 4096;
const MAX_MEMORY_MIB = 64 * 1024 * 1024; // 64 TiB
const MAX_DISK_BYTES = 2 ** 46; // 64 TiB, VMDK's limit
const MAX_NICS = 64;
/** SCSI controllers × disks per controller (unit 7 is the controller's own). */
const MAX_DISKS = 4 * 15;
const MAX_OVF_CHARS = 4 * 1024 * 1024;
const MAX_XML_DEPTH = 64;
const MAX_XML_ELEMENTS = 100_000;
const MAX_TAR_MEMBERS = 10_000;
const MAX_TAR_EXTENSION_BYTES = 64 * 1024;
/** OVA files are padded to a multiple of the tar record (20 blocks), as tar itself writes them. */
const TAR_RECORD = 20 * BLOCK;

// ---------------------------------------------------------------------------------------------------
// Writing

function invalid(message: string): FerryError {
  return new FerryError('invalid-request', message);
}

/** Checks the machine and disks can be described; invalid-request naming the field otherwise. */
function checkMachine(machine: OvaMachine, disks: readonly DiskImageInput[]): void {
  if (typeof machine.name !== 'string' || machine.name.trim() === '' || machine.name.length > 255) throw invalid('OVA: machine.name must be 1 to 255 characters');
  if (!Number.isInteger(machine.cpus) || machine.cpus < 1 || machine.cpus > MAX_CPUS) throw invalid(`OVA: machine.cpus must be an integer from 1 to ${MAX_CPUS}, not ${machine.cpus}`);
  if (!Number.isInteger(machine.memoryMiB) || machine.memoryMiB < 1 || machine.memoryMiB > MAX_MEMORY_MIB) throw invalid(`OVA: machine.memoryMiB must be an integer from 1 to ${MAX_MEMORY_MIB}, not ${machine.memoryMiB}`);
  if (machine.nics.length > MAX_NICS) throw invalid(`OVA: at most ${MAX_NICS} NICs`);
  for (const [index, nic] of machine.nics.entries()) {
    if (typeof nic.network !== 'string' || nic.network.trim() === '' || nic.network.length > 255) throw invalid(`OVA: machine.nics[${index}].network must be 1 to 255 characters`);
  }
  if (disks.length === 0 || disks.length > MAX_DISKS) throw invalid(`OVA: 1 to ${MAX_DISKS} disks, not ${disks.length}`);
}

/** A file name made of the machine's name: letters, digits, '.', '_' and '-' only, short enough for ustar. */
function safeFileStem(name: string): string {
  const stem = name.replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^[._-]+/, '').slice(0, 64);
  return stem === '' ? 'machine' : stem;
}

function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (character) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[character]!);
}

/** Where disk `index` sits: SCSI controller, and unit on it (7 is the controller's own). */
function scsiSlot(index: number): { controller: number; unit: number } {
  const unit = index % 15;
  return { controller: Math.floor(index / 15), unit: unit >= 7 ? unit + 1 : unit };
}

/** The OVF 1.0 descriptor of `machine` with `disks` (file names, virtual sizes, file sizes). */
function renderOvf(machine: OvaMachine, disks: readonly { fileName: string; capacityBytes: number; fileBytes: number }[]): string {
  const networks = [...new Set(machine.nics.map((nic) => nic.network))];
  const name = escapeXml(machine.name);
  const lines: string[] = [];
  const add = (line: string) => lines.push(line);
  add('<?xml version="1.0" encoding="UTF-8"?>');
  add('<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">');
  add('  <References>');
  disks.forEach((disk, index) => add(`    <File ovf:href="${escapeXml(disk.fileName)}" ovf:id="file${index + 1}" ovf:size="${disk.fileBytes}"/>`));
  add('  </References>');
  add('  <DiskSection>');
  add('    <Info>Virtual disk information</Info>');
  disks.forEach((disk, index) =>
    add(`    <Disk ovf:capacity="${disk.capacityBytes}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk${index + 1}" ovf:fileRef="file${index + 1}" ovf:format="${STREAM_OPTIMIZED_VMDK_FORMAT}"/>`),
  );
  add('  </DiskSection>');
  if (networks.length > 0) {
    add('  <NetworkSection>');
    add('    <Info>The list of logical networks</Info>');
    for (const network of networks) add(`    <Network ovf:name="${escapeXml(network)}">\n      <Description>The ${escapeXml(network)} network</Description>\n    </Network>`);
    add('  </NetworkSection>');
  }
  add(`  <VirtualSystem ovf:id="${name}">`);
  add('    <Info>A virtual machine</Info>');
  add(`    <Name>${name}</Name>`);
  add('    <OperatingSystemSection ovf:id="1">');
  add('      <Info>The kind of installed guest operating system</Info>');
  add('    </OperatingSystemSection>');
  add('    <VirtualHardwareSection>');
  add('      <Info>Virtual hardware requirements</Info>');
  add('      <System>');
  add('        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>');
  add('        <vssd:InstanceID>0</vssd:InstanceID>');
  add(`        <vssd:VirtualSystemIdentifier>${name}</vssd:VirtualSystemIdentifier>`);
  add('        <vssd:VirtualSystemType>vmx-10</vssd:VirtualSystemType>');
  add('      </System>');
  // RASD elements in alphabetical order, as the CIM schema's sequence requires.
  const item = (fields: Record<string, string>) => {
    add('      <Item>');
    for (const key of Object.keys(fields).sort()) add(`        <rasd:${key}>${fields[key]}</rasd:${key}>`);
    add('      </Item>');
  };
  let instance = 1;
  item({ AllocationUnits: 'hertz * 10^6', Description: 'Number of Virtual CPUs', ElementName: `${machine.cpus} virtual CPU(s)`, InstanceID: String(instance++), ResourceType: '3', VirtualQuantity: String(machine.cpus) });
  item({ AllocationUnits: 'byte * 2^20', Description: 'Memory Size', ElementName: `${machine.memoryMiB}MB of memory`, InstanceID: String(instance++), ResourceType: '4', VirtualQuantity: String(machine.memoryMiB) });
  const controllerInstances: number[] = [];
  for (let controller = 0; controller <= scsiSlot(disks.length - 1).controller; controller++) {
    controllerInstances.push(instance);
    item({ Address: String(controller), Description: 'SCSI Controller', ElementName: `SCSI Controller ${controller}`, InstanceID: String(instance++), ResourceSubType: 'lsilogic', ResourceType: '6' });
  }
  disks.forEach((_disk, index) => {
    const slot = scsiSlot(index);
    item({ AddressOnParent: String(slot.unit), ElementName: `Hard Disk ${index + 1}`, HostResource: `ovf:/disk/vmdisk${index + 1}`, InstanceID: String(instance++), Parent: String(controllerInstances[slot.controller]), ResourceType: '17' });
  });
  machine.nics.forEach((nic, index) => {
    item({ AddressOnParent: String(index + 7), AutomaticAllocation: 'true', Connection: escapeXml(nic.network), Description: `E1000 ethernet adapter on "${escapeXml(nic.network)}"`, ElementName: `Network adapter ${index + 1}`, InstanceID: String(instance++), ResourceSubType: 'E1000', ResourceType: '10' });
  });
  add('    </VirtualHardwareSection>');
  add('  </VirtualSystem>');
  add('</Envelope>');
  return `${lines.join('\n')}\n`;
}

/** A ustar header for a regular file `name` of `size` bytes (base-256 size at 8 GiB and above). */
function tarHeader(name: string, size: number, mtime: number): Buffer {
  const header = Buffer.alloc(BLOCK);
  if (Buffer.byteLength(name) > 100) throw invalid(`OVA: member name too long for ustar: ${name}`);
  header.write(name, 0, 100, 'utf8');
  header.write('0000644\0', 100, 'latin1'); // mode
  header.write('0000000\0', 108, 'latin1'); // uid
  header.write('0000000\0', 116, 'latin1'); // gid
  if (size < 8 ** 11) header.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  else {
    header[124] = 0x80;
    let rest = BigInt(size);
    for (let at = 135; at > 124; at--, rest >>= 8n) header[at] = Number(rest & 0xffn);
  }
  header.write(`${Math.floor(mtime).toString(8).padStart(11, '0')}\0`, 136, 'latin1');
  header.write('        ', 148, 'latin1'); // checksum: spaces while summing
  header.write('0', 156, 'latin1'); // regular file
  header.write('ustar\0', 257, 'latin1');
  header.write('00', 263, 'latin1');
  header.write('root', 265, 'latin1');
  header.write('root', 297, 'latin1');
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return header;
}

function padToBlock(length: number): number {
  return Math.ceil(length / BLOCK) * BLOCK;
}

/**
 * Writes `machine` with `disks` (each a virtual disk's content, written as a stream-optimized VMDK) as an
 * OVA at `ovaPath`: a ustar archive of `<name>.ovf`, `<name>-disk1.vmdk`... and, unless
 * `options.manifest` is false, `<name>.mf` (SHA-256 of each other member) last. Atomic: written to a
 * temporary name in the same directory, fsynced, renamed, the directory fsynced; on any error or abort
 * nothing is left. Memory is bounded (one pass over each disk). Resolves with the OVA's size in bytes.
 * Errors: invalid-request for a machine that cannot be described (the message names the field), io-error
 * for write failures, the signal's reason when aborted.
 */
export async function writeOva(ovaPath: string, machine: OvaMachine, disks: readonly DiskImageInput[], options: OvaWriteOptions = {}): Promise<number> {
  checkMachine(machine, disks);
  const stem = safeFileStem(machine.name);
  const mtime = Date.now() / 1000;
  const diskFiles = disks.map((input, index) => ({ fileName: `${stem}-disk${index + 1}.vmdk`, capacityBytes: Math.ceil(input.size / BLOCK) * BLOCK, fileBytes: 0, sha256: '' }));
  // The descriptor comes first but its file sizes are known last: reserve room for the longest it can be.
  const reservedOvfBytes = Buffer.byteLength(renderOvf(machine, diskFiles.map((disk) => ({ ...disk, fileBytes: 10 ** 15 - 1 }))));
  const ovfName = `${stem}.ovf`;

  let disksDone = 0;
  const size = await writeImageFileAtomically(
    ovaPath,
    options.signal,
    async (_handle, writer) => {
      let position = BLOCK + padToBlock(reservedOvfBytes);
      for (const [index, input] of disks.entries()) {
        const file = diskFiles[index]!;
        const hash = createHash('sha256');
        const headerPosition = position;
        const sink = new FileSink(ovaPath, writer, headerPosition + BLOCK, (data) => hash.update(data));
        await writeStreamOptimizedTo(sink, input, file.fileName, { signal: options.signal, onProgress: (done) => options.onProgress?.(disksDone + done) });
        await sink.flush();
        file.fileBytes = sink.position;
        file.sha256 = hash.digest('hex');
        const padding = padToBlock(file.fileBytes) - file.fileBytes;
        await writer.write(headerPosition, tarHeader(file.fileName, file.fileBytes, mtime));
        if (padding > 0) await writer.write(headerPosition + BLOCK + file.fileBytes, Buffer.alloc(padding));
        position = headerPosition + BLOCK + padToBlock(file.fileBytes);
        disksDone += input.size;
      }
      throwIfAborted(options.signal);

      const rendered = renderOvf(machine, diskFiles);
      const ovf = Buffer.alloc(reservedOvfBytes, ' '); // trailing spaces after the root element are allowed XML
      ovf.write(rendered, 0, 'utf8');
      ovf[reservedOvfBytes - 1] = 0x0a;
      await writer.write(0, Buffer.concat([tarHeader(ovfName, ovf.length, mtime), ovf, Buffer.alloc(padToBlock(ovf.length) - ovf.length)]));

      if (options.manifest !== false) {
        const digests = [{ name: ovfName, sha256: createHash('sha256').update(ovf).digest('hex') }, ...diskFiles.map((file) => ({ name: file.fileName, sha256: file.sha256 }))];
        const manifest = Buffer.from(digests.map((each) => `SHA256(${each.name})= ${each.sha256}\n`).join(''));
        await writer.write(position, Buffer.concat([tarHeader(`${stem}.mf`, manifest.length, mtime), manifest, Buffer.alloc(padToBlock(manifest.length) - manifest.length)]));
        position += BLOCK + padToBlock(manifest.length);
      }
      // End of archive: two zero blocks, then up to a whole record.
      const end = Math.ceil((position + 2 * BLOCK) / TAR_RECORD) * TAR_RECORD;
      await writer.write(position, Buffer.alloc(end - position));
    },
    'OVA',
  );
  options.onProgress?.(disksDone);
  return size;
}

// ---------------------------------------------------------------------------------------------------
// Reading the archive

function corruptArchive(ovaPath: string, problem: string): FerryError {
  return new FerryError('corrupt-data', `OVA ${ovaPath}: ${problem}`, { details: { path: ovaPath } });
}

/** A tar header's numeric field: octal text, or base-256 when its first byte has the high bit set. */
function tarNumber(field: Buffer): number | undefined {
  if (field[0]! & 0x80) {
    if (field[0] !== 0x80) return undefined; // negative, or beyond what a file can be
    let value = 0n;
    for (const byte of field.subarray(1)) value = (value << 8n) | BigInt(byte);
    return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : undefined;
  }
  const text = field.toString('latin1').replace(/[\0 ]+$/g, '').trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) return undefined;
  const value = parseInt(text, 8);
  return Number.isSafeInteger(value) ? value : undefined;
}

function cString(field: Buffer): string {
  const end = field.indexOf(0);
  return field.subarray(0, end === -1 ? field.length : end).toString('utf8');
}

/** Parses pax extended header records ("<length> <key>=<value>\n"), keeping `path` and `size`. */
function paxRecords(data: Buffer, ovaPath: string): Map<string, string> {
  const records = new Map<string, string>();
  let at = 0;
  while (at < data.length && data[at] !== 0) {
    const space = data.indexOf(0x20, at);
    const length = space === -1 ? NaN : Number(data.subarray(at, space).toString('latin1'));
    if (!Number.isSafeInteger(length) || length <= space - at || at + length > data.length) throw corruptArchive(ovaPath, 'a pax extended header record is malformed');
    const record = data.subarray(space + 1, at + length - 1).toString('utf8');
    const equals = record.indexOf('=');
    if (equals > 0) records.set(record.slice(0, equals), record.slice(equals + 1));
    at += length;
  }
  return records;
}

/**
 * Lists the regular files of the OVA (a tar archive) at `ovaPath` in archive order, with where each one's
 * data lies, reading only the headers. Understands ustar (with prefix), pax extended headers (path, size)
 * and GNU long names; other entries (directories, links) are skipped. Errors: disk-unreadable if the file
 * cannot be read; corrupt-data for a bad header checksum, a member running past the end of the file, or
 * more than 10000 members.
 */
export async function listOva(ovaPath: string): Promise<OvaMember[]> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(ovaPath, 'r');
  } catch (error) {
    throw new FerryError('disk-unreadable', `OVA ${ovaPath} cannot be read (${ioErrorReason(error)})`, { cause: error, details: { path: ovaPath } });
  }
  try {
    const fileSize = (await handle.stat()).size;
    const readAt = async (length: number, position: number): Promise<Buffer> => {
      const buffer = Buffer.alloc(length);
      let filled = 0;
      while (filled < length) {
        const { bytesRead } = await handle.read(buffer, filled, length - filled, position + filled);
        if (bytesRead === 0) throw corruptArchive(ovaPath, `the archive ends inside an entry (at byte ${position + filled})`);
        filled += bytesRead;
      }
      return buffer;
    };
    const members: OvaMember[] = [];
    let position = 0;
    let nextName: string | undefined;
    let nextSize: number | undefined;
    for (let entries = 0; position + BLOCK <= fileSize; entries++) {
      if (entries > MAX_TAR_MEMBERS * 2) throw corruptArchive(ovaPath, `more than ${MAX_TAR_MEMBERS} members`);
      const header = await readAt(BLOCK, position);
      if (header.every((byte) => byte === 0)) break; // end of archive
      let unsignedSum = 0;
      let signedSum = 0;
      for (let index = 0; index < BLOCK; index++) {
        const byte = index >= 148 && index < 156 ? 0x20 : header[index]!;
        unsignedSum += byte;
        signedSum += byte > 127 ? byte - 256 : byte;
      }
      const recorded = tarNumber(header.subarray(148, 156));
      if (recorded !== unsignedSum && recorded !== signedSum) throw corruptArchive(ovaPath, `the tar header at byte ${position} has a bad checksum`);
      const headerSize = tarNumber(header.subarray(124, 136));
      if (headerSize === undefined) throw corruptArchive(ovaPath, `the tar header at byte ${position} has a malformed size`);
      const size = nextSize ?? headerSize;
      const dataOffset = position + BLOCK;
      if (dataOffset + size > fileSize) throw corruptArchive(ovaPath, `the member at byte ${position} (${size} bytes) runs past the end of the file (${fileSize} bytes)`);
      const type = String.fromCharCode(header[156]!);
      const ustar = header.subarray(257, 262).toString('latin1') === 'ustar';
      const prefix = ustar ? cString(header.subarray(345, 500)) : '';
      const headerName = prefix ? `${prefix}/${cString(header.subarray(0, 100))}` : cString(header.subarray(0, 100));
      if (type === 'x' || type === 'L') {
        if (size > MAX_TAR_EXTENSION_BYTES) throw corruptArchive(ovaPath, `an extended header of ${size} bytes at byte ${position}`);
        const data = await readAt(size, dataOffset);
        if (type === 'L') nextName = cString(data);
        else {
          const records = paxRecords(data, ovaPath);
          if (records.has('path')) nextName = records.get('path');
          if (records.has('size')) {
            const paxSize = Number(records.get('size'));
            if (!Number.isSafeInteger(paxSize) || paxSize < 0) throw corruptArchive(ovaPath, `a pax size of ${records.get('size')} at byte ${position}`);
            nextSize = paxSize;
          }
        }
      } else {
        if (type === '0' || type === '\0' || type === '7') {
          if (members.length >= MAX_TAR_MEMBERS) throw corruptArchive(ovaPath, `more than ${MAX_TAR_MEMBERS} members`);
          members.push({ name: (nextName ?? headerName).replace(/^\.\//, ''), offset: dataOffset, size });
        }
        nextName = undefined;
        nextSize = undefined;
      }
      position = dataOffset + padToBlock(size);
    }
    return members;
  } catch (error) {
    if (error instanceof FerryError) throw error;
    throw new FerryError('disk-unreadable', `OVA ${ovaPath} cannot be read (${ioErrorReason(error)})`, { cause: error, details: { path: ovaPath } });
  } finally {
    await handle.close();
  }
}

/**
 * Where the member `name` of the OVA at `ovaPath` lies: its data's offset in the file and its size.
 * Errors as `listOva`, and invalid-request when the archive holds no such member.
 */
export async function openOvaMember(ovaPath: string, name: string): Promise<{ offset: number; size: number }> {
  const member = (await listOva(ovaPath)).find((each) => each.name === name);
  if (!member) throw invalid(`OVA ${ovaPath} holds no member named ${JSON.stringify(name)}`);
  return { offset: member.offset, size: member.size };
}

/**
 * Opens the disk `name` inside the OVA at `ovaPath` for reading without extracting it. The member must
 * be a sparse VMDK (streamOptimized, as OVAs carry, or monolithicSparse); errors as `openOvaMember` and
 * vmdk.ts's `openVmdkAt`.
 */
export async function openOvaDisk(ovaPath: string, name: string): Promise<DiskImageReader> {
  const { offset, size } = await openOvaMember(ovaPath, name);
  return openVmdkAt(ovaPath, offset, size);
}

// ---------------------------------------------------------------------------------------------------
// Reading an OVF descriptor

/** An XML element: local name (namespace prefix dropped), attributes by local name, children, text. */
interface XmlElement {
  name: string;
  attributes: Map<string, string>;
  children: XmlElement[];
  text: string;
}

function localName(qualified: string): string {
  const colon = qualified.indexOf(':');
  return colon === -1 ? qualified : qualified.slice(colon + 1);
}

/**
 * Parses `xml` into its root element. Refuses DOCTYPE (and with it every entity declaration), entity
 * references other than XML's five, documents deeper than 64 or with more than 100000 elements.
 */
function parseXml(xml: string, fail: (problem: string) => FerryError): XmlElement {
  if (/<!DOCTYPE|<!ENTITY/i.test(xml)) throw fail('DOCTYPE and entity declarations are refused (entity expansion)');
  const decode = (raw: string): string =>
    raw.replace(/&(#x[0-9a-fA-F]{1,6}|#[0-9]{1,7}|[A-Za-z][A-Za-z0-9]*);?/g, (whole, reference: string) => {
      if (!whole.endsWith(';')) throw fail(`a bare '&' in ${JSON.stringify(raw.slice(0, 80))}`);
      if (reference.startsWith('#')) {
        const code = reference[1] === 'x' ? parseInt(reference.slice(2), 16) : parseInt(reference.slice(1), 10);
        if (code > 0x10ffff || code === 0) throw fail(`character reference &${reference}; is not a character`);
        return String.fromCodePoint(code);
      }
      const predefined: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
      const value = predefined[reference];
      if (value === undefined) throw fail(`entity reference &${reference}; is refused (only XML's predefined entities are read)`);
      return value;
    });
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  let elements = 0;
  let at = 0;
  while (at < xml.length) {
    const open = xml.indexOf('<', at);
    const textEnd = open === -1 ? xml.length : open;
    if (textEnd > at) {
      const text = xml.slice(at, textEnd);
      if (stack.length > 0) stack.at(-1)!.text += decode(text);
      else if (text.trim() !== '') throw fail('text outside the root element');
    }
    if (open === -1) break;
    if (xml.startsWith('<?', open)) {
      const end = xml.indexOf('?>', open);
      if (end === -1) throw fail('an unterminated processing instruction');
      at = end + 2;
    } else if (xml.startsWith('<!--', open)) {
      const end = xml.indexOf('-->', open);
      if (end === -1) throw fail('an unterminated comment');
      at = end + 3;
    } else if (xml.startsWith('<![CDATA[', open)) {
      const end = xml.indexOf(']]>', open);
      if (end === -1 || stack.length === 0) throw fail('a misplaced or unterminated CDATA section');
      stack.at(-1)!.text += xml.slice(open + 9, end);
      at = end + 3;
    } else if (xml.startsWith('<!', open)) {
      throw fail('markup declarations are refused');
    } else if (xml.startsWith('</', open)) {
      const end = xml.indexOf('>', open);
      const name = end === -1 ? '' : xml.slice(open + 2, end).trim();
      const element = stack.pop();
      if (!element || localName(name) !== element.name) throw fail(`closing tag </${name.slice(0, 80)}> does not match`);
      at = end + 1;
    } else {
      const tag = /^<([A-Za-z_][\w.:-]*)((?:\s+[A-Za-z_][\w.:-]*\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>/.exec(xml.slice(open, open + 65536));
      if (!tag) throw fail(`a malformed tag at character ${open}`);
      if (++elements > MAX_XML_ELEMENTS) throw fail(`more than ${MAX_XML_ELEMENTS} elements`);
      const element: XmlElement = { name: localName(tag[1]!), attributes: new Map(), children: [], text: '' };
      for (const attribute of tag[2]!.matchAll(/([A-Za-z_][\w.:-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) {
        element.attributes.set(localName(attribute[1]!), decode(attribute[2] ?? attribute[3] ?? ''));
      }
      if (stack.length > 0) stack.at(-1)!.children.push(element);
      else if (root) throw fail('more than one root element');
      else root = element;
      if (tag[3] !== '/') {
        stack.push(element);
        if (stack.length > MAX_XML_DEPTH) throw fail(`elements nested deeper than ${MAX_XML_DEPTH}`);
      }
      at = open + tag[0].length;
    }
  }
  if (!root || stack.length > 0) throw fail('the document ends before its root element does');
  return root;
}

function child(element: XmlElement, name: string): XmlElement | undefined {
  return element.children.find((each) => each.name === name);
}

function descendants(element: XmlElement, name: string): XmlElement[] {
  const found: XmlElement[] = [];
  const walk = (node: XmlElement) => {
    for (const each of node.children) {
      if (each.name === name) found.push(each);
      walk(each);
    }
  };
  walk(element);
  return found;
}

/** Bytes per unit of an OVF/CIM programmatic unit: "byte", "byte * 2^30", "byte * 10^9", "KB", "MB", "GB". */
function unitBytes(units: string | undefined): number | undefined {
  const text = (units ?? 'byte').trim();
  const programmatic = /^byte(?:\s*\*\s*(2|10)\s*\^\s*(\d{1,2}))?$/i.exec(text);
  if (programmatic) return programmatic[1] ? Number(programmatic[1]) ** Number(programmatic[2]) : 1;
  const named: Record<string, number> = { kb: 2 ** 10, kilobytes: 2 ** 10, mb: 2 ** 20, megabytes: 2 ** 20, gb: 2 ** 30, gigabytes: 2 ** 30, tb: 2 ** 40 };
  return named[text.toLowerCase()];
}

/**
 * Reads the machine an OVF descriptor (`xml`) describes: its name, CPU count, memory, NICs (network
 * names) and disks (file hrefs and capacities). `source` names the descriptor in errors. Only the first
 * VirtualSystem's first VirtualHardwareSection is read. Errors: corrupt-data for a malformed or hostile
 * descriptor (larger than 4 MiB, DOCTYPE/entities, absurd CPU, memory or capacity values, a disk naming
 * a file the References do not list); invalid-request for a blank disk (no file) or several machines.
 */
export function readOvf(xml: string, source = 'OVF descriptor'): OvfMachine {
  const fail = (problem: string) => new FerryError('corrupt-data', `${source}: ${problem}`);
  if (xml.length > MAX_OVF_CHARS) throw fail(`larger than ${MAX_OVF_CHARS} characters`);
  const envelope = parseXml(xml.replace(/^\uFEFF/, ''), fail);
  if (envelope.name !== 'Envelope') throw fail(`the root element is <${envelope.name}>, not <Envelope>`);

  const files = new Map<string, string>();
  for (const file of descendants(child(envelope, 'References') ?? envelope, 'File')) {
    const id = file.attributes.get('id');
    const href = file.attributes.get('href');
    if (id === undefined || href === undefined) continue;
    if (href === '' || href.length > 1024 || href.includes('\0')) throw fail(`file ${JSON.stringify(id.slice(0, 80))} has an unusable href`);
    files.set(id, href);
  }
  const diskDefinitions = new Map<string, { fileHref: string; capacityBytes: number }>();
  const diskOrder: string[] = [];
  for (const disk of descendants(envelope, 'DiskSection').flatMap((section) => section.children.filter((each) => each.name === 'Disk'))) {
    const diskId = disk.attributes.get('diskId') ?? '';
    const capacityText = disk.attributes.get('capacity') ?? '';
    const unit = unitBytes(disk.attributes.get('capacityAllocationUnits'));
    if (!/^\d{1,20}$/.test(capacityText) || unit === undefined) throw fail(`disk ${JSON.stringify(diskId.slice(0, 80))} has a capacity of ${JSON.stringify(capacityText.slice(0, 80))} in ${JSON.stringify(disk.attributes.get('capacityAllocationUnits') ?? 'byte')}`);
    const capacityBytes = Number(capacityText) * unit;
    if (!Number.isSafeInteger(capacityBytes) || capacityBytes > MAX_DISK_BYTES) throw fail(`disk ${JSON.stringify(diskId.slice(0, 80))} claims ${capacityText} × ${unit} bytes (more than 64 TiB)`);
    const fileRef = disk.attributes.get('fileRef');
    if (fileRef === undefined) throw new FerryError('invalid-request', `${source}: disk ${JSON.stringify(diskId.slice(0, 80))} has no file (blank disks are not supported)`);
    const fileHref = files.get(fileRef);
    if (fileHref === undefined) throw fail(`disk ${JSON.stringify(diskId.slice(0, 80))} names file ${JSON.stringify(fileRef.slice(0, 80))}, which References does not list`);
    diskDefinitions.set(diskId, { fileHref, capacityBytes });
    diskOrder.push(diskId);
  }

  const systems = descendants(envelope, 'VirtualSystem');
  if (systems.length > 1) throw new FerryError('invalid-request', `${source}: describes ${systems.length} virtual machines; one is supported`);
  const system = systems[0];
  if (!system) throw fail('describes no VirtualSystem');
  const name = child(system, 'Name')?.text.trim() || system.attributes.get('id') || null;
  let cpus: number | null = null;
  let memoryMiB: number | null = null;
  const nics: { network: string }[] = [];
  const diskItems: string[] = [];
  const hardware = descendants(system, 'VirtualHardwareSection')[0];
  for (const item of hardware?.children.filter((each) => /Item$/.test(each.name)) ?? []) {
    const field = (fieldName: string) => child(item, fieldName)?.text.trim();
    const resourceType = field('ResourceType');
    if (resourceType === '3') {
      const quantity = Number(field('VirtualQuantity'));
      if (!Number.isInteger(quantity) || quantity < 1 || quantity > MAX_CPUS) throw fail(`a CPU count of ${JSON.stringify(field('VirtualQuantity')?.slice(0, 40))}`);
      cpus = quantity;
    } else if (resourceType === '4') {
      const quantity = Number(field('VirtualQuantity'));
      const unit = unitBytes(field('AllocationUnits') ?? 'byte * 2^20');
      const mebibytes = unit === undefined ? NaN : (quantity * unit) / 2 ** 20;
      if (!Number.isInteger(mebibytes) || mebibytes < 1 || mebibytes > MAX_MEMORY_MIB) {
        throw fail(`a memory size of ${JSON.stringify(field('VirtualQuantity')?.slice(0, 40))} ${JSON.stringify(field('AllocationUnits')?.slice(0, 40))}`);
      }
      memoryMiB = mebibytes;
    } else if (resourceType === '10') {
      if (nics.length >= MAX_NICS) throw fail(`more than ${MAX_NICS} network adapters`);
      nics.push({ network: field('Connection') ?? '' });
    } else if (resourceType === '17') {
      const resource = field('HostResource') ?? '';
      const match = /^(?:ovf:)?\/(disk|file)\/(.+)$/.exec(resource);
      if (!match) continue; // a disk drive with no disk behind it
      if (match[1] === 'disk') {
        if (!diskDefinitions.has(match[2]!)) throw fail(`a disk item names disk ${JSON.stringify(match[2]!.slice(0, 80))}, which DiskSection does not define`);
        diskItems.push(match[2]!);
      } else {
        const fileHref = files.get(match[2]!);
        if (fileHref === undefined) throw fail(`a disk item names file ${JSON.stringify(match[2]!.slice(0, 80))}, which References does not list`);
        const id = `file:${match[2]!}`;
        diskDefinitions.set(id, { fileHref, capacityBytes: 0 });
        diskItems.push(id);
      }
    }
  }
  const order = diskItems.length > 0 ? diskItems : diskOrder;
  return { name, cpus, memoryMiB, nics, disks: order.map((id) => ({ ...diskDefinitions.get(id)! })) };
}
