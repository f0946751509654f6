/** Routes for machines: import, status, settings, protection, points, test failover, failover, commit, migration, reprotect, failback and export (admin). */
import type { FastifyInstance } from 'fastify';
import type { FerryCore } from '../../orchestration/core.js';
import {
  createPointRequest,
  exportRequest,
  failoverRequest,
  importMachineRequest,
  listPointsQuery,
  nameParam,
  protectRequest,
  reprotectRequest,
  testFailoverRequest,
  updateMachineRequest,
} from '../../protocol/requests.js';
import { parse } from '../http-errors.js';

export function machineRoutes(app: FastifyInstance, core: FerryCore): void {
  const machineName = (params: unknown) => parse(nameParam, params, 'machine name').name;

  app.get('/api/v1/machines', async () => ({ machines: await core.machines.list() }));
  app.post('/api/v1/machines/import', async (request, reply) => {
    const body = parse(importMachineRequest, request.body, 'import request');
    const result = await core.imports.importMachine(body.path, body);
    return reply.status(201).send({ import: result, machine: await core.machines.view(result.machine) });
  });
  app.get('/api/v1/machines/:name', async (request) => core.machines.view(machineName(request.params)));
  app.patch('/api/v1/machines/:name', async (request) =>
    core.machines.update(machineName(request.params), parse(updateMachineRequest, request.body, 'machine settings')),
  );

  app.post('/api/v1/machines/:name/protect', async (request, reply) => {
    const result = await core.replication.protect(machineName(request.params), parse(protectRequest, request.body, 'protect request'));
    return reply.status(202).send(result);
  });

  app.post('/api/v1/machines/:name/pause', async (request) => core.machines.setPaused(machineName(request.params), true));
  app.post('/api/v1/machines/:name/resume', async (request) => core.machines.setPaused(machineName(request.params), false));

  app.get('/api/v1/machines/:name/points', async (request) => {
    const query = parse(listPointsQuery, request.query, 'query');
    return { points: await core.points.list(machineName(request.params), query.limit) };
  });
  app.post('/api/v1/machines/:name/points', async (request, reply) => {
    const body = parse(createPointRequest, request.body, 'point request');
    return reply.status(202).send({ job: await core.points.request(machineName(request.params), body.consistency) });
  });

  app.post('/api/v1/machines/:name/test-failover', async (request, reply) => {
    const body = parse(testFailoverRequest, request.body, 'test failover request');
    return reply.status(202).send(await core.testFailovers.start(machineName(request.params), body.point));
  });
  app.delete('/api/v1/machines/:name/test-failover', async (request, reply) => {
    return reply.status(202).send({ job: await core.testFailovers.cleanup(machineName(request.params)) });
  });

  app.post('/api/v1/machines/:name/failover', async (request, reply) => {
    const body = parse(failoverRequest, request.body, 'failover request');
    return reply.status(202).send(await core.failovers.request(machineName(request.params), body.mode, body.point));
  });
  app.post('/api/v1/machines/:name/commit', async (request) => core.failovers.commit(machineName(request.params)));

  app.post('/api/v1/machines/:name/export', async (request, reply) =>
    reply.status(202).send({ job: await core.exports.request(machineName(request.params), parse(exportRequest, request.body, 'export request')) }),
  );
  app.post('/api/v1/machines/:name/reprotect', async (request, reply) =>
    reply.status(202).send(await core.reprotections.request(machineName(request.params), parse(reprotectRequest, request.body ?? {}, 'reprotect request'))),
  );
  app.post('/api/v1/machines/:name/failback', async (request, reply) =>
    reply.status(202).send(await core.failovers.request(machineName(request.params), 'failback', 'latest')),
  );

  app.post('/api/v1/machines/:name/migrate', async (request, reply) =>
    reply.status(202).send(await core.failovers.request(machineName(request.params), 'migrate', 'latest')),
  );
  app.post('/api/v1/machines/:name/migrate/complete', async (request, reply) =>
    reply.status(202).send({ job: await core.failovers.completeMigration(machineName(request.params)) }),
  );
}
