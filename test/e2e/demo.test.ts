/**
 * `ferry demo`, the README's first command: it builds the sample machines, starts a server, an agent
 * and a workload, and protects both machines; its daemons run through the launcher (bin/ferry) even
 * when the demo itself was started as `node bin/ferry.js`; SIGTERM stops all of them.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { defer, ferry, ferryBin, freePort, tempDir, waitFor } from './harness.js';

/** True while a process with this pid exists. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('ferry demo protects its two sample machines, with tuned daemons, and SIGTERM stops everything', async (t) => {
  const dataDir = path.join(await tempDir(t), 'demo data');
  const port = await freePort();
  // Started the way that skips the launcher's tuning, so the daemons can only have it from the launcher.
  const environment = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('MALLOC_')));
  const demo = spawn(process.execPath, [ferryBin, 'demo', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--interval', '1m'], { env: environment, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  demo.stdout!.on('data', (data: Buffer) => (output += data.toString('utf8')));
  demo.stderr!.on('data', (data: Buffer) => (output += data.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => demo.once('exit', (code) => resolve(code)));
  defer(t, async () => {
    if (demo.exitCode === null && demo.signalCode === null) demo.kill('SIGKILL');
    const serverPid = await fs.readFile(path.join(dataDir, 'server.json'), 'utf8').then((text) => (JSON.parse(text) as { pid: number }).pid).catch(() => null);
    if (serverPid && alive(serverPid)) process.kill(serverPid, 'SIGKILL');
  });

  await waitFor(async () => output.includes('Ferry is running') || demo.exitCode !== null, 'the demo to finish its initial replication', 180_000);
  assert.match(output, /Ferry is running/, output);
  const { pid: serverPid } = JSON.parse(await fs.readFile(path.join(dataDir, 'server.json'), 'utf8')) as { pid: number };
  const serverEnvironment = await fs.readFile(`/proc/${serverPid}/environ`, 'utf8');
  assert.ok(serverEnvironment.split('\0').includes('MALLOC_ARENA_MAX=2'), 'the server runs through the launcher');
  assert.match(path.basename(await fs.readlink(`/proc/${serverPid}/exe`)), /^node/);

  const status = await ferry(null, ['status', '--json'], { FERRY_DATA_DIR: dataDir });
  assert.equal(status.code, 0, status.stderr);
  const machines = (status.json().machines as { name: string; state: string }[]).map((machine) => [machine.name, machine.state]).sort();
  assert.deepEqual(machines, [['db-01', 'protected'], ['web-01', 'protected']]);

  demo.kill('SIGTERM');
  assert.equal(await exited, 0);
  await waitFor(async () => !alive(serverPid), 'the demo server to stop');
});
