/** `ferry points`, `ferry jobs`, `ferry job`. */
import type { Command } from 'commander';
import type { JobView, PointView } from '../protocol/views.js';
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
    ['result', job.result ? JSON.stringify(job.result) : null],
    ['error', job.error ? `${job.error.code}: ${job.error.message}` : null],
  ]);
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
    .description('recent jobs, newest first')
    .option('--machine <name>', 'only this machine')
    .option('--active', 'only jobs that have not ended')
    .option('--limit <n>', 'how many', '20')
    .action(async (options: { machine?: string; active?: boolean; limit: string }, command: Command) => {
      const cli = CliContext.of(command);
      const { jobs } = await cli.client.get<{ jobs: JobView[] }>('/jobs', { machine: options.machine, active: options.active ? 'true' : undefined, limit: options.limit });
      cli.print({ jobs }, () =>
        printTable(
          ['JOB', 'KIND', 'MACHINE', 'STATE', 'PROGRESS', 'STARTED', 'ERROR'],
          jobs.map((j) => [j.id, j.kind, j.machine, j.state, `${j.progress.percent}%`, formatAge(j.startedAt), j.error ? `${j.error.code}: ${j.error.message}` : null]),
          'no jobs',
        ),
      );
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
