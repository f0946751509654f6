/**
 * The `ferry` command line. Each group of commands lives in its own file and only parses flags,
 * calls the API and prints; errors are turned into a one-line reason and an exit code here, once.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { asFerryError, exitCodeOf, FerryError } from '../errors.js';
import { registerAdminCommands } from './admin.js';
import { registerDaemonCommands } from './daemons.js';
import { registerDemoCommands } from './demo.js';
import { registerFailoverCommands } from './failover.js';
import { registerImageCommands } from './images.js';
import { registerMachineCommands } from './machines.js';
import { registerPlanCommands } from './plans.js';
import { registerPointCommands } from './points.js';
import { registerStoreCommands } from './store.js';

/** Ferry's version: package.json's, read from beside the compiled (dist/cli) or source (src/cli) tree. */
export function ferryVersion(): string {
  const packageJson = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return packageJson.version;
}

/** Builds the command tree (exported for tests and docs). */
export function buildProgram(): Command {
  const program = new Command('ferry')
    .description('Ferry: self-hosted site recovery and migration')
    .option('--server <url>', 'Ferry server URL (env FERRY_SERVER; default: the local data dir\'s server, else http://127.0.0.1:7300)')
    .option('--token <token>', 'API token (env FERRY_TOKEN; default: the local data dir\'s admin.token)')
    .option('--json', 'print one JSON document instead of text')
    .version(ferryVersion(), '-V, --version', "print Ferry's version")
    .showHelpAfterError()
    .exitOverride();
  registerDaemonCommands(program);
  registerAdminCommands(program);
  registerMachineCommands(program);
  registerPointCommands(program);
  registerFailoverCommands(program);
  registerImageCommands(program);
  registerPlanCommands(program);
  registerStoreCommands(program);
  registerDemoCommands(program);
  for (const command of allCommands(program)) command.exitOverride();
  return program;
}

function allCommands(command: Command): Command[] {
  return command.commands.flatMap((child) => [child, ...allCommands(child)]);
}

/** Runs the CLI on `argv` and exits with 0 on success, a mapped exit code with a one-line reason otherwise. */
export async function main(argv: string[]): Promise<void> {
  const json = argv.includes('--json');
  try {
    await buildProgram().parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version print themselves and exit 0; usage errors were already printed by commander.
      process.exit(error.exitCode === 0 ? 0 : 2);
    }
    const failure = asFerryError(error);
    if (json) process.stdout.write(`${JSON.stringify(failure.toBody(), null, 2)}\n`);
    process.stderr.write(`ferry: ${failure.message}\n`);
    if (failure.code === 'internal' && !(error instanceof FerryError)) process.stderr.write(`${(error as Error).stack ?? ''}\n`);
    process.exit(exitCodeOf(failure));
  }
}
