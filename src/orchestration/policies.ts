/** Replication policies: how often points are taken, how long they are kept, and the RPO to alarm on. */
import { FerryError, notFound } from '../errors.js';
import type { z } from 'zod';
import type { CreatePolicyRequest, updatePolicyRequest } from '../protocol/requests.js';
import type { PolicyView } from '../protocol/views.js';
import type { PolicyRow } from '../db/schema.js';
import { newId } from '../util/ids.js';
import { defaultThinning, type RetentionRules } from './retention.js';
import type { CoreContext } from './context.js';

/** The policy every installation starts with: a point every 5 minutes, kept 24 hours. */
export const DEFAULT_POLICY = { name: 'default', intervalSeconds: 300, retentionSeconds: 86400 } as const;

/** Renders a policy row for the API. */
export function policyView(row: PolicyRow): PolicyView {
  return {
    id: row.id,
    name: row.name,
    intervalSeconds: row.interval_seconds,
    appIntervalSeconds: row.app_interval_seconds,
    retentionSeconds: row.retention_seconds,
    keepAllSeconds: row.keep_all_seconds,
    hourlySeconds: row.hourly_seconds,
    appRetentionSeconds: row.app_retention_seconds,
    rpoThresholdSeconds: row.rpo_threshold_seconds,
    createdAt: new Date(row.created_at).toISOString(),
  };
}

/** Creates and finds policies. */
export class Policies {
  constructor(private readonly context: CoreContext) {}

  /**
   * Adds a policy. Every point is application-consistent (hooks run) unless `appIntervalSeconds` is
   * longer than the interval; the RPO threshold defaults to twice the interval (at least one minute).
   */
  async create(request: CreatePolicyRequest): Promise<PolicyView> {
    const existing = await this.context.db.selectFrom('policies').select('id').where('name', '=', request.name).executeTakeFirst();
    if (existing) throw new FerryError('conflict', `policy '${request.name}' already exists`);
    if (request.appIntervalSeconds !== undefined && request.appIntervalSeconds < request.intervalSeconds) {
      throw new FerryError('invalid-request', `the app-consistent interval (${request.appIntervalSeconds}s) must be at least the interval (${request.intervalSeconds}s)`);
    }
    if (request.retentionSeconds < request.intervalSeconds) {
      throw new FerryError('invalid-request', `retention (${request.retentionSeconds}s) must be at least the interval (${request.intervalSeconds}s)`);
    }
    const thinning = defaultThinning(request.retentionSeconds);
    const row: PolicyRow = {
      id: newId('pol'),
      name: request.name,
      interval_seconds: request.intervalSeconds,
      app_interval_seconds: request.appIntervalSeconds ?? request.intervalSeconds,
      retention_seconds: request.retentionSeconds,
      keep_all_seconds: Math.min(request.keepAllSeconds ?? thinning.keepAllSeconds, request.retentionSeconds),
      hourly_seconds: Math.min(request.hourlySeconds ?? thinning.hourlySeconds, request.retentionSeconds),
      app_retention_seconds: request.appRetentionSeconds ?? thinning.appRetentionSeconds,
      rpo_threshold_seconds: request.rpoThresholdSeconds ?? Math.max(60, 2 * request.intervalSeconds),
      created_at: this.context.now(),
    };
    await this.context.db.insertInto('policies').values(row).execute();
    return policyView(row);
  }

  /**
   * `PATCH /policies/{name}`: changes the settings given, keeps the others, and checks the result with
   * the rules of `create` (the app-consistent interval and the retention at least the interval; the
   * thinning windows capped by the retention). Machines on the policy follow it from their next
   * scheduler tick. Throws not-found naming the policy, invalid-request naming the rule broken.
   */
  async update(name: string, changes: z.infer<typeof updatePolicyRequest>): Promise<PolicyView> {
    const row = await this.get(name);
    const intervalSeconds = changes.intervalSeconds ?? row.interval_seconds;
    // An app interval equal to the old interval meant "every point": it follows a new interval unless given.
    const appIntervalSeconds = changes.appIntervalSeconds ?? (row.app_interval_seconds === row.interval_seconds ? intervalSeconds : row.app_interval_seconds);
    const retentionSeconds = changes.retentionSeconds ?? row.retention_seconds;
    if (appIntervalSeconds < intervalSeconds) {
      throw new FerryError('invalid-request', `the app-consistent interval (${appIntervalSeconds}s) must be at least the interval (${intervalSeconds}s)`);
    }
    if (retentionSeconds < intervalSeconds) {
      throw new FerryError('invalid-request', `retention (${retentionSeconds}s) must be at least the interval (${intervalSeconds}s)`);
    }
    const updated: PolicyRow = {
      ...row,
      interval_seconds: intervalSeconds,
      app_interval_seconds: appIntervalSeconds,
      retention_seconds: retentionSeconds,
      keep_all_seconds: Math.min(changes.keepAllSeconds ?? row.keep_all_seconds, retentionSeconds),
      hourly_seconds: Math.min(changes.hourlySeconds ?? row.hourly_seconds, retentionSeconds),
      app_retention_seconds: changes.appRetentionSeconds ?? row.app_retention_seconds,
      rpo_threshold_seconds: changes.rpoThresholdSeconds ?? row.rpo_threshold_seconds,
    };
    const { id, created_at: _createdAt, ...settings } = updated;
    await this.context.db.updateTable('policies').set(settings).where('id', '=', id).execute();
    return policyView(updated);
  }

  /** Creates the `default` policy if it does not exist. */
  async ensureDefault(): Promise<void> {
    const existing = await this.context.db.selectFrom('policies').select('id').where('name', '=', DEFAULT_POLICY.name).executeTakeFirst();
    if (!existing) await this.create({ ...DEFAULT_POLICY });
  }

  async list(): Promise<PolicyView[]> {
    const rows = await this.context.db.selectFrom('policies').selectAll().orderBy('name').execute();
    return rows.map(policyView);
  }

  /** The policy named `name`; throws not-found naming it. */
  async get(name: string): Promise<PolicyRow> {
    const row = await this.context.db.selectFrom('policies').selectAll().where('name', '=', name).executeTakeFirst();
    if (!row) throw notFound('policy', name);
    return row;
  }
}

/** The retention rules of a policy row, for thinning. */
export function retentionRulesOf(row: Pick<PolicyRow, 'retention_seconds' | 'keep_all_seconds' | 'hourly_seconds' | 'app_retention_seconds'>): RetentionRules {
  return {
    retentionSeconds: row.retention_seconds,
    keepAllSeconds: row.keep_all_seconds,
    hourlySeconds: row.hourly_seconds,
    appRetentionSeconds: row.app_retention_seconds,
  };
}
