/**
 * Machines and the agents that report them: registration (an agent announces its machines and their
 * disks), settings (hooks), and the status view with health and RPO that `ferry status` shows.
 */
import { FerryError, notFound } from '../errors.js';
import { type Db, withoutFsync } from '../db/database.js';
import type { DiskRow, MachineRow } from '../db/schema.js';
import type { RegisterAgentRequest, UpdateMachineRequest } from '../protocol/requests.js';
import type { HealthLevel, MachineView, RegisterAgentResponse, TestFailoverView } from '../protocol/views.js';
import { newId } from '../util/ids.js';
import { promises as fs } from 'node:fs';
import type { JobRow } from '../db/schema.js';
import { type CoreContext, parseJsonColumn } from './context.js';
import { replicationJobKinds } from './jobs.js';
import { failoverView } from './failover.js';
import { reprotectView, SITE_AGENT_NAME } from './reprotect.js';
import { allows, type MachineEvent, type MachineState, machineTransitions, nextState, replicatingMachineStates } from './lifecycle.js';
import type { Principal } from './tokens.js';

/** Hook timeout a machine starts with. */
export const DEFAULT_HOOK_TIMEOUT_SECONDS = 60;

/**
 * A machine as it is first registered: `unprotected`, served by `agentId`, no hooks, forward; `hardware`
 * as far as it is known (an import reads it from the VM's descriptor).
 */
export function newMachineRow(name: string, agentId: string, now: number, hardware: { cpus: number | null; memoryMiB: number | null; nics: { network: string }[] } = { cpus: null, memoryMiB: null, nics: [] }): MachineRow {
  return {
    id: newId('m'),
    name,
    agent_id: agentId,
    state: 'unprotected',
    site_id: null,
    policy_id: null,
    pre_point_command: null,
    post_point_command: null,
    hook_timeout_seconds: DEFAULT_HOOK_TIMEOUT_SECONDS,
    replication_error_code: null,
    replication_error: null,
    last_point_at: null,
    last_app_point_at: null,
    health_level: 'healthy',
    shutdown_command: null,
    direction: 'forward',
    recovery_agent_id: null,
    recovery_shutdown_command: null,
    cpus: hardware.cpus,
    memory_mib: hardware.memoryMiB,
    nics: JSON.stringify(hardware.nics),
    created_at: now,
    updated_at: now,
  };
}

/** How often an agent's last-seen time is written at most (far below any offline threshold). */
const SEEN_WRITE_INTERVAL_MS = 5_000;

/** Registers, updates, finds and describes machines. */
export class Machines {
  /** When each agent's last-seen time was last written (see `touchAgent`). */
  private readonly seenWrittenAt = new Map<string, number>();
  constructor(private readonly context: CoreContext) {}

