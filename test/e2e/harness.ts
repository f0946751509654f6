/**
 * Test harness for whole-system tests: real `ferry` processes of the built CLI (so `npm test` builds
 * first), daemons through bin/ferry (the launcher an operator runs), CLI commands as
 * `node bin/ferry.js`; real HTTP on 127.0.0.1, real ext4 images in a temporary directory that is
 * removed afterwards. Every process a test starts is killed when the
 * test ends, whatever happened.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { TestContext } from 'node:test';
import { ApiClient } from '../../src/client/api-client.js';
import type { JobView } from '../../src/protocol/views.js';
import { makeExt4Image } from '../../src/demo/ext4-image.js';
import { withThisNodeFirst } from '../../src/util/launcher-environment.js';

const run = promisify(execFile);

/** Absolute path of bin/ferry.js. */
export const ferryBin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'ferry.js');
/** The `ferry` command as installed (a shell launcher that sets malloc up and execs node on ferry.js): daemons run through it. */
export const ferryLauncher = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'ferry');

const cleanupStacks = new WeakMap<TestContext, (() => Promise<unknown> | unknown)[]>();

/**
 * Runs `cleanup` when the test ends. Cleanups run last-registered first (kill the processes, then
 * unmount, then remove the directory), and one that fails does not stop the others: node:test's own
 * `t.after` runs hooks in registration order and stops at the first failure.
 */
export function defer(t: TestContext, cleanup: () => Promise<unknown> | unknown): void {
  let stack = cleanupStacks.get(t);
  if (!stack) {
    const created: (() => Promise<unknown> | unknown)[] = [];
    stack = created;
    cleanupStacks.set(t, created);
    t.after(async () => {
      const failures: unknown[] = [];
      for (const step of created.reverse()) {
        try {
          await step();
        } catch (error) {
          failures.push(error);
        }
      }
      if (failures.length) throw new AggregateError(failures, `${failures.length} cleanup step(s) failed`);
    });
  }
  stack.push(cleanup);
}

/** A temporary directory removed when the test ends (after everything registered later is cleaned up). */
export async function tempDir(t: TestContext, prefix = 'ferry-e2e-'): Promise<string> {
  const directory = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  defer(t, () => fs.rm(directory, { recursive: true, force: true }));
  return directory;
}

