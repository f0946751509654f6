/**
 * What the API returns: the JSON views of Ferry's resources. The CLI prints these (as tables, or as
 * they are with --json) and the portal renders them, so all three agree.
 */

/** Consistency of a recovery point, never claimed higher than it is. */
export type Consistency = 'app' | 'crash' | 'inconsistent';
export type HealthLevel = 'healthy' | 'warning' | 'critical';

export interface SiteView {
  id: string;
  name: string;
  driver: 'files';
  path: string;
  /** The disk format failovers to this site write, as "raw" or "vhd:fixed". */
  diskFormat: string;
  createdAt: string;
}

export interface PolicyView {
  id: string;
  name: string;
  intervalSeconds: number;
  appIntervalSeconds: number;
  retentionSeconds: number;
  keepAllSeconds: number;
  hourlySeconds: number;
  appRetentionSeconds: number;
  rpoThresholdSeconds: number;
  createdAt: string;
}

export interface DiskView {
  id: string;
  position: number;
  path: string;
  sizeBytes: number | null;
  error: string | null;
  /** Where the disk is at the recovery site while the machine replicates from there (reverse); else null. */
  recoveryPath: string | null;
}

export interface TestFailoverView {
  state: string;
  pointId: string;
  jobId: string;
  disks: FailoverDiskView[];
  createdAt: string;
}

export interface FailoverDiskView {
  position: number;
  path: string;
  sizeBytes: number;
}

/** A failover (not a test) of a machine, from the request to commit. */
export interface FailoverView {
  kind: 'planned' | 'unplanned' | 'migration' | 'failback';
  /**
   * final-point (planned or migration: waiting for the agent's shutdown and last point), writing, ready,
   * committed (failover) or completed (migration).
   */
  state: string;
  /** The point failed over to; null while a planned failover waits for its final point. */
  pointId: string | null;
  /** The job working on it now (the final point's, then the server's). */
  jobId: string;
  disks: FailoverDiskView[];
  error: string | null;
  createdAt: string;
  committedAt: string | null;
}

/** Everything `ferry status MACHINE` shows. */
export interface MachineView {
  id: string;
  name: string;
  state: string;
  agent: { name: string; lastSeenAt: string; online: boolean };
  site: string | null;
  policy: string | null;
  disks: DiskView[];
  /**
   * Hook commands; `shutdown` is what a planned failover runs to stop the workload at the source site,
   * `recoveryShutdown` what a failback runs to stop it at the recovery site.
   */
  hooks: { prePoint: string | null; postPoint: string | null; timeoutSeconds: number; shutdown: string | null; recoveryShutdown: string | null };
  /** The agent that reads the machine's disks at the recovery site (reverse replication), if any. */
  recoveryAgent: { name: string; lastSeenAt: string; online: boolean } | null;
  replication: {
    /**
     * initial-replication: the first full copy; replicating: a point is being taken; resyncing: a
     * point is being taken by comparing the disks with the store, because the agent could not use
     * its memory of the last point (`resyncReason` says why); paused: no new points.
     */
    state: 'idle' | 'initial-replication' | 'replicating' | 'resyncing' | 'paused' | 'error';
    jobId: string | null;
    percent: number | null;
    /** Estimated seconds until the running job ends, from its progress so far. */
    etaSeconds: number | null;
    /** While `resyncing`: why; otherwise null. */
    resyncReason: string | null;
    error: { code: string; message: string } | null;
  };
  health: { level: HealthLevel; reasons: string[] };
  lastPointAt: string | null;
  rpoSeconds: number | null;
  rpoThresholdSeconds: number | null;
  pointCount: number;
  testFailover: TestFailoverView | null;
  /** Set while the machine is failing over, failed over or committed. */
  failover: FailoverView | null;
  /** Where replication goes: 'forward' (to the recovery site) or 'reverse' (after reprotect). */
  direction: string;
  /** The machine's last reprotect, if it has had one. */
  reprotect: ReprotectView | null;
  /** Virtual hardware, from an import or `ferry machine set` (null where not known); an OVA export describes it. */
  hardware: { cpus: number | null; memoryMiB: number | null; nics: { network: string }[] };
  /**
   * The operations the machine's state allows now (what a portal offers), from the lifecycle table and the
   * direction: protect, pause, resume, test-failover, cleanup, planned-failover, unplanned-failover,
   * change-point, commit, reprotect, failback, migrate, test-migrate, complete-migration, export.
   */
  actions: string[];
}

