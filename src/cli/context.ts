/**
 * What every CLI command shares: where the server is and which token to use (flags, then FERRY_SERVER /
 * FERRY_TOKEN, then the local data directory's server.json / admin.token), the API client, printing
 * (human tables or one JSON document with --json) and waiting for jobs.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { ApiClient } from '../client/api-client.js';
import { FerryError } from '../errors.js';
import type { JobView } from '../protocol/views.js';
import { sleep } from '../util/time.js';
import { progressBar } from './output.js';

/** The least time between two questions about a job: what a wait falls back to when the server does not hold the question. */
const JOB_POLL_MS = 250;

/** Global flags every command accepts. */
export interface GlobalOptions {
  server?: string;
  token?: string;
  json?: boolean;
}

/** The default local data directory: FERRY_DATA_DIR, else ./ferry-data. */
export function defaultDataDir(): string {
  return path.resolve(process.env.FERRY_DATA_DIR ?? 'ferry-data');
}

function readTrimmed(filePath: string): string | undefined {
  try {
    return readFileSync(filePath, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Resolved connection settings and output mode for one command. */
export class CliContext {
  readonly json: boolean;
  readonly client: ApiClient;

  constructor(options: GlobalOptions) {
    const dataDir = defaultDataDir();
    const localServer = readTrimmed(path.join(dataDir, 'server.json'));
    const serverUrl =
      options.server ?? process.env.FERRY_SERVER ?? (localServer ? (JSON.parse(localServer) as { url: string }).url : undefined) ?? 'http://127.0.0.1:7300';
    const token = options.token ?? process.env.FERRY_TOKEN ?? readTrimmed(path.join(dataDir, 'admin.token'));
    this.json = Boolean(options.json);
    this.client = new ApiClient({ baseUrl: serverUrl, token });
  }

  /** Builds the context from a commander command's own and global options. */
  static of(command: Command): CliContext {
    return new CliContext(command.optsWithGlobals<GlobalOptions>());
  }

  /** Prints `document` as JSON with --json, else calls `human` to print it for a person. */
  print<T>(document: T, human: (document: T) => void): void {
    if (this.json) process.stdout.write(`${JSON.stringify(document, null, 2)}\n`);
    else human(document);
  }

  /**
   * Waits for a job to end, drawing a progress bar on a terminal. Resolves with the finished job;
   * throws the job's own error (code and message) if it failed.
   */
  async waitForJob(jobId: string, options: { timeoutMs?: number } = {}): Promise<JobView> {
    const deadline = Date.now() + (options.timeoutMs ?? 24 * 3600_000);
    const live = !this.json && process.stderr.isTTY;
    let job = await this.client.get<JobView>(`/jobs/${jobId}`);
    while (job.state === 'queued' || job.state === 'running') {
      if (live) process.stderr.write(`\r${progressBar(job.progress.percent)} ${job.kind} ${job.step ?? ''}`.padEnd(80));
      const remainingSeconds = (deadline - Date.now()) / 1000;
      if (remainingSeconds <= 0) throw new FerryError('conflict', `job ${jobId} still ${job.state} after waiting; see \`ferry jobs\``, { retryable: true });
      // A long poll: the server answers as soon as the job ends (on a terminal at least every second,
      // to move the bar), so the command returns when the job does, not at its next poll.
      const askedAt = Date.now();
      const waitSeconds = Math.min(live ? 1 : 20, remainingSeconds);
      job = await this.client.get<JobView>(`/jobs/${jobId}`, { waitSeconds }, (waitSeconds + 30) * 1000);
      // A server stopping (or one from before long polls) answers at once: do not spin.
      const answeredInMs = Date.now() - askedAt;
      if ((job.state === 'queued' || job.state === 'running') && answeredInMs < JOB_POLL_MS) await sleep(JOB_POLL_MS - answeredInMs);
    }
    if (live) process.stderr.write(`\r${progressBar(100)} ${job.kind} ${job.state}`.padEnd(80) + '\n');
    if (job.state !== 'succeeded') {
      const error = job.error ?? { code: 'internal', message: `job ${jobId} ended ${job.state}`, retryable: false };
      throw new FerryError(error.code as FerryError['code'], `job ${jobId} ${job.state}: ${error.message}`, { retryable: error.retryable, details: { job } });
    }
    return job;
  }
}
