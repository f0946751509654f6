/**
 * `ferry machine import PATH`: a machine registered from a VM's descriptor and disk images, to be
 * replicated agentlessly: the server's site agent (site-agent.ts) reads its image files through the disk
 * image readers (src/disks/), on the server's host. PATH is one of:
 *
 * - a VMware `.vmx`: display name, vCPUs, memory, the disks attached to SCSI/SATA/IDE/NVMe controllers
 *   (CD-ROMs left out) and the networks of the present Ethernet adapters;
 * - an `.ovf` (disks beside it) or an `.ova` (its disks are extracted to DATA_DIR/imports/<machine>/, as
 *   the image readers read files): the OVF's VirtualSystem name, CPUs, memory, NICs and disks;
 * - a Hyper-V VM's exported folder: its `.vhdx`/`.vhd` disks (in "Virtual Hard Disks"), and CPUs and
 *   memory from a legacy `Virtual Machines/*.xml` configuration; a `.vmcx` is a binary format Ferry does
 *   not read, so what it holds must be given (`--cpus`, `--memory`, `--nic`).
 *
 * What cannot be read is reported in the result's `missing`, for the operator to give with `ferry machine
 * set`; the machine is imported anyway (replication needs only its disks). Every disk is opened with its
 * reader before anything is registered, so a damaged image is refused (corrupt-data naming it) up front.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { openDiskImage } from '../disks/formats.js';
import { listOva, readOvf } from '../disks/ova.js';
import { newId } from '../util/ids.js';
import { ensureDirectory } from '../util/durable-fs.js';
import type { CoreContext } from './context.js';
import type { Events } from './events.js';
import { newMachineRow } from './machines.js';
import { SITE_AGENT_NAME } from './reprotect.js';

/** What a VM descriptor says about a machine (null where it does not say). */
export interface VmDescription {
  name: string | null;
  cpus: number | null;
  memoryMiB: number | null;
  nics: { network: string }[] | null;
  /** Absolute paths of the disk images, in order. */
  disks: string[];
}

/** Overrides an operator gives with the import (`--name`, `--cpus`, `--memory`, `--nic`). */
export interface ImportOverrides {
  name?: string;
  cpus?: number;
  memoryMiB?: number;
  nics?: { network: string }[];
}

/** What an import registered, and what it could not read. */
export interface ImportResult {
  machine: string;
  source: 'vmx' | 'ovf' | 'ova' | 'hyper-v';
  disks: { position: number; path: string; format: string; sizeBytes: number }[];
  cpus: number | null;
  memoryMiB: number | null;
  nics: { network: string }[];
  /** Properties that could not be read and were not given: set them with `ferry machine set`. */
  missing: string[];
}

/** Largest descriptor file read (a .vmx or .ovf is a few KiB). */
const MAX_DESCRIPTOR_BYTES = 4 * 1024 * 1024;

/** Imports machines from VM descriptors. */
export class Imports {
  constructor(
    private readonly context: CoreContext,
    private readonly events: Events,
    private readonly dataDir: string,
  ) {}

  /**
   * Reads the VM at `sourcePath` (absolute, on the server) and registers it, served by the server's site
   * agent. invalid-request: a path that is none of the kinds above, or a VM without disks; conflict: a
   * machine of that name exists, or the site agent has not registered; corrupt-data: a damaged image.
   */
  async importMachine(sourcePath: string, overrides: ImportOverrides = {}): Promise<ImportResult> {
    if (!path.isAbsolute(sourcePath)) throw new FerryError('invalid-request', `'${sourcePath}' must be an absolute path on the server`);
    const { source, description } = await this.describe(sourcePath, overrides.name);
    const name = overrides.name ?? description.name;
    if (!name || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name)) {
      throw new FerryError('invalid-request', `the VM's name ${name ? `'${name}' is not a valid machine name` : 'could not be read'}: give one with --name`);
    }
    if (description.disks.length === 0) throw new FerryError('invalid-request', `${sourcePath} names no disks`);
    const agent = await this.context.db.selectFrom('agents').select('id').where('name', '=', SITE_AGENT_NAME).executeTakeFirst();
    if (!agent) throw new FerryError('conflict', `the server's site agent has not registered yet, and it is what replicates imported machines; try again in a moment`, { retryable: true });
    if (await this.context.db.selectFrom('machines').select('id').where('name', '=', name).executeTakeFirst()) {
      throw new FerryError('conflict', `machine '${name}' already exists; import under another name with --name`);
    }

    // OVA disks are extracted first: the readers read files.
    const diskPaths = source === 'ova' ? await this.extractOva(sourcePath, name, description.disks) : description.disks;
    const disks: ImportResult['disks'] = [];
    for (const [position, diskPath] of diskPaths.entries()) {
      const reader = await openDiskImage(diskPath);
      try {
        disks.push({ position, path: diskPath, format: reader.subformat ? `${reader.format}:${reader.subformat}` : reader.format, sizeBytes: reader.size });
      } finally {
        await reader.close();
      }
    }
    const cpus = overrides.cpus ?? description.cpus;
    const memoryMiB = overrides.memoryMiB ?? description.memoryMiB;
    const nics = overrides.nics ?? description.nics ?? [];
    const missing = [...(cpus === null ? ['cpus'] : []), ...(memoryMiB === null ? ['memory'] : []), ...(overrides.nics === undefined && description.nics === null ? ['nics'] : [])];

