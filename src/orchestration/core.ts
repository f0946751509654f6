/**
 * The control plane of one Ferry server, wired together: database, chunk store, and the core modules
 * that hold every decision. The HTTP routes only translate requests into calls on these.
 *
 * @example
 *   const core = await FerryCore.create({ dataDir: '/var/lib/ferry' });
 *   core.start();            // scheduler, server job runner and recovery plan runs
 *   await core.sites.list();
 *   await core.stop();
 */
import { EventEmitter } from 'node:events';
import path from 'node:path';
import { FilesDriver } from '../compute/files-driver.js';
import { type Db, openSqlite } from '../db/database.js';
import { ChunkStore } from '../store/chunk-store.js';
import { FilesystemBackend } from '../store/fs-backend.js';
import { describeStoreConfig, type StoreOpenOptions } from '../store/store-config.js';
import { StoreGuard } from '../store/store-guard.js';
import { ensureDirectory } from '../util/durable-fs.js';
import { createLogger, type Logger } from '../util/logger.js';
import { compileCoreOptions, type CoreContext, type CoreOptions } from './context.js';
import { Events } from './events.js';
import { JobRunner } from './job-runner.js';
import { Jobs } from './jobs.js';
import { MachineOperations } from './machine-operations.js';
import { Machines } from './machines.js';
import { Points } from './points.js';
import { Policies } from './policies.js';
import { RecoveryPlans } from './recovery-plans.js';
import { Replication } from './replication.js';
import { Reprotections } from './reprotect.js';
import { Exports } from './exports.js';
import { Imports } from './imports.js';
import { Scheduler } from './scheduler.js';
import { Sites } from './sites.js';
import { StoreMaintenance } from './store-maintenance.js';
import { Failovers } from './failover.js';
import { TestFailovers } from './test-failover.js';
import { Tokens } from './tokens.js';

/** Where a server keeps everything: DATA_DIR/ferry.db, DATA_DIR/store/, DATA_DIR/admin.token. */
export interface CoreSetup {
  dataDir: string;
  options?: Partial<CoreOptions>;
  /**
   * The chunk store's key (for an encrypted store, or to create one) and the compression of a new
   * store. Default: a new store gets zstd and no encryption; an existing one opens as its config says.
   */
  store?: StoreOpenOptions;
  log?: Logger;
}

/** Ferry's control plane: every operation the API offers, as methods of its modules. */
export class FerryCore {
  readonly tokens: Tokens;
  readonly sites: Sites;
  readonly policies: Policies;
  readonly machines: Machines;
  readonly jobs: Jobs;
  readonly points: Points;
  readonly replication: Replication;
  readonly testFailovers: TestFailovers;
  /**
   * What a recovery plan may do to a machine: each module registers the operations it implements here
   * when the core is built (test failover and cleanup below).
   */
  readonly machineOperations: MachineOperations;
  /** Recovery plans and their runs. */
  readonly plans: RecoveryPlans;
  /** Planned and unplanned failover, change of point, commit, migration and failback. */
  readonly failovers: Failovers;
  /** Reprotect: replication turned around after a committed failover or failback. */
  readonly reprotections: Reprotections;
  /** A point's disks as images of any format Ferry writes, or an OVA. */
  readonly exports: Exports;
  /** Machines registered from VM descriptors (.vmx, .ovf, .ova, Hyper-V folders), replicated agentlessly. */
  readonly imports: Imports;
  readonly events: Events;
  /** Store writes of the agent protocol, safe against a concurrent garbage collection. */
  readonly storeGuard: StoreGuard;
  /** Garbage collection, verify and stats of the chunk store. */
  readonly storeMaintenance: StoreMaintenance;
  private readonly scheduler: Scheduler;
  private readonly runner: JobRunner;
  private readonly shutdownController: AbortController;

