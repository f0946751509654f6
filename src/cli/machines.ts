/** `ferry machine`, `ferry protect`, `ferry status`. */
import type { Command } from 'commander';
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
    .action(async (name: string, options: { prePoint?: string; postPoint?: string; hookTimeout?: string; shutdown?: string; recoveryShutdown?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const updated = await cli.client.patch<MachineView>(`/machines/${encodeURIComponent(name)}`, {
        ...(options.prePoint !== undefined ? { prePointCommand: options.prePoint || null } : {}),
        ...(options.postPoint !== undefined ? { postPointCommand: options.postPoint || null } : {}),
        ...(options.hookTimeout ? { hookTimeoutSeconds: parseDuration(options.hookTimeout, '--hook-timeout') } : {}),
        ...(options.shutdown !== undefined ? { shutdownCommand: options.shutdown || null } : {}),
        ...(options.recoveryShutdown !== undefined ? { recoveryShutdownCommand: options.recoveryShutdown || null } : {}),
      });
      cli.print(updated, printMachine);
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
