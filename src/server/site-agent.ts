/**
 * The server's own site agent: an agent running inside `ferry server` that reads disks at the recovery
 * site (the failed-over disks the files driver wrote there), so a reprotect can replicate a failed-over
 * machine back to its source site without installing anything at the recovery site.
 *
 * It is an ordinary agent (agent.ts): the same code and the same HTTP API as `ferry agent`, with its own
 * agent token in DATA_DIR/site-agent/token (mode 0600) and its state in DATA_DIR/site-agent/. It
 * registers as SITE_AGENT_NAME with no machines of its own: the jobs it is given name the disks to read.
 * It sends chunks uncompressed: it talks to its own server over the loopback, where compressing would
 * only spend CPU (the store compresses what it keeps).
 */
import path from 'node:path';
import { Agent } from '../agent/agent.js';
import type { FerryCore } from '../orchestration/core.js';
import { SITE_AGENT_NAME } from '../orchestration/reprotect.js';
import { ensureDirectory } from '../util/durable-fs.js';

/** A running site agent. */
export interface SiteAgent {
  /** Stops polling; in-flight jobs are handed out again after the next start. */
  stop(): Promise<void>;
}

/** Starts the site agent of the server at `serverUrl`; it registers in the background (retrying while the server starts). */
export async function startSiteAgent(core: FerryCore, serverUrl: string): Promise<SiteAgent> {
  const dataDir = path.join(core.dataDir, 'site-agent');
  await ensureDirectory(dataDir, 0o700);
  const token = await core.tokens.ensureTokenFile(path.join(dataDir, 'token'), 'agent', SITE_AGENT_NAME);
  const agent = new Agent({ serverUrl, token, dataDir, machines: [], name: SITE_AGENT_NAME, compressionLevel: null });
  const running = agent.run().catch((error: unknown) => core.context.log.error({ err: error }, 'site agent stopped'));
  return {
    async stop() {
      agent.stop();
      await running;
    },
  };
}