/** A TCP port free right now on 127.0.0.1 (for servers that must come back on the same address). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** A child process of the test, with its log file. */
export interface Daemon {
  process: ChildProcess;
  log: string;
  /** Sends `signal` and waits for the process to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** The launcher runs the first node on PATH: make that the node running the tests. */
const launcherEnvironment = withThisNodeFirst();

function startDaemon(t: TestContext, args: string[], logPath: string, env: Record<string, string> = {}): Daemon {
  const log = createWriteStream(logPath, { flags: 'a' });
  // Through the launcher, as an operator runs them; it execs node, so the child's pid is the daemon's.
  const child = spawn(ferryLauncher, args, { env: { ...launcherEnvironment, FERRY_LOG_LEVEL: 'info', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const daemon: Daemon = {
    process: child,
    log: logPath,
    async kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
  defer(t, () => daemon.kill('SIGKILL'));
  return daemon;
}

/** A running server started by the harness. */
export interface TestServer extends Daemon {
  url: string;
  dataDir: string;
  adminToken: string;
  admin: ApiClient;
}

/**
 * Starts `ferry server` on `dataDir` (port 0 unless given) and waits until it answers. `extraArgs` are
 * appended to the command line (e.g. store key flags) and `env` added to its environment.
 */
export async function startServer(t: TestContext, dataDir: string, options: { port?: number; extraArgs?: string[]; env?: Record<string, string> } = {}): Promise<TestServer> {
  await fs.mkdir(dataDir, { recursive: true });
  await fs.rm(path.join(dataDir, 'server.json'), { force: true });
  const daemon = startDaemon(
    t,
    ['server', '--data-dir', dataDir, '--listen', `127.0.0.1:${options.port ?? 0}`, ...(options.extraArgs ?? [])],
    path.join(dataDir, '..', `server-${path.basename(dataDir)}.log`),
    options.env,
  );
  let url: string | null = null;
  for (let attempt = 0; attempt < 200 && !url; attempt++) {
    const text = await fs.readFile(path.join(dataDir, 'server.json'), 'utf8').catch(() => null);
    if (text) url = (JSON.parse(text) as { url: string }).url;
    else await sleep(50);
    if (daemon.process.exitCode !== null) break;
  }
  if (!url) throw new Error(`server did not start; log: ${await fs.readFile(daemon.log, 'utf8').catch(() => '')}`);
  const adminToken = (await fs.readFile(path.join(dataDir, 'admin.token'), 'utf8')).trim();
  return { ...daemon, url, dataDir, adminToken, admin: new ApiClient({ baseUrl: url, token: adminToken }) };
}

/** Starts `ferry agent` for `machines` ({ name: [disk paths] }). */
export function startAgent(
  t: TestContext,
  options: { url: string; token: string; dataDir: string; machines: Record<string, string[]>; name?: string; extraArgs?: string[] },
): Daemon {
  const machineArgs = Object.entries(options.machines).flatMap(([name, disks]) => ['--machine', `${name}=${disks.join(',')}`]);
  return startDaemon(
    t,
    ['agent', '--server', options.url, '--token', options.token, '--data-dir', options.dataDir, '--name', options.name ?? 'test-agent', ...machineArgs, ...(options.extraArgs ?? [])],
    `${options.dataDir}.log`,
  );
}

/** Result of one CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON (for --json runs). */
  json<T = any>(): T;
}

/** Runs `ferry ARGS` against `server` (FERRY_SERVER/FERRY_TOKEN set unless overridden). */
export async function ferry(server: { url: string; adminToken: string } | null, args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const childEnv = {
    ...process.env,
    FERRY_DATA_DIR: '/nonexistent-ferry-data', // never pick up a developer's ./ferry-data
    ...(server ? { FERRY_SERVER: server.url, FERRY_TOKEN: server.adminToken } : {}),
    ...env,
  };
  try {
    const { stdout, stderr } = await run(process.execPath, [ferryBin, ...args], { env: childEnv, maxBuffer: 16 * 1024 * 1024 });
    return result(0, stdout, stderr);
  } catch (error) {
    const failure = error as { code?: number; stdout?: string; stderr?: string };
    return result(typeof failure.code === 'number' ? failure.code : 1, failure.stdout ?? '', failure.stderr ?? '');
  }
}

function result(code: number, stdout: string, stderr: string): CliResult {
  return {
    code,
    stdout,
    stderr,
    json() {
      try {
        return JSON.parse(stdout);
      } catch {
        throw new Error(`not JSON (exit ${code}): ${stdout}\nstderr: ${stderr}`);
      }
    },
  };
}

/** Runs `ferry ARGS --json`, asserting exit 0, and returns the parsed document. */
export async function ferryJson<T = any>(server: { url: string; adminToken: string }, args: string[]): Promise<T> {
  const outcome = await ferry(server, [...args, '--json']);
  if (outcome.code !== 0) throw new Error(`ferry ${args.join(' ')} exited ${outcome.code}: ${outcome.stderr}`);
  return outcome.json<T>();
}

/** Creates an agent token, starts an agent for `machines`, and waits until the server knows them all. */
export async function connectAgent(
  t: TestContext,
  server: TestServer,
  root: string,
  machines: Record<string, string[]>,
  extraArgs: string[] = [],
): Promise<{ agent: Daemon; token: string; agentDir: string }> {
  const { token } = await server.admin.post<{ token: string }>('/tokens', { role: 'agent' });
  const agentDir = path.join(root, 'agent');
  const agent = startAgent(t, { url: server.url, token, dataDir: agentDir, machines, extraArgs });
  await waitFor(async () => {
    const { machines: known } = await server.admin.get<{ machines: { name: string }[] }>('/machines');
    return Object.keys(machines).every((name) => known.some((machine) => machine.name === name));
  }, 'agent registration');
  return { agent, token, agentDir };
}

/** Builds an ext4 image of `sizeMiB` holding `files` (path -> content). */
export async function ext4Disk(root: string, name: string, sizeMiB: number, files: Record<string, string | Buffer>): Promise<string> {
  const tree = path.join(root, `${name}.tree`);
  for (const [relative, content] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(tree, relative)), { recursive: true });
    await fs.writeFile(path.join(tree, relative), content);
  }
  const image = path.join(root, `${name}.img`);
  await makeExt4Image(image, sizeMiB * 1024 * 1024, tree);
  await fs.rm(tree, { recursive: true, force: true });
  return image;
}

/** Polls `condition` every 100 ms until it is true, failing after `timeoutMs`. */
export async function waitFor(condition: () => Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition().catch(() => false)) return;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Waits until a job ends and returns it, asking with the server's long poll (`?waitSeconds=`). */
export async function waitForJob(admin: ApiClient, jobId: string, timeoutMs = 120_000): Promise<JobView> {
  let job = await admin.get<JobView>(`/jobs/${jobId}`);
  const deadline = Date.now() + timeoutMs;
  while (job.state === 'queued' || job.state === 'running') {
    const remainingSeconds = (deadline - Date.now()) / 1000;
    if (remainingSeconds <= 0) throw new Error(`job ${jobId} still ${job.state}`);
    const askedAt = Date.now();
    job = await admin.get<JobView>(`/jobs/${jobId}`, { waitSeconds: Math.min(20, remainingSeconds) }, 30_000);
    const active = job.state === 'queued' || job.state === 'running';
    if (active && Date.now() - askedAt < 100) await sleep(100); // a server stopping answers at once
  }
  return job;
}

/** True when two files have the same bytes. */
export async function sameBytes(a: string, b: string): Promise<boolean> {
  try {
    await run('cmp', ['-s', a, b]);
    return true;
  } catch {
    return false;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Test-fails-over `machine` to `pointId`, compares each recovered disk with the file expected at its
 * position, cleans the test failover up, and returns whether every disk was byte-identical.
 */
export async function restoresIdentical(server: { url: string; adminToken: string }, machine: string, pointId: string, expected: string[]): Promise<boolean> {
  const failover = await ferryJson(server, ['failover', machine, '--test', '--point', pointId, '--wait']);
  let same = failover.disks.length === expected.length;
  for (const [position, file] of expected.entries()) same = same && (await sameBytes(failover.disks[position].path, file));
  await ferryJson(server, ['failover', 'cleanup', machine]);
  return same;
}
