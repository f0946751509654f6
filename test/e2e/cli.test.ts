/**
 * The CLI's promises: every read command prints one JSON document with --json; exit 0 on success and
 * a mapped non-zero code with a one-line reason otherwise; --server/--token beat FERRY_SERVER/FERRY_TOKEN,
 * which beat the local data directory's server.json/admin.token.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, readFile, readlink, symlink } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { connectAgent, ext4Disk, ferry, ferryJson, ferryLauncher, freePort, startServer, tempDir } from './harness.js';

test('read commands print one JSON document; errors map to exit codes with one line', async (t) => {
  const root = await tempDir(t);
  const server = await startServer(t, path.join(root, 'server'));
  const disk = await ext4Disk(root, 'vm', 8, { 'f.txt': 'f\n' });
  await connectAgent(t, server, root, { vm: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  await ferryJson(server, ['policy', 'add', 'fast', '--interval', '30s', '--retention', '1h']);

  const reads: [string[], string][] = [
    [['status'], 'machines'],
    [['machine', 'list'], 'machines'],
    [['site', 'list'], 'sites'],
    [['policy', 'list'], 'policies'],
    [['jobs'], 'jobs'],
    [['events'], 'events'],
    [['points', 'list', 'vm'], 'points'],
  ];
  for (const [args, key] of reads) {
    const outcome = await ferry(server, [...args, '--json']);
    assert.equal(outcome.code, 0, `${args.join(' ')}: ${outcome.stderr}`);
    assert.ok(Array.isArray(outcome.json()[key]), `${args.join(' ')} --json has ${key}[]`);
  }
  const policies = (await ferryJson(server, ['policy', 'list'])).policies;
  assert.deepEqual(
    policies.map((policy: { name: string; intervalSeconds: number; retentionSeconds: number; rpoThresholdSeconds: number }) => [policy.name, policy.intervalSeconds, policy.retentionSeconds, policy.rpoThresholdSeconds]),
    [['default', 300, 86400, 600], ['fast', 30, 3600, 60]],
  );
  const thin = await ferryJson(server, ['policy', 'add', 'thin', '--interval', '5m', '--retention', '30d', '--keep-all', '2h', '--hourly-for', '3d', '--app-retention', '90d']);
  assert.deepEqual([thin.keepAllSeconds, thin.hourlySeconds, thin.appRetentionSeconds], [7200, 3 * 86400, 90 * 86400]);
  const defaults = policies.find((policy: { name: string }) => policy.name === 'fast');
  assert.deepEqual([defaults.keepAllSeconds, defaults.hourlySeconds, defaults.appRetentionSeconds], [3600, 3600, 0], 'thinning defaults are capped by the retention');
  const human = await ferry(server, ['status']);
  assert.equal(human.code, 0);
  assert.match(human.stdout, /^MACHINE\s+STATE\s+HEALTH/);
  assert.match(human.stdout, /vm\s+unprotected/);

  const usage = await ferry(server, ['failover', 'vm']);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /choose one of --test, --planned, --unplanned or --change-point/);
  const unknownCommand = await ferry(server, ['frobnicate']);
  assert.equal(unknownCommand.code, 2);
  const refused = await ferry(server, ['points', 'create', 'vm', '--json']);
  assert.equal(refused.code, 4, 'an unprotected machine cannot take points');
  assert.equal(refused.json().error.code, 'conflict');
  assert.match(refused.stderr, /unprotected; run `ferry protect vm --site SITE` first/);
  const noTest = await ferry(server, ['failover', 'vm', '--test']);
  assert.equal(noTest.code, 4);
  assert.match(noTest.stderr, /is unprotected; test failover needs a protected machine/);
  const help = await ferry(null, ['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /failover/);
  const version = await ferry(null, ['--version']);
  assert.equal(version.code, 0);
  assert.equal(version.stdout.trim(), JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')).version);
});

test('server and token come from flags, then environment, then the local data directory', async (t) => {
  const root = await tempDir(t);
  const dataDir = path.join(root, 'server');
  const server = await startServer(t, dataDir);

  const fromDataDir = await ferry(null, ['site', 'list', '--json'], { FERRY_DATA_DIR: dataDir });
  assert.equal(fromDataDir.code, 0, fromDataDir.stderr);

  const unusedPort = await freePort();
  const unreachable = await ferry(server, ['status'], { FERRY_SERVER: `http://127.0.0.1:${unusedPort}` });
  assert.equal(unreachable.code, 5);
  assert.match(unreachable.stderr, /^ferry: cannot reach Ferry server at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)\n$/);

  const flagWins = await ferry(server, ['--server', server.url, 'status'], { FERRY_SERVER: `http://127.0.0.1:${unusedPort}` });
  assert.equal(flagWins.code, 0, flagWins.stderr);
  const tokenFlagWins = await ferry(server, ['status', '--token', 'ferry_admin_bogus']);
  assert.equal(tokenFlagWins.code, 4);
  const noToken = await ferry(server, ['status'], { FERRY_TOKEN: '' });
  assert.equal(noToken.code, 4);
  assert.match(noToken.stderr, /missing token/);

  const agentToken = await ferryJson(server, ['token', 'create', '--role', 'agent', '--name', 'edge']);
  assert.match(agentToken.token, /^ferry_agent_/);
  assert.equal(agentToken.name, 'edge');
  const agentOnAdmin = await ferry(server, ['status'], { FERRY_TOKEN: agentToken.token });
  assert.equal(agentOnAdmin.code, 4);
  assert.match(agentOnAdmin.stderr, /agent token may not call GET/);
});

test('the ferry launcher execs node on the CLI with glibc malloc tuned for a daemon, keeping what the caller set', async (t) => {
  const root = await tempDir(t);
  const environOf = async (pid: number) => new Map((await readFile(`/proc/${pid}/environ`, 'utf8')).split('\0').filter(Boolean).map((entry) => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)]));

  // The harness starts daemons through bin/ferry: the child it spawned is node itself (exec, no shell left).
  const server = await startServer(t, path.join(root, 'tuned'));
  assert.match(path.basename(await readlink(`/proc/${server.process.pid}/exe`)), /^node/);
  const tuned = await environOf(server.process.pid!);
  assert.equal(tuned.get('MALLOC_MMAP_THRESHOLD_'), process.env.MALLOC_MMAP_THRESHOLD_ ?? '131072');
  assert.equal(tuned.get('MALLOC_ARENA_MAX'), process.env.MALLOC_ARENA_MAX ?? '2');
  const chosen = await startServer(t, path.join(root, 'chosen'), { env: { MALLOC_ARENA_MAX: '4', MALLOC_MMAP_THRESHOLD_: '65536' } });
  const kept = await environOf(chosen.process.pid!);
  assert.deepEqual([kept.get('MALLOC_ARENA_MAX'), kept.get('MALLOC_MMAP_THRESHOLD_')], ['4', '65536']);

  // Run through a relative symlink in a directory with a space in its name, as npm links it into
  // node_modules/.bin: arguments and exit codes pass through.
  const binDirectory = path.join(root, 'node modules', '.bin');
  await mkdir(binDirectory, { recursive: true });
  const linked = path.join(binDirectory, 'ferry');
  await symlink(path.relative(binDirectory, ferryLauncher), linked);
  const version = await promisify(execFile)(linked, ['--version']);
  assert.equal(version.stdout.trim(), JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')).version);
  await assert.rejects(promisify(execFile)(linked, ['frobnicate']), (error: { code?: number }) => error.code === 2);
});
