import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { FerryCore } from '../../src/orchestration/core.js';
import type { Principal } from '../../src/orchestration/tokens.js';
import type { RegisterAgentRequest } from '../../src/protocol/requests.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { ferryError, makeTempDir } from './helpers.js';

/**
 * A FerryCore over a fresh data directory, never started (no scheduler or job runner), stopped and
 * removed when `t` ends: stop first, so SQLite is closed before its files go.
 */
async function coreFor(t: TestContext): Promise<{ core: FerryCore; dataDir: string }> {
  const parent = await makeTempDir('ferry-core-');
  const dataDir = path.join(parent, 'data'); // not yet there: FerryCore.create must make it
  const core = await FerryCore.create({ dataDir, log: pino({ level: 'silent' }) });
  t.after(async () => {
    await core.stop();
    await fs.rm(parent, { recursive: true, force: true });
  });
  return { core, dataDir };
}

/** An agent token's principal, as the server sees it after authenticating the bearer secret. */
async function agentPrincipal(core: FerryCore): Promise<Principal> {
  const token = await core.tokens.create('agent');
  return core.tokens.authenticate(token.token);
}

const webRegistration: RegisterAgentRequest = {
  agentName: 'agent-1',
  machines: [
    {
      name: 'web-01',
      disks: [
        { path: '/var/lib/vm/web-01-root.raw', sizeBytes: 8 << 20, error: null },
        { path: '/var/lib/vm/web-01-data.raw', sizeBytes: 4 << 20, error: null },
      ],
    },
    { name: 'db-01', disks: [{ path: '/dev/vdb', sizeBytes: null, error: 'ENOENT' }] },
  ],
};

/** A core with web-01 and db-01 registered by one agent and a site called 'dr'. */
async function registeredCore(t: TestContext): Promise<{ core: FerryCore; dataDir: string; agentId: string }> {
  const { core, dataDir } = await coreFor(t);
  const { agentId } = await core.machines.registerAgent(await agentPrincipal(core), webRegistration);
  await core.sites.create({ name: 'dr', driver: 'files', path: path.join(dataDir, 'site-dr') });
  return { core, dataDir, agentId };
}

describe('FerryCore bootstrap', () => {
  test('create writes admin.token with mode 0600 holding a working admin token', async (t) => {
    const { core, dataDir } = await coreFor(t);
    assert.equal(core.adminTokenFile, path.join(dataDir, 'admin.token'));
    const stat = await fs.stat(core.adminTokenFile);
    assert.equal(stat.mode & 0o777, 0o600);
    const secret = (await fs.readFile(core.adminTokenFile, 'utf8')).trim();
    assert.match(secret, /^ferry_admin_/);
    assert.equal((await core.tokens.authenticate(secret)).role, 'admin');
    assert.equal(((await fs.stat(dataDir)).mode & 0o777), 0o700);
  });

  test("create makes the 'default' policy: every 5 minutes, kept 24 hours", async (t) => {
    const { core } = await coreFor(t);
    const policies = await core.policies.list();
    assert.deepEqual(
      policies.map(({ name, intervalSeconds, retentionSeconds, rpoThresholdSeconds }) => ({ name, intervalSeconds, retentionSeconds, rpoThresholdSeconds })),
      [{ name: 'default', intervalSeconds: 300, retentionSeconds: 86400, rpoThresholdSeconds: 600 }],
    );
  });

  test('opening the same data directory again keeps the admin token and the single default policy', async (t) => {
    const dataDir = await makeTempDir('ferry-core-');
    t.after(() => fs.rm(dataDir, { recursive: true, force: true }));
    const log = pino({ level: 'silent' });
    const first = await FerryCore.create({ dataDir, log });
    const secret = (await fs.readFile(first.adminTokenFile, 'utf8')).trim();
    await first.stop();
    const second = await FerryCore.create({ dataDir, log });
    try {
      assert.equal((await fs.readFile(second.adminTokenFile, 'utf8')).trim(), secret);
      assert.equal((await second.tokens.authenticate(secret)).role, 'admin');
      assert.equal((await second.policies.list()).length, 1);
    } finally {
      await second.stop();
    }
  });
});

