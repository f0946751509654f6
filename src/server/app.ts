/**
 * Builds the HTTP server: Fastify with the auth hook, the one error handler, JSON and binary body
 * parsers, every route group under /api/v1 (the live stream among them), and the portal at `/`.
 */
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import type { FerryCore } from '../orchestration/core.js';
import { MAX_BATCH_BYTES } from '../protocol/chunk-batch.js';
import { installAuth } from './auth.js';
import { installBinaryBodies } from './binary-body.js';
import { handleError } from './http-errors.js';
import { adminRoutes } from './routes/admin.js';
import { agentRoutes } from './routes/agent.js';
import { jobRoutes } from './routes/jobs.js';
import { machineRoutes } from './routes/machines.js';
import { planRoutes } from './routes/plans.js';
import { storeRoutes } from './routes/store.js';
import { streamRoutes } from './routes/stream.js';
import { portalRoutes } from './portal.js';

/** The Fastify app serving `core`. Not yet listening. */
export function buildApp(core: FerryCore): FastifyInstance {
  const app = Fastify({
    loggerInstance: core.context.log as FastifyBaseLogger, bodyLimit: MAX_BATCH_BYTES + 1024 * 1024,
    // Per-request log lines would drown the log: agents make many small requests. Errors are still logged.
    logController: new LogController({ disableRequestLogging: true }),
  });
  const store = core.context.store;
  installBinaryBodies(app, {
    get bufferBytes() {
      return store.sharedBufferBytes; // asked at the first upload: the codec pool starts on first use
    },
    take: (length) => store.takeSharedBuffer(length),
    give: (buffer) => store.giveSharedBuffer(buffer),
  });
  app.setErrorHandler(handleError);
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({ error: { code: 'not-found', message: `no API route ${request.method} ${request.url}`, retryable: false } });
  });
  installAuth(app, core);

  app.get('/api/v1/health', { config: { role: 'public' } }, async () => ({ ok: true, service: 'ferry' }));
  adminRoutes(app, core);
  machineRoutes(app, core);
  jobRoutes(app, core);
  planRoutes(app, core);
  agentRoutes(app, core);
  storeRoutes(app, core);
  streamRoutes(app, core);
  portalRoutes(app);
  return app;
}
