/**
 * A real Ferry installation for the benchmark: `ferry server` and `ferry agent` as child processes of
 * the chosen `ferry` command (bin/ferry, as an operator runs it), each with its own data directory
 * under the work dir, driven through the CLI (`--json`) as an operator would. Polling that must not
 * cost CPU (status every second) uses the HTTP API directly instead of starting a CLI process each time.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { withThisNodeFirst } from '../src/util/launcher-environment.js';
import { processCpu, processIo, run, sleep, threadCpu } from './measure.js';

/** A daemon started by the cluster. */
interface Daemon {
  process: ChildProcess;
  exited: Promise<void>;
}

/**
 * How to run the Ferry command at `ferryBin`: the `bin/ferry` launcher as it is (it sets glibc's malloc
 * up and execs node, so the process it starts is the node process whose memory is measured); a `.js`
 * entry (an older build's bin/ferry.js) under this node.
 */
export function ferryCommand(ferryBin: string, args: readonly string[]): { file: string; args: string[] } {
  return ferryBin.endsWith('.js') ? { file: process.execPath, args: [ferryBin, ...args] } : { file: ferryBin, args: [...args] };
}

/**
 * The environment Ferry's processes run in: this one, with this node's directory first on PATH, since
 * the launcher runs the first node on PATH (and the memory sampler checks the daemons run this node).
 */
export const ferryEnvironment: NodeJS.ProcessEnv = withThisNodeFirst();