  /**
   * Records an agent and the machines it serves, with their disks (added, re-pathed or resized).
   * Refused with conflict: an agent name registered with another token, a token that already belongs
   * to another agent, a machine served by another agent. A changed number of disks on a machine that
   * is being protected (its points name every disk) is not applied: that machine shows the error and
   * keeps replicating the disks it was protected with, and the agent's other machines go on.
   * Re-registering is idempotent.
   */
  async registerAgent(principal: Principal, request: RegisterAgentRequest): Promise<RegisterAgentResponse> {
    const now = this.context.now();
    return this.context.db.transaction().execute(async (db) => {
      // The server's own site agent is trusted to read recovery sites for reprotect: its name is reserved.
      if (request.agentName === SITE_AGENT_NAME) {
        const token = await db.selectFrom('tokens').select('name').where('id', '=', principal.tokenId).executeTakeFirst();
        if (token?.name !== SITE_AGENT_NAME) throw new FerryError('forbidden', `the agent name '${SITE_AGENT_NAME}' is reserved for the server's own site agent`);
      }
      let agent = await db.selectFrom('agents').selectAll().where('name', '=', request.agentName).executeTakeFirst();
      if (agent && agent.token_id !== principal.tokenId) {
        throw new FerryError('conflict', `agent '${request.agentName}' is registered with another token; give this agent another --name or its own token`);
      }
      const tokenOwner = await db.selectFrom('agents').select('name').where('token_id', '=', principal.tokenId).executeTakeFirst();
      if (tokenOwner && tokenOwner.name !== request.agentName) {
        throw new FerryError('conflict', `this token already belongs to agent '${tokenOwner.name}'; create a token per agent (ferry token create --role agent)`);
      }
      if (!agent) {
        agent = { id: newId('agt'), name: request.agentName, token_id: principal.tokenId, last_seen_at: now, created_at: now };
        await db.insertInto('agents').values(agent).execute();
      } else {
        await db.updateTable('agents').set({ last_seen_at: now }).where('id', '=', agent.id).execute();
      }
      const registered: RegisterAgentResponse['machines'] = [];
      for (const machine of request.machines) {
        let row = await db.selectFrom('machines').selectAll().where('name', '=', machine.name).executeTakeFirst();
        if (row && row.agent_id !== agent.id) {
          // A completed migration left the machine at its target site: the agent there adopts it.
          if (row.state !== 'migration-completed') throw new FerryError('conflict', `machine '${machine.name}' is already served by another agent`);
          const state = nextState(machineTransitions, `machine '${machine.name}'`, row.state as MachineState, 'adopt');
          await db.updateTable('machines').set({ agent_id: agent.id, state, policy_id: null, replication_error: null, replication_error_code: null, updated_at: now }).where('id', '=', row.id).execute();
          await db.deleteFrom('failovers').where('machine_id', '=', row.id).execute(); // the migration is history now (events keep it)
          row = { ...row, agent_id: agent.id, state };
        }
        if (!row) {
          row = newMachineRow(machine.name, agent.id, now);
          await db.insertInto('machines').values(row).execute();
        }
        const knownDisks = await db.selectFrom('disks').select('id').where('machine_id', '=', row.id).execute();
        if (knownDisks.length > 0 && knownDisks.length !== machine.disks.length) {
          if (row.state !== 'unprotected') {
            const message = `the agent reports ${machine.disks.length} disk(s) but '${machine.name}' is ${row.state} with ${knownDisks.length}; changing the number of disks of a protected machine is not supported yet, so the disks it was protected with are kept`;
            await db.updateTable('machines').set({ replication_error_code: 'disks-changed', replication_error: message, updated_at: now }).where('id', '=', row.id).execute();
            const kept = await db.selectFrom('disks').select(['id', 'position', 'path']).where('machine_id', '=', row.id).orderBy('position').execute();
            registered.push({ id: row.id, name: row.name, disks: kept });
            continue;
          }
          await db.deleteFrom('disks').where('machine_id', '=', row.id).where('position', '>=', machine.disks.length).execute();
        }
        const disks: RegisterAgentResponse['machines'][number]['disks'] = [];
        // Disks a reprotect moved (`--disk-path`) stay where it put them until the agent is told so.
        const reprotect = await db.selectFrom('reprotections').select(['targets', 'state']).where('machine_id', '=', row.id).where('direction', '=', 'reverse').executeTakeFirst();
        const movedTo = reprotect?.state === 'done' ? parseJsonColumn<{ position: number; path: string }[]>(reprotect.targets, []) : [];
        for (const [position, disk] of machine.disks.entries()) {
          const existing = await db.selectFrom('disks').selectAll().where('machine_id', '=', row.id).where('position', '=', position).executeTakeFirst();
          const id = existing?.id ?? newId('d');
          if (existing && existing.path !== disk.path && movedTo.some((target) => target.position === position && target.path === existing.path)) {
            const message = `the agent reports disk ${position} of '${machine.name}' at ${disk.path}, but a reprotect moved it to ${existing.path}: restart the agent with --machine ${machine.name}=<the new paths>`;
            await db.updateTable('machines').set({ replication_error_code: 'disks-changed', replication_error: message, updated_at: now }).where('id', '=', row.id).execute();
            disks.push({ id, position, path: existing.path });
            continue;
          }
          if (existing) {
            await db.updateTable('disks').set({ path: disk.path, size_bytes: disk.sizeBytes, error: disk.error }).where('id', '=', id).execute();
          } else {
            await db.insertInto('disks').values({ id, machine_id: row.id, position, path: disk.path, size_bytes: disk.sizeBytes, error: disk.error, recovery_path: null }).execute();
          }
          disks.push({ id, position, path: disk.path });
        }
        registered.push({ id: row.id, name: row.name, disks });
      }
      return { agentId: agent.id, machines: registered };
    });
  }

