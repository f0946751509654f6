/**
 * Store maintenance: garbage collection, verification and statistics of the chunk store, fed from the
 * database (which points exist, which replication jobs are in flight). The store-level logic is in
 * src/store/garbage-collector.ts, verify.ts and stats.ts; this module decides what they are given.
 *
 * Why garbage collection never breaks a point (the full argument is in docs/architecture.md):
 * - Kept: every index a committed point names and every chunk those name (the mark); a mark that
 *   cannot read one of them stops the collection before anything is deleted.
 * - Kept: every object written or touched at or after the cutoff, which is the earlier of "now minus
 *   the grace period" and "when the oldest queued or running replication job was created", minus a
 *   few seconds for coarse timestamps. A point can only be committed by a running job, and everything
 *   its indexes name was written or touched while that job was active (StoreGuard touches whatever an
 *   agent is told exists, whatever an index names when uploaded, and the index itself).
 * - The active jobs are read before the referenced indexes: a job that commits between the two reads
 *   has its point marked; one that commits after the second read held the cutoff back.
 * - Collections run one at a time.
 */
import { FerryError } from '../errors.js';
import type { StoreGcRequest, StoreGcView, StoreStatsView, StoreVerifyView } from '../protocol/store.js';
import { collectGarbage } from '../store/garbage-collector.js';
import { storeStats, type PointForStats } from '../store/stats.js';
import type { StoreGuard } from '../store/store-guard.js';
import { type PointToVerify, verifyStore } from '../store/verify.js';
import type { CoreContext } from './context.js';
import type { Events } from './events.js';
import { replicationJobKinds } from './jobs.js';
import { activeJobStates } from './lifecycle.js';

/** Tunables of store maintenance, compiled once by `compileStoreMaintenanceOptions`. */
export interface StoreMaintenanceOptions {
  /** Unreferenced objects younger than this are kept (defence in depth beyond the job bound). Default 1 h. */
  gcGraceMs: number;
  /** How often the server checks whether a collection is due. Default 10 min. */
  gcCheckIntervalMs: number;
  /** A collection is due after points expired since the last one, or when the last one is this old. Default 24 h. */
  gcMaxIntervalMs: number;
  /** Subtracted from the cutoff, for object timestamps rounded down to whole seconds. Default 5 s. */
  timestampSlackMs: number;
}

/** Fills in defaults for anything not given. */
export function compileStoreMaintenanceOptions(partial: Partial<StoreMaintenanceOptions> = {}): StoreMaintenanceOptions {
  return {
    gcGraceMs: partial.gcGraceMs ?? 3600_000,
    gcCheckIntervalMs: partial.gcCheckIntervalMs ?? 600_000,
    gcMaxIntervalMs: partial.gcMaxIntervalMs ?? 86_400_000,
    timestampSlackMs: partial.timestampSlackMs ?? 5_000,
  };
}

/** Event codes this module records. */
const GC_EVENT = 'store-gc';
const GC_FAILED_EVENT = 'store-gc-failed';
/** The event Points.expire records; a collection is due after one. */
const EXPIRED_EVENT = 'points-expired';

/** Runs garbage collection (on demand and when due), verification and statistics of the chunk store. */
export class StoreMaintenance {
  readonly options: StoreMaintenanceOptions;
  private timer: NodeJS.Timeout | null = null;
  private collecting: Promise<StoreGcView> | null = null;
  private verifying: Promise<StoreVerifyView> | null = null;
  private checking: Promise<void> | null = null;

  constructor(
    private readonly context: CoreContext,
    private readonly guard: StoreGuard,
    private readonly events: Events,
    options: Partial<StoreMaintenanceOptions> = {},
  ) {
    this.options = compileStoreMaintenanceOptions(options);
  }

  /** Starts the periodic check that collects garbage when due (see `collectIfDue`). */
  start(): void {
    this.timer = setInterval(() => {
      if (this.checking) return;
      this.checking = this.collectIfDue()
        .then(() => undefined)
        .catch((error: unknown) => this.context.log.error({ err: error }, 'scheduled store garbage collection failed'))
        .finally(() => (this.checking = null));
    }, this.options.gcCheckIntervalMs);
  }

  /** Stops the periodic check and waits for running maintenance to stop (it checks the shutdown signal). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await Promise.allSettled([this.checking, this.collecting, this.verifying]);
  }

  /**
   * Collects garbage if points expired since the last collection, or if the last one is older than
   * `gcMaxIntervalMs` (or there was none). Returns the collection's view, or null when none was due.
   */
  async collectIfDue(): Promise<StoreGcView | null> {
    const { db, now } = this.context;
    const lastCollection = await db.selectFrom('events').select(['id', 'at']).where('code', '=', GC_EVENT).orderBy('id', 'desc').limit(1).executeTakeFirst();
    let expiredSince = false;
    if (lastCollection) {
      const expiry = await db.selectFrom('events').select('id').where('code', '=', EXPIRED_EVENT).where('id', '>', lastCollection.id).limit(1).executeTakeFirst();
      expiredSince = expiry !== undefined;
    }
    const due = !lastCollection || expiredSince || now() - lastCollection.at >= this.options.gcMaxIntervalMs;
    return due ? this.collectGarbage({}) : null;
  }

  /**
   * One garbage collection (`ferry store gc`). Throws conflict (retryable) while another runs, and the
   * collector's error (nothing deleted) when a referenced index cannot be read. Records an event
   * either way.
   */
  async collectGarbage(request: StoreGcRequest): Promise<StoreGcView> {
    if (this.collecting) throw new FerryError('conflict', 'a garbage collection is already running; try again when it has ended', { retryable: true });
    this.collecting = this.runCollection(request.graceSeconds === undefined ? this.options.gcGraceMs : request.graceSeconds * 1000);
    try {
      return await this.collecting;
    } finally {
      this.collecting = null;
    }
  }

