/**
 * Serves the portal (the web UI built by `npm run build` into dist/portal) at `/`: its static files
 * with their content types, and index.html for any other path outside /api/ so the portal's own
 * routes (/machines/db-01, /jobs...) survive a reload. Never answers under /api/: an unknown API path
 * keeps its JSON 404. Without a built portal, `/` says how to build it.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';

/** Content types of the files a Vite build writes; anything else is served as bytes. */
const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

/**
 * The portal may load only what it ships and talk only to this server: nothing from a CDN, no inline
 * script, not framed by another site.
 */
const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

const NOT_BUILT_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Ferry</title></head>
<body><main><h1>Ferry</h1>
<p>The portal has not been built. Run <code>npm run build</code> in the Ferry checkout (or <code>npm install</code>, which builds it), then reload this page.</p>
<p>The API is served at <code>/api/v1</code> as usual.</p></main></body></html>
`;

/**
 * Where the built portal is: dist/portal beside the compiled server (dist/server/portal.js), or, when
 * the server runs from source (src/server/portal.ts under tsx), the checkout's dist/portal.
 */
export function defaultPortalDir(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const compiled = path.resolve(here, '..', 'portal');
  return path.basename(path.resolve(here, '..')) === 'dist' ? compiled : path.resolve(here, '..', '..', 'dist', 'portal');
}

/**
 * Registers the portal's routes on `app` (public: the portal's files hold no secrets; every API call it
 * makes carries the operator's token). `portalDir` defaults to `defaultPortalDir()`.
 */
export function portalRoutes(app: FastifyInstance, portalDir = defaultPortalDir()): void {
  const root = path.resolve(portalDir);

  const sendIndex = async (reply: FastifyReply) => {
    const index = await fs.readFile(path.join(root, 'index.html')).catch(() => null);
    if (!index) return reply.status(200).headers({ ...SECURITY_HEADERS, 'cache-control': 'no-store' }).type('text/html; charset=utf-8').send(NOT_BUILT_PAGE);
    // index.html names the current asset files: never cached, so a rebuilt portal is picked up on reload.
    return reply.headers({ ...SECURITY_HEADERS, 'cache-control': 'no-cache' }).type('text/html; charset=utf-8').send(index);
  };

  app.get('/', { config: { role: 'public' } }, async (_request, reply) => sendIndex(reply));
  app.get('/*', { config: { role: 'public' } }, async (request, reply) => {
    const rawPath = request.url.split('?')[0]!;
    if (rawPath.startsWith('/api/') || rawPath === '/api') return reply.callNotFound();
    const urlPath = safeDecode(rawPath);
    if (urlPath === null) return reply.status(400).type('text/plain; charset=utf-8').send('malformed path\n');
    const file = path.resolve(root, '.' + path.posix.normalize(urlPath));
    if (file.startsWith(root + path.sep)) {
      const stat = await fs.stat(file).catch(() => null);
      if (stat?.isFile()) {
        const extension = path.extname(file).toLowerCase();
        // Vite names assets by content hash: a file under assets/ never changes, so browsers keep it.
        const cache = urlPath.startsWith('/assets/') ? 'public, max-age=31536000, immutable' : 'no-cache';
        return reply
          .headers({ ...SECURITY_HEADERS, 'cache-control': cache })
          .type(CONTENT_TYPES[extension] ?? 'application/octet-stream')
          .send(await fs.readFile(file));
      }
    }
    // A missing file (it has an extension, or is under assets/) is a 404; any other path is a portal page.
    if (urlPath.startsWith('/assets/') || path.posix.extname(urlPath) !== '') {
      return reply.status(404).type('text/plain; charset=utf-8').send(`not found: ${urlPath}\n`);
    }
    return sendIndex(reply);
  });
}

/** The decoded path, or null when its percent-encoding is malformed. */
function safeDecode(encoded: string): string | null {
  try {
    return decodeURIComponent(encoded);
  } catch {
    return null;
  }
}