    const now = this.context.now();
    await this.context.db.transaction().execute(async (db) => {
      if (await db.selectFrom('machines').select('id').where('name', '=', name).executeTakeFirst()) throw new FerryError('conflict', `machine '${name}' already exists`);
      const row = newMachineRow(name, agent.id, now, { cpus, memoryMiB, nics });
      await db.insertInto('machines').values(row).execute();
      for (const disk of disks) {
        await db.insertInto('disks').values({ id: newId('d'), machine_id: row.id, position: disk.position, path: disk.path, size_bytes: disk.sizeBytes, error: null, recovery_path: null }).execute();
      }
    });
    await this.events.record({
      machineId: null,
      severity: 'info',
      code: 'machine-imported',
      message: `${name}: imported from ${sourcePath} (${disks.length} disk${disks.length === 1 ? '' : 's'}: ${disks.map((disk) => disk.format).join(', ')})${missing.length ? `; not known: ${missing.join(', ')}` : ''}`,
    });
    return { machine: name, source, disks, cpus, memoryMiB, nics, missing };
  }

  /** What kind of VM `sourcePath` is, and what its descriptor says. */
  private async describe(sourcePath: string, name: string | undefined): Promise<{ source: ImportResult['source']; description: VmDescription }> {
    let stat;
    try {
      stat = await fs.stat(sourcePath);
    } catch (error) {
      throw new FerryError('invalid-request', `${sourcePath} cannot be read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
    }
    if (stat.isDirectory()) return { source: 'hyper-v', description: await describeHyperVFolder(sourcePath) };
    const extension = path.extname(sourcePath).toLowerCase();
    if (extension === '.vmx') return { source: 'vmx', description: parseVmx(await readDescriptor(sourcePath), path.dirname(sourcePath)) };
    if (extension === '.ovf') return { source: 'ovf', description: describeOvf(await readDescriptor(sourcePath), path.dirname(sourcePath)) };
    if (extension === '.ova') return { source: 'ova', description: await this.describeOva(sourcePath, name) };
    throw new FerryError('invalid-request', `${sourcePath} is not a .vmx, .ovf, .ova or a Hyper-V VM's exported folder`);
  }

  /** An OVA's OVF descriptor, with its disks named by their member names (extracted later). */
  private async describeOva(ovaPath: string, _name: string | undefined): Promise<VmDescription> {
    const members = await listOva(ovaPath);
    const descriptor = members.find((member) => member.name.toLowerCase().endsWith('.ovf'));
    if (!descriptor) throw new FerryError('corrupt-data', `${ovaPath} holds no .ovf descriptor`);
    if (descriptor.size > MAX_DESCRIPTOR_BYTES) throw new FerryError('corrupt-data', `${ovaPath}: the OVF descriptor is larger than ${MAX_DESCRIPTOR_BYTES} bytes`);
    const xml = await readRange(ovaPath, descriptor.offset, descriptor.size);
    const description = describeOvf(xml.toString('utf8'), '');
    for (const disk of description.disks) {
      if (!members.some((member) => member.name === disk)) throw new FerryError('corrupt-data', `${ovaPath}: the OVF names a disk '${disk}' the archive does not hold`);
    }
    return description;
  }

  /** Copies each named OVA member to DATA_DIR/imports/<machine>/; returns the files' paths in order. */
  private async extractOva(ovaPath: string, machineName: string, members: readonly string[]): Promise<string[]> {
    const listing = await listOva(ovaPath);
    const directory = path.join(this.dataDir, 'imports', machineName);
    await ensureDirectory(directory);
    const extracted: string[] = [];
    for (const name of members) {
      const member = listing.find((each) => each.name === name)!;
      const target = path.join(directory, path.basename(name));
      const source = await fs.open(ovaPath, 'r');
      const output = await fs.open(`${target}.partial`, 'w', 0o600);
      try {
        const buffer = Buffer.alloc(4 * 1024 * 1024);
        for (let done = 0; done < member.size; ) {
          const length = Math.min(buffer.length, member.size - done);
          const { bytesRead } = await source.read(buffer, 0, length, member.offset + done);
          if (bytesRead === 0) throw new FerryError('corrupt-data', `${ovaPath}: member ${name} ends early`);
          await output.write(buffer, 0, bytesRead);
          done += bytesRead;
        }
        await output.sync();
      } finally {
        await source.close();
        await output.close();
      }
      await fs.rename(`${target}.partial`, target);
      extracted.push(target);
    }
    return extracted;
  }
}

/** Parses a VMware .vmx (`key = "value"` lines); disk paths are resolved against `directory`. */
export function parseVmx(text: string, directory: string): VmDescription {
  const settings = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const match = /^\s*([A-Za-z0-9_.:-]+)\s*=\s*"(.*)"\s*$/.exec(line);
    if (match) settings.set(match[1]!.toLowerCase(), match[2]!);
  }
  const present = (prefix: string) => (settings.get(`${prefix}.present`) ?? 'true').toLowerCase() === 'true';
  const disks: { order: [number, number, number]; path: string }[] = [];
  const controllerOrder = ['scsi', 'sata', 'nvme', 'ide'];
  for (const [key, value] of settings) {
    const match = /^(scsi|sata|ide|nvme)(\d+):(\d+)\.filename$/.exec(key);
    if (!match) continue;
    const device = `${match[1]}${match[2]}:${match[3]}`;
    const deviceType = (settings.get(`${device}.devicetype`) ?? '').toLowerCase();
    if (!present(device) || deviceType.includes('cdrom') || !value.toLowerCase().endsWith('.vmdk')) continue;
    disks.push({ order: [controllerOrder.indexOf(match[1]!), Number(match[2]), Number(match[3])], path: path.resolve(directory, value) });
  }
  disks.sort((a, b) => a.order[0] - b.order[0] || a.order[1] - b.order[1] || a.order[2] - b.order[2]);
  const nics: { network: string }[] = [];
  for (let adapter = 0; adapter < 10; adapter++) {
    const prefix = `ethernet${adapter}`;
    if (!settings.has(`${prefix}.present`) || !present(prefix)) continue;
    nics.push({ network: settings.get(`${prefix}.networkname`) ?? settings.get(`${prefix}.vnet`) ?? 'VM Network' });
  }
  const cpus = Number(settings.get('numvcpus') ?? '1');
  const memory = Number(settings.get('memsize'));
  return {
    name: settings.get('displayname') ?? null,
    cpus: Number.isInteger(cpus) && cpus > 0 ? cpus : null,
    memoryMiB: Number.isInteger(memory) && memory > 0 ? memory : null,
    nics,
    disks: disks.map((disk) => disk.path),
  };
}

