/**
 * Routes for recovery plans (admin): create, list, show and delete plans; run one on every machine it
 * names; resume a run waiting at a manual step, or cancel it; list its runs; the operations a plan can run.
 */
import type { FastifyInstance } from 'fastify';
import type { FerryCore } from '../../orchestration/core.js';
import { createPlanRequest, listPlanRunsQuery, runPlanRequest } from '../../protocol/plans.js';
import { nameParam } from '../../protocol/requests.js';
import { parse } from '../http-errors.js';

export function planRoutes(app: FastifyInstance, core: FerryCore): void {
  const planName = (params: unknown) => parse(nameParam, params, 'plan name').name;

  app.get('/api/v1/plan-operations', async () => ({ operations: core.plans.operationsView() }));
  app.get('/api/v1/plans', async () => ({ plans: await core.plans.list() }));
  app.post('/api/v1/plans', async (request, reply) => reply.status(201).send(await core.plans.create(parse(createPlanRequest, request.body, 'plan'))));
  app.get('/api/v1/plans/:name', async (request) => core.plans.view(planName(request.params)));
  app.delete('/api/v1/plans/:name', async (request) => core.plans.delete(planName(request.params)));

  app.get('/api/v1/plans/:name/runs', async (request) => {
    const query = parse(listPlanRunsQuery, request.query, 'query');
    return { runs: await core.plans.runs(planName(request.params), query.limit) };
  });
  app.post('/api/v1/plans/:name/runs', async (request, reply) => {
    const body = parse(runPlanRequest, request.body, 'plan run request');
    return reply.status(202).send(await core.plans.run(planName(request.params), body));
  });
  app.post('/api/v1/plans/:name/resume', async (request) => core.plans.resume(planName(request.params)));
  app.post('/api/v1/plans/:name/cancel', async (request) => core.plans.cancel(planName(request.params)));
}
