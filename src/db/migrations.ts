/**
 * Versioned schema migrations, applied in name order by Kysely's Migrator at server start. Never edit
 * a migration that has shipped; add the next one.
 */
import { type Kysely, type Migration, type MigrationProvider, sql } from 'kysely';

const migrations: Record<string, Migration> = {
  '0001-initial': {
    async up(db: Kysely<any>) {
      await db.schema
        .createTable('tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('secret_hash', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', 'integer', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('sites')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('driver', 'text', (c) => c.notNull())
        .addColumn('path', 'text', (c) => c.notNull())
        .addColumn('created_at', 'integer', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('policies')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('interval_seconds', 'integer', (c) => c.notNull())
        .addColumn('app_interval_seconds', 'integer', (c) => c.notNull())
        .addColumn('retention_seconds', 'integer', (c) => c.notNull())
        .addColumn('keep_all_seconds', 'integer', (c) => c.notNull())
        .addColumn('hourly_seconds', 'integer', (c) => c.notNull())
        .addColumn('app_retention_seconds', 'integer', (c) => c.notNull())
        .addColumn('rpo_threshold_seconds', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'integer', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('agents')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('token_id', 'text', (c) => c.notNull().references('tokens.id'))
        .addColumn('last_seen_at', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'integer', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('machines')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('agent_id', 'text', (c) => c.notNull().references('agents.id'))
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('site_id', 'text', (c) => c.references('sites.id'))
        .addColumn('policy_id', 'text', (c) => c.references('policies.id'))
        .addColumn('pre_point_command', 'text')
        .addColumn('post_point_command', 'text')
        .addColumn('hook_timeout_seconds', 'integer', (c) => c.notNull())
        .addColumn('replication_error_code', 'text')
        .addColumn('replication_error', 'text')
        .addColumn('last_point_at', 'integer')
        .addColumn('last_app_point_at', 'integer')
        .addColumn('health_level', 'text', (c) => c.notNull().defaultTo('healthy'))
        .addColumn('created_at', 'integer', (c) => c.notNull())
        .addColumn('updated_at', 'integer', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('disks')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('machine_id', 'text', (c) => c.notNull().references('machines.id'))
        .addColumn('position', 'integer', (c) => c.notNull())
        .addColumn('path', 'text', (c) => c.notNull())
        .addColumn('size_bytes', 'integer')
        .addColumn('error', 'text')
        .addUniqueConstraint('disks_machine_position', ['machine_id', 'position'])
        .execute();
      await db.schema
        .createTable('points')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('machine_id', 'text', (c) => c.notNull().references('machines.id'))
        .addColumn('job_id', 'text', (c) => c.notNull().unique())
        .addColumn('taken_at', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'integer', (c) => c.notNull())
        .addColumn('consistency', 'text', (c) => c.notNull())
        .addColumn('note', 'text')
        .execute();
      await db.schema.createIndex('points_machine_taken').on('points').columns(['machine_id', 'taken_at']).execute();
      await db.schema
        .createTable('point_disks')
        .addColumn('point_id', 'text', (c) => c.notNull().references('points.id').onDelete('cascade'))
        .addColumn('disk_id', 'text', (c) => c.notNull().references('disks.id'))
        .addColumn('position', 'integer', (c) => c.notNull())
        .addColumn('size_bytes', 'integer', (c) => c.notNull())
        .addColumn('chunk_size', 'integer', (c) => c.notNull())
        .addColumn('index_hash', 'text', (c) => c.notNull())
        .addColumn('changed_bytes', 'integer', (c) => c.notNull())
        .addColumn('sent_bytes', 'integer', (c) => c.notNull())
        .addPrimaryKeyConstraint('point_disks_pk', ['point_id', 'disk_id'])
        .execute();
      await db.schema
        .createTable('jobs')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('machine_id', 'text', (c) => c.references('machines.id'))
        .addColumn('agent_id', 'text', (c) => c.references('agents.id'))
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('step', 'text')
        .addColumn('done_bytes', 'integer', (c) => c.notNull())
        .addColumn('total_bytes', 'integer', (c) => c.notNull())
        .addColumn('params', 'text', (c) => c.notNull())
        .addColumn('result', 'text')
        .addColumn('error_code', 'text')
        .addColumn('error_message', 'text')
        .addColumn('retryable', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'integer', (c) => c.notNull())
        .addColumn('started_at', 'integer')
        .addColumn('ended_at', 'integer')
        .addColumn('updated_at', 'integer', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('jobs_state').on('jobs').columns(['state', 'agent_id']).execute();
      await db.schema.createIndex('jobs_machine').on('jobs').columns(['machine_id', 'created_at']).execute();
      // At most one unfinished replication job per machine, whoever asks (user, scheduler, protect).
      await sql`CREATE UNIQUE INDEX jobs_one_active_replication ON jobs (machine_id)
                WHERE kind IN ('initial-replication', 'point') AND state IN ('queued', 'running')`.execute(db);
      await db.schema
        .createTable('test_failovers')
        .addColumn('machine_id', 'text', (c) => c.primaryKey().references('machines.id'))
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('point_id', 'text', (c) => c.notNull())
        .addColumn('job_id', 'text', (c) => c.notNull())
        .addColumn('disks', 'text', (c) => c.notNull())
        .addColumn('created_at', 'integer', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('events')
        .addColumn('id', 'integer', (c) => c.primaryKey().autoIncrement())
        .addColumn('at', 'integer', (c) => c.notNull())
        .addColumn('machine_id', 'text')
        .addColumn('severity', 'text', (c) => c.notNull())
        .addColumn('code', 'text', (c) => c.notNull())
        .addColumn('message', 'text', (c) => c.notNull())
        .execute();
    },
  },
  // A replication job that is a resync (the agent could not use its memory of the last point) says why.
  '0002-job-resync-reason': {
    async up(db: Kysely<any>) {
      await db.schema.alterTable('jobs').addColumn('resync_reason', 'text').execute();
    },
  },
  // Failover (not test): the machine's shutdown command for planned failover, its replication direction,
  // and one failover record per machine while it is failed over.
  '0003-failover': {
    async up(db: Kysely<any>) {
      await db.schema.alterTable('machines').addColumn('shutdown_command', 'text').execute();
      await db.schema.alterTable('machines').addColumn('direction', 'text', (column) => column.notNull().defaultTo('forward')).execute();
      await db.schema
        .createTable('failovers')
        .addColumn('machine_id', 'text', (column) => column.primaryKey().references('machines.id'))
        .addColumn('kind', 'text', (column) => column.notNull())
        .addColumn('state', 'text', (column) => column.notNull())
        .addColumn('point_id', 'text')
        .addColumn('final_job_id', 'text')
        .addColumn('job_id', 'text', (column) => column.notNull())
        .addColumn('site_path', 'text', (column) => column.notNull())
        .addColumn('disks', 'text', (column) => column.notNull())
        .addColumn('error', 'text')
        .addColumn('created_at', 'integer', (column) => column.notNull())
        .addColumn('updated_at', 'integer', (column) => column.notNull())
        .addColumn('committed_at', 'integer')
        .execute();
    },
  },
  // Recovery plans: plans (groups of machines with actions around each group, as JSON), their runs (one
  // job each, with a cursor over the run's steps), what each step started (plan_run_items), and a parent
  // link from a job to the job that started it (a plan run's child jobs).
  '0004-recovery-plans': {
    async up(db: Kysely<any>) {
      await db.schema.alterTable('jobs').addColumn('parent_id', 'text').execute();
      await db.schema.createIndex('jobs_parent').on('jobs').columns(['parent_id', 'created_at']).execute();
      await db.schema
        .createTable('plans')
        .addColumn('id', 'text', (column) => column.primaryKey())
        .addColumn('name', 'text', (column) => column.notNull().unique())
        .addColumn('description', 'text', (column) => column.notNull())
        .addColumn('groups', 'text', (column) => column.notNull())
        .addColumn('created_at', 'integer', (column) => column.notNull())
        .addColumn('updated_at', 'integer', (column) => column.notNull())
        .execute();
      await db.schema
        .createTable('plan_runs')
        .addColumn('id', 'text', (column) => column.primaryKey())
        .addColumn('plan_id', 'text', (column) => column.notNull().references('plans.id').onDelete('cascade'))
        .addColumn('plan_name', 'text', (column) => column.notNull())
        .addColumn('job_id', 'text', (column) => column.notNull().unique().references('jobs.id'))
        .addColumn('operation', 'text', (column) => column.notNull())
        .addColumn('point', 'text')
        .addColumn('groups', 'text', (column) => column.notNull())
        .addColumn('state', 'text', (column) => column.notNull())
        .addColumn('step_index', 'integer', (column) => column.notNull())
        .addColumn('cancel_requested', 'integer', (column) => column.notNull().defaultTo(0))
        .addColumn('error', 'text')
        .addColumn('created_at', 'integer', (column) => column.notNull())
        .addColumn('updated_at', 'integer', (column) => column.notNull())
        .addColumn('ended_at', 'integer')
        .execute();
      await db.schema.createIndex('plan_runs_plan').on('plan_runs').columns(['plan_id', 'created_at']).execute();
      // At most one active run per plan, whoever asks.
      await sql`CREATE UNIQUE INDEX plan_runs_one_active ON plan_runs (plan_id) WHERE state IN ('running', 'waiting')`.execute(db);
      await db.schema
        .createTable('plan_run_items')
        .addColumn('run_id', 'text', (column) => column.notNull().references('plan_runs.id').onDelete('cascade'))
        .addColumn('step_index', 'integer', (column) => column.notNull())
        .addColumn('position', 'integer', (column) => column.notNull())
        .addColumn('machine', 'text')
        .addColumn('job_id', 'text')
        .addColumn('state', 'text', (column) => column.notNull())
        .addColumn('error_code', 'text')
        .addColumn('error_message', 'text')
        .addColumn('started_at', 'integer', (column) => column.notNull())
        .addColumn('ended_at', 'integer')
        .addPrimaryKeyConstraint('plan_run_items_pk', ['run_id', 'step_index', 'position'])
        .execute();
    },
  },
  // Reprotect and failback: the agent that reads a machine's disks at the recovery site and where those
  // disks are, a shutdown command for the workload there, the job a multi-step failover is carried by,
  // and one reprotect record per machine (reprotect.ts).
  '0005-reprotect': {
    async up(db: Kysely<any>) {
      await db.schema.alterTable('machines').addColumn('recovery_agent_id', 'text').execute();
      await db.schema.alterTable('machines').addColumn('recovery_shutdown_command', 'text').execute();
      await db.schema.alterTable('disks').addColumn('recovery_path', 'text').execute();
      await db.schema.alterTable('failovers').addColumn('operation_job_id', 'text').execute();
      await db.schema
        .createTable('reprotections')
        .addColumn('machine_id', 'text', (column) => column.primaryKey().references('machines.id'))
        .addColumn('direction', 'text', (column) => column.notNull())
        .addColumn('state', 'text', (column) => column.notNull())
        .addColumn('agent_id', 'text', (column) => column.notNull())
        .addColumn('target_agent_id', 'text')
        .addColumn('operation_job_id', 'text', (column) => column.notNull())
        .addColumn('job_id', 'text', (column) => column.notNull())
        .addColumn('point_id', 'text')
        .addColumn('targets', 'text', (column) => column.notNull())
        .addColumn('result', 'text')
        .addColumn('error', 'text')
        .addColumn('created_at', 'integer', (column) => column.notNull())
        .addColumn('updated_at', 'integer', (column) => column.notNull())
        .execute();
    },
  },
  // VM disk formats: what a machine's hardware is (read from a VM descriptor, or set by an operator; an
  // OVA export describes it), and the disk format each site's failovers write.
  '0006-disk-formats': {
    async up(db: Kysely<any>) {
      await db.schema.alterTable('machines').addColumn('cpus', 'integer').execute();
      await db.schema.alterTable('machines').addColumn('memory_mib', 'integer').execute();
      await db.schema.alterTable('machines').addColumn('nics', 'text', (column) => column.notNull().defaultTo('[]')).execute();
      await db.schema.alterTable('sites').addColumn('disk_format', 'text', (column) => column.notNull().defaultTo('raw')).execute();
    },
  },
};

/** Supplies the migrations above to Kysely's Migrator. */
export const migrationProvider: MigrationProvider = {
  async getMigrations() {
    return migrations;
  },
};
