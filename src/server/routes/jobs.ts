/** Routes for jobs (admin): list, show (or wait for the end of) and cancel. */
import type { FastifyInstance } from 'fastify';
import type { FerryCore } from '../../orchestration/core.js';
import { jobIdParam, jobViewQuery, listJobsQuery } from '../../protocol/requests.js';
import { parse } from '../http-errors.js';

export function jobRoutes(app: FastifyInstance, core: FerryCore): void {
  app.get('/api/v1/jobs', async (request) => {
    const query = parse(listJobsQuery, request.query, 'query');
    const machineId = query.machine ? (await core.machines.get(query.machine)).id : undefined;
    return { jobs: await core.jobs.list({ machineId, activeOnly: query.active === 'true', limit: query.limit }) };
  });
  app.get('/api/v1/jobs/:id', async (request) => {
    const id = parse(jobIdParam, request.params, 'job id').id;
    const { waitSeconds } = parse(jobViewQuery, request.query, 'query');
    if (waitSeconds === 0) return core.jobs.view(id);
    const aborted = new AbortController(); // the client gave up: stop waiting for it
    request.raw.once('close', () => aborted.abort());
    return core.jobs.viewWhenEnded(id, waitSeconds, aborted.signal);
  });
  app.post('/api/v1/jobs/:id/cancel', async (request) => core.jobs.cancel(parse(jobIdParam, request.params, 'job id').id));
}
