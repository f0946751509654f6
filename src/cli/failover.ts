/**
 * `ferry failover MACHINE --test | --planned | --unplanned [--point P] | --change-point --point P`,
 * `ferry failover cleanup MACHINE` (a test failover), `ferry commit MACHINE`, reprotect and failback:
 * `ferry reprotect MACHINE [--agent A] [--disk-path N=PATH]`, `ferry failback MACHINE`, and migration:
 * `ferry migrate MACHINE [--test]`, `ferry migrate cleanup MACHINE`, `ferry migrate complete MACHINE`.
 */
import type { Command } from 'commander';
import { FerryError } from '../errors.js';
import type { FailoverDiskView, FailoverView, JobView, MachineView, ReprotectView } from '../protocol/views.js';
import { CliContext } from './context.js';
import { reprotectText } from './machines.js';
import { formatBytes, printTable } from './output.js';

/** Parses one --disk-path value, N=PATH, onto the list so far. */
export function parseDiskPathFlag(value: string, previous: { position: number; path: string }[] = []): { position: number; path: string }[] {
  const match = /^(\d{1,3})=(.+)$/.exec(value);
  if (!match) throw new FerryError('invalid-request', `--disk-path '${value}' must be N=PATH (N the disk's position, 0 for the first)`);
  return [...previous, { position: Number(match[1]), path: match[2]! }];
}

interface TestFailoverStarted {
  job: JobView;
  pointId: string;
  disks: FailoverDiskView[];
}

interface FailoverStarted {
  job: JobView;
  failover: FailoverView;
}

type FailoverMode = 'test' | 'planned' | 'unplanned' | 'change-point';

interface FailoverOptions {
  test?: boolean;
  planned?: boolean;
  unplanned?: boolean;
  changePoint?: boolean;
  point?: string;
  wait?: boolean;
}

/** Exactly one of --test, --planned, --unplanned, --change-point; invalid-request otherwise. */
function modeOf(options: FailoverOptions): FailoverMode {
  const chosen = (['test', 'planned', 'unplanned', 'change-point'] as const).filter((mode) =>
    mode === 'test' ? options.test : mode === 'planned' ? options.planned : mode === 'unplanned' ? options.unplanned : options.changePoint,
  );
  if (chosen.length !== 1) {
    throw new FerryError('invalid-request', 'choose one of --test, --planned, --unplanned or --change-point (see `ferry failover --help`)');
  }
  const mode = chosen[0]!;
  if (mode === 'planned' && options.point !== undefined) throw new FerryError('invalid-request', 'a planned failover fails over to its own final point: leave out --point');
  if (mode === 'change-point' && options.point === undefined) throw new FerryError('invalid-request', '--change-point needs --point (latest, latest-app, a point id or a time)');
  return mode;
}