/** An OVF descriptor's machine; disk paths resolved against `directory` ('' keeps the member names of an OVA). */
function describeOvf(xml: string, directory: string): VmDescription {
  const ovf = readOvf(xml);
  return {
    name: ovf.name,
    cpus: ovf.cpus,
    memoryMiB: ovf.memoryMiB,
    nics: ovf.nics,
    disks: ovf.disks.map((disk) => (directory ? resolveInside(directory, disk.fileHref) : disk.fileHref)),
  };
}

/** A Hyper-V VM's exported folder: its disks, and CPUs and memory where a legacy XML configuration has them. */
async function describeHyperVFolder(folder: string): Promise<VmDescription> {
  const files = await listFiles(folder, 3);
  const disks = files.filter((file) => /\.(vhdx|vhd)$/i.test(file)).sort();
  const xmlConfig = files.find((file) => /[\\/]Virtual Machines[\\/][^\\/]+\.xml$/i.test(file));
  let cpus: number | null = null;
  let memoryMiB: number | null = null;
  let name: string | null = path.basename(folder);
  if (xmlConfig) {
    const xml = await readDescriptor(xmlConfig);
    const count = /<processors>[\s\S]*?<count[^>]*>(\d+)<\/count>/i.exec(xml);
    const memory = /<memory>[\s\S]*?<bank>[\s\S]*?<size[^>]*>(\d+)<\/size>/i.exec(xml);
    const title = /<properties>[\s\S]*?<name[^>]*>([^<]+)<\/name>/i.exec(xml);
    if (count) cpus = Number(count[1]);
    if (memory) memoryMiB = Number(memory[1]);
    if (title) name = title[1]!.trim();
  }
  return { name, cpus, memoryMiB, nics: null, disks };
}

/** Files under `directory`, `depth` levels down at most. */
async function listFiles(directory: string, depth: number): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await fs.readdir(directory, { withFileTypes: true })) {
    const full = path.join(directory, entry.name);
    if (entry.isFile()) found.push(full);
    else if (entry.isDirectory() && depth > 0) found.push(...(await listFiles(full, depth - 1)));
  }
  return found;
}

/** `name` resolved inside `directory`; corrupt-data if it would escape it (an absolute path or '..'). */
function resolveInside(directory: string, name: string): string {
  const resolved = path.resolve(directory, name);
  if (path.isAbsolute(name) || !resolved.startsWith(directory + path.sep)) throw new FerryError('corrupt-data', `the descriptor names a disk outside its directory: '${name}'`);
  return resolved;
}

async function readDescriptor(file: string): Promise<string> {
  const stat = await fs.stat(file);
  if (stat.size > MAX_DESCRIPTOR_BYTES) throw new FerryError('corrupt-data', `${file} is larger than a VM descriptor can be (${MAX_DESCRIPTOR_BYTES} bytes)`);
  return fs.readFile(file, 'utf8');
}

async function readRange(file: string, offset: number, length: number): Promise<Buffer> {
  const handle = await fs.open(file, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, offset);
    if (bytesRead !== length) throw new FerryError('corrupt-data', `${file} ends inside a member (${bytesRead} of ${length} bytes at ${offset})`);
    return buffer;
  } finally {
    await handle.close();
  }
}