describe('FerryCore tokens', () => {
  test('authenticate refuses unknown, empty and missing tokens with unauthorized', async (t) => {
    const { core } = await coreFor(t);
    await assert.rejects(core.tokens.authenticate('ferry_admin_not-a-real-token'), ferryError('unauthorized', ['not recognised']));
    await assert.rejects(core.tokens.authenticate(''), ferryError('unauthorized', ['missing token']));
    await assert.rejects(core.tokens.authenticate(undefined), ferryError('unauthorized', ['missing token']));
  });

  test('a created token authenticates with its role and id; only the secret holder gets in', async (t) => {
    const { core } = await coreFor(t);
    const agent = await core.tokens.create('agent', 'rack-7');
    assert.match(agent.token, /^ferry_agent_/);
    assert.equal(agent.name, 'rack-7');
    assert.deepEqual(await core.tokens.authenticate(agent.token), { tokenId: agent.id, role: 'agent' });
    await assert.rejects(core.tokens.authenticate(`${agent.token}x`), ferryError('unauthorized'));
  });
});

describe('FerryCore sites and policies', () => {
  test('sites.create makes the site directory and refuses a duplicate name with conflict', async (t) => {
    const { core, dataDir } = await coreFor(t);
    const sitePath = path.join(dataDir, 'sites', 'dr');
    const site = await core.sites.create({ name: 'dr', driver: 'files', path: sitePath });
    assert.equal(site.name, 'dr');
    assert.ok((await fs.stat(sitePath)).isDirectory());
    await assert.rejects(core.sites.create({ name: 'dr', driver: 'files', path: path.join(dataDir, 'elsewhere') }), ferryError('conflict', ["site 'dr'"]));
    assert.deepEqual((await core.sites.list()).map((each) => each.path), [sitePath]);
  });

  test('sites.create refuses a path that cannot be a directory', async (t) => {
    const { core, dataDir } = await coreFor(t);
    const file = path.join(dataDir, 'a-file');
    await fs.writeFile(file, 'x');
    await assert.rejects(core.sites.create({ name: 'bad', driver: 'files', path: path.join(file, 'site') }), ferryError('invalid-request'));
    assert.deepEqual(await core.sites.list(), []);
  });

  test('sites.update changes the directory and the disk format of later failovers; bad values change nothing', async (t) => {
    const { core, dataDir } = await coreFor(t);
    await core.sites.create({ name: 'dr', driver: 'files', path: path.join(dataDir, 'sites', 'dr') });
    const moved = path.join(dataDir, 'sites', 'dr-2');
    const updated = await core.sites.update('dr', { path: moved, diskFormat: 'vhd:fixed' });
    assert.deepEqual([updated.path, updated.diskFormat], [moved, 'vhd:fixed']);
    assert.ok((await fs.stat(moved)).isDirectory(), 'the new directory is made');
    await assert.rejects(core.sites.update('dr', { diskFormat: 'vmdk:monolithicFlat' }), ferryError('invalid-request', ['streamOptimized']));
    const file = path.join(dataDir, 'a-file');
    await fs.writeFile(file, 'x');
    await assert.rejects(core.sites.update('dr', { path: path.join(file, 'site') }), ferryError('invalid-request', ['cannot be used']));
    await assert.rejects(core.sites.update('nope', { diskFormat: 'raw' }), ferryError('not-found'));
    const [site] = await core.sites.list();
    assert.deepEqual([site!.path, site!.diskFormat], [moved, 'vhd:fixed'], 'refused changes leave the site as it was');
  });

  test('policies.create refuses a retention shorter than the interval', async (t) => {
    const { core } = await coreFor(t);
    await assert.rejects(core.policies.create({ name: 'odd', intervalSeconds: 3600, retentionSeconds: 600 }), ferryError('invalid-request', ['retention', 'interval']));
    await assert.rejects(core.policies.get('odd'), ferryError('not-found'));
  });

  test('policies.create accepts retention equal to the interval, defaults the RPO threshold and refuses duplicates', async (t) => {
    const { core } = await coreFor(t);
    const hourly = await core.policies.create({ name: 'hourly', intervalSeconds: 3600, retentionSeconds: 3600 });
    assert.equal(hourly.rpoThresholdSeconds, 7200);
    assert.equal((await core.policies.create({ name: 'fast', intervalSeconds: 10, retentionSeconds: 60 })).rpoThresholdSeconds, 60);
    assert.equal((await core.policies.create({ name: 'custom', intervalSeconds: 60, retentionSeconds: 600, rpoThresholdSeconds: 90 })).rpoThresholdSeconds, 90);
    await assert.rejects(core.policies.create({ name: 'hourly', intervalSeconds: 60, retentionSeconds: 600 }), ferryError('conflict'));
  });
});