  /**
   * Marks an agent as seen now (every agent request does). The row is written at most once per
   * `SEEN_WRITE_INTERVAL_MS` per agent: a durable SQLite commit costs an fsync on the event loop, and
   * an agent uploading at full speed makes dozens of requests a second, while "last seen" only needs
   * to be as fine as the offline threshold (minutes).
   */
  async touchAgent(agentId: string): Promise<void> {
    const now = this.context.now();
    const written = this.seenWrittenAt.get(agentId);
    if (written !== undefined && now - written >= 0 && now - written < SEEN_WRITE_INTERVAL_MS) return;
    this.seenWrittenAt.set(agentId, now);
    // Not fsynced: after a power loss an agent shows as last seen a few seconds earlier than it was.
    await withoutFsync(this.context.db, (db) => db.updateTable('agents').set({ last_seen_at: now }).where('id', '=', agentId).execute());
  }

  /** The agent registered under a token, or forbidden if that token has not registered. */
  async agentOf(principal: Principal): Promise<{ id: string; name: string }> {
    const agent = await this.context.db.selectFrom('agents').select(['id', 'name']).where('token_id', '=', principal.tokenId).executeTakeFirst();
    if (!agent) throw new FerryError('forbidden', 'this token has not registered an agent yet (POST /api/v1/agent/register)');
    return agent;
  }

  /** The machine named `name`; throws not-found naming it. */
  async get(name: string): Promise<MachineRow> {
    const row = await this.context.db.selectFrom('machines').selectAll().where('name', '=', name).executeTakeFirst();
    if (!row) throw notFound('machine', name);
    return row;
  }

  async getById(id: string): Promise<MachineRow> {
    const row = await this.context.db.selectFrom('machines').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw notFound('machine', id);
    return row;
  }

  /**
   * Who reads the machine's disks in its current direction, and where: forward, its own agent and the
   * disks' paths at the source site; reverse (after a reprotect), its recovery agent and the disks' paths
   * at the recovery site. Conflict when a reverse machine has no recovery agent or path (never, once a
   * reprotect has set them).
   */
  async replicationSource(machine: MachineRow, db: Db = this.context.db): Promise<{ agentId: string; disks: { id: string; position: number; path: string }[] }> {
    const disks = await this.disksOf(machine.id, db);
    if (machine.direction !== 'reverse') return { agentId: machine.agent_id, disks: disks.map((disk) => ({ id: disk.id, position: disk.position, path: disk.path })) };
    if (!machine.recovery_agent_id || disks.some((disk) => disk.recovery_path === null)) {
      throw new FerryError('conflict', `machine '${machine.name}' replicates in reverse but has no recovery agent or disk paths at the recovery site; reprotect it again`);
    }
    return { agentId: machine.recovery_agent_id, disks: disks.map((disk) => ({ id: disk.id, position: disk.position, path: disk.recovery_path! })) };
  }

  async disksOf(machineId: string, db: Db = this.context.db): Promise<DiskRow[]> {
    return db.selectFrom('disks').selectAll().where('machine_id', '=', machineId).orderBy('position').execute();
  }

