/**
 * `ferry export MACHINE --point P --format F --out PATH`: a recovery point's disks written as disk images
 * of any format Ferry writes (raw, vhd, vhd:fixed for Azure, vhdx, vmdk streamOptimized, qcow2), or as an
 * OVA (an OVF descriptor with the machine's CPUs, memory and NICs, and its disks as streamOptimized
 * VMDKs) for vSphere. A server job (`export`) writes the files on the server's host:
 *
 * - one disk: PATH is the image file (or the .ova);
 * - several disks (not OVA): PATH is a directory, and each disk is PATH/<machine>-disk<N>.<format>.
 *
 * Each image appears complete or not at all (the writers write to a temporary name, fsync, rename). The
 * point is kept from retention while the job runs (the job names it; see store maintenance's job bound).
 */
import path from 'node:path';
import { FerryError } from '../errors.js';
import { pointDiskInput } from '../compute/point-image.js';
import type { JobRow } from '../db/schema.js';
import { fileExtension, parseFormatSpec, writerFor } from '../disks/formats.js';
import { writeOva } from '../disks/ova.js';
import type { JobView } from '../protocol/views.js';
import { ensureDirectory } from '../util/durable-fs.js';
import { type CoreContext, parseJsonColumn, signalWork } from './context.js';
import type { Events } from './events.js';
import { type Jobs, jobView } from './jobs.js';
import type { Machines } from './machines.js';
import type { Points } from './points.js';

/** What an export job is asked to do. */
interface ExportParams {
  pointId: string;
  format: string;
  out: string;
}

/** A file an export wrote. */
export interface ExportedFile {
  position: number | null;
  path: string;
  bytes: number;
}

/** Queues and runs exports. */
export class Exports {
  constructor(
    private readonly context: CoreContext,
    private readonly jobs: Jobs,
    private readonly machines: Machines,
    private readonly points: Points,
    private readonly events: Events,
  ) {}

  /**
   * Queues the export of `machineName`'s point `pointSelector` as `format` ("vhd:fixed", "ova"...) to
   * `out`, an absolute path on the server. invalid-request: a format Ferry cannot write, a relative path,
   * an OVA of a machine whose CPUs or memory are unknown; not-found: the machine or the point.
   */
  async request(machineName: string, request: { point: string; format: string; out: string }): Promise<JobView> {
    const machine = await this.machines.get(machineName);
    if (!path.isAbsolute(request.out)) throw new FerryError('invalid-request', `--out '${request.out}' must be an absolute path on the server`);
    if (request.format === 'ova') {
      if (machine.cpus === null || machine.memory_mib === null) {
        throw new FerryError('invalid-request', `an OVA describes the machine's CPUs and memory, and '${machineName}' has none recorded: set them with \`ferry machine set ${machineName} --cpus N --memory SIZE\``);
      }
    } else {
      writerFor(request.format); // refuse an unknown format or subformat now, not in the job
    }
    const point = await this.points.resolve(machine, request.point);
    const job = await this.jobs.create({ kind: 'export', machineId: machine.id, agentId: null, params: { pointId: point.id, format: request.format, out: path.resolve(request.out) } satisfies ExportParams });
    signalWork(this.context);
    return jobView(job, machine.name);
  }

  /** Server job `export`: writes the files; its result lists them with their sizes. Idempotent (files are replaced). */
  async run(job: JobRow, signal: AbortSignal): Promise<Record<string, unknown>> {
    const params = parseJsonColumn<ExportParams>(job.params, { pointId: '', format: 'raw', out: '' });
    const machine = await this.machines.getById(job.machine_id!);
    const pointDisks = await this.context.db.selectFrom('point_disks').selectAll().where('point_id', '=', params.pointId).orderBy('position').execute();
    if (pointDisks.length === 0) throw new FerryError('not-found', `point ${params.pointId} of '${machine.name}' no longer exists`);
    const inputs = [];
    for (const disk of pointDisks) inputs.push(pointDiskInput(this.context.store, await this.context.store.getIndex(disk.index_hash)));
    const totalBytes = inputs.reduce((total, input) => total + input.size, 0);
    let finishedBytes = 0;
    let lastReport = 0;
    const onProgress = (doneBytes: number) => {
      if (Date.now() - lastReport < 250) return;
      lastReport = Date.now();
      void this.jobs.progress(job.id, { doneBytes: finishedBytes + doneBytes, totalBytes, step: 'writing' });
    };
    await ensureDirectory(pointDisks.length > 1 && params.format !== 'ova' ? params.out : path.dirname(params.out));
    const files: ExportedFile[] = [];
    if (params.format === 'ova') {
      const nics = parseJsonColumn<{ network: string }[]>(machine.nics, []);
      const bytes = await writeOva(params.out, { name: machine.name, cpus: machine.cpus ?? 1, memoryMiB: machine.memory_mib ?? 1024, nics }, inputs, { signal, onProgress });
      files.push({ position: null, path: params.out, bytes });
    } else {
      const { writer, subformat } = writerFor(params.format);
      const { format } = parseFormatSpec(params.format);
      for (const [slot, input] of inputs.entries()) {
        const target = pointDisks.length > 1 ? path.join(params.out, `${machine.name}-disk${pointDisks[slot]!.position}.${fileExtension(format)}`) : params.out;
        const bytes = await writer.write(target, input, { subformat, signal, onProgress });
        files.push({ position: pointDisks[slot]!.position, path: target, bytes });
        finishedBytes += input.size;
      }
    }
    await this.events.record({
      machineId: machine.id,
      severity: 'info',
      code: 'export-written',
      message: `${machine.name}: point ${params.pointId} exported as ${params.format} to ${params.out} (${files.length} file${files.length === 1 ? '' : 's'})`,
    });
    return { machine: machine.name, pointId: params.pointId, format: params.format, files };
  }
}
