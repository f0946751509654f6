/**
 * Request schemas of the HTTP API (`/api/v1`), shared by the server (which validates every request
 * with them) and the clients (agent, CLI). A request that fails validation is answered 400 with the
 * failing field named.
 */
import { z } from 'zod';

const name = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'use letters, digits, ".", "_" and "-", starting with a letter or digit');
const hashHex = z.string().regex(/^[0-9a-f]{64}$/, 'must be a 64-character lowercase hex SHA-256');
const seconds = z.number().int().positive();

/** A resource name in a URL (machine, site, policy). */
export const nameParam = z.object({ name });
/** A job id in a URL. */
export const jobIdParam = z.object({ id: z.string().min(1).max(64) });

export const createTokenRequest = z.object({
  role: z.enum(['admin', 'agent']),
  name: z.string().min(1).max(64).optional(),
});

/** A disk format with an optional subformat, as "vhd" or "vhd:fixed" (src/disks/formats.ts says which exist). */
export const diskFormatSpec = z.string().regex(/^(raw|vhd|vhdx|vmdk|qcow2|ova)(:[A-Za-z0-9-]{1,32})?$/, 'must be raw, vhd, vhdx, vmdk, qcow2 or ova, optionally with :SUBFORMAT (e.g. vhd:fixed)');

export const createSiteRequest = z.object({
  name,
  driver: z.literal('files').default('files'),
  path: z.string().min(1).refine((value) => value.startsWith('/'), 'must be an absolute path on the server'),
  /** The format failovers to this site write their disks in (default raw); not ova. */
  diskFormat: diskFormatSpec.refine((value) => !value.startsWith('ova'), 'a site writes disk images, not an OVA').default('raw'),
});

/**
 * `PATCH /sites/{name}`: a new directory for the site's future failovers, or another disk format for
 * them (failovers already written keep their files where they are). At least one key.
 */
export const updateSiteRequest = z
  .object({
    path: z.string().min(1).refine((value) => value.startsWith('/'), 'must be an absolute path on the server').optional(),
    diskFormat: diskFormatSpec.refine((value) => !value.startsWith('ova'), 'a site writes disk images, not an OVA').optional(),
  })
  .strict()
  .refine((request) => Object.keys(request).length > 0, { message: 'give a path or a diskFormat to change' });

export const createPolicyRequest = z.object({
  name,
  /** Time between points (crash-consistent where a snapshot can be taken). */
  intervalSeconds: seconds.min(30).max(86400),
  /** Time between application-consistent points (hooks run); defaults to every point. */
  appIntervalSeconds: seconds.max(30 * 86400).optional(),
  retentionSeconds: seconds.min(60).max(365 * 86400),
  /** Every point younger than this is kept (default: 6 h, or the retention if shorter). */
  keepAllSeconds: seconds.max(365 * 86400).optional(),
  /** Up to this age one point per hour is kept, beyond it one per day (default: 7 d, or the retention). */
  hourlySeconds: seconds.max(365 * 86400).optional(),
  /** Application-consistent points younger than this are all kept, even past the retention (default 0: off). */
  appRetentionSeconds: z.number().int().nonnegative().max(3 * 365 * 86400).optional(),
  rpoThresholdSeconds: seconds.max(7 * 86400).optional(),
});

/**
 * `PATCH /policies/{name}`: changes some of a policy's settings (the same rules as creation); the name
 * stays. At least one key. The RPO threshold is kept unless given, even when the interval changes.
 */
export const updatePolicyRequest = createPolicyRequest
  .omit({ name: true })
  .partial()
  .strict()
  .refine((request) => Object.keys(request).length > 0, { message: 'give at least one setting to change' });