  /** Changes a machine's hooks, shutdown commands and virtual hardware (only the fields given). */
  async update(name: string, request: UpdateMachineRequest): Promise<MachineView> {
    const machine = await this.get(name);
    await this.context.db
      .updateTable('machines')
      .set({
        ...(request.prePointCommand !== undefined ? { pre_point_command: request.prePointCommand || null } : {}),
        ...(request.postPointCommand !== undefined ? { post_point_command: request.postPointCommand || null } : {}),
        ...(request.hookTimeoutSeconds !== undefined ? { hook_timeout_seconds: request.hookTimeoutSeconds } : {}),
        ...(request.shutdownCommand !== undefined ? { shutdown_command: request.shutdownCommand || null } : {}),
        ...(request.recoveryShutdownCommand !== undefined ? { recovery_shutdown_command: request.recoveryShutdownCommand || null } : {}),
        ...(request.cpus !== undefined ? { cpus: request.cpus } : {}),
        ...(request.memoryMiB !== undefined ? { memory_mib: request.memoryMiB } : {}),
        ...(request.nics !== undefined ? { nics: JSON.stringify(request.nics) } : {}),
        updated_at: this.context.now(),
      })
      .where('id', '=', machine.id)
      .execute();
    return this.view(name);
  }

  /** Records the outcome of a replication attempt on the machine (error set, or cleared). */
  async setReplicationError(machineId: string, error: { code: string; message: string } | null): Promise<void> {
    await this.context.db
      .updateTable('machines')
      .set({ replication_error_code: error?.code ?? null, replication_error: error?.message ?? null, updated_at: this.context.now() })
      .where('id', '=', machineId)
      .execute();
  }

  async list(): Promise<MachineView[]> {
    const rows = await this.context.db.selectFrom('machines').select('name').orderBy('name').execute();
    return Promise.all(rows.map((row) => this.view(row.name)));
  }

  /** How many of the machine's latest replication jobs failed, back to the last success. */
  private async consecutiveFailures(machineId: string): Promise<number> {
    const recent = await this.context.db
      .selectFrom('jobs')
      .select('state')
      .where('machine_id', '=', machineId)
      .where('kind', 'in', replicationJobKinds)
      .where('state', 'in', ['succeeded', 'failed'])
      .orderBy('ended_at', 'desc')
      .limit(20)
      .execute();
    const firstSuccess = recent.findIndex((job) => job.state === 'succeeded');
    return firstSuccess === -1 ? recent.length : firstSuccess;
  }

  /** Free space of the store's file system (null for stores that are not local directories). */
  private async storeSpace(): Promise<{ freeRatio: number } | null> {
    try {
      const stats = await fs.statfs(this.context.store.backend.location);
      return { freeRatio: stats.blocks > 0 ? stats.bavail / stats.blocks : 1 };
    } catch {
      return null;
    }
  }

  /** Pauses or resumes a machine's replication: no new points while paused; its points are kept. */
  async setPaused(name: string, paused: boolean): Promise<MachineView> {
    const machine = await this.get(name);
    const state = nextState(machineTransitions, `machine '${name}'`, machine.state as MachineState, paused ? 'pause' : 'resume');
    await this.context.db.updateTable('machines').set({ state, updated_at: this.context.now() }).where('id', '=', machine.id).where('state', '=', machine.state).execute();
    return this.view(name);
  }