describe('FerryCore machines', () => {
  test('registerAgent records the machines with their disks, unprotected', async (t) => {
    const { core } = await coreFor(t);
    const response = await core.machines.registerAgent(await agentPrincipal(core), webRegistration);
    assert.deepEqual(
      response.machines.map((machine) => ({ name: machine.name, disks: machine.disks.map(({ position, path: diskPath }) => ({ position, path: diskPath })) })),
      [
        { name: 'web-01', disks: [{ position: 0, path: '/var/lib/vm/web-01-root.raw' }, { position: 1, path: '/var/lib/vm/web-01-data.raw' }] },
        { name: 'db-01', disks: [{ position: 0, path: '/dev/vdb' }] },
      ],
    );
    const web = await core.machines.view('web-01');
    assert.equal(web.state, 'unprotected');
    assert.equal(web.agent.name, 'agent-1');
    assert.equal(web.agent.online, true);
    assert.deepEqual(web.disks.map((disk) => disk.sizeBytes), [8 << 20, 4 << 20]);
    assert.deepEqual((await core.machines.view('db-01')).disks.map((disk) => disk.error), ['ENOENT']);
  });

  test('registering again is idempotent: same agent, machine and disk ids, nothing duplicated', async (t) => {
    const { core } = await coreFor(t);
    const principal = await agentPrincipal(core);
    const first = await core.machines.registerAgent(principal, webRegistration);
    const second = await core.machines.registerAgent(principal, webRegistration);
    assert.deepEqual(second, first);
    assert.deepEqual((await core.machines.list()).map((machine) => machine.name), ['db-01', 'web-01']);
    assert.equal((await core.machines.disksOf(first.machines[0]!.id)).length, 2);
  });

  test('registering again updates a resized or re-pathed disk in place', async (t) => {
    const { core } = await coreFor(t);
    const principal = await agentPrincipal(core);
    const first = await core.machines.registerAgent(principal, webRegistration);
    const resized: RegisterAgentRequest = {
      agentName: 'agent-1',
      machines: [{ name: 'web-01', disks: [{ path: '/new/root.raw', sizeBytes: 16 << 20, error: null }, webRegistration.machines[0]!.disks[1]!] }],
    };
    const second = await core.machines.registerAgent(principal, resized);
    assert.equal(second.machines[0]!.disks[0]!.id, first.machines[0]!.disks[0]!.id);
    const [root] = (await core.machines.view('web-01')).disks;
    assert.deepEqual({ path: root!.path, sizeBytes: root!.sizeBytes }, { path: '/new/root.raw', sizeBytes: 16 << 20 });
  });

  test('a machine served by one agent is refused to another, and nothing of the attempt is kept', async (t) => {
    const { core } = await coreFor(t);
    await core.machines.registerAgent(await agentPrincipal(core), webRegistration);
    const intruder = await agentPrincipal(core);
    await assert.rejects(
      core.machines.registerAgent(intruder, { agentName: 'agent-2', machines: [webRegistration.machines[0]!] }),
      ferryError('conflict', ["machine 'web-01'", 'another agent']),
    );
    await assert.rejects(core.machines.agentOf(intruder), ferryError('forbidden'));
  });

  test('an agent name registered with one token is refused to another token (no takeover)', async (t) => {
    const { core } = await coreFor(t);
    const owner = await agentPrincipal(core);
    await core.machines.registerAgent(owner, webRegistration);
    const impostor = await agentPrincipal(core);
    await assert.rejects(core.machines.registerAgent(impostor, { ...webRegistration }), ferryError('conflict', ["agent 'agent-1'", 'another token']));
    assert.equal((await core.machines.agentOf(owner)).name, 'agent-1', 'the owner keeps its agent');
  });

  test('a token that registered one agent cannot register a second name', async (t) => {
    const { core } = await coreFor(t);
    const principal = await agentPrincipal(core);
    await core.machines.registerAgent(principal, webRegistration);
    await assert.rejects(
      core.machines.registerAgent(principal, { agentName: 'agent-9', machines: [] }),
      ferryError('conflict', ["already belongs to agent 'agent-1'"]),
    );
  });

  test('the number of disks may change while unprotected; while protected the change is refused on that machine only', async (t) => {
    const { core, dataDir } = await coreFor(t);
    const principal = await agentPrincipal(core);
    await core.machines.registerAgent(principal, webRegistration);
    const oneDisk = { ...webRegistration, machines: [{ name: 'web-01', disks: [webRegistration.machines[0]!.disks[0]!] }] };
    await core.machines.registerAgent(principal, oneDisk);
    assert.equal((await core.machines.view('web-01')).disks.length, 1, 'the extra disk is gone');
    await core.sites.create({ name: 'dr', driver: 'files', path: path.join(dataDir, 'site') });
    await core.replication.protect('web-01', { site: 'dr', policy: 'default' });
    const response = await core.machines.registerAgent(principal, webRegistration);
    assert.equal(response.machines.find((machine) => machine.name === 'web-01')!.disks.length, 1, 'the protected disk set is kept');
    assert.equal(response.machines.find((machine) => machine.name === 'db-01')!.disks.length, 1, 'the agent\'s other machines are registered');
    const web = await core.machines.view('web-01');
    assert.equal(web.disks.length, 1);
    assert.equal(web.health.level, 'critical');
    assert.match(web.replication.error!.message, /reports 2 disk\(s\) but 'web-01' is protecting with 1/);
  });

  test('machines.get of an unknown machine is not-found naming it', async (t) => {
    const { core } = await coreFor(t);
    await assert.rejects(core.machines.get('ghost'), ferryError('not-found', ["machine 'ghost'"]));
  });
});

