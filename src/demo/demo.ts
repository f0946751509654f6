/**
 * `ferry demo`: everything on embedded defaults in one command. Builds two sample machines (real ext4
 * images), starts a server (SQLite + directory store in the data directory), an agent for the
 * machines and a workload that keeps writing into them, adds a recovery site and a policy, sets the
 * pause/resume hooks, protects both machines, and prints what to try next. Ctrl-C stops it all; run
 * it again to continue where it stopped.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createWriteStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { ApiClient, withRetry } from '../client/api-client.js';
import { FerryError } from '../errors.js';
import type { MachineView, PolicyView, SiteView, TokenView } from '../protocol/views.js';
import { ensureDirectory, writeFileDurable } from '../util/durable-fs.js';
import { sleep } from '../util/time.js';
import { e2fsTool } from './ext4-image.js';
import { buildSampleMachines } from './sample-machines.js';
import { controlDirectory } from './workload.js';
import { withThisNodeFirst } from '../util/launcher-environment.js';

/** Options of `ferry demo`. */
export interface DemoOptions {
  dataDir: string;
  listen: string;
  /** Seconds between points of the demo policy. */
  intervalSeconds: number;
  /** Path of the `ferry` command (bin/ferry, the launcher: see docs/architecture.md), to start the child processes with. */
  ferryBin: string;
}

