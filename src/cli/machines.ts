/** `ferry machine` (list, set, import), `ferry protect`, `ferry status`, `ferry export`. */
import type { Command } from 'commander';
import path from 'node:path';
import { FerryError } from '../errors.js';
import type { JobView, MachineView } from '../protocol/views.js';
import { formatDuration, parseDuration } from '../util/duration.js';
import { CliContext } from './context.js';
import { formatAge, formatBytes, printFields, printTable } from './output.js';

function replicationText(machine: MachineView): string {
  const eta = machine.replication.etaSeconds !== null ? `, ${formatDuration(machine.replication.etaSeconds)} left` : '';
  if (machine.replication.state === 'initial-replication') return `initial replication ${machine.replication.percent ?? 0}%${eta}`;
  if (machine.replication.state === 'replicating') return `replicating ${machine.replication.percent ?? 0}%${eta}`;
  if (machine.replication.state === 'resyncing') return `resyncing ${machine.replication.percent ?? 0}%${eta}`;
  if (machine.replication.state === 'paused') return 'paused';
  if (machine.replication.state === 'error') return `error: ${machine.replication.error?.code}`;
  return 'idle';
}

/** Parses a memory size for --memory: "4096" (MiB), "512M", "4G"; invalid-request otherwise. */
export function parseMemoryMiB(value: string): number {
  const match = /^(\d+)\s*([MG]i?B?)?$/i.exec(value.trim());
  if (!match) throw new FerryError('invalid-request', `--memory '${value}' must be a size such as 4096, 512M or 4G`);
  const amount = Number(match[1]);
  const mebibytes = match[2]?.toUpperCase().startsWith('G') ? amount * 1024 : amount;
  if (mebibytes < 1) throw new FerryError('invalid-request', `--memory '${value}' must be at least 1 MiB`);
  return mebibytes;
}

function collectNic(value: string, previous: { network: string }[] = []): { network: string }[] {
  return [...previous, { network: value }];
}

/** One line on a reprotect: direction, state, and once done the bytes it took. */
export function reprotectText(reprotect: NonNullable<MachineView['reprotect']>): string {
  const result = reprotect.result;
  const bytes = result
    ? `: first point sent ${formatBytes(result.pointSentBytes)}${result.appliedChangedBytes !== undefined ? `, source disks took ${formatBytes(result.appliedChangedBytes)} (${formatBytes(result.appliedReceivedBytes ?? 0)} sent)` : ''}`
    : '';
  return `${reprotect.direction}, ${reprotect.state}${reprotect.pointId ? ` at ${reprotect.pointId}` : ''}${bytes}${reprotect.error ? ` (${reprotect.error})` : ''}`;
}

function printMachine(machine: MachineView): void {
  printFields([
    ['machine', machine.name],
    ['state', machine.state],
    ['health', `${machine.health.level}${machine.health.reasons.length ? ` (${machine.health.reasons.join('; ')})` : ''}`],
    ['replication', replicationText(machine)],
    ...(machine.replication.resyncReason ? [['resync', machine.replication.resyncReason] as [string, string]] : []),
    ['agent', `${machine.agent.name} (${machine.agent.online ? 'online' : 'offline'}, seen ${formatAge(machine.agent.lastSeenAt)})`],
    ['direction', machine.direction === 'reverse' ? 'reverse (from the recovery site back to the source site)' : 'forward (to the recovery site)'],
    ...(machine.recoveryAgent
      ? [['recovery agent', `${machine.recoveryAgent.name} (${machine.recoveryAgent.online ? 'online' : 'offline'}, seen ${formatAge(machine.recoveryAgent.lastSeenAt)})`] as [string, string]]
      : []),
    ['site', machine.site],
    ['policy', machine.policy],
    ['last point', machine.lastPointAt ? `${machine.lastPointAt} (${formatAge(machine.lastPointAt)})` : null],
    ['RPO', machine.rpoSeconds === null ? null : `${formatDuration(machine.rpoSeconds)} (threshold ${formatDuration(machine.rpoThresholdSeconds ?? 0)})`],
    ['points', machine.pointCount],
    [
      'hardware',
      `${machine.hardware.cpus ?? '?'} CPU, ${machine.hardware.memoryMiB === null ? '?' : `${machine.hardware.memoryMiB} MiB`} memory, NICs: ${machine.hardware.nics.map((nic) => nic.network).join(', ') || 'none'}`,
    ],
    ['hooks', machine.hooks.prePoint ? `pre: ${machine.hooks.prePoint} | post: ${machine.hooks.postPoint ?? '-'} | timeout ${machine.hooks.timeoutSeconds}s` : 'none'],
    ['shutdown', machine.hooks.shutdown ?? 'none (planned failover needs one)'],
    ['recovery shutdown', machine.hooks.recoveryShutdown ?? 'none (failback needs one)'],
    ['test failover', machine.testFailover ? `${machine.testFailover.state} at ${machine.testFailover.pointId}` : 'none'],
    ['failover', machine.failover ? `${machine.failover.kind}, ${machine.failover.state}${machine.failover.pointId ? ` at ${machine.failover.pointId}` : ''}${machine.failover.error ? ` (${machine.failover.error})` : ''}` : 'none'],
    ['reprotect', machine.reprotect ? reprotectText(machine.reprotect) : 'none'],
  ]);
  console.log('disks:');
  const reverse = machine.disks.some((d) => d.recoveryPath !== null);
  printTable(
    reverse ? ['#', 'PATH', 'SIZE', 'AT RECOVERY SITE', 'ERROR'] : ['#', 'PATH', 'SIZE', 'ERROR'],
    machine.disks.map((d) => (reverse ? [d.position, d.path, formatBytes(d.sizeBytes), d.recoveryPath, d.error] : [d.position, d.path, formatBytes(d.sizeBytes), d.error])),
  );
  if (machine.testFailover) {
    console.log('test failover disks:');
    printTable(['#', 'PATH'], machine.testFailover.disks.map((d) => [d.position, d.path]));
  }
  if (machine.failover && machine.failover.disks.length > 0) {
    console.log('failed-over disks:');
    printTable(['#', 'PATH'], machine.failover.disks.map((d) => [d.position, d.path]));
  }
}

