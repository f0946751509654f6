/** `ferry failover MACHINE --test` and `ferry failover cleanup MACHINE`. */
import type { Command } from 'commander';
import { FerryError } from '../errors.js';
import type { FailoverDiskView, JobView } from '../protocol/views.js';
import { CliContext } from './context.js';
import { printTable } from './output.js';

interface TestFailoverStarted {
  job: JobView;
  pointId: string;
  disks: FailoverDiskView[];
}

export function registerFailoverCommands(program: Command): void {
  const failover = program
    .command('failover')
    .description('bring a machine up at its recovery site (only --test for now), or clean a test failover up')
    .argument('<machine>', 'machine to fail over')
    .option('--test', 'test failover: write the point\'s disks at the site in isolation; replication goes on')
    .option('--point <point>', 'recovery point: latest or a point id', 'latest')
    .option('--wait', 'wait until the disks are written')
    .action(async (name: string, options: { test?: boolean; point: string; wait?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      if (!options.test) throw new FerryError('invalid-request', 'only test failover exists so far: add --test');
      const started = await cli.client.post<TestFailoverStarted>(`/machines/${encodeURIComponent(name)}/test-failover`, { point: options.point });
      const job = options.wait ? await cli.waitForJob(started.job.id) : started.job;
      const document = { machine: name, pointId: started.pointId, state: options.wait ? 'ready' : 'creating', job, disks: started.disks };
      cli.print(document, () => {
        console.log(`test failover of ${name} to ${started.pointId}: ${options.wait ? 'ready' : `job ${job.id} ${job.state}`}`);
        printTable(['#', 'PATH'], started.disks.map((disk) => [disk.position, disk.path]));
        console.log(`when done: ferry failover cleanup ${name}`);
      });
    });

  failover
    .command('cleanup <machine>')
    .description('remove a test failover\'s disks')
    .option('--no-wait', 'return at once instead of waiting for the files to be removed')
    .action(async (name: string, options: { wait: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const { job } = await cli.client.delete<{ job: JobView }>(`/machines/${encodeURIComponent(name)}/test-failover`);
      const finished = options.wait ? await cli.waitForJob(job.id) : job;
      cli.print({ machine: name, job: finished }, () => console.log(`test failover of ${name}: cleanup ${finished.state}`));
    });
}