export const updateMachineRequest = z
  .object({
    prePointCommand: z.string().max(4096).nullable().optional(),
    postPointCommand: z.string().max(4096).nullable().optional(),
    hookTimeoutSeconds: seconds.max(3600).optional(),
    /** Command a planned failover has the agent run to stop the machine's workload; null clears it. */
    shutdownCommand: z.string().max(4096).nullable().optional(),
    /** Stops the workload at the recovery site (a failback's final point); '' or null removes it. */
    recoveryShutdownCommand: z.string().max(4096).nullable().optional(),
    /** Virtual hardware (an OVA export describes it); null: not known. */
    cpus: z.number().int().min(1).max(1024).nullable().optional(),
    memoryMiB: z.number().int().min(1).max(64 * 1024 * 1024).nullable().optional(),
    nics: z.array(z.object({ network: z.string().min(1).max(256) })).max(32).optional(),
  })
  .strict();



export const protectRequest = z.object({ site: name, policy: name.default('default') });

/**
 * Which recovery point: "latest", "latest-app" (the newest app-consistent one), a point id, or a time
 * (ISO 8601: the newest point taken at or before it).
 */
export const pointSelector = z.string().min(1).max(64).default('latest');

export const testFailoverRequest = z.object({ point: pointSelector });

/** `ferry export MACHINE`: a point's disks as images of `format` ("vhd:fixed", "ova"...) at `out` on the server. */
export const exportRequest = z
  .object({ point: pointSelector, format: diskFormatSpec, out: z.string().min(1).max(4096).refine((value) => value.startsWith('/'), 'must be an absolute path on the server') })
  .strict();

/** `ferry machine import PATH`: a VM's descriptor (.vmx, .ovf, .ova) or a Hyper-V export folder on the server. */
export const importMachineRequest = z
  .object({
    path: z.string().min(1).max(4096).refine((value) => value.startsWith('/'), 'must be an absolute path on the server'),
    name: name.optional(),
    cpus: z.number().int().min(1).max(1024).optional(),
    memoryMiB: z.number().int().min(1).max(64 * 1024 * 1024).optional(),
    nics: z.array(z.object({ network: z.string().min(1).max(256) })).max(32).optional(),
  })
  .strict();

/**
 * `POST /machines/{name}/failover`: `planned` (the agent runs the machine's shutdown command and takes a
 * final point, which is failed over to: nothing acknowledged is lost), `unplanned` (from the point
 * chosen by `point` among what the store has; the source may be gone), or `change-point` (before
 * commit, rewrite the failed-over disks from another point).
 */
export const failoverRequest = z
  .object({ mode: z.enum(['planned', 'unplanned', 'change-point']), point: pointSelector })
  .strict()
  .refine((request) => request.mode !== 'planned' || request.point === 'latest', { message: 'a planned failover always uses its own final point: leave out point', path: ['point'] });

/**
 * `ferry reprotect MACHINE [--agent A] [--disk-path N=PATH]...`: turn replication around. `agent` reads
 * the disks at the recovery site (default: the server's own site agent); `diskPaths` writes the source
 * site's disks to new locations instead of the original ones (reverse only).
 */
export const reprotectRequest = z
  .object({
    agent: name.optional(),
    diskPaths: z.array(z.object({ position: z.number().int().nonnegative().max(255), path: z.string().min(1).max(4096) })).max(256).optional(),
  })
  .strict();

/** The agent's report that an `apply-point` job has made its disks equal to the point. */
export const applyCompleteRequest = z
  .object({
    disks: z
      .array(
        z.object({
          position: z.number().int().nonnegative(),
          changedBytes: z.number().int().nonnegative(),
          receivedBytes: z.number().int().nonnegative(),
          chunksWritten: z.number().int().nonnegative(),
        }),
      )
      .max(256),
  })
  .strict();

/** An `apply-point` job asks for the chunks it lacks, by name (at most 1024 per request). */
export const readChunksRequest = z.object({
  hashes: z
    .array(hashHex)
    .min(1)
    .max(1024)
    .refine((hashes) => new Set(hashes).size === hashes.length, { message: 'hashes must be distinct' }),
});

/** A disk of a job's point: /agent/jobs/:id/disks/:position/index. */
export const jobDiskParam = z.object({ id: z.string().min(1).max(64), position: z.coerce.number().int().nonnegative().max(255) });

