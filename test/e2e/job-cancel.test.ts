/**
 * Jobs from the CLI with a real agent:
 * - `ferry job cancel`: a cycle held open by its pre-point hook is cancelled; the agent's commit is
 *   refused, no point is made, the event is recorded, and the next cycle makes a good point.
 * - `ferry jobs --watch`: follows a running job until nothing is active, then exits by itself.
 * - `GET /jobs/ID?waitSeconds=N`, the long poll `--wait` uses: answered when the job ends.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import type { EventView, JobView, PointView } from '../../src/protocol/views.js';
import { connectAgent, ext4Disk, ferry, ferryJson, restoresIdentical, startServer, tempDir, waitFor, waitForJob } from './harness.js';


/**
 * A protected machine whose next cycle is running and held open by its pre-point hook until the test
 * creates `gate`.
 */
async function heldCycle(t: TestContext) {
  const root = await tempDir(t);
  const disk = await ext4Disk(root, 'app', 16, { 'data.bin': randomBytes(1024 * 1024) });
  const server = await startServer(t, path.join(root, 'server'));
  await connectAgent(t, server, root, { app: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  await ferryJson(server, ['protect', 'app', '--site', 'dr', '--wait']);
  const gate = path.join(root, 'gate');
  await ferryJson(server, ['machine', 'set', 'app', '--pre-point', `while [ ! -e '${gate}' ]; do sleep 0.1; done`]);
  const { job } = await ferryJson<{ job: JobView }>(server, ['points', 'create', 'app', '--consistency', 'app']);
  await waitFor(async () => (await server.admin.get<JobView>(`/jobs/${job.id}`)).state === 'running', 'the agent to start the cycle');
  return { server, disk, gate, job };
}

test('a running cycle cancelled by ferry job cancel makes no point; the next cycle does', async (t) => {
  const { server, disk, gate, job } = await heldCycle(t);

  const cancelled = await ferryJson<JobView>(server, ['job', 'cancel', job.id]);
  assert.equal(cancelled.state, 'cancelled');
  await fs.writeFile(gate, ''); // let the agent go on: its commit must be refused
  const again = await ferry(server, ['job', 'cancel', job.id, '--json']);
  assert.notEqual(again.code, 0, 'an ended job cannot be cancelled');
  assert.equal(again.json().error.code, 'conflict');

  // The agent finishes reading, is refused, and reports; the job stays cancelled with no point.
  await waitFor(async () => {
    const events = (await ferryJson<{ events: EventView[] }>(server, ['events'])).events;
    return events.some((event) => event.code === 'job-cancelled' && event.message.includes(job.id));
  }, 'the job-cancelled event');
  await new Promise((resolve) => setTimeout(resolve, 1500));
  assert.equal((await server.admin.get<JobView>(`/jobs/${job.id}`)).state, 'cancelled');
  const points = (await ferryJson<{ points: PointView[] }>(server, ['points', 'list', 'app'])).points;
  assert.equal(points.length, 1, 'no point from the cancelled cycle');

  const next = await ferryJson<{ job: JobView }>(server, ['points', 'create', 'app', '--wait']);
  assert.equal(next.job.state, 'succeeded', JSON.stringify(next.job.error));
  const finished = await waitForJob(server.admin, next.job.id);
  assert.ok(await restoresIdentical(server, 'app', finished.result!.pointId as string, [disk]), 'the next point restores identical');
});

test('ferry jobs --watch follows a running job and exits once nothing is active', async (t) => {
  const { server, gate, job } = await heldCycle(t);

  const watching = ferry(server, ['jobs', '--watch', '--interval', '1s', '--json']);
  await new Promise((resolve) => setTimeout(resolve, 2500));
  await fs.writeFile(gate, '');
  const watched = await watching;
  assert.equal(watched.code, 0, watched.stderr);
  const refreshes = watched.stdout.trim().split('\n').map((line) => JSON.parse(line) as { jobs: JobView[] });
  assert.ok(refreshes.length >= 2, `refreshed while the job ran: ${refreshes.length}`);
  assert.equal(refreshes[0]!.jobs.find((each) => each.id === job.id)?.state, 'running');
  assert.equal(refreshes.at(-1)!.jobs.find((each) => each.id === job.id)?.state, 'succeeded', 'the last refresh shows it ended');

  const human = await ferry(server, ['jobs', '--watch']);
  assert.equal(human.code, 0);
  assert.match(human.stdout, /\[#{24}\] 100\.0%/, 'progress bars');
});

test('GET /jobs/ID?waitSeconds=N answers when the job ends, or after N seconds', async (t) => {
  const { server, gate, job } = await heldCycle(t);

  let askedAt = Date.now();
  const stillRunning = await server.admin.get<JobView>(`/jobs/${job.id}`, { waitSeconds: 1 });
  assert.equal(stillRunning.state, 'running');
  assert.ok(Date.now() - askedAt >= 900, `a job that does not end is answered after the wait, not at once (${Date.now() - askedAt} ms)`);

  askedAt = Date.now();
  const waiting = server.admin.get<JobView>(`/jobs/${job.id}`, { waitSeconds: 60 }, 90_000);
  await new Promise((resolve) => setTimeout(resolve, 500));
  await fs.writeFile(gate, '');
  const ended = await waiting;
  const answeredAt = Date.now();
  assert.equal(ended.state, 'succeeded', JSON.stringify(ended.error));
  assert.ok(answeredAt - askedAt >= 500, 'it waited for the job');
  assert.ok(answeredAt - Date.parse(ended.endedAt!) < 1000, `answered ${answeredAt - Date.parse(ended.endedAt!)} ms after the job ended`);

  await assert.rejects(server.admin.get(`/jobs/${job.id}`, { waitSeconds: 61 }), (error: { code: string }) => error.code === 'invalid-request');
  await assert.rejects(server.admin.get('/jobs/no-such-job', { waitSeconds: 5 }), (error: { code: string }) => error.code === 'not-found');
});
