/**
 * Bearer-token authentication for /api/v1. Every route declares the role it needs in its config
 * (`{ role: 'admin' | 'agent' | 'public' }`); admins may call everything, agents only agent routes.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { FerryError } from '../errors.js';
import type { FerryCore } from '../orchestration/core.js';
import type { Principal } from '../orchestration/tokens.js';

/** The role a route requires. */
export type RouteRole = 'admin' | 'agent' | 'public';

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | null;
  }
  interface FastifyContextConfig {
    role?: RouteRole;
  }
}

/** Installs the authentication hook. Routes without a role are admin-only. */
export function installAuth(app: FastifyInstance, core: FerryCore): void {
  app.decorateRequest('principal', null);
  app.addHook('onRequest', async (request) => {
    if (!request.url.startsWith('/api/') || request.routeOptions.url === undefined) return; // unknown routes get a 404
    const role: RouteRole = request.routeOptions.config?.role ?? 'admin';
    if (role === 'public') return;
    const principal = await core.tokens.authenticate(bearerOf(request));
    if (principal.role !== 'admin' && principal.role !== role) {
      throw new FerryError('forbidden', `${principal.role === 'agent' ? 'an agent' : 'an admin'} token may not call ${request.method} ${request.routeOptions.url ?? request.url}`);
    }
    request.principal = principal;
  });
}

function bearerOf(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (!header) return undefined;
  const match = /^Bearer\s+(\S+)$/i.exec(header);
  if (!match) throw new FerryError('unauthorized', 'Authorization header must be "Bearer <token>"');
  return match[1];
}