/** A reprotect (turning replication around after a committed failover or failback). */
export interface ReprotectView {
  /** The direction replication runs once it is done. */
  direction: 'forward' | 'reverse';
  /** replicating (the first point of the new direction), applying (reverse: writing the source site's disks), done, failed. */
  state: string;
  /** The job carrying the whole reprotect. */
  jobId: string;
  /** The job of the step in progress (or the last one). */
  stepJobId: string;
  /** The first point of the new direction, once taken. */
  pointId: string | null;
  /** Reverse: where each source site disk is written. */
  targets: { position: number; path: string }[];
  /** Once done: bytes the first point sent, and (reverse) bytes the source site's disks took and were sent. */
  result: { pointSentBytes: number; appliedChangedBytes?: number; appliedReceivedBytes?: number } | null;
  error: string | null;
  createdAt: string;
}

export interface PointDiskView {
  diskId: string;
  position: number;
  sizeBytes: number;
  chunkSize: number;
  indexHash: string;
  /** Bytes that differ from the previous point of this disk. */
  changedBytes: number;
  /** Bytes of chunk data sent for this point (changed data the store did not already hold). */
  sentBytes: number;
}

export interface PointView {
  id: string;
  machine: string;
  takenAt: string;
  createdAt: string;
  consistency: Consistency;
  note: string | null;
  disks: PointDiskView[];
}

export interface JobView {
  id: string;
  kind: string;
  machine: string | null;
  state: string;
  step: string | null;
  progress: { doneBytes: number; totalBytes: number; percent: number };
  params: Record<string, unknown>;
  result: Record<string, unknown> | null;
  error: { code: string; message: string; retryable: boolean } | null;
  createdAt: string;
  startedAt: string | null;
  endedAt: string | null;
  /** A replication job that is (or was) a resync: why the agent could not replicate incrementally; else null. */
  resyncReason: string | null;
  /** The job that started this one (a recovery plan run's job, for its child jobs); else null. */
  parentId: string | null;
  /** Only in `GET /jobs/{id}` of a job that runs others (a recovery plan run): its steps in order. */
  steps?: JobStepView[];
  /** Only in `GET /jobs/{id}`: the jobs this one started, oldest first (empty for most jobs). */
  children?: JobView[];
}

/** One step of a job that runs others (a recovery plan run's group or action), and how far it got. */
export interface JobStepView {
  /** 1-based, in the order the steps run. */
  number: number;
  /** What the step does, e.g. "group 2: test-failover of db-01" or "group 1 after, action 1: script `./check.sh` (timeout 60s)". */
  name: string;
  /** pending, running, waiting (a manual step), succeeded, failed, failed-continued (continue-on-error), cancelled. */
  state: string;
  /** One entry per machine of a group (or one for an action): its child job and how it ended. */
  items: { machine: string | null; jobId: string | null; state: string; error: string | null }[];
  /** For a waiting manual step: what the operator is asked to do. */
  instruction: string | null;
}

export interface EventView {
  id: number;
  at: string;
  machine: string | null;
  severity: 'info' | 'warning' | 'error';
  code: string;
  message: string;
}

export interface TokenView {
  id: string;
  role: 'admin' | 'agent';
  name: string;
  /** Shown once, at creation. */
  token: string;
}

// --- agent protocol ---------------------------------------------------------------------------

export interface RegisteredMachine {
  id: string;
  name: string;
  disks: { id: string; position: number; path: string }[];
}

export interface RegisterAgentResponse {
  agentId: string;
  machines: RegisteredMachine[];
}

/** Work the server hands an agent: read the machine's disks and commit a recovery point. */
export interface ReplicateJob {
  id: string;
  kind: 'replicate';
  machine: { id: string; name: string };
  disks: { id: string; position: number; path: string }[];
  hooks: { prePoint: string | null; postPoint: string | null; timeoutSeconds: number };
  /** 'app': run the hooks (if any) around the capture; 'crash': capture without them. */
  consistency: 'app' | 'crash';
  chunkSize: number;
  /**
   * Set for the final point of a planned failover: the command that stops the machine's workload, run
   * before the disks are captured (instead of the pre-point hook). Its failure fails the job.
   */
  shutdown?: string | null;
}

/** Work for an agent: make its disks equal to a recovery point, fetching only the chunks that differ. */
export interface ApplyPointJob {
  id: string;
  kind: 'apply-point';
  machine: { id: string; name: string };
  pointId: string;
  /** Each disk to write: `path` is created if missing; `sizeBytes` and `chunkSize` are the point's disk's. */
  disks: { id: string; position: number; path: string; sizeBytes: number; chunkSize: number }[];
}

/** Any job the server hands an agent, told apart by `kind`. */
export type AgentJob = ReplicateJob | ApplyPointJob;

export interface WorkResponse {
  jobs: AgentJob[];
}
