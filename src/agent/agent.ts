/**
 * The agent daemon: registers its machines with the server, then long-polls for jobs and runs them:
 * replication cycles (replicator.ts) and, for reprotect and failback, applying a recovery point to the
 * machine's own disks (apply-point.ts). It survives server restarts (every request is retried while the
 * server is away) and its own (the server hands out unfinished jobs again; chunks already sent are not
 * sent twice, and a disk already equal to a point has nothing written).
 *
 * Lifecycle: 'starting' -> 'running' -> 'stopping' -> 'stopped' (see `agentTransitions`).
 */
import os from 'node:os';
import { ApiClient, withRetry } from '../client/api-client.js';
import { asFerryError } from '../errors.js';
import { probeDiskImage } from '../disks/formats.js';
import { nextState, type TransitionTable } from '../orchestration/lifecycle.js';
import type { AgentJob, RegisterAgentResponse, WorkResponse } from '../protocol/views.js';
import { createLogger, type Logger } from '../util/logger.js';
import { sleep } from '../util/time.js';
import { AgentState } from './agent-state.js';
import { CompressionPool } from './compression-pool.js';
import { DEFAULT_ZSTD_LEVEL } from '../store/compression-level.js';
import { applyPointJob } from './apply-point.js';
import { replicateMachine } from './replicator.js';
import { RateLimiter } from './rate-limiter.js';
import { removeStaleClones } from './snapshots.js';

/** A machine this agent serves, with its disks in order. */
export interface AgentMachine {
  name: string;
  disks: string[];
}

/** Options of `ferry agent`. */
export interface AgentOptions {
  serverUrl: string;
  token: string;
  dataDir: string;
  machines: AgentMachine[];
  /** Defaults to the host name. */
  name?: string;
  /** Replication jobs run at once (different machines). */
  concurrency?: number;
  /** Longest a file system may stay frozen for a snapshot (default 60 s). */
  maxFreezeSeconds?: number;
  /** Most chunk bytes sent per second, across all jobs (default: no limit). */
  maxRateBytesPerSecond?: number;
  /** zstd level the chunks sent are compressed with, or null to send them raw (default DEFAULT_ZSTD_LEVEL). */
  compressionLevel?: number | null;
}

export type AgentLifecycle = 'starting' | 'running' | 'stopping' | 'stopped';
type AgentEvent = 'registered' | 'stop' | 'stopped';

const agentTransitions: TransitionTable<AgentLifecycle, AgentEvent> = {
  starting: { registered: 'running', stop: 'stopping' },
  running: { stop: 'stopping' },
  stopping: { stopped: 'stopped', stop: 'stopping' },
  stopped: {},
};

/** The replication agent. */
export class Agent {
  state: AgentLifecycle = 'starting';
  private readonly abort = new AbortController();
  private readonly inFlight = new Map<string, Promise<void>>();
  private readonly client: ApiClient;
  private readonly log: Logger;
  private readonly store: AgentState;
  private readonly concurrency: number;
  private readonly rateLimiter?: RateLimiter;
  private readonly compression?: CompressionPool;

  constructor(private readonly options: AgentOptions) {
    this.client = new ApiClient({ baseUrl: options.serverUrl, token: options.token });
    this.log = createLogger('agent');
    this.store = new AgentState(options.dataDir);
    this.concurrency = options.concurrency ?? 2;
    if (options.maxRateBytesPerSecond) this.rateLimiter = new RateLimiter(options.maxRateBytesPerSecond);
    const compressionLevel = options.compressionLevel === undefined ? DEFAULT_ZSTD_LEVEL : options.compressionLevel;
    if (compressionLevel !== null) this.compression = new CompressionPool(compressionLevel);
  }

  /** Registers, then serves jobs until `stop()`. */
  async run(): Promise<void> {
    try {
      const registration = await this.register();
      this.transition('registered');
      this.log.info({ machines: registration.machines.map((machine) => machine.name) }, 'agent registered');
      await this.serve();
    } catch (error) {
      if (!this.abort.signal.aborted) throw error;
    } finally {
      await Promise.allSettled(this.inFlight.values());
      await this.compression?.close();
      if (this.state !== 'stopping') this.transition('stop');
      this.transition('stopped');
    }
  }

