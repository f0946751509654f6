/** `ferry server` and `ferry agent`: the two long-running processes. Both stop cleanly on SIGINT/SIGTERM. */
import type { Command } from 'commander';
import type { AgentMachine } from '../agent/agent.js';
import { FerryError } from '../errors.js';
import { DEFAULT_ZSTD_LEVEL } from '../store/compression-level.js';
import { parseRate } from '../agent/rate-limiter.js';
import { parseDuration } from '../util/duration.js';
import { defaultDataDir } from './context.js';

/** Parses one --machine value: NAME=DISK[,DISK...]. */
export function parseMachineFlag(value: string, previous: AgentMachine[] = []): AgentMachine[] {
  const match = /^([A-Za-z0-9][A-Za-z0-9_.-]*)=(.+)$/.exec(value);
  if (!match) throw new FerryError('invalid-request', `--machine '${value}' must be NAME=DISK[,DISK...]`);
  const disks = match[2]!.split(',').filter(Boolean);
  return [...previous, { name: match[1]!, disks }];
}

function onShutdown(stop: () => Promise<void> | void): void {
  let stopping = false;
  const handler = () => {
    if (stopping) process.exit(130);
    stopping = true;
    void Promise.resolve(stop()).finally(() => process.exit(0));
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

export function registerDaemonCommands(program: Command): void {
  program
    .command('server')
    .description('run the Ferry server (API, metadata, chunk store, scheduler)')
    .option('--data-dir <dir>', 'where metadata, the chunk store and admin.token live', defaultDataDir())
    .option('--listen <host:port>', 'address to listen on', '127.0.0.1:7300')
    .option('--store-key-file <file>', 'key of an encrypted chunk store: 32 bytes, or 64 hex characters (given when the store is created: encrypts it)')
    .option('--store-passphrase-file <file>', 'passphrase of an encrypted chunk store (env FERRY_STORE_PASSPHRASE; given when the store is created: encrypts it)')
    .option('--store-compression <zstd|none>', 'compression of a new chunk store (default zstd); an existing store keeps its own')
    .action(async (options: { dataDir: string; listen: string; storeKeyFile?: string; storePassphraseFile?: string; storeCompression?: string }) => {
      const compression = options.storeCompression;
      if (compression !== undefined && compression !== 'zstd' && compression !== 'none') {
        throw new FerryError('invalid-request', `--store-compression '${compression}' must be zstd or none`);
      }
      // The environment is the fallback for a passphrase only: a key given by flag wins over it.
      const envPassphrase = process.env.FERRY_STORE_PASSPHRASE;
      const passphrase = options.storeKeyFile === undefined && options.storePassphraseFile === undefined && envPassphrase ? envPassphrase : undefined;
      // Loaded here, not at the top: other commands should not pay for the server's start-up.
      const { startServer } = await import('../server/server.js');
      const server = await startServer({
        dataDir: options.dataDir,
        listen: options.listen,
        store: { keyFile: options.storeKeyFile, passphraseFile: options.storePassphraseFile, passphrase, compression },
      });
      process.stdout.write(`ferry server listening on ${server.url} (data in ${server.core.dataDir}; admin token in ${server.core.adminTokenFile})\n`);
      onShutdown(() => server.close());
      await new Promise(() => undefined);
    });

  program
    .command('agent')
    .description('run a replication agent for one or more machines')
    .requiredOption('--machine <NAME=DISK[,DISK...]>', 'a machine and its disks (raw image files or block devices); repeatable', parseMachineFlag)
    .option('--data-dir <dir>', "the agent's own state directory", 'ferry-agent')
    .option('--name <name>', 'agent name (default: host name)')
    .option('--max-freeze <duration>', 'longest a file system may stay frozen while its disk is read', '60s')
    .option('--max-rate <rate>', 'most data sent per second, e.g. 20M (bytes) or 100mbit (default: no limit)')
    .option('--compression <level>', `zstd level (1-19) the chunks sent are compressed with, or "none"`, String(DEFAULT_ZSTD_LEVEL))
    .action(async (options: { machine: AgentMachine[]; dataDir: string; name?: string; maxFreeze: string; maxRate?: string; compression: string }, command: Command) => {
      const globals = command.optsWithGlobals<{ server?: string; token?: string }>();
      const serverUrl = globals.server ?? process.env.FERRY_SERVER;
      const token = globals.token ?? process.env.FERRY_TOKEN;
      if (!serverUrl || !token) throw new FerryError('invalid-request', 'ferry agent needs --server URL and --token T (or FERRY_SERVER / FERRY_TOKEN)');
      const { Agent } = await import('../agent/agent.js');
      const agent = new Agent({
        serverUrl,
        token,
        dataDir: options.dataDir,
        machines: options.machine,
        name: options.name,
        maxFreezeSeconds: parseDuration(options.maxFreeze, '--max-freeze'),
        ...(options.maxRate ? { maxRateBytesPerSecond: parseRate(options.maxRate) } : {}),
        compressionLevel: parseCompressionLevel(options.compression),
      });
      onShutdown(() => agent.stop());
      await agent.run();
    });
}

/** `--compression`: "none", or a zstd level from 1 to 19. */
function parseCompressionLevel(text: string): number | null {
  if (text === 'none') return null;
  const level = Number(text);
  if (!Number.isInteger(level) || level < 1 || level > 19) {
    throw new FerryError('invalid-request', `--compression must be a zstd level from 1 to 19 or "none", not '${text}'`);
  }
  return level;
}
