/** Routes for tokens, sites, policies and events (admin). */
import type { FastifyInstance } from 'fastify';
import type { FerryCore } from '../../orchestration/core.js';
import { createPolicyRequest, createSiteRequest, createTokenRequest, nameParam, updatePolicyRequest, updateSiteRequest } from '../../protocol/requests.js';
import { siteView } from '../../orchestration/sites.js';
import { policyView } from '../../orchestration/policies.js';
import { z } from 'zod';
import { parse } from '../http-errors.js';

const eventsQuery = z.object({
  machine: z.string().optional(),
  alerts: z.enum(['true', 'false']).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});

export function adminRoutes(app: FastifyInstance, core: FerryCore): void {
  app.post('/api/v1/tokens', async (request, reply) => {
    const body = parse(createTokenRequest, request.body, 'token request');
    return reply.status(201).send(await core.tokens.create(body.role, body.name));
  });

  app.get('/api/v1/sites', async () => ({ sites: await core.sites.list() }));
  app.post('/api/v1/sites', async (request, reply) => {
    return reply.status(201).send(await core.sites.create(parse(createSiteRequest, request.body, 'site')));
  });
  app.get('/api/v1/sites/:name', async (request) => siteView(await core.sites.get(parse(nameParam, request.params, 'site name').name)));
  app.patch('/api/v1/sites/:name', async (request) =>
    core.sites.update(parse(nameParam, request.params, 'site name').name, parse(updateSiteRequest, request.body, 'site changes')),
  );

  app.get('/api/v1/policies', async () => ({ policies: await core.policies.list() }));
  app.post('/api/v1/policies', async (request, reply) => {
    return reply.status(201).send(await core.policies.create(parse(createPolicyRequest, request.body, 'policy')));
  });
  app.get('/api/v1/policies/:name', async (request) => policyView(await core.policies.get(parse(nameParam, request.params, 'policy name').name)));
  app.patch('/api/v1/policies/:name', async (request) =>
    core.policies.update(parse(nameParam, request.params, 'policy name').name, parse(updatePolicyRequest, request.body, 'policy settings')),
  );

  app.get('/api/v1/events', async (request) => {
    const query = parse(eventsQuery, request.query, 'query');
    const machineId = query.machine ? (await core.machines.get(query.machine)).id : undefined;
    return { events: await core.events.list({ machineId, limit: query.limit, alertsOnly: query.alerts === 'true' }) };
  });
}