function startDaemon(ferryBin: string, args: string[], logPath: string): Daemon {
  const log = createWriteStream(logPath, { flags: 'a' });
  const command = ferryCommand(ferryBin, args);
  const child = spawn(command.file, command.args, { env: { ...ferryEnvironment, FERRY_DATA_DIR: '/nonexistent-ferry-data' }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  return { process: child, exited: new Promise((resolve) => child.once('exit', () => resolve())) };
}

async function stopDaemon(daemon: Daemon): Promise<void> {
  if (daemon.process.exitCode !== null || daemon.process.signalCode !== null) return;
  daemon.process.kill('SIGTERM');
  const timeout = sleep(20_000).then(() => 'timeout' as const);
  if ((await Promise.race([daemon.exited.then(() => 'exited' as const), timeout])) === 'timeout') {
    daemon.process.kill('SIGKILL');
    await daemon.exited;
  }
}

/** Live measures of the server and agent processes. */
export interface FerryProcessSample {
  serverCpu: number;
  agentCpu: number;
  agentThreads: Record<string, number>;
  serverThreads: Record<string, number>;
  agentIo: Awaited<ReturnType<typeof processIo>>;
  serverIo: Awaited<ReturnType<typeof processIo>>;
}

export class FerryCluster {
  private constructor(
    readonly ferryBin: string,
    readonly root: string,
    readonly url: string,
    readonly adminToken: string,
    private readonly server: Daemon,
    private agent: Daemon | null,
  ) {}

  /** Data directory of the server; its chunk store is `store/` inside. */
  get serverDataDir(): string {
    return path.join(this.root, 'server');
  }

  /** Starts a server on a free port under `root/server`, then an agent for `machines` ({ name: [disk paths] }). */
  static async start(ferryBin: string, root: string, machines: Record<string, string[]>): Promise<FerryCluster> {
    const dataDir = path.join(root, 'server');
    await fs.mkdir(path.join(root, 'logs'), { recursive: true });
    await fs.mkdir(dataDir, { recursive: true });
    await fs.rm(path.join(dataDir, 'server.json'), { force: true });
    const server = startDaemon(ferryBin, ['server', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], path.join(root, 'logs', 'server.log'));
    let url: string | null = null;
    for (let attempt = 0; attempt < 400 && !url && server.process.exitCode === null; attempt++) {
      const text = await fs.readFile(path.join(dataDir, 'server.json'), 'utf8').catch(() => null);
      if (text) url = (JSON.parse(text) as { url: string }).url;
      else await sleep(50);
    }
    if (!url) throw new Error(`ferry server did not start; see ${path.join(root, 'logs', 'server.log')}`);
    const adminToken = (await fs.readFile(path.join(dataDir, 'admin.token'), 'utf8')).trim();
    const cluster = new FerryCluster(ferryBin, root, url, adminToken, server, null);
    const { token } = await cluster.cli<{ token: string }>(['token', 'create', '--role', 'agent', '--name', 'bench-agent']);
    const machineArgs = Object.entries(machines).flatMap(([name, disks]) => ['--machine', `${name}=${disks.join(',')}`]);
    cluster.agent = startDaemon(
      ferryBin,
      ['agent', '--server', url, '--token', token, '--data-dir', path.join(root, 'agent'), '--name', 'bench-agent', ...machineArgs],
      path.join(root, 'logs', 'agent.log'),
    );
    const deadline = Date.now() + 60_000;
    for (;;) {
      const { machines: known } = await cluster.api<{ machines: { name: string }[] }>('/machines');
      if (Object.keys(machines).every((name) => known.some((machine) => machine.name === name))) break;
      if (Date.now() > deadline || cluster.agent.process.exitCode !== null) throw new Error(`the agent did not register; see ${path.join(root, 'logs', 'agent.log')}`);
      await sleep(100);
    }
    return cluster;
  }

  /** Runs `ferry ARGS --json` against this server and returns the parsed output; throws on failure. */
  async cli<T = any>(args: string[]): Promise<T> {
    const command = ferryCommand(this.ferryBin, [...args, '--json']);
    const { stdout } = await run(command.file, command.args, {
      env: { ...ferryEnvironment, FERRY_SERVER: this.url, FERRY_TOKEN: this.adminToken, FERRY_DATA_DIR: '/nonexistent-ferry-data' },
    });
    return JSON.parse(stdout) as T;
  }

  /** GET /api/v1 + `route` with the admin token. */
  async api<T = any>(route: string): Promise<T> {
    const response = await fetch(`${this.url}/api/v1${route}`, { headers: { authorization: `Bearer ${this.adminToken}` } });
    if (!response.ok) throw new Error(`GET ${route}: ${response.status} ${await response.text()}`);
    return (await response.json()) as T;
  }

  get serverPid(): number {
    return this.server.process.pid!;
  }

  get agentPid(): number {
    return this.agent!.process.pid!;
  }

  /** The pids of the server and agent node processes (the launcher execs node: no shell stays in between). */
  get pids(): { server: number; agent: number } {
    return { server: this.serverPid, agent: this.agentPid };
  }

  /** CPU seconds used so far by the server and agent together. */
  async daemonsCpu(): Promise<number> {
    const [server, agent] = await Promise.all([processCpu(this.serverPid), processCpu(this.agentPid)]);
    return server.user + server.system + agent.user + agent.system;
  }

  /** CPU and I/O counters of both daemons, by process and by thread. */
  async sample(): Promise<FerryProcessSample> {
    const [server, agent, agentThreads, serverThreads, agentIo, serverIo] = await Promise.all([
      processCpu(this.serverPid),
      processCpu(this.agentPid),
      threadCpu(this.agentPid),
      threadCpu(this.serverPid),
      processIo(this.agentPid),
      processIo(this.serverPid),
    ]);
    return { serverCpu: server.user + server.system, agentCpu: agent.user + agent.system, agentThreads, serverThreads, agentIo, serverIo };
  }

  /** Stops the agent, then the server (SIGTERM, SIGKILL after 20 s). */
  async stop(): Promise<void> {
    if (this.agent) await stopDaemon(this.agent);
    await stopDaemon(this.server);
  }
}

/** The difference of two samples: what the daemons did in between. */
export function sampleDelta(before: FerryProcessSample, after: FerryProcessSample) {
  const threads = (a: Record<string, number>, b: Record<string, number>) =>
    Object.fromEntries(Object.keys(b).map((name) => [name, round3(b[name]! - (a[name] ?? 0))]).filter(([, value]) => (value as number) > 0));
  return {
    serverCpuSeconds: round3(after.serverCpu - before.serverCpu),
    agentCpuSeconds: round3(after.agentCpu - before.agentCpu),
    agentThreads: threads(before.agentThreads, after.agentThreads),
    serverThreads: threads(before.serverThreads, after.serverThreads),
    agentDiskReadBytes: after.agentIo.readBytes - before.agentIo.readBytes,
    /** Bytes the agent passed to write syscalls: HTTP requests, plus its small state files and logs. */
    agentWrittenBytes: after.agentIo.wchar - before.agentIo.wchar,
    serverDiskWriteBytes: after.serverIo.writeBytes - before.serverIo.writeBytes,
  };
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000;
}