describe('FerryCore protection and points', () => {
  test("protect moves 'unprotected' to 'protecting' and queues an initial-replication job for the agent", async (t) => {
    const { core, agentId } = await registeredCore(t);
    const { machine, job } = await core.replication.protect('web-01', { site: 'dr', policy: 'default' });
    assert.equal(machine.state, 'protecting');
    assert.equal(machine.site, 'dr');
    assert.equal(machine.policy, 'default');
    assert.equal(machine.replication.state, 'initial-replication');
    assert.equal(job.kind, 'initial-replication');
    assert.equal(job.state, 'queued');
    assert.equal(job.machine, 'web-01');
    const pending = await core.jobs.pendingForAgent(agentId);
    assert.deepEqual(pending.map((row) => row.id), [job.id]);
    assert.equal((await core.machines.view('db-01')).state, 'unprotected');
  });

  test('protecting twice is refused with conflict and queues no second job', async (t) => {
    const { core, agentId } = await registeredCore(t);
    await core.replication.protect('web-01', { site: 'dr', policy: 'default' });
    await assert.rejects(core.replication.protect('web-01', { site: 'dr', policy: 'default' }), ferryError('conflict', ["machine 'web-01' is protecting"]));
    assert.equal((await core.jobs.pendingForAgent(agentId)).length, 1);
  });

  test('protect with an unknown site or policy is not-found and leaves the machine unprotected', async (t) => {
    const { core, agentId } = await registeredCore(t);
    await assert.rejects(core.replication.protect('web-01', { site: 'nowhere', policy: 'default' }), ferryError('not-found', ["site 'nowhere'"]));
    await assert.rejects(core.replication.protect('web-01', { site: 'dr', policy: 'never' }), ferryError('not-found', ["policy 'never'"]));
    assert.equal((await core.machines.get('web-01')).state, 'unprotected');
    assert.deepEqual(await core.jobs.pendingForAgent(agentId), []);
  });

  test('points.request on an unprotected machine is refused with conflict and queues nothing', async (t) => {
    const { core, agentId } = await registeredCore(t);
    await assert.rejects(core.points.request('web-01'), ferryError('conflict', ["machine 'web-01' is unprotected", 'ferry protect web-01']));
    await assert.rejects(core.points.request('ghost'), ferryError('not-found'));
    assert.deepEqual(await core.jobs.pendingForAgent(agentId), []);
  });

  test('points.request while a replication job is active returns that job instead of a second one', async (t) => {
    const { core, agentId } = await registeredCore(t);
    const { job } = await core.replication.protect('web-01', { site: 'dr', policy: 'default' });
    assert.equal((await core.points.request('web-01')).id, job.id);
    assert.equal((await core.jobs.pendingForAgent(agentId)).length, 1);
  });

  // Two requests racing (a user and the scheduler, or two users) must not make the agent read the disks twice.
  test('concurrent protect requests succeed once and queue one job', async (t) => {
    const { core, agentId } = await registeredCore(t);
    const results = await Promise.allSettled([
      core.replication.protect('web-01', { site: 'dr', policy: 'default' }),
      core.replication.protect('web-01', { site: 'dr', policy: 'default' }),
    ]);
    assert.deepEqual(results.map((result) => result.status).sort(), ['fulfilled', 'rejected']);
    assert.equal((await core.jobs.pendingForAgent(agentId)).length, 1);
  });

  test('concurrent point requests with no active job queue one job', async (t) => {
    const { core, agentId } = await registeredCore(t);
    const { job } = await core.replication.protect('web-01', { site: 'dr', policy: 'default' });
    await core.replication.start(agentId, job.id);
    await core.replication.fail(agentId, job.id, { code: 'disk-unreadable', message: 'disk gone', retryable: true });
    const [first, second] = await Promise.all([core.points.request('web-01'), core.points.request('web-01')]);
    assert.equal(first.id, second.id);
    assert.equal((await core.jobs.pendingForAgent(agentId)).length, 1);
  });
});