export function registerFailoverCommands(program: Command): void {
  const failover = program
    .command('failover')
    .description('bring a machine up at its recovery site: --test (in isolation), --planned, --unplanned, or --change-point before commit')
    .argument('<machine>', 'machine to fail over')
    .option('--test', "test failover: write the point's disks at the site in isolation; replication goes on")
    .option('--planned', "planned failover: the agent runs the machine's shutdown command and takes a final point; nothing is lost")
    .option('--unplanned', 'unplanned failover from what the store has (the source may be gone)')
    .option('--change-point', 'before commit: rewrite the failed-over disks from another point (with --point)')
    .option('--point <point>', 'recovery point: latest, latest-app, a point id or a time (ISO 8601); default latest')
    .option('--wait', 'wait until the disks are written')
    .action(async (name: string, options: FailoverOptions, command: Command) => {
      const cli = CliContext.of(command);
      const mode = modeOf(options);
      const point = options.point ?? 'latest';
      const machinePath = `/machines/${encodeURIComponent(name)}`;
      if (mode === 'test') {
        const started = await cli.client.post<TestFailoverStarted>(`${machinePath}/test-failover`, { point });
        const job = options.wait ? await cli.waitForJob(started.job.id) : started.job;
        const document = { machine: name, pointId: started.pointId, state: options.wait ? 'ready' : 'creating', job, disks: started.disks };
        cli.print(document, () => {
          console.log(`test failover of ${name} to ${started.pointId}: ${options.wait ? 'ready' : `job ${job.id} ${job.state}`}`);
          printTable(['#', 'PATH'], started.disks.map((disk) => [disk.position, disk.path]));
          console.log(`when done: ferry failover cleanup ${name}`);
        });
        return;
      }
      const started = await cli.client.post<FailoverStarted>(`${machinePath}/failover`, { mode, ...(mode === 'planned' ? {} : { point }) });
      if (!options.wait) {
        cli.print(started, () => console.log(`${mode} failover of ${name}: job ${started.job.id} ${started.job.state}; follow it with \`ferry job show ${started.job.id} --wait\` or \`ferry status ${name}\``));
        return;
      }
      const failoverNow = await waitForFailover(cli, name);
      cli.print({ machine: name, failover: failoverNow }, () => {
        console.log(`${name}: failed over (${failoverNow.kind}) to ${failoverNow.pointId}`);
        printTable(['#', 'PATH'], failoverNow.disks.map((disk) => [disk.position, disk.path]));
        console.log(`to make it final: ferry commit ${name}; to use another point first: ferry failover ${name} --change-point --point P`);
      });
    });

  failover
    .command('cleanup <machine>')
    .description("remove a test failover's disks")
    .option('--no-wait', 'return at once instead of waiting for the files to be removed')
    .action(async (name: string, options: { wait: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const { job } = await cli.client.delete<{ job: JobView }>(`/machines/${encodeURIComponent(name)}/test-failover`);
      const finished = options.wait ? await cli.waitForJob(job.id) : job;
      cli.print({ machine: name, job: finished }, () => console.log(`test failover of ${name}: cleanup ${finished.state}`));
    });

  const migrate = program
    .command('migrate')
    .description('migrate a machine to its recovery site: --test first, then migrate (a planned failover that retires the source), then complete')
    .argument('<machine>', 'machine to migrate')
    .option('--test', "test migration: write the point's disks at the site in isolation (a test failover); replication goes on")
    .option('--point <point>', 'with --test: latest, latest-app, a point id or a time', 'latest')
    .option('--wait', 'wait until the disks are written')
    .action(async (name: string, options: { test?: boolean; point: string; wait?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const machinePath = `/machines/${encodeURIComponent(name)}`;
      if (options.test) {
        const started = await cli.client.post<TestFailoverStarted>(`${machinePath}/test-failover`, { point: options.point });
        const job = options.wait ? await cli.waitForJob(started.job.id) : started.job;
        cli.print({ machine: name, pointId: started.pointId, job, disks: started.disks }, () => {
          console.log(`test migration of ${name} to ${started.pointId}: ${options.wait ? 'ready' : `job ${job.id} ${job.state}`}`);
          printTable(['#', 'PATH'], started.disks.map((disk) => [disk.position, disk.path]));
          console.log(`when done: ferry migrate cleanup ${name}`);
        });
        return;
      }
      const started = await cli.client.post<FailoverStarted>(`${machinePath}/migrate`);
      if (!options.wait) {
        cli.print(started, () => console.log(`migration of ${name}: job ${started.job.id} ${started.job.state}; follow it with \`ferry status ${name}\``));
        return;
      }
      const migrated = await waitForFailover(cli, name, 'migrated');
      cli.print({ machine: name, failover: migrated }, () => {
        console.log(`${name}: migrated to ${migrated.pointId}`);
        printTable(['#', 'PATH'], migrated.disks.map((disk) => [disk.position, disk.path]));
        console.log(`when it runs well there: ferry migrate complete ${name}`);
      });
    });

  migrate
    .command('cleanup <machine>')
    .description("remove a test migration's disks")
    .action(async (name: string, _options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { job } = await cli.client.delete<{ job: JobView }>(`/machines/${encodeURIComponent(name)}/test-failover`);
      const finished = await cli.waitForJob(job.id);
      cli.print({ machine: name, job: finished }, () => console.log(`test migration of ${name}: cleanup ${finished.state}`));
    });

  migrate
    .command('complete <machine>')
    .description("end a migration: the machine's points are deleted and their space reclaimed; an agent at the target site can adopt it")
    .action(async (name: string, _options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { job } = await cli.client.post<{ job: JobView }>(`/machines/${encodeURIComponent(name)}/migrate/complete`);
      const finished = await cli.waitForJob(job.id);
      const result = finished.result as { deletedPoints: number; reclaimedBytes: number | null; note: string | null };
      cli.print({ machine: name, job: finished }, () =>
        console.log(
          `${name}: migration completed; ${result.deletedPoints} point(s) deleted, ${result.reclaimedBytes === null ? result.note : `${formatBytes(result.reclaimedBytes)} reclaimed${result.note ? ` (${result.note})` : ''}`}`,
        ),
      );
    });

  program
    .command('reprotect <machine>')
    .description(
      'after a committed failover: replicate the machine from the recovery site back to its source site (only what differs is sent); after a committed failback: replicate to the recovery site again',
    )
    .option('--agent <name>', "agent that reads the failed-over disks at the recovery site (default: the server's own site agent)")
    .option('--disk-path <N=PATH>', 'write source disk N to PATH instead of its original location; repeatable', parseDiskPathFlag)
    .option('--wait', 'wait until the reprotect is done')
    .action(async (name: string, options: { agent?: string; diskPath?: { position: number; path: string }[]; wait?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const machinePath = `/machines/${encodeURIComponent(name)}`;
      const started = await cli.client.post<{ job: JobView; reprotect: ReprotectView }>(`${machinePath}/reprotect`, {
        ...(options.agent ? { agent: options.agent } : {}),
        ...(options.diskPath ? { diskPaths: options.diskPath } : {}),
      });
      if (!options.wait) {
        cli.print(started, () => console.log(`reprotect of ${name} (${started.reprotect.direction}): job ${started.job.id} ${started.job.state}; follow it with \`ferry job show ${started.job.id} --wait\``));
        return;
      }
      const job = await cli.waitForJob(started.job.id);
      const machine = await cli.client.get<MachineView>(machinePath);
      cli.print({ machine: name, job, reprotect: machine.reprotect }, () => {
        console.log(`${name}: ${machine.state}, replicating ${machine.direction}`);
        if (machine.reprotect) console.log(`reprotect: ${reprotectText(machine.reprotect)}`);
        if (machine.direction === 'reverse') console.log(`to bring it home: ferry failback ${name}`);
      });
    });

  program
    .command('failback <machine>')
    .description("a planned failover back to the source site: the recovery site's agent stops the workload (--recovery-shutdown) and takes a final point, which is written to the source disks (only what differs)")
    .option('--wait', "wait until the source site's disks are written")
    .action(async (name: string, options: { wait?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const started = await cli.client.post<FailoverStarted>(`/machines/${encodeURIComponent(name)}/failback`);
      if (!options.wait) {
        cli.print(started, () => console.log(`failback of ${name}: job ${started.job.id} ${started.job.state}; follow it with \`ferry job show ${started.job.id} --wait\``));
        return;
      }
      const job = await cli.waitForJob(started.job.id);
      const failover = (await cli.client.get<MachineView>(`/machines/${encodeURIComponent(name)}`)).failover;
      const result = job.result as { pointId: string; changedBytes: number; receivedBytes: number };
      cli.print({ machine: name, job, failover }, () => {
        console.log(`${name}: failed back to ${result.pointId}; the source disks took ${formatBytes(result.changedBytes)} that differed (${formatBytes(result.receivedBytes)} sent)`);
        if (failover) printTable(['#', 'PATH'], failover.disks.map((disk) => [disk.position, disk.path]));
        console.log(`to make it final: ferry commit ${name}; then ferry reprotect ${name} replicates it to the recovery site again`);
      });
    });

  program
    .command('commit <machine>')
    .description('make a failover (or failback) final: its point can no longer be changed')
    .action(async (name: string, _options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const result = await cli.client.post<{ job: JobView; failover: FailoverView }>(`/machines/${encodeURIComponent(name)}/commit`);
      cli.print(result, () => console.log(`${name}: ${result.failover.kind === 'failback' ? 'failback' : 'failover'} to ${result.failover.pointId} committed; next: ferry reprotect ${name}`));
    });
}

/**
 * Waits until the machine's failover is ready (its disks written), following each job it goes through
 * (a planned failover's final point, then the write). Throws the failing job's error, or conflict when the
 * failover was rolled back.
 */
async function waitForFailover(cli: CliContext, name: string, doneState = 'failed-over'): Promise<FailoverView> {
  for (;;) {
    const machine = await cli.client.get<{ state: string; failover: FailoverView | null }>(`/machines/${encodeURIComponent(name)}`);
    if (!machine.failover) throw new FerryError('conflict', `the failover of '${name}' did not complete; the machine is ${machine.state} (see \`ferry events\`)`);
    if (machine.state === doneState && machine.failover.state === 'ready') {
      if (machine.failover.error) throw new FerryError('conflict', `the change of point of '${name}' failed: ${machine.failover.error}`);
      return machine.failover;
    }
    const job = await cli.waitForJob(machine.failover.jobId).catch((error: unknown) => {
      if (error instanceof FerryError && error.code !== 'server-unreachable') return null; // the failover rolls back; look again
      throw error;
    });
    if (job === null) await new Promise((resolve) => setTimeout(resolve, 250));
  }
}
