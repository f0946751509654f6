/** `ferry points`, `ferry jobs`, `ferry job`. */
import type { Command } from 'commander';
import type { JobView, PointView } from '../protocol/views.js';
import { parseDuration } from '../util/duration.js';
import { CliContext } from './context.js';
import { formatAge, formatBytes, printFields, printTable, progressBar } from './output.js';

function printJob(job: JobView): void {
  printFields([
    ['job', job.id],
    ['kind', job.kind],
    ['machine', job.machine],
    ['state', job.state],
    ['step', job.step],
    ...(job.resyncReason ? [['resync', job.resyncReason] as [string, string]] : []),
    ['progress', `${progressBar(job.progress.percent)} ${formatBytes(job.progress.doneBytes)} of ${formatBytes(job.progress.totalBytes)}`],
    ['created', job.createdAt],
    ['ended', job.endedAt],
    ['parent', job.parentId],
    ['result', job.result ? JSON.stringify(job.result) : null],
    ['error', job.error ? `${job.error.code}: ${job.error.message}` : null],
  ]);
  // A job that runs others (a recovery plan run): its steps, then the jobs it started.
  if (job.steps?.length) {
    console.log('steps:');
    printTable(
      ['STEP', 'STATE', 'WHAT', 'JOBS'],
      job.steps.map((step) => [step.number, step.state, step.name, step.items.map((item) => `${item.machine ? `${item.machine}=` : ''}${item.jobId ?? item.state}`).join(' ')]),
    );
  }
  if (job.children?.length) {
    console.log('child jobs:');
    printTable(
      ['JOB', 'KIND', 'MACHINE', 'STATE', 'STEP', 'ERROR'],
      job.children.map((child) => [child.id, child.kind, child.machine, child.state, child.step, child.error ? `${child.error.code}: ${child.error.message}` : null]),
    );
  }
}

export function registerPointCommands(program: Command): void {
  const points = program.command('points').description('recovery points');
  points
    .command('create <machine>')
    .description('take a recovery point now')
    .option('--wait', 'wait until the point is committed')
    .option('--consistency <level>', 'app: run the machine\'s hooks; crash: capture without them (default: as the policy says)')
    .action(async (name: string, options: { wait?: boolean; consistency?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const { job } = await cli.client.post<{ job: JobView }>(`/machines/${encodeURIComponent(name)}/points`, options.consistency ? { consistency: options.consistency } : {});
      if (!options.wait) {
        cli.print({ job }, () => console.log(`point requested: job ${job.id} (${job.state}); follow it with \`ferry jobs\``));
        return;
      }
      const finished = await cli.waitForJob(job.id);
      const point = await cli.client.get<{ points: PointView[] }>(`/machines/${encodeURIComponent(name)}/points`).then((r) => r.points.find((p) => p.id === finished.result?.pointId));
      cli.print({ job: finished, point }, () => console.log(`point ${point?.id} committed (${point?.consistency})`));
    });
  points
    .command('list <machine>')
    .description("a machine's recovery points, newest first")
    .action(async (name: string, _options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { points: list } = await cli.client.get<{ points: PointView[] }>(`/machines/${encodeURIComponent(name)}/points`);
      cli.print({ points: list }, () =>
        printTable(
          ['POINT', 'TAKEN', 'AGE', 'CONSISTENCY', 'CHANGED', 'SENT', 'DISKS'],
          list.map((p) => [
            p.id,
            p.takenAt,
            formatAge(p.takenAt),
            p.consistency,
            formatBytes(p.disks.reduce((t, d) => t + d.changedBytes, 0)),
            formatBytes(p.disks.reduce((t, d) => t + d.sentBytes, 0)),
            p.disks.length,
          ]),
          `no recovery points for ${name} yet`,
        ),
      );
    });

  program
    .command('jobs')
    .description('recent jobs, newest first; --watch follows them live with progress bars')
    .option('--machine <name>', 'only this machine')
    .option('--active', 'only jobs that have not ended')
    .option('--limit <n>', 'how many', '20')
    .option('--watch', 'refresh every --interval until none of the listed jobs is active (or Ctrl-C)')
    .option('--interval <duration>', 'refresh interval of --watch', '1s')
    .action(async (options: { machine?: string; active?: boolean; limit: string; watch?: boolean; interval: string }, command: Command) => {
      const cli = CliContext.of(command);
      const query = { machine: options.machine, active: options.active ? 'true' : undefined, limit: options.limit };
      if (!options.watch) {
        const { jobs } = await cli.client.get<{ jobs: JobView[] }>('/jobs', query);
        cli.print({ jobs }, () => printJobs(jobs, false));
        return;
      }
      const intervalMs = parseDuration(options.interval, '--interval') * 1000;
      const redraw = process.stdout.isTTY && !cli.json;
      for (;;) {
        const { jobs } = await cli.client.get<{ jobs: JobView[] }>('/jobs', query);
        if (cli.json) console.log(JSON.stringify({ at: new Date().toISOString(), jobs })); // one document per refresh
        else {
          if (redraw) process.stdout.write('\x1b[2J\x1b[H');
          console.log(`jobs at ${new Date().toISOString()} (every ${options.interval}; Ctrl-C to stop)`);
          printJobs(jobs, true);
        }
        if (!jobs.some((each) => each.state === 'queued' || each.state === 'running')) return;
        await new Promise((resolve) => setTimeout(resolve, intervalMs));
      }
    });

  const job = program.command('job').description('one job');
  job
    .command('show <id>')
    .description('a job in detail')
    .option('--wait', 'wait until it ends')
    .action(async (id: string, options: { wait?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      cli.print(options.wait ? await cli.waitForJob(id) : await cli.client.get<JobView>(`/jobs/${encodeURIComponent(id)}`), printJob);
    });
  job
    .command('cancel <id>')
    .description('end a queued job, or a running replication job (no point is made); running server jobs cannot be stopped halfway')
    .action(async (id: string, _options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      cli.print(await cli.client.post<JobView>(`/jobs/${encodeURIComponent(id)}/cancel`), printJob);
    });
}

/** The jobs table; `bars` shows progress as bars with the current step (for --watch). */
function printJobs(jobs: JobView[], bars: boolean): void {
  printTable(
    bars ? ['JOB', 'KIND', 'MACHINE', 'STATE', 'PROGRESS', 'STEP', 'ERROR'] : ['JOB', 'KIND', 'MACHINE', 'STATE', 'PROGRESS', 'STARTED', 'ERROR'],
    jobs.map((j) => [
      j.id,
      j.kind,
      j.machine,
      j.state,
      bars ? progressBar(j.progress.percent) : `${j.progress.percent}%`,
      bars ? j.step : formatAge(j.startedAt),
      j.error ? `${j.error.code}: ${j.error.message}` : null,
    ]),
    'no jobs',
  );
}
