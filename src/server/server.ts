/**
 * `ferry server`: opens the data directory, serves the API, and writes DATA_DIR/server.json (the URL
 * it listens on) so local CLI calls and tests can find it. Stops gracefully on SIGINT/SIGTERM.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { FerryCore } from '../orchestration/core.js';
import type { CoreOptions } from '../orchestration/context.js';
import type { StoreOpenOptions } from '../store/store-config.js';
import { writeFileDurable } from '../util/durable-fs.js';
import { armedFault, FAULT_ENV, FAULT_POINTS } from '../util/fault-injection.js';
import { buildApp } from './app.js';
import { startSiteAgent } from './site-agent.js';

/** Options of `ferry server`. */
export interface ServerOptions {
  dataDir: string;
  /** host:port; port 0 picks a free one. */
  listen: string;
  core?: Partial<CoreOptions>;
  /** Store key and new-store compression (see `CoreSetup.store`). */
  store?: StoreOpenOptions;
  /** Run the site agent (site-agent.ts) that reads failed-over disks for reprotect; default true. */
  siteAgent?: boolean;
}

/** A running server. */
export interface RunningServer {
  url: string;
  core: FerryCore;
  close(): Promise<void>;
}

/** Starts serving; resolves once listening. */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const { host, port } = parseListen(options.listen);
  const core = await FerryCore.create({ dataDir: options.dataDir, options: options.core, store: options.store });
  const app = buildApp(core);
  await app.listen({ host, port });
  const address = app.server.address();
  const actualPort = typeof address === 'object' && address ? address.port : port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${actualPort}`;
  core.start();
  const siteAgent = options.siteAgent === false ? null : await startSiteAgent(core, url);
  const serverFile = path.join(core.dataDir, 'server.json');
  await writeFileDurable(serverFile, JSON.stringify({ url, pid: process.pid }) + '\n');
  core.context.log.info({ url, dataDir: core.dataDir }, 'ferry server listening');
  const fault = armedFault();
  if (fault) {
    core.context.log.warn(
      { fault: fault.name },
      fault.known
        ? `${FAULT_ENV}=${fault.name}: this server will SIGKILL itself at that fault point (crash tests only)`
        : `${FAULT_ENV}=${fault.name} names no fault point (known: ${FAULT_POINTS.join(', ')}); ignored`,
    );
  }
  return {
    url,
    core,
    async close() {
      core.beginShutdown();
      await siteAgent?.stop();
      await app.close();
      await core.stop();
      await fs.rm(serverFile, { force: true });
    },
  };
}

/** Parses "host:port" (IPv6 as "[::1]:7300"). */
export function parseListen(listen: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(listen);
  if (!match) throw new FerryError('invalid-request', `--listen '${listen}' must be host:port, e.g. 127.0.0.1:7300`);
  return { host: match[1] ?? match[2]!, port: Number(match[3]) };
}
