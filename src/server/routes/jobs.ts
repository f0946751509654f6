/** Routes for jobs (admin): list, show and cancel. */
import type { FastifyInstance } from 'fastify';
import type { FerryCore } from '../../orchestration/core.js';
import { jobIdParam, listJobsQuery } from '../../protocol/requests.js';
import { parse } from '../http-errors.js';

export function jobRoutes(app: FastifyInstance, core: FerryCore): void {
  app.get('/api/v1/jobs', async (request) => {
    const query = parse(listJobsQuery, request.query, 'query');
    const machineId = query.machine ? (await core.machines.get(query.machine)).id : undefined;
    return { jobs: await core.jobs.list({ machineId, activeOnly: query.active === 'true', limit: query.limit }) };
  });
  app.get('/api/v1/jobs/:id', async (request) => core.jobs.view(parse(jobIdParam, request.params, 'job id').id));
  app.post('/api/v1/jobs/:id/cancel', async (request) => core.jobs.cancel(parse(jobIdParam, request.params, 'job id').id));
}