export function registerMachineCommands(program: Command): void {
  const machine = program.command('machine').description('machines reported by agents');
  machine
    .command('list')
    .description('list machines')
    .action(async (_options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { machines } = await cli.client.get<{ machines: MachineView[] }>('/machines');
      cli.print({ machines }, () =>
        printTable(['NAME', 'STATE', 'AGENT', 'DISKS'], machines.map((m) => [m.name, m.state, m.agent.name, m.disks.length]), 'no machines: start an agent with `ferry agent --machine NAME=DISK`'),
      );
    });
  machine
    .command('set <machine>')
    .description('change a machine\'s settings')
    .option('--pre-point <command>', 'shell command the agent runs before reading the disks (quiesce); "" removes it')
    .option('--post-point <command>', 'shell command the agent runs after reading them (resume); "" removes it')
    .option('--hook-timeout <duration>', 'how long each hook may run, e.g. 60s')
    .option('--shutdown <command>', 'shell command a planned failover has the agent run to stop the workload; "" removes it')
    .option('--recovery-shutdown <command>', 'shell command a failback has the recovery site\'s agent run to stop the workload there; "" removes it')
    .option('--cpus <n>', 'virtual CPUs (an OVA export describes them)', (value) => Number(value))
    .option('--memory <size>', 'memory, e.g. 4G or 4096 (MiB)', parseMemoryMiB)
    .option('--nic <network>', 'a network adapter attached to NETWORK; repeatable, replaces the list', collectNic)
    .action(async (name: string, options: { prePoint?: string; postPoint?: string; hookTimeout?: string; shutdown?: string; recoveryShutdown?: string; cpus?: number; memory?: number; nic?: { network: string }[] }, command: Command) => {
      const cli = CliContext.of(command);
      const updated = await cli.client.patch<MachineView>(`/machines/${encodeURIComponent(name)}`, {
        ...(options.prePoint !== undefined ? { prePointCommand: options.prePoint || null } : {}),
        ...(options.postPoint !== undefined ? { postPointCommand: options.postPoint || null } : {}),
        ...(options.hookTimeout ? { hookTimeoutSeconds: parseDuration(options.hookTimeout, '--hook-timeout') } : {}),
        ...(options.shutdown !== undefined ? { shutdownCommand: options.shutdown || null } : {}),
        ...(options.recoveryShutdown !== undefined ? { recoveryShutdownCommand: options.recoveryShutdown || null } : {}),
        ...(options.cpus !== undefined ? { cpus: options.cpus } : {}),
        ...(options.memory !== undefined ? { memoryMiB: options.memory } : {}),
        ...(options.nic !== undefined ? { nics: options.nic } : {}),
      });
      cli.print(updated, printMachine);
    });
  machine
    .command('import <path>')
    .description("register a machine from a VMware .vmx, an .ovf, an .ova or a Hyper-V VM's exported folder on the server; the server replicates its image files (agentless)")
    .option('--name <name>', "machine name (default: the VM's own)")
    .option('--cpus <n>', 'virtual CPUs, where the descriptor does not say', (value) => Number(value))
    .option('--memory <size>', 'memory, e.g. 4G, where the descriptor does not say', parseMemoryMiB)
    .option('--nic <network>', 'a network adapter; repeatable (replaces what the descriptor says)', collectNic)
    .action(async (source: string, options: { name?: string; cpus?: number; memory?: number; nic?: { network: string }[] }, command: Command) => {
      const cli = CliContext.of(command);
      const result = await cli.client.post<{ import: { machine: string; source: string; disks: { position: number; path: string; format: string; sizeBytes: number }[]; missing: string[] }; machine: MachineView }>(
        '/machines/import',
        {
          path: path.resolve(source),
          ...(options.name ? { name: options.name } : {}),
          ...(options.cpus !== undefined ? { cpus: options.cpus } : {}),
          ...(options.memory !== undefined ? { memoryMiB: options.memory } : {}),
          ...(options.nic ? { nics: options.nic } : {}),
        },
      );
      cli.print(result, () => {
        console.log(`${result.import.machine}: imported from ${result.import.source}; protect it with \`ferry protect ${result.import.machine} --site SITE\``);
        printTable(['#', 'PATH', 'FORMAT', 'SIZE'], result.import.disks.map((disk) => [disk.position, disk.path, disk.format, formatBytes(disk.sizeBytes)]));
        if (result.import.missing.length > 0) {
          console.log(`not in the descriptor: ${result.import.missing.join(', ')}; set with \`ferry machine set ${result.import.machine} --cpus N --memory SIZE --nic NETWORK\``);
        }
      });
    });

  program
    .command('export <machine>')
    .description("write a recovery point's disks as disk images (raw, vhd, vhd:fixed for Azure, vhdx, vmdk, qcow2) or an OVA, on the server")
    .requiredOption('--format <format>', 'raw, vhd, vhd:fixed, vhd:dynamic, vhdx, vmdk, qcow2 or ova')
    .requiredOption('--out <path>', 'the image file (one disk, or the .ova), or a directory (several disks), on the server')
    .option('--point <point>', 'latest, latest-app, a point id or a time', 'latest')
    .option('--no-wait', 'return at once with the job')
    .action(async (name: string, options: { format: string; out: string; point: string; wait: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const { job } = await cli.client.post<{ job: JobView }>(`/machines/${encodeURIComponent(name)}/export`, { point: options.point, format: options.format, out: path.resolve(options.out) });
      const finished = options.wait ? await cli.waitForJob(job.id) : job;
      cli.print({ machine: name, job: finished }, () => {
        if (!options.wait) return console.log(`export of ${name}: job ${job.id} ${job.state}`);
        const result = finished.result as { pointId: string; files: { position: number | null; path: string; bytes: number }[] };
        console.log(`${name}: point ${result.pointId} exported as ${options.format}`);
        printTable(['#', 'PATH', 'SIZE ON DISK'], result.files.map((file) => [file.position ?? '-', file.path, formatBytes(file.bytes)]));
      });
    });

  program
    .command('protect <machine>')
    .description('start protecting a machine: initial replication to a site, then points on the policy\'s interval')
    .requiredOption('--site <site>', 'recovery site')
    .option('--policy <policy>', 'replication policy', 'default')
    .option('--wait', 'wait until initial replication has finished')
    .action(async (name: string, options: { site: string; policy: string; wait?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const started = await cli.client.post<{ machine: MachineView; job: JobView }>(`/machines/${encodeURIComponent(name)}/protect`, { site: options.site, policy: options.policy });
      const job = options.wait ? await cli.waitForJob(started.job.id) : started.job;
      const machine = options.wait ? await cli.client.get<MachineView>(`/machines/${encodeURIComponent(name)}`) : started.machine;
      cli.print({ machine, job }, () => console.log(`${name}: ${machine.state}; initial replication job ${job.id} ${job.state}`));
    });

  for (const [verb, description] of [
    ['pause', 'pause replication of a machine: no new points until resumed; its points are kept'],
    ['resume', 'resume replication of a paused machine'],
  ] as const) {
    program
      .command(`${verb} <machine>`)
      .description(description)
      .action(async (name: string, _options: unknown, command: Command) => {
        const cli = CliContext.of(command);
        const machine = await cli.client.post<MachineView>(`/machines/${encodeURIComponent(name)}/${verb}`);
        cli.print(machine, () => console.log(`${name}: ${machine.state}`));
      });
  }

  program
    .command('status [machine]')
    .description('state, health, RPO and replication progress of every machine, or one in detail')
    .action(async (name: string | undefined, _options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      if (name) {
        cli.print(await cli.client.get<MachineView>(`/machines/${encodeURIComponent(name)}`), printMachine);
        return;
      }
      const { machines } = await cli.client.get<{ machines: MachineView[] }>('/machines');
      cli.print({ machines }, () =>
        printTable(
          ['MACHINE', 'STATE', 'HEALTH', 'REPLICATION', 'LAST POINT', 'RPO', 'POINTS', 'TEST FAILOVER'],
          machines.map((m) => [
            m.name,
            m.state,
            m.health.level,
            replicationText(m),
            formatAge(m.lastPointAt),
            m.rpoSeconds === null ? null : formatDuration(m.rpoSeconds),
            m.pointCount,
            m.testFailover?.state ?? null,
          ]),
          'no machines yet: start an agent with `ferry agent --machine NAME=DISK`',
        ),
      );
    });
}
