/** Routes for store maintenance (admin): statistics, verification and garbage collection. */
import type { FastifyInstance } from 'fastify';
import type { FerryCore } from '../../orchestration/core.js';
import { storeGcRequest, storeVerifyRequest } from '../../protocol/store.js';
import { parse } from '../http-errors.js';

export function storeRoutes(app: FastifyInstance, core: FerryCore): void {
  app.get('/api/v1/store/stats', async () => core.storeMaintenance.stats());
  // Both run to completion before answering; the CLI waits as long as they take.
  app.post('/api/v1/store/verify', async (request) => core.storeMaintenance.verify(parse(storeVerifyRequest, request.body, 'verify request')));
  app.post('/api/v1/store/gc', async (request) => core.storeMaintenance.collectGarbage(parse(storeGcRequest, request.body, 'gc request')));
}
