/**
 * The metadata database's tables, as Kysely types. Times are milliseconds since the epoch; JSON
 * columns hold text validated by the module that reads them. Change the schema only by adding a
 * migration in migrations.ts.
 */
import type { Generated, Insertable, Selectable, Updateable } from 'kysely';

export interface TokenTable {
  id: string;
  role: 'admin' | 'agent';
  name: string;
  secret_hash: string;
  created_at: number;
}

export interface SiteTable {
  id: string;
  name: string;
  driver: 'files';
  path: string;
  created_at: number;
  /** Format (and subformat, as "vhd:fixed") the site's failovers write disks in: see src/disks/formats.ts. */
  disk_format: Generated<string>;
}

export interface PolicyTable {
  id: string;
  name: string;
  interval_seconds: number;
  app_interval_seconds: number;
  retention_seconds: number;
  keep_all_seconds: number;
  hourly_seconds: number;
  app_retention_seconds: number;
  rpo_threshold_seconds: number;
  created_at: number;
}

export interface AgentTable {
  id: string;
  name: string;
  token_id: string;
  last_seen_at: number;
  created_at: number;
}

export interface MachineTable {
  id: string;
  name: string;
  agent_id: string;
  state: string;
  site_id: string | null;
  policy_id: string | null;
  pre_point_command: string | null;
  post_point_command: string | null;
  hook_timeout_seconds: number;
  replication_error_code: string | null;
  replication_error: string | null;
  last_point_at: number | null;
  last_app_point_at: number | null;
  /** Health when last checked by the scheduler: a change is recorded as an alert event. */
  health_level: Generated<string>;
  /** Command a planned failover asks the agent to run to stop the machine's workload; null: none. */
  shutdown_command: string | null;
  /** Replication direction: 'forward' (source site to recovery site) or 'reverse' (after reprotect). */
  direction: Generated<string>;
  /** The agent that reads the machine's disks at the recovery site (reverse replication); null: none yet. */
  recovery_agent_id: string | null;
  /** Command a failback asks the recovery agent to run to stop the workload at the recovery site. */
  recovery_shutdown_command: string | null;
  /** Virtual hardware, from a VM descriptor or an operator (null: not known); an OVA export needs it. */
  cpus: number | null;
  memory_mib: number | null;
  /** JSON { network: string }[]: the machine's network adapters, by the network each is attached to. */
  nics: Generated<string>;
  created_at: number;
  updated_at: number;
}

export interface DiskTable {
  id: string;
  machine_id: string;
  position: number;
  path: string;
  size_bytes: number | null;
  error: string | null;
  /** Where the disk is at the recovery site once the machine has been reprotected from there; else null. */
  recovery_path: string | null;
}

export interface PointTable {
  id: string;
  machine_id: string;
  job_id: string;
  taken_at: number;
  created_at: number;
  consistency: 'app' | 'crash' | 'inconsistent';
  note: string | null;
}

export interface PointDiskTable {
  point_id: string;
  disk_id: string;
  position: number;
  size_bytes: number;
  chunk_size: number;
  index_hash: string;
  changed_bytes: number;
  sent_bytes: number;
}

export interface JobTable {
  id: string;
  kind: string;
  machine_id: string | null;
  agent_id: string | null;
  state: string;
  step: string | null;
  done_bytes: number;
  total_bytes: number;
  params: string;
  result: string | null;
  error_code: string | null;
  error_message: string | null;
  retryable: number;
  created_at: number;
  started_at: number | null;
  ended_at: number | null;
  updated_at: number;
  /** Set when a replication job is a resync: why the agent could not replicate incrementally. */
  resync_reason: string | null;
  /** The job that started this one (a recovery plan run's job, for its child jobs); null for most jobs. */
  parent_id: string | null;
}

export interface TestFailoverTable {
  machine_id: string;
  state: string;
  point_id: string;
  job_id: string;
  disks: string;
  created_at: number;
}

/** A failover (planned or unplanned, not test) of a machine, from the request until it is committed. */
export interface FailoverTable {
  machine_id: string;
  kind: string;
  state: string;
  /** The point failed over to; null while a planned failover waits for its final point. */
  point_id: string | null;
  /** The planned failover's final replication job (shutdown, then a last point). */
  final_job_id: string | null;
  /** The server job currently working on this failover. */
  job_id: string;
  site_path: string;
  /** JSON FailoverDiskView[]: where each disk is (or will be) written. */
  disks: string;
  error: string | null;
  created_at: number;
  updated_at: number;
  committed_at: number | null;
  /** The job carrying the whole operation (planned failover, migration, failback); null for one-job operations. */
  operation_job_id: string | null;
}