/** Runs the demo until SIGINT/SIGTERM. */
export async function runDemo(options: DemoOptions): Promise<void> {
  e2fsTool('mke2fs');
  e2fsTool('debugfs');
  const dataDir = path.resolve(options.dataDir);
  const logs = path.join(dataDir, 'logs');
  const demoDir = path.join(dataDir, 'demo');
  await ensureDirectory(logs);
  await ensureDirectory(demoDir);
  await refuseIfRunning(dataDir);

  say(`building sample machines in ${path.join(demoDir, 'machines')} ...`);
  const machines = await buildSampleMachines(path.join(demoDir, 'machines'));
  const children: ChildProcess[] = [];
  const stopAll = () => {
    for (const child of children) child.kill('SIGTERM');
  };
  process.on('SIGINT', () => {
    say('stopping ...');
    stopAll();
    setTimeout(() => process.exit(0), 1500).unref();
  });
  process.on('SIGTERM', stopAll);

  const childEnvironment = withThisNodeFirst();
  const ferry = (args: string[], logName: string, env: Record<string, string> = {}) => {
    const log = createWriteStream(path.join(logs, `${logName}.log`), { flags: 'a' });
    const child = spawn(options.ferryBin, args, { env: { ...childEnvironment, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    child.on('exit', (code, signal) => {
      if (signal !== 'SIGTERM' && code !== 0) say(`${logName} exited (${signal ?? code}); see ${path.join(logs, `${logName}.log`)}`);
    });
    children.push(child);
    return child;
  };

  ferry(['server', '--data-dir', dataDir, '--listen', options.listen], 'server');
  const url = await waitForServer(dataDir);
  const admin = new ApiClient({ baseUrl: url, token: (await fs.readFile(path.join(dataDir, 'admin.token'), 'utf8')).trim() });
  say(`server up at ${url}`);

  const agentTokenFile = path.join(demoDir, 'agent.token');
  let agentToken = await fs.readFile(agentTokenFile, 'utf8').then((text) => text.trim(), () => '');
  if (!agentToken) {
    agentToken = (await admin.post<TokenView>('/tokens', { role: 'agent', name: 'demo-agent' })).token;
    await writeFileDurable(agentTokenFile, `${agentToken}\n`, 0o600);
  }
  const machineFlags = machines.flatMap((machine) => ['--machine', `${machine.name}=${machine.disks.join(',')}`]);
  ferry(['agent', '--server', url, '--token', agentToken, '--data-dir', path.join(demoDir, 'agent'), '--name', 'demo-agent', ...machineFlags], 'agent');
  ferry(['demo-workload', '--data-dir', dataDir], 'workload');

  const sites = (await admin.get<{ sites: SiteView[] }>('/sites')).sites;
  if (!sites.some((site) => site.name === 'recovery')) {
    await admin.post('/sites', { name: 'recovery', driver: 'files', path: path.join(dataDir, 'recovery-site') });
  }
  const policies = (await admin.get<{ policies: PolicyView[] }>('/policies')).policies;
  if (!policies.some((policy) => policy.name === 'demo')) {
    await admin.post('/policies', { name: 'demo', intervalSeconds: options.intervalSeconds, retentionSeconds: 2 * 3600 });
  }
  for (const machine of machines) {
    const view = await withRetry(() => admin.get<MachineView>(`/machines/${machine.name}`).catch((error: FerryError) => {
      throw error.code === 'not-found' ? new FerryError('not-found', error.message, { retryable: true }) : error;
    }), { deadlineMs: 30_000 });
    const control = controlDirectory(path.join(demoDir, 'workload'), machine.name);
    const hook = (action: string) => `'${options.ferryBin}' demo-hook ${action} --dir '${control}'`;
    await admin.patch(`/machines/${machine.name}`, { prePointCommand: hook('pause'), postPointCommand: hook('resume'), hookTimeoutSeconds: 30 });
    if (view.state === 'unprotected') await admin.post(`/machines/${machine.name}/protect`, { site: 'recovery', policy: 'demo' });
  }

  say('protecting web-01 and db-01; initial replication:');
  let shown = '';
  for (let round = 0; round < 1200; round++) {
    const { machines: views } = await admin.get<{ machines: MachineView[] }>('/machines');
    const line = views.map((view) => `${view.name} ${view.state}${view.replication.percent !== null ? ` ${view.replication.percent}%` : ''}`).join('   ');
    if (line !== shown) {
      process.stdout.write(process.stdout.isTTY ? `\r  ${line}`.padEnd(90) : `  ${line}\n`);
      shown = line;
    }
    if (views.every((view) => view.state === 'protected')) break;
    await sleep(500);
  }
  if (process.stdout.isTTY) process.stdout.write('\n');
  printGuide(dataDir, url);
  await new Promise(() => undefined);
}

function say(line: string): void {
  process.stdout.write(`ferry demo: ${line}\n`);
}

async function refuseIfRunning(dataDir: string): Promise<void> {
  const serverFile = path.join(dataDir, 'server.json');
  const text = await fs.readFile(serverFile, 'utf8').catch(() => null);
  if (!text) return;
  const { pid } = JSON.parse(text) as { pid: number };
  try {
    process.kill(pid, 0);
  } catch {
    await fs.rm(serverFile, { force: true }); // left by a server that was killed
    return;
  }
  throw new FerryError('conflict', `a Ferry server (pid ${pid}) is already running on ${dataDir}; stop it first`);
}

async function waitForServer(dataDir: string): Promise<string> {
  for (let attempt = 0; attempt < 300; attempt++) {
    const text = await fs.readFile(path.join(dataDir, 'server.json'), 'utf8').catch(() => null);
    if (text) return (JSON.parse(text) as { url: string }).url;
    await sleep(100);
  }
  throw new FerryError('server-unreachable', `the server did not start; see ${path.join(dataDir, 'logs', 'server.log')}`);
}

function printGuide(dataDir: string, url: string): void {
  const inside = path.relative(process.cwd(), dataDir);
  const shown = inside && !inside.startsWith('..') ? inside : dataDir;
  const env = path.resolve(shown) === path.resolve('ferry-data') ? '' : `FERRY_DATA_DIR=${shown} `;
  console.log(`
Ferry is running (server ${url}, data in ${shown}/, logs in ${shown}/logs/).
In another terminal, from this directory:

  ${env}npx ferry status                         # state, health, RPO of web-01 and db-01
  ${env}npx ferry points list web-01             # recovery points (a new one every interval)
  ${env}npx ferry points create web-01 --wait    # take one now
  ${env}npx ferry failover web-01 --test --wait  # write the latest point's disk at the recovery site
  debugfs -R 'cat /app/counter.txt' ${shown}/recovery-site/web-01/test-failover/disk0.raw
  e2fsck -fn ${shown}/recovery-site/web-01/test-failover/disk0.raw
  ${env}npx ferry failover cleanup web-01        # remove the test failover
  ${env}npx ferry jobs                           # what ran, and how it went

Ctrl-C stops the demo; running it again continues where it stopped.`);
}
