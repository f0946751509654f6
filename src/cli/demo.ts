/**
 * `ferry demo` and the helpers it runs as child processes, `demo-workload` and `demo-hook pause|resume`.
 * The helpers are hidden top-level commands rather than subcommands of `demo`: commander hands options
 * that a parent also declares (--data-dir, --interval) to the parent, so a subcommand would never see them.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { FerryError } from '../errors.js';
import { parseDuration } from '../util/duration.js';
import { defaultDataDir } from './context.js';

/** The `ferry` command (the launcher, bin/ferry) the demo starts its daemons with. */
const ferryBin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'ferry');

export function registerDemoCommands(program: Command): void {
  program
    .command('demo')
    .description('start a server, an agent and two sample machines with a live workload, all on embedded defaults')
    .option('--data-dir <dir>', 'where everything goes', defaultDataDir())
    .option('--listen <host:port>', 'server address', '127.0.0.1:7300')
    .option('--interval <duration>', 'time between recovery points', '1m')
    .action(async (options: { dataDir: string; listen: string; interval: string }) => {
      const { runDemo } = await import('../demo/demo.js');
      await runDemo({ dataDir: options.dataDir, listen: options.listen, intervalSeconds: parseDuration(options.interval, '--interval'), ferryBin });
    });

  program
    .command('demo-workload', { hidden: true })
    .description('(used by the demo) keep writing into the sample machines\' disks')
    .option('--data-dir <dir>', 'the demo\'s data directory', defaultDataDir())
    .option('--interval <duration>', 'time between writes', '3s')
    .action(async (options: { dataDir: string; interval: string }) => {
      const { buildSampleMachines } = await import('../demo/sample-machines.js');
      const { runWorkload } = await import('../demo/workload.js');
      const demoDir = path.join(path.resolve(options.dataDir), 'demo');
      const machines = await buildSampleMachines(path.join(demoDir, 'machines'));
      const abort = new AbortController();
      process.on('SIGTERM', () => abort.abort());
      process.on('SIGINT', () => abort.abort());
      await runWorkload(machines, path.join(demoDir, 'workload'), { intervalMs: parseDuration(options.interval) * 1000, signal: abort.signal, log: (line) => console.error(line) });
    });

  program
    .command('demo-hook <action>', { hidden: true })
    .description('(used as a pre/post-point hook) pause or resume the demo workload')
    .requiredOption('--dir <dir>', 'the workload\'s control directory for one machine')
    .option('--timeout <duration>', 'how long to wait for the workload to pause', '20s')
    .action(async (action: string, options: { dir: string; timeout: string }) => {
      const { pauseWorkload, resumeWorkload } = await import('../demo/workload.js');
      if (action === 'pause') await pauseWorkload(options.dir, parseDuration(options.timeout) * 1000);
      else if (action === 'resume') await resumeWorkload(options.dir);
      else throw new FerryError('invalid-request', `hook action must be pause or resume, not '${action}'`);
    });
}