  /** Asks the agent to finish: in-flight requests are aborted; the server will hand their jobs out again. */
  stop(): void {
    if (this.state === 'stopped') return;
    this.transition('stop');
    this.abort.abort(new Error('agent stopping'));
  }

  private transition(event: AgentEvent): void {
    this.state = nextState(agentTransitions, 'agent', this.state, event);
  }

  private async register(): Promise<RegisterAgentResponse> {
    // Clones left by a job that died mid-snapshot (the file systems it froze were thawed by their watchdog).
    for (const machine of this.options.machines) for (const diskPath of machine.disks) await removeStaleClones(diskPath);
    const machines = await Promise.all(
      this.options.machines.map(async (machine) => ({
        name: machine.name,
        disks: await Promise.all(
          machine.disks.map(async (diskPath) => {
            try {
              // An image file (VMDK, VHD, VHDX, qcow2) is replicated as the virtual disk it holds.
              return { path: diskPath, sizeBytes: (await probeDiskImage(diskPath)).size, error: null };
            } catch (error) {
              this.log.error({ disk: diskPath }, (error as Error).message);
              return { path: diskPath, sizeBytes: null, error: (error as Error).message };
            }
          }),
        ),
      })),
    );
    const request = { agentName: this.options.name ?? os.hostname(), machines };
    return withRetry(() => this.client.post<RegisterAgentResponse>('/agent/register', request), {
      deadlineMs: Number.MAX_SAFE_INTEGER,
      signal: this.abort.signal,
      onRetry: (error) => this.log.warn(`waiting for server: ${error.message}`),
    });
  }

  private async serve(): Promise<void> {
    while (!this.abort.signal.aborted) {
      let work: WorkResponse;
      try {
        work = await this.client.get<WorkResponse>('/agent/work', { waitSeconds: 20 }, 30_000);
      } catch (error) {
        const failure = asFerryError(error);
        if (!failure.retryable) throw failure;
        this.log.warn(`cannot poll for work: ${failure.message}`);
        await sleep(1000, this.abort.signal);
        continue;
      }
      for (const job of work.jobs) {
        if (this.inFlight.has(job.id) || this.inFlight.size >= this.concurrency) continue;
        this.inFlight.set(job.id, this.runJob(job).finally(() => this.inFlight.delete(job.id)));
      }
      if (work.jobs.length > 0 && this.inFlight.size > 0) {
        // Jobs are running: poll again soon for new ones, without spinning.
        await Promise.race([sleep(1000, this.abort.signal), ...this.inFlight.values()]);
      }
    }
  }

  private async runJob(job: AgentJob): Promise<void> {
    const started = Date.now();
    try {
      if (job.kind === 'apply-point') {
        this.log.info({ jobId: job.id, pointId: job.pointId, machine: job.machine.name }, `applying point ${job.pointId} to the disks of ${job.machine.name}`);
        await applyPointJob(job, { client: this.client, state: this.store, log: this.log, signal: this.abort.signal });
        this.log.info({ jobId: job.id, pointId: job.pointId, machine: job.machine.name, ms: Date.now() - started }, `disks of ${job.machine.name} now equal point ${job.pointId}`);
        return;
      }
      const point = await replicateMachine(job, {
        client: this.client,
        state: this.store,
        log: this.log,
        signal: this.abort.signal,
        dataDir: this.options.dataDir,
        maxFreezeSeconds: this.options.maxFreezeSeconds ?? 60,
        rateLimiter: this.rateLimiter,
        compression: this.compression,
      });
      this.log.info({ jobId: job.id, pointId: point.id, machine: job.machine.name, ms: Date.now() - started }, `point ${point.id} committed`);
    } catch (error) {
      if (this.abort.signal.aborted) return;
      const failure = asFerryError(error);
      this.log.error({ jobId: job.id, machine: job.machine.name, code: failure.code }, failure.message);
      if (failure.code === 'server-unreachable') return; // the server still has the job; it is handed out again
      await this.client
        .post(`/agent/jobs/${job.id}/fail`, { code: failure.code, message: failure.message, retryable: failure.retryable })
        .catch((reportError: unknown) => this.log.error(`could not report failure of ${job.id}: ${(reportError as Error).message}`));
    }
  }
}
