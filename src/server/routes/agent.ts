/**
 * Routes agents call: register, poll for work (the heartbeat), report job progress or failure,
 * upload chunks and indexes, commit a point; and for an `apply-point` job, read the point's indexes and
 * chunks and report it done. Chunk and index bodies are application/octet-stream.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { FerryError } from '../../errors.js';
import type { FerryCore } from '../../orchestration/core.js';
import { decodeChunkBatch } from '../../protocol/chunk-batch.js';
import {
  applyCompleteRequest,
  commitPointRequest,
  jobDiskParam,
  readChunksRequest,
  jobFailRequest,
  jobIdParam,
  jobProgressRequest,
  jobStartRequest,
  missingChunksRequest,
  registerAgentRequest,
  workQuery,
} from '../../protocol/requests.js';
import { DiskIndex } from '../../store/disk-index.js';
import { faultPoint } from '../../util/fault-injection.js';
import { giveBackSharedBody } from '../binary-body.js';
import { parse } from '../http-errors.js';

const agentOnly = { config: { role: 'agent' as const } };

/** Largest disk index upload accepted. */
export const MAX_INDEX_BYTES = 256 * 1024 * 1024;

export function agentRoutes(app: FastifyInstance, core: FerryCore): void {
  const agentOf = async (request: FastifyRequest) => {
    const agent = await core.machines.agentOf(request.principal!);
    await core.machines.touchAgent(agent.id);
    return agent;
  };
  const jobId = (params: unknown) => parse(jobIdParam, params, 'job id').id;

  app.post('/api/v1/agent/register', agentOnly, async (request) => {
    return core.machines.registerAgent(request.principal!, parse(registerAgentRequest, request.body, 'registration'));
  });

  app.get('/api/v1/agent/work', agentOnly, async (request) => {
    const agent = await agentOf(request);
    const { waitSeconds } = parse(workQuery, request.query, 'query');
    const aborted = new AbortController();
    request.raw.once('close', () => aborted.abort());
    return { jobs: await core.replication.work(agent.id, waitSeconds, aborted.signal) };
  });

  app.post('/api/v1/agent/jobs/:id/start', agentOnly, async (request) =>
    core.replication.start((await agentOf(request)).id, jobId(request.params), parse(jobStartRequest, request.body, 'job start')),
  );
  app.post('/api/v1/agent/jobs/:id/progress', agentOnly, async (request, reply) => {
    await core.replication.progress((await agentOf(request)).id, jobId(request.params), parse(jobProgressRequest, request.body, 'progress'));
    return reply.status(204).send();
  });
  app.post('/api/v1/agent/jobs/:id/fail', agentOnly, async (request) =>
    core.replication.fail((await agentOf(request)).id, jobId(request.params), parse(jobFailRequest, request.body, 'failure report')),
  );

  // An `apply-point` job (reprotect, failback): the point's index per disk, its chunks, and the report.
  app.get('/api/v1/agent/jobs/:id/disks/:position/index', agentOnly, async (request, reply) => {
    const { id, position } = parse(jobDiskParam, request.params, 'job disk');
    const index = await core.replication.applyIndex((await agentOf(request)).id, id, position);
    return reply.type('application/octet-stream').send(index);
  });
  app.post('/api/v1/agent/jobs/:id/chunks/read', agentOnly, async (request, reply) => {
    const { hashes } = parse(readChunksRequest, request.body, 'chunk read');
    const batch = await core.replication.readChunks((await agentOf(request)).id, jobId(request.params), hashes);
    return reply.type('application/octet-stream').send(Buffer.concat(batch));
  });
  app.post('/api/v1/agent/jobs/:id/complete', agentOnly, async (request) =>
    core.replication.completeApply((await agentOf(request)).id, jobId(request.params), parse(applyCompleteRequest, request.body, 'apply report')),
  );

  app.post('/api/v1/chunks/missing', agentOnly, async (request) => {
    await agentOf(request);
    const { hashes } = parse(missingChunksRequest, request.body, 'chunk query');
    return { missing: await core.storeGuard.missingChunks(hashes) };
  });

  // The batch is read into one of the store's shared buffers, where the codec workers read it (binary-body.ts).
  app.post('/api/v1/chunks', { config: { role: 'agent', sharedBody: true } }, async (request) => {
    await agentOf(request);
    const stored = await core.storeGuard.putChunkBatch(decodeChunkBatch(bodyBuffer(request)));
    giveBackSharedBody(request); // the batch is stored: nothing reads the body any more
    return stored;
  });

  // An index is 32 bytes per chunk: 256 MiB covers a 512 GiB disk at 64 KiB chunks.
  app.post('/api/v1/indexes', { ...agentOnly, bodyLimit: MAX_INDEX_BYTES }, async (request) => {
    await agentOf(request);
    const index = DiskIndex.decode(bodyBuffer(request), 'upload');
    const indexHash = await core.storeGuard.putIndex(index);
    faultPoint('index-stored'); // crash tests only: the index is durable, the agent is never answered
    return { indexHash };
  });

  app.post('/api/v1/agent/points', agentOnly, async (request, reply) => {
    const agent = await agentOf(request);
    return reply.status(201).send(await core.points.commit(agent.id, parse(commitPointRequest, request.body, 'point commit')));
  });
}

function bodyBuffer(request: FastifyRequest): Buffer {
  if (!Buffer.isBuffer(request.body)) {
    throw new FerryError('invalid-request', 'body must be application/octet-stream');
  }
  return request.body;
}
