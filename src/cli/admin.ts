/** `ferry token`, `ferry site`, `ferry policy`, `ferry events`. */
import path from 'node:path';
import type { Command } from 'commander';
import type { EventView, PolicyView, SiteView, TokenView } from '../protocol/views.js';
import { formatDuration, parseDuration } from '../util/duration.js';
import { CliContext } from './context.js';
import { printTable } from './output.js';

export function registerAdminCommands(program: Command): void {
  const token = program.command('token').description('API tokens');
  token
    .command('create')
    .description('create a token (the secret is shown once)')
    .option('--role <role>', 'admin or agent', 'agent')
    .option('--name <name>', 'a label for the token')
    .action(async (options: { role: string; name?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const created = await cli.client.post<TokenView>('/tokens', { role: options.role, name: options.name });
      cli.print(created, (view) => console.log(view.token));
    });

  const site = program.command('site').description('recovery sites');
  site
    .command('add <name>')
    .description('add a recovery site whose "files" driver writes recovered disks under --path')
    .requiredOption('--path <dir>', 'directory on the server host')
    .option('--disk-format <format>', 'format failovers write disks in: raw (default), vhd, vhd:fixed (Azure), vhdx, vmdk (streamOptimized), qcow2')
    .action(async (name: string, options: { path: string; diskFormat?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const created = await cli.client.post<SiteView>('/sites', { name, driver: 'files', path: path.resolve(options.path), ...(options.diskFormat ? { diskFormat: options.diskFormat } : {}) });
      cli.print(created, (view) => console.log(`site ${view.name} added (${view.driver}: ${view.path}, disks as ${view.diskFormat})`));
    });
  site
    .command('set <name>')
    .description("change where a site's future failovers are written, or their disk format (failovers already written keep their files)")
    .option('--path <dir>', 'directory on the server host')
    .option('--disk-format <format>', 'raw, vhd, vhd:fixed, vhdx, vmdk, qcow2')
    .action(async (name: string, options: { path?: string; diskFormat?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const updated = await cli.client.patch<SiteView>(`/sites/${encodeURIComponent(name)}`, {
        ...(options.path ? { path: path.resolve(options.path) } : {}),
        ...(options.diskFormat ? { diskFormat: options.diskFormat } : {}),
      });
      cli.print(updated, (view) => console.log(`site ${view.name}: ${view.path}, disks as ${view.diskFormat}`));
    });
  site
    .command('list')
    .description('list recovery sites')
    .action(async (_options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { sites } = await cli.client.get<{ sites: SiteView[] }>('/sites');
      cli.print({ sites }, () => printTable(['NAME', 'DRIVER', 'PATH', 'DISK FORMAT'], sites.map((s) => [s.name, s.driver, s.path, s.diskFormat]), 'no sites: add one with `ferry site add NAME --path DIR`'));
    });

  const policy = program.command('policy').description('replication policies');
  policy
    .command('add <name>')
    .description('add a policy')
    .requiredOption('--interval <duration>', 'time between recovery points (at least 30s), e.g. 5m')
    .option('--app-interval <duration>', 'time between application-consistent points, whose hooks run (default: every point)')
    .requiredOption('--retention <duration>', 'how long points are kept, e.g. 24h or 30d')
    .option('--keep-all <duration>', 'every point younger than this is kept (default: 6h, or the retention)')
    .option('--hourly-for <duration>', 'up to this age one point per hour is kept, beyond it one per day (default: 7d, or the retention)')
    .option('--app-retention <duration>', 'application-consistent points younger than this are all kept, even past the retention')
    .option('--rpo-threshold <duration>', 'RPO above which the machine is unhealthy (default: twice the interval, at least 1m)')
    .action(
      async (
        name: string,
        options: { interval: string; appInterval?: string; retention: string; keepAll?: string; hourlyFor?: string; appRetention?: string; rpoThreshold?: string },
        command: Command,
      ) => {
      const cli = CliContext.of(command);
      const created = await cli.client.post<PolicyView>('/policies', {
        name,
        intervalSeconds: parseDuration(options.interval, '--interval'),
        ...(options.appInterval ? { appIntervalSeconds: parseDuration(options.appInterval, '--app-interval') } : {}),
        retentionSeconds: parseDuration(options.retention, '--retention'),
        ...(options.keepAll ? { keepAllSeconds: parseDuration(options.keepAll, '--keep-all') } : {}),
        ...(options.hourlyFor ? { hourlySeconds: parseDuration(options.hourlyFor, '--hourly-for') } : {}),
        ...(options.appRetention ? { appRetentionSeconds: parseDuration(options.appRetention, '--app-retention') } : {}),
        ...(options.rpoThreshold ? { rpoThresholdSeconds: parseDuration(options.rpoThreshold, '--rpo-threshold') } : {}),
      });
      cli.print(created, (view) => console.log(`policy ${view.name}: a point every ${formatDuration(view.intervalSeconds)}, kept ${formatDuration(view.retentionSeconds)}`));
      },
    );
  policy
    .command('list')
    .description('list policies')
    .action(async (_options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { policies } = await cli.client.get<{ policies: PolicyView[] }>('/policies');
      cli.print({ policies }, () =>
        printTable(
          ['NAME', 'INTERVAL', 'APP INTERVAL', 'RETENTION', 'ALL / HOURLY FOR', 'APP KEPT', 'RPO THRESHOLD'],
          policies.map((p) => [
            p.name,
            formatDuration(p.intervalSeconds),
            formatDuration(p.appIntervalSeconds),
            formatDuration(p.retentionSeconds),
            `${formatDuration(p.keepAllSeconds)} / ${formatDuration(p.hourlySeconds)}`,
            p.appRetentionSeconds ? formatDuration(p.appRetentionSeconds) : '-',
            formatDuration(p.rpoThresholdSeconds),
          ]),
        ),
      );
    });

  program
    .command('events')
    .description('recent events, newest first')
    .option('--machine <name>', 'only this machine')
    .option('--alerts', 'only warnings and errors (health changes, failures, resyncs)')
    .option('--limit <n>', 'how many', '50')
    .action(async (options: { machine?: string; alerts?: boolean; limit: string }, command: Command) => {
      const cli = CliContext.of(command);
      const { events } = await cli.client.get<{ events: EventView[] }>('/events', {
        machine: options.machine,
        alerts: options.alerts ? 'true' : undefined,
        limit: options.limit,
      });
      cli.print({ events }, () => printTable(['TIME', 'SEVERITY', 'MACHINE', 'MESSAGE'], events.map((e) => [e.at, e.severity, e.machine, e.message]), 'no events'));
    });
}