  /** Everything known about one machine, with health and RPO computed now. */
  async view(name: string): Promise<MachineView> {
    const { db, now, options } = this.context;
    const machine = await this.get(name);
    const [agent, recoveryAgent, site, policy, disks, activeJob, pointCount, testFailover, failover, reprotect] = await Promise.all([
      db.selectFrom('agents').selectAll().where('id', '=', machine.agent_id).executeTakeFirstOrThrow(),
      machine.recovery_agent_id ? db.selectFrom('agents').selectAll().where('id', '=', machine.recovery_agent_id).executeTakeFirst() : undefined,
      machine.site_id ? db.selectFrom('sites').select('name').where('id', '=', machine.site_id).executeTakeFirst() : undefined,
      machine.policy_id ? db.selectFrom('policies').selectAll().where('id', '=', machine.policy_id).executeTakeFirst() : undefined,
      this.disksOf(machine.id),
      db
        .selectFrom('jobs')
        .selectAll()
        .where('machine_id', '=', machine.id)
        .where('kind', 'in', replicationJobKinds)
        .where('state', 'in', ['queued', 'running'])
        .orderBy('created_at')
        .executeTakeFirst(),
      db.selectFrom('points').select((eb) => eb.fn.countAll<number>().as('count')).where('machine_id', '=', machine.id).executeTakeFirstOrThrow(),
      db.selectFrom('test_failovers').selectAll().where('machine_id', '=', machine.id).executeTakeFirst(),
      db.selectFrom('failovers').selectAll().where('machine_id', '=', machine.id).executeTakeFirst(),
      db.selectFrom('reprotections').selectAll().where('machine_id', '=', machine.id).executeTakeFirst(),
    ]);
    const currentTime = now();
    const isOnline = (seenAt: number) => currentTime - seenAt < options.agentOfflineAfterMs;
    // The agent that replicates now: the recovery site's in reverse.
    const reader = machine.direction === 'reverse' && recoveryAgent ? recoveryAgent : agent;
    const online = isOnline(reader.last_seen_at);
    // Replication is watched (agent, errors, RPO) while the machine replicates or is paused; failed over,
    // its source may be gone on purpose, and no new points are expected.
    const watched = replicatingMachineStates.includes(machine.state as MachineState) || machine.state === 'paused';
    const rpoSeconds = watched && machine.last_point_at !== null ? Math.max(0, Math.round((currentTime - machine.last_point_at) / 1000)) : null;
    const rpoThresholdSeconds = policy?.rpo_threshold_seconds ?? null;

    const critical: string[] = [];
    const warning: string[] = [];
    for (const disk of disks) if (disk.error) critical.push(`disk ${disk.position} (${disk.path}): ${disk.error}`);
    if (failover?.error) warning.push(`failover: ${failover.error}`);
    if (watched) {
      if (!online) critical.push(`agent '${reader.name}' not seen for ${Math.round((currentTime - reader.last_seen_at) / 1000)}s`);
      if (machine.replication_error) {
        const failures = await this.consecutiveFailures(machine.id);
        critical.push(`replication failing${failures > 1 ? ` (${failures} attempts in a row)` : ''}: ${machine.replication_error}`);
      }
      if (machine.state === 'paused') warning.push('replication is paused: no new points until `ferry resume`');
      const space = await this.storeSpace();
      if (space !== null && space.freeRatio < 0.05) critical.push(`the store is nearly full: ${(space.freeRatio * 100).toFixed(1)}% free`);
      else if (space !== null && space.freeRatio < 0.1) warning.push(`the store is filling up: ${(space.freeRatio * 100).toFixed(1)}% free`);
      if (rpoSeconds !== null && rpoThresholdSeconds !== null && rpoSeconds > rpoThresholdSeconds) {
        warning.push(`RPO ${rpoSeconds}s is over the policy's threshold of ${rpoThresholdSeconds}s`);
      }
      if (testFailover?.state === 'failed') warning.push('a test failover failed; run `ferry failover cleanup`');
    }
    const level: HealthLevel = critical.length ? 'critical' : warning.length ? 'warning' : 'healthy';

    const testFailoverView: TestFailoverView | null = testFailover
      ? {
          state: testFailover.state,
          pointId: testFailover.point_id,
          jobId: testFailover.job_id,
          disks: parseJsonColumn(testFailover.disks, []),
          createdAt: new Date(testFailover.created_at).toISOString(),
        }
      : null;

    return {
      id: machine.id,
      name: machine.name,
      state: machine.state,
      agent: { name: agent.name, lastSeenAt: new Date(agent.last_seen_at).toISOString(), online: isOnline(agent.last_seen_at) },
      recoveryAgent: recoveryAgent ? { name: recoveryAgent.name, lastSeenAt: new Date(recoveryAgent.last_seen_at).toISOString(), online: isOnline(recoveryAgent.last_seen_at) } : null,
      site: site?.name ?? null,
      policy: policy?.name ?? null,
      disks: disks.map((disk) => ({ id: disk.id, position: disk.position, path: disk.path, sizeBytes: disk.size_bytes, error: disk.error, recoveryPath: disk.recovery_path })),
      hooks: {
        prePoint: machine.pre_point_command,
        postPoint: machine.post_point_command,
        timeoutSeconds: machine.hook_timeout_seconds,
        shutdown: machine.shutdown_command,
        recoveryShutdown: machine.recovery_shutdown_command,
      },
      replication: {
        state: activeJob
          ? activeJob.kind === 'initial-replication'
            ? 'initial-replication'
            : activeJob.resync_reason !== null
              ? 'resyncing'
              : 'replicating'
          : machine.state === 'paused'
            ? 'paused'
            : machine.replication_error
              ? 'error'
              : 'idle',
        jobId: activeJob?.id ?? null,
        percent: activeJob ? (activeJob.total_bytes > 0 ? Math.floor((activeJob.done_bytes / activeJob.total_bytes) * 1000) / 10 : 0) : null,
        etaSeconds: activeJob ? estimateSeconds(activeJob, currentTime) : null,
        resyncReason: activeJob?.resync_reason ?? null,
        error: machine.replication_error ? { code: machine.replication_error_code ?? 'unknown', message: machine.replication_error } : null,
      },
      health: { level, reasons: [...critical, ...warning] },
      lastPointAt: machine.last_point_at === null ? null : new Date(machine.last_point_at).toISOString(),
      rpoSeconds,
      rpoThresholdSeconds,
      pointCount: Number(pointCount.count),
      testFailover: testFailoverView,
      failover: failover ? failoverView(failover) : null,
      direction: machine.direction,
      reprotect: reprotect ? reprotectView(reprotect) : null,
      hardware: { cpus: machine.cpus, memoryMiB: machine.memory_mib, nics: parseJsonColumn(machine.nics, []) },
      actions: allowedActions(machine, testFailover?.state ?? null, Number(pointCount.count) > 0),
    };
  }
}