  private async runCollection(graceMs: number): Promise<StoreGcView> {
    const { db, now, store } = this.context;
    const startedAt = now();
    try {
      // Order matters: active jobs first, then the referenced indexes (see the module comment).
      const oldestJob = await db
        .selectFrom('jobs')
        .select(['id', 'created_at'])
        .where('kind', 'in', replicationJobKinds)
        .where('state', 'in', activeJobStates)
        .orderBy('created_at')
        .limit(1)
        .executeTakeFirst();
      const graceCutoff = startedAt - graceMs;
      const heldBack = oldestJob !== undefined && oldestJob.created_at < graceCutoff;
      const cutoffMs = (heldBack ? oldestJob.created_at : graceCutoff) - this.options.timestampSlackMs;
      const referenced = await db.selectFrom('point_disks').select('index_hash').distinct().execute();

      const result = await collectGarbage(store, this.guard, {
        referencedIndexes: referenced.map((row) => row.index_hash),
        cutoffMs,
        signal: this.context.shutdown,
      });
      const view: StoreGcView = {
        startedAt: new Date(startedAt).toISOString(),
        endedAt: new Date(now()).toISOString(),
        graceSeconds: Math.round(graceMs / 1000),
        cutoff: new Date(cutoffMs).toISOString(),
        heldBackByJob: heldBack ? oldestJob.id : null,
        ...result,
      };
      const heldBackNote = heldBack ? `; objects newer than job ${oldestJob.id} (still active) kept` : '';
      await this.events.record({
        severity: 'info',
        code: GC_EVENT,
        message:
          `store garbage collection${result.interrupted ? ' (interrupted by shutdown)' : ''}: deleted ${result.deleted.chunks} chunk(s) and ` +
          `${result.deleted.indexes} index(es), ${result.deleted.bytes} bytes freed; kept ${result.marked.chunks} referenced chunk(s), ` +
          `${result.keptRecent.chunks + result.keptRecent.indexes} recent unreferenced object(s)${heldBackNote}`,
      });
      return view;
    } catch (error) {
      await this.events
        .record({ severity: 'error', code: GC_FAILED_EVENT, message: `store garbage collection failed, nothing more deleted: ${(error as Error).message}` })
        .catch(() => undefined);
      throw error;
    }
  }

  /**
   * Verifies every committed point's indexes and chunks (`ferry store verify`). One at a time
   * (conflict, retryable, otherwise). A point deleted while verification ran is left out of the report.
   */
  async verify(request: { deep: boolean }): Promise<StoreVerifyView> {
    if (this.verifying) throw new FerryError('conflict', 'a store verification is already running; try again when it has ended', { retryable: true });
    this.verifying = this.runVerify(request.deep);
    try {
      return await this.verifying;
    } finally {
      this.verifying = null;
    }
  }

  private async runVerify(deep: boolean): Promise<StoreVerifyView> {
    const startedAt = this.context.now();
    const points = await this.committedPoints();
    const report = await verifyStore(
      this.context.store,
      points.map((point): PointToVerify => ({ machine: point.machine, pointId: point.pointId, indexHashes: point.disks.map((disk) => disk.indexHash) })),
      { deep, signal: this.context.shutdown },
    );
    // A point expired meanwhile may have lost its chunks to a collection: not a problem of the store.
    let { problems, affectedPoints } = report;
    if (affectedPoints.length > 0) {
      const stillThere = new Set(
        (await this.context.db.selectFrom('points').select('id').where('id', 'in', affectedPoints.map((point) => point.pointId)).execute()).map((row) => row.id),
      );
      problems = problems.map((problem) => ({ ...problem, points: problem.points.filter((point) => stillThere.has(point.pointId)) })).filter((problem) => problem.points.length > 0);
      affectedPoints = affectedPoints.filter((point) => stillThere.has(point.pointId));
    }
    return { ...report, problems, affectedPoints, startedAt: new Date(startedAt).toISOString(), endedAt: new Date(this.context.now()).toISOString() };
  }

  /** Store statistics (`ferry store stats`); definitions in src/store/stats.ts. */
  async stats(): Promise<StoreStatsView> {
    const stats = await storeStats(this.context.store, await this.committedPoints(), this.context.shutdown);
    return { location: this.context.store.backend.location, ...stats };
  }

  /** Every committed point with its disks' indexes, oldest first per machine. */
  private async committedPoints(): Promise<PointForStats[]> {
    const rows = await this.context.db
      .selectFrom('point_disks')
      .innerJoin('points', 'points.id', 'point_disks.point_id')
      .innerJoin('machines', 'machines.id', 'points.machine_id')
      .select(['points.id as point_id', 'points.taken_at', 'machines.name as machine', 'point_disks.index_hash', 'point_disks.size_bytes'])
      .orderBy('machines.name')
      .orderBy('points.taken_at')
      .orderBy('point_disks.position')
      .execute();
    const points = new Map<string, PointForStats & { disks: { indexHash: string; sizeBytes: number }[] }>();
    for (const row of rows) {
      let point = points.get(row.point_id);
      if (!point) {
        point = { machine: row.machine, pointId: row.point_id, takenAt: row.taken_at, disks: [] };
        points.set(row.point_id, point);
      }
      point.disks.push({ indexHash: row.index_hash, sizeBytes: row.size_bytes });
    }
    return [...points.values()];
  }
}