/** Commits the running job of web-01 as an agent would, with all-zero disks (their indexes name no chunk). */
async function commitJob(core: FerryCore, agentId: string, jobId: string) {
  const disks = await core.machines.disksOf((await core.machines.get('web-01')).id);
  const committed = [];
  for (const disk of disks) {
    const indexHash = await core.context.store.putIndex(DiskIndex.empty(disk.size_bytes!, 65536));
    committed.push({ diskId: disk.id, indexHash, changedBytes: 0, sentBytes: 0 });
  }
  return core.points.commit(agentId, { jobId, takenAt: Date.now(), consistency: 'inconsistent', note: null, disks: committed });
}

describe('FerryCore resync', () => {
  const resync = { resync: { reason: 'disk 0: the agent has no record of the last point' } };

  test('a resync reported for an initial replication is ignored: nothing to resync without a point', async (t) => {
    const { core, agentId } = await registeredCore(t);
    const { job } = await core.replication.protect('web-01', { site: 'dr', policy: 'default' });
    const started = await core.replication.start(agentId, job.id, resync);
    assert.equal(started.resyncReason, null);
    assert.equal((await core.machines.view('web-01')).replication.state, 'initial-replication');
    assert.deepEqual((await core.events.list({ limit: 50 })).filter((event) => event.code === 'resync-started'), []);
  });

  test('a point job the agent starts as a resync shows resyncing with percent, ETA and reason; one warning event; ends idle', async (t) => {
    const { core, agentId } = await registeredCore(t);
    const { job: initial } = await core.replication.protect('web-01', { site: 'dr', policy: 'default' });
    await core.replication.start(agentId, initial.id, resync);
    await commitJob(core, agentId, initial.id);

    const job = await core.points.request('web-01');
    assert.equal((await core.machines.view('web-01')).replication.state, 'replicating', 'queued: not known to be a resync yet');
    const started = await core.replication.start(agentId, job.id, resync);
    assert.equal(started.state, 'running');
    assert.equal(started.resyncReason, resync.resync.reason);
    let clock = Date.now();
    core.context.now = () => clock;
    clock += 10_000;
    await core.replication.progress(agentId, job.id, { doneBytes: 3 << 20, totalBytes: 12 << 20, step: 'reading disk 0' });
    const view = await core.machines.view('web-01');
    assert.equal(view.replication.state, 'resyncing');
    assert.equal(view.replication.jobId, job.id);
    assert.equal(view.replication.resyncReason, resync.resync.reason);
    assert.equal(view.replication.percent, 25);
    assert.ok(view.replication.etaSeconds !== null && view.replication.etaSeconds >= 29, `ETA ${view.replication.etaSeconds}s: 3 of 12 MiB in about 10 s`);
    assert.equal(view.health.level, 'healthy', 'a resync is not a fault');

    // The agent restarted and resumed the same cycle: still one event.
    await core.replication.start(agentId, job.id, resync);
    const events = (await core.events.list({ limit: 50, alertsOnly: true })).filter((event) => event.code === 'resync-started');
    assert.equal(events.length, 1);
    assert.equal(events[0]!.severity, 'warning');
    assert.match(events[0]!.message, /web-01: resynchronising .*no record of the last point/);

    await commitJob(core, agentId, job.id);
    const after = await core.machines.view('web-01');
    assert.equal(after.replication.state, 'idle');
    assert.equal(after.replication.resyncReason, null);
    assert.equal((await core.jobs.view(job.id)).resyncReason, resync.resync.reason, 'the job keeps its reason');
    assert.match((await core.events.list({ limit: 1 }))[0]!.message, /committed after a resync/);
  });

  test('a point job started without a resync report is replicating, and an empty start body is accepted', async (t) => {
    const { core, agentId } = await registeredCore(t);
    const { job: initial } = await core.replication.protect('web-01', { site: 'dr', policy: 'default' });
    await core.replication.start(agentId, initial.id);
    await commitJob(core, agentId, initial.id);
    const job = await core.points.request('web-01');
    assert.equal((await core.replication.start(agentId, job.id, {})).resyncReason, null);
    assert.equal((await core.machines.view('web-01')).replication.state, 'replicating');
  });
});