/**
 * What an operator may do with the machine now: each operation whose lifecycle event the state allows
 * (lifecycle.ts), narrowed by direction (failover and migration forward, failback in reverse), by its
 * test failover (one at a time; cleanup once there is one) and by its points (none to fail over to yet).
 */
export function allowedActions(machine: Pick<MachineRow, 'state' | 'direction'>, testFailoverState: string | null, hasPoints: boolean): string[] {
  const state = machine.state as MachineState;
  const reverse = machine.direction === 'reverse';
  const can = (event: MachineEvent) => allows(machineTransitions, state, event);
  const actions: string[] = [];
  if (can('protect')) actions.push('protect');
  if (can('pause')) actions.push('pause');
  if (can('resume')) actions.push('resume');
  if ((state === 'protected' || state === 'paused') && hasPoints && testFailoverState === null) actions.push('test-failover');
  if (testFailoverState !== null && testFailoverState !== 'creating') actions.push('cleanup');
  if (can('failover') && !reverse && hasPoints) actions.push('planned-failover', 'unplanned-failover');
  if (can('change-point')) actions.push('change-point');
  if (can('commit')) actions.push('commit');
  if (can('reprotect')) actions.push('reprotect');
  if (can('failback') && reverse) actions.push('failback');
  if (can('migrate') && !reverse && hasPoints) actions.push('migrate', ...(testFailoverState === null ? ['test-migrate'] : []));
  if (can('complete-migration')) actions.push('complete-migration');
  if (hasPoints && state !== 'migration-completed') actions.push('export');
  return actions;
}

/** Seconds a running job still needs at the pace it has had so far; null until it has made progress. */
export function estimateSeconds(job: Pick<JobRow, 'started_at' | 'done_bytes' | 'total_bytes'>, now: number): number | null {
  if (job.started_at === null || job.done_bytes <= 0 || job.total_bytes <= 0) return null;
  const elapsed = (now - job.started_at) / 1000;
  return Math.max(0, Math.round((elapsed * (job.total_bytes - job.done_bytes)) / job.done_bytes));
}