/**
 * A reprotect of a machine (reprotect.ts): replication turned to `direction`, from the first point read by
 * `agent_id` to (reverse only) that point applied to the source site's disks by `target_agent_id`.
 */
export interface ReprotectionTable {
  machine_id: string;
  direction: string;
  /** A ReprotectState (lifecycle.ts). */
  state: string;
  agent_id: string;
  target_agent_id: string | null;
  operation_job_id: string;
  /** The step's job: the first point's replication job, then the apply job. */
  job_id: string;
  point_id: string | null;
  /** JSON { position, path }[]: where the apply job writes each disk (reverse only). */
  targets: string;
  /** JSON: bytes sent by the first point and by the apply job. */
  result: string | null;
  error: string | null;
  created_at: number;
  updated_at: number;
}

/** A recovery plan: groups of machines in order, with actions before and after each group. */
export interface PlanTable {
  id: string;
  name: string;
  description: string;
  /** JSON PlanGroup[] (src/protocol/plans.ts), validated when the plan was created. */
  groups: string;
  created_at: number;
  updated_at: number;
}

/** One run of a plan: an operation on every machine of the plan, carried by one job of kind `plan`. */
export interface PlanRunTable {
  id: string;
  plan_id: string;
  plan_name: string;
  job_id: string;
  /** A machine operation name (src/orchestration/machine-operations.ts). */
  operation: string;
  /** The recovery point selector given to each machine's operation, if any. */
  point: string | null;
  /** JSON PlanGroup[]: the plan as it was when the run started. */
  groups: string;
  /** A PlanRunState (lifecycle.ts). */
  state: string;
  /** 0-based index of the step being run (equal to the number of steps once all have run). */
  step_index: number;
  /** 1 once an operator asked to cancel: the run stops at the next step boundary. */
  cancel_requested: Generated<number>;
  error: string | null;
  created_at: number;
  updated_at: number;
  ended_at: number | null;
}

/** What one step of a plan run started: one row per machine of a group, or one for an action. */
export interface PlanRunItemTable {
  run_id: string;
  step_index: number;
  /** The machine's position in its group; 0 for an action. */
  position: number;
  /** The machine, for a group's step; null for an action. */
  machine: string | null;
  /** The child job; null while starting, or when the operation refused to start. */
  job_id: string | null;
  /** A PlanItemState (lifecycle.ts). */
  state: string;
  error_code: string | null;
  error_message: string | null;
  started_at: number;
  ended_at: number | null;
}

export interface EventTable {
  id: Generated<number>;
  at: number;
  machine_id: string | null;
  severity: 'info' | 'warning' | 'error';
  code: string;
  message: string;
}

/** All tables, keyed by their SQL names. */
export interface Database {
  tokens: TokenTable;
  sites: SiteTable;
  policies: PolicyTable;
  agents: AgentTable;
  machines: MachineTable;
  disks: DiskTable;
  points: PointTable;
  point_disks: PointDiskTable;
  jobs: JobTable;
  test_failovers: TestFailoverTable;
  failovers: FailoverTable;
  reprotections: ReprotectionTable;
  plans: PlanTable;
  plan_runs: PlanRunTable;
  plan_run_items: PlanRunItemTable;
  events: EventTable;
}

export type MachineRow = Selectable<MachineTable>;
export type JobRow = Selectable<JobTable>;
export type PointRow = Selectable<PointTable>;
export type SiteRow = Selectable<SiteTable>;
export type PolicyRow = Selectable<PolicyTable>;
export type DiskRow = Selectable<DiskTable>;
export type FailoverRow = Selectable<FailoverTable>;
export type ReprotectionRow = Selectable<ReprotectionTable>;
export type PointDiskRow = Selectable<PointDiskTable>;
export type PlanRow = Selectable<PlanTable>;
export type PlanRunRow = Selectable<PlanRunTable>;
export type PlanRunItemRow = Selectable<PlanRunItemTable>;
export type NewJob = Insertable<JobTable>;
export type MachineUpdate = Updateable<MachineTable>;