/** `ferry points create`: optionally force or skip the hooks for this point. */
export const createPointRequest = z.object({ consistency: z.enum(['app', 'crash']).optional() });

export const listJobsQuery = z.object({
  machine: name.optional(),
  active: z.enum(['true', 'false']).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(50),
});

/** `GET /jobs/ID?waitSeconds=N`: answer once the job has ended, or after N seconds (0, the default: at once). */
export const jobViewQuery = z.object({ waitSeconds: z.coerce.number().min(0).max(60).default(0) });

export const listPointsQuery = z.object({ limit: z.coerce.number().int().min(1).max(10000).default(1000) });

// --- agent protocol ---------------------------------------------------------------------------

export const registerAgentRequest = z.object({
  agentName: name,
  machines: z
    .array(
      z.object({
        name,
        disks: z
          .array(
            z.object({
              path: z.string().min(1).max(4096),
              sizeBytes: z.number().int().nonnegative().nullable(),
              error: z.string().max(2000).nullable(),
            }),
          )
          .min(1)
          .max(64),
      }),
    )
    .max(1000),
});

export const workQuery = z.object({ waitSeconds: z.coerce.number().min(0).max(60).default(20) });

/**
 * `POST /agent/jobs/ID/start`. The body is optional (older agents send `{}`). `resync` is set when
 * the agent's memory of the last point cannot serve this cycle for some disk: it remembers no index
 * (its state was lost, or discarded after the store reported missing chunks), or the index has
 * another chunk size, or the disk changed size. Such a disk is read whole and its chunks are checked
 * with the store wherever that memory does not cover them; `reason` says which disks and why, for a
 * person. The server treats the cycle as a resync only when the machine already has points: without
 * one it is an initial replication anyway.
 */
export const jobStartRequest = z.object({
  resync: z.object({ reason: z.string().min(1).max(2000) }).optional(),
});

export const jobProgressRequest = z.object({
  step: z.string().max(200).optional(),
  doneBytes: z.number().int().nonnegative(),
  totalBytes: z.number().int().nonnegative(),
});

export const jobFailRequest = z.object({
  code: z.string().min(1).max(64),
  message: z.string().min(1).max(4000),
  retryable: z.boolean(),
});

export const missingChunksRequest = z.object({ hashes: z.array(hashHex).max(8192) });

export const commitPointRequest = z.object({
  jobId: z.string().min(1).max(64),
  takenAt: z.number().int().positive(),
  consistency: z.enum(['app', 'crash', 'inconsistent']),
  note: z.string().max(2000).nullable().default(null),
  disks: z
    .array(
      z.object({
        diskId: z.string().min(1).max(64),
        indexHash: hashHex,
        /** Bytes of chunks that differ from the disk's previous point. */
        changedBytes: z.number().int().nonnegative(),
        /** Bytes of chunk data actually sent (changed chunks the server did not already hold). */
        sentBytes: z.number().int().nonnegative(),
      }),
    )
    .min(1),
});

export type CreateTokenRequest = z.infer<typeof createTokenRequest>;
export type CreateSiteRequest = z.infer<typeof createSiteRequest>;
export type UpdateSiteRequest = z.infer<typeof updateSiteRequest>;
export type CreatePolicyRequest = z.infer<typeof createPolicyRequest>;
export type UpdateMachineRequest = z.infer<typeof updateMachineRequest>;
export type ProtectRequest = z.infer<typeof protectRequest>;
export type RegisterAgentRequest = z.infer<typeof registerAgentRequest>;
export type JobStartRequest = z.infer<typeof jobStartRequest>;
export type JobProgressRequest = z.infer<typeof jobProgressRequest>;
export type JobFailRequest = z.infer<typeof jobFailRequest>;
export type CommitPointRequest = z.infer<typeof commitPointRequest>;
export type ReprotectRequest = z.infer<typeof reprotectRequest>;
export type ApplyCompleteRequest = z.infer<typeof applyCompleteRequest>;
export type ExportRequest = z.infer<typeof exportRequest>;
export type ImportMachineRequest = z.infer<typeof importMachineRequest>;