  private constructor(
    readonly context: CoreContext,
    readonly dataDir: string,
    shutdownController: AbortController,
  ) {
    this.shutdownController = shutdownController;
    this.tokens = new Tokens(context);
    this.sites = new Sites(context);
    this.policies = new Policies(context);
    this.events = new Events(context);
    this.machines = new Machines(context);
    this.jobs = new Jobs(context, this.events);
    this.points = new Points(context, this.jobs, this.machines, this.events);
    this.replication = new Replication(context, this.jobs, this.machines, this.points, this.sites, this.policies, this.events);
    this.testFailovers = new TestFailovers(context, this.jobs, this.machines, this.points, this.events, new FilesDriver());
    // Completing a migration reclaims the space of its points at once: a collection without grace (jobs in
    // progress are still protected, see store-maintenance.ts).
    this.failovers = new Failovers(context, this.jobs, this.machines, this.points, this.events, new FilesDriver(), async () => {
      const collected = await this.storeMaintenance.collectGarbage({ graceSeconds: 0 });
      return { bytes: collected.deleted.bytes, keptRecent: collected.keptRecent.chunks + collected.keptRecent.indexes };
    });
    this.reprotections = new Reprotections(context, this.jobs, this.machines, this.events, new FilesDriver());
    this.exports = new Exports(context, this.jobs, this.machines, this.points, this.events);
    this.imports = new Imports(context, this.events, dataDir);
    this.machineOperations = new MachineOperations();
    this.machineOperations.register('test-failover', async (machine, options) => (await this.testFailovers.start(machine, options.point ?? 'latest')).job);
    this.machineOperations.register('cleanup', (machine) => this.testFailovers.cleanupForPlan(machine));
    // Each answers the one job that ends when the operation does: the disk write of an unplanned failover,
    // the operation job of a planned failover, failback or reprotect (a child job per step).
    this.machineOperations.register('unplanned-failover', async (machine, options) => (await this.failovers.request(machine, 'unplanned', options.point ?? 'latest')).job);
    this.machineOperations.register('planned-failover', async (machine) => (await this.failovers.request(machine, 'planned', 'latest')).job);
    this.machineOperations.register('commit', async (machine) => (await this.failovers.commit(machine)).job);
    this.machineOperations.register('reprotect', async (machine) => (await this.reprotections.request(machine)).job);
    this.machineOperations.register('failback', async (machine) => (await this.failovers.request(machine, 'failback', 'latest')).job);
    this.plans = new RecoveryPlans(context, this.jobs, this.events, this.machineOperations);
    this.scheduler = new Scheduler(context, this.points, this.machines, this.events);
    this.storeGuard = new StoreGuard(context.store);
    this.storeMaintenance = new StoreMaintenance(context, this.storeGuard, this.events);
    this.runner = new JobRunner(context, this.jobs, {
      'test-failover': (job) => this.testFailovers.runCreate(job),
      'test-failover-cleanup': (job) => this.testFailovers.runCleanup(job),
      'plan-script': (job, signal) => this.plans.runScript(job, signal),
      failover: (job) => this.failovers.runWrite(job),
      'complete-migration': (job) => this.failovers.runComplete(job),
      export: (job, signal) => this.exports.run(job, signal),
    });
  }

  /**
   * Opens (creating on first use) the data directory and the chunk store, migrates the database and
   * bootstraps the admin token and default policy. The store is opened first, so a wrong or missing store
   * key ('wrong-key', 'invalid-request', 'conflict': see `openStoreConfig`) stops the server before it
   * touches anything else.
   */
  static async create(setup: CoreSetup): Promise<FerryCore> {
    const dataDir = path.resolve(setup.dataDir);
    await ensureDirectory(dataDir, 0o700);
    const log = setup.log ?? createLogger('server');
    const store = await ChunkStore.open(new FilesystemBackend(path.join(dataDir, 'store')), setup.store);
    log.info({ store: store.backend.location, format: store.config ? describeStoreConfig(store.config) : 'plain' }, 'chunk store opened');
    const db: Db = await openSqlite(path.join(dataDir, 'ferry.db'));
    const signals = new EventEmitter();
    signals.setMaxListeners(0);
    const shutdownController = new AbortController();
    const context: CoreContext = {
      db,
      store,
      log,
      options: compileCoreOptions(setup.options),
      now: () => Date.now(),
      signals,
      shutdown: shutdownController.signal,
    };
    const core = new FerryCore(context, dataDir, shutdownController);
    await core.tokens.ensureAdminTokenFile(core.adminTokenFile);
    await core.policies.ensureDefault();
    return core;
  }

  /** DATA_DIR/admin.token */
  get adminTokenFile(): string {
    return path.join(this.dataDir, 'admin.token');
  }

  /** Starts the scheduler, the server job runner, failover follow-up and the recovery plan engine (which resumes interrupted runs). */
  start(): void {
    this.scheduler.start();
    this.runner.start();
    this.plans.start(); // resumes the runs a stop or crash interrupted
    this.storeMaintenance.start();
    this.failovers.start();
    this.reprotections.start();
  }

  /** Tells long-running requests (agent long polls) to return now; call before closing the HTTP server. */
  beginShutdown(): void {
    this.shutdownController.abort();
  }

  /** Stops background work and closes the database. */
  async stop(): Promise<void> {
    this.beginShutdown();
    await this.scheduler.stop();
    await this.plans.stop();
    await this.runner.stop();
    await this.failovers.stop();
    await this.reprotections.stop();
    await this.storeMaintenance.stop();
    await this.context.db.destroy();
  }
}