describe('FerryCore job cancel', () => {
  test('a running replication job cancelled makes no point: the agent commit is refused, its failure report ignored', async (t) => {
    const { core, agentId } = await registeredCore(t);
    const { job: initial } = await core.replication.protect('web-01', { site: 'dr', policy: 'default' });
    await core.replication.start(agentId, initial.id);
    await commitJob(core, agentId, initial.id);
    const job = await core.points.request('web-01');
    await core.replication.start(agentId, job.id);

    const cancelled = await core.jobs.cancel(job.id);
    assert.equal(cancelled.state, 'cancelled');
    assert.equal(cancelled.error?.code, 'cancelled');
    await assert.rejects(commitJob(core, agentId, job.id), ferryError('conflict', ['cancelled']));
    assert.equal((await core.replication.fail(agentId, job.id, { code: 'conflict', message: 'commit refused', retryable: false })).state, 'cancelled');
    assert.equal((await core.points.list('web-01', 10)).length, 1, 'still only the initial point');
    const event = (await core.events.list({ limit: 5 })).find((each) => each.code === 'job-cancelled');
    assert.ok(event && event.message.includes(job.id) && event.message.includes('web-01'), JSON.stringify(event));
    const next = await core.points.request('web-01');
    assert.notEqual(next.id, job.id, 'the next point gets a new job');
  });

  test('a queued job of any kind can be cancelled; an ended job, or a running server job, cannot', async (t) => {
    const { core } = await registeredCore(t);
    const { job } = await core.replication.protect('web-01', { site: 'dr', policy: 'default' });
    assert.equal((await core.jobs.cancel(job.id)).state, 'cancelled');
    await assert.rejects(core.jobs.cancel(job.id), ferryError('conflict', ['cancelled', 'cannot cancel']));
    const serverJob = await core.jobs.create({ kind: 'test-failover', machineId: null, agentId: null });
    await core.jobs.transition(serverJob.id, 'start');
    await assert.rejects(core.jobs.cancel(serverJob.id), ferryError('conflict', ['running on the server', 'wait for it to end']));
    await assert.rejects(core.jobs.cancel('job-nope'), ferryError('not-found'));
  });
});
