/**
 * Bad input gets a clear error and loses nothing: wrong or missing tokens, unknown names, malformed
 * bodies, chunks that do not match their names, indexes naming missing chunks, disks that do not
 * exist or vanish. After each, the server is up and every stored point still restores byte-identical.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { ApiClient } from '../../src/client/api-client.js';
import { encodeChunkBatch, FrameEncoding } from '../../src/protocol/chunk-batch.js';
import { compressChunk } from '../../src/store/chunk-object.js';
import { hashChunk } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { writeFilesInImage } from '../../src/demo/ext4-image.js';
import { connectAgent, ext4Disk, ferry, ferryJson, sameBytes, startServer, tempDir, type TestServer, waitFor, restoresIdentical } from './harness.js';

async function raw(server: TestServer, method: string, route: string, options: { token?: string | null; body?: string | Buffer; type?: string } = {}) {
  const headers: Record<string, string> = {};
  const token = options.token === undefined ? server.adminToken : options.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers['content-type'] = options.type ?? 'application/json';
  const response = await fetch(`${server.url}/api/v1${route}`, { method, headers, body: options.body });
  return { status: response.status, body: (await response.json().catch(() => null)) as { error?: { code: string; message: string } } | null };
}

/** A zstd frame of `data` (it compresses: the test data is repetitive). */
function zstdFrameOf(data: Buffer): Buffer {
  const frame = compressChunk(data, 1);
  assert.ok(frame, 'the test data compresses');
  return frame;
}

test('bad requests are refused with clear errors, and stored points stay intact', async (t) => {
  const root = await tempDir(t);
  const server = await startServer(t, path.join(root, 'server'));
  const disk = await ext4Disk(root, 'web', 16, { 'index.html': '<h1>hi</h1>\n', 'blob.bin': Buffer.alloc(200_000, 3) });
  const { token: agentToken } = await connectAgent(t, server, root, { web: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  await ferryJson(server, ['protect', 'web', '--site', 'dr', '--wait']);
  const snapshot = path.join(root, 'web-point1.img');
  await fs.copyFile(disk, snapshot);
  const [point] = (await ferryJson(server, ['points', 'list', 'web'])).points;

  await t.test('missing or wrong token: 401; agent token on an admin route: 403', async () => {
    const missing = await raw(server, 'GET', '/machines', { token: null });
    assert.equal(missing.status, 401);
    assert.equal(missing.body?.error?.code, 'unauthorized');
    assert.match(missing.body!.error!.message, /missing token/);
    const wrong = await raw(server, 'GET', '/machines', { token: 'ferry_admin_not-a-real-token' });
    assert.equal(wrong.status, 401);
    assert.match(wrong.body!.error!.message, /not recognised/);
    const malformed = await raw(server, 'GET', '/machines', { token: null, body: undefined });
    assert.equal(malformed.status, 401);
    const forbidden = await raw(server, 'GET', '/machines', { token: agentToken });
    assert.equal(forbidden.status, 403);
    assert.equal(forbidden.body?.error?.code, 'forbidden');
    const health = await raw(server, 'GET', '/health', { token: null });
    assert.equal(health.status, 200, 'health needs no token');
    const unknownRoute = await raw(server, 'GET', '/no-such-route', { token: agentToken });
    assert.equal(unknownRoute.status, 404, 'an unknown route is a 404 whoever asks');
    assert.equal((await raw(server, 'GET', '/no-such-route', { token: null })).status, 404);

    const cli = await ferry(server, ['status'], { FERRY_TOKEN: 'ferry_admin_wrong' });
    assert.equal(cli.code, 4);
    assert.equal(cli.stderr.trim().split('\n').length, 1, 'one-line reason');
    assert.match(cli.stderr, /^ferry: token not recognised/);
  });

  await t.test('unknown machine, site, policy or point: 404 naming it', async () => {
    const machine = await raw(server, 'GET', '/machines/no-such-vm');
    assert.equal(machine.status, 404);
    assert.equal(machine.body?.error?.message, "machine 'no-such-vm' not found");
    const site = await raw(server, 'POST', '/machines/web/protect', { body: JSON.stringify({ site: 'atlantis' }) });
    assert.equal(site.status, 404, 'checked before the state');
    assert.match(site.body!.error!.message, /site 'atlantis' not found/);
    const cli = await ferry(server, ['status', 'no-such-vm', '--json']);
    assert.equal(cli.code, 3);
    assert.equal(cli.json().error.code, 'not-found');
    assert.match(cli.stderr, /machine 'no-such-vm' not found/);
    const badPoint = await ferry(server, ['failover', 'web', '--test', '--point', 'pt-nonexistent']);
    assert.equal(badPoint.code, 3);
    assert.match(badPoint.stderr, /pt-nonexistent/);
    const protectUnknown = await ferry(server, ['protect', 'ghost-machine', '--site', 'dr']);
    assert.equal(protectUnknown.code, 3);
    assert.match(protectUnknown.stderr, /machine 'ghost-machine' not found/);
  });

  await t.test('malformed bodies: 400 saying which field', async () => {
    const noPath = await raw(server, 'POST', '/sites', { body: JSON.stringify({ name: 'x' }) });
    assert.equal(noPath.status, 400);
    assert.equal(noPath.body?.error?.code, 'invalid-request');
    assert.match(noPath.body!.error!.message, /field 'path'/);
    const wrongType = await raw(server, 'POST', '/policies', { body: JSON.stringify({ name: 'p', intervalSeconds: '5m', retentionSeconds: 3600 }) });
    assert.equal(wrongType.status, 400);
    assert.match(wrongType.body!.error!.message, /field 'intervalSeconds'/);
    const notJson = await raw(server, 'POST', '/sites', { body: '{"name": ' });
    assert.equal(notJson.status, 400);
    assert.equal(notJson.body?.error?.code, 'invalid-request');
    const badName = await raw(server, 'POST', '/sites', { body: JSON.stringify({ name: '../etc', path: '/tmp/x' }) });
    assert.equal(badName.status, 400);
    assert.match(badName.body!.error!.message, /field 'name'/);
    const extra = await raw(server, 'PATCH', '/machines/web', { body: JSON.stringify({ prePointComand: 'typo' }) });
    assert.equal(extra.status, 400, 'unknown settings are refused, not ignored');
    const cli = await ferry(server, ['policy', 'add', 'p', '--interval', 'soon', '--retention', '1h']);
    assert.equal(cli.code, 2);
    assert.match(cli.stderr, /--interval 'soon' is not a duration/);
  });

  await t.test('a chunk whose bytes do not hash to its name is rejected and nothing is stored', async () => {
    const agent = new ApiClient({ baseUrl: server.url, token: agentToken });
    const good = Buffer.alloc(65536, 9);
    const evil = Buffer.alloc(65536, 10);
    const claimed = hashChunk(good);
    const raw = (hash: Buffer, data: Buffer) => ({ hash, payload: data, encoding: FrameEncoding.Raw });
    const goodNeighbour = Buffer.alloc(65536, 11);
    await assert.rejects(
      agent.postBinary('/chunks', encodeChunkBatch([raw(hashChunk(goodNeighbour), goodNeighbour), raw(claimed, evil)])),
      (error: { code: string; message: string }) => error.code === 'chunk-hash-mismatch' && error.message.includes(claimed.toString('hex')),
    );
    // A compressed frame is checked by what it inflates to, not trusted.
    await assert.rejects(
      agent.postBinary('/chunks', encodeChunkBatch([{ hash: claimed, payload: zstdFrameOf(evil), encoding: FrameEncoding.Zstd }])),
      (error: { code: string }) => error.code === 'chunk-hash-mismatch',
    );
    await assert.rejects(
      agent.postBinary('/chunks', encodeChunkBatch([{ hash: claimed, payload: Buffer.from('not a zstd frame'), encoding: FrameEncoding.Zstd }])),
      (error: { code: string; message: string }) => error.code === 'invalid-request' && error.message.includes(claimed.toString('hex')),
    );
    const stillMissing = await agent.post<{ missing: string[] }>('/chunks/missing', { hashes: [claimed.toString('hex'), hashChunk(goodNeighbour).toString('hex')] });
    assert.equal(stillMissing.missing.length, 2, 'neither the bad chunk nor the good one in the same batch was stored');
    const truncated = Buffer.concat(encodeChunkBatch([raw(claimed, good)])).subarray(0, 1000);
    await assert.rejects(agent.postBinary('/chunks', truncated), (error: { code: string }) => error.code === 'invalid-request');
    await assert.rejects(agent.postBinary('/chunks', good), (error: { code: string; message: string }) => error.code === 'invalid-request' && /not a chunk batch/.test(error.message));

    // An index naming a chunk the store does not hold is refused.
    const index = DiskIndex.empty(65536 * 2, 65536);
    index.setHash(1, hashChunk(Buffer.alloc(65536, 12)));
    await assert.rejects(agent.postBinary('/indexes', index.encode()), (error: { code: string }) => error.code === 'chunk-missing');
    const corrupt = index.encode();
    corrupt[30] = corrupt[30]! ^ 0xff;
    await assert.rejects(agent.postBinary('/indexes', corrupt), (error: { code: string; message: string }) => error.code === 'invalid-request' && /checksum/.test(error.message));
  });

  await t.test('after all of it, the stored point restores byte-identical', async () => {
    assert.ok(await restoresIdentical(server, 'web', point.id, [snapshot]), `point ${point.id} of web still restores byte-identical`);
  });
});

test('a disk that does not exist or vanishes: the machine shows the error, the server stays up', async (t) => {
  const root = await tempDir(t);
  const server = await startServer(t, path.join(root, 'server'));
  const disk = await ext4Disk(root, 'app', 16, { 'a.txt': 'one\n' });
  const missing = path.join(root, 'not-there.img');
  await connectAgent(t, server, root, { app: [disk], ghost: [missing] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);

  const ghost = await ferryJson(server, ['status', 'ghost']);
  assert.match(ghost.disks[0].error, /not-there\.img cannot be read \(ENOENT\)/);
  const protect = await ferry(server, ['protect', 'ghost', '--site', 'dr', '--wait', '--json']);
  assert.notEqual(protect.code, 0);
  assert.equal(protect.json().error.code, 'disk-unreadable');
  assert.match(protect.stderr, /not-there\.img/);
  const ghostAfter = await ferryJson(server, ['status', 'ghost']);
  assert.equal(ghostAfter.replication.state, 'error');
  assert.equal(ghostAfter.health.level, 'critical');
  assert.ok(ghostAfter.health.reasons.some((reason: string) => reason.includes('not-there.img')));
  const events = (await ferryJson(server, ['events', '--machine', 'ghost'])).events;
  assert.ok(events.some((event: { code: string }) => event.code === 'disk-unreadable'));

  // A protected machine whose disk vanishes: the point fails, earlier points stay, and it recovers.
  await ferryJson(server, ['protect', 'app', '--site', 'dr', '--wait']);
  const snapshot = path.join(root, 'app-point1.img');
  await fs.copyFile(disk, snapshot);
  const [point1] = (await ferryJson(server, ['points', 'list', 'app'])).points;
  const moved = path.join(root, 'moved-away.img');
  await fs.rename(disk, moved);
  const failed = await ferry(server, ['points', 'create', 'app', '--wait']);
  assert.notEqual(failed.code, 0);
  assert.match(failed.stderr, /cannot be read/);
  assert.equal((await ferryJson(server, ['status', 'app'])).health.level, 'critical');
  assert.equal((await raw(server, 'GET', '/health', { token: null })).status, 200, 'the server stays up');
  assert.ok(await restoresIdentical(server, 'app', point1.id, [snapshot]), `point ${point1.id} of app still restores byte-identical`);

  await fs.rename(moved, disk);
  await writeFilesInImage(disk, [{ fsPath: '/a.txt', data: 'two\n' }]);
  const recovered = await ferryJson(server, ['points', 'create', 'app', '--wait']);
  assert.equal(recovered.job.state, 'succeeded');
  const healthy = await ferryJson(server, ['status', 'app']);
  assert.equal(healthy.replication.state, 'idle');
  assert.equal(healthy.health.level, 'healthy', healthy.health.reasons.join('; '));
  assert.ok(await restoresIdentical(server, 'app', recovered.point.id, [disk]), `point ${recovered.point.id} of app still restores byte-identical`);
  assert.ok(await restoresIdentical(server, 'app', point1.id, [snapshot]), `point ${point1.id} of app still restores byte-identical`);
  await waitFor(async () => (await server.admin.get<{ jobs: unknown[] }>('/jobs', { active: 'true' })).jobs.length === 0, 'no jobs left running');
});

test('a store that lost chunks is healed by the next cycle; the agent does not trust its memory blindly', async (t) => {
  const root = await tempDir(t);
  const server = await startServer(t, path.join(root, 'server'));
  const disk = await ext4Disk(root, 'vm', 16, { 'a.bin': randomBytes(1024 * 1024), 'b.txt': 'b\n' });
  await connectAgent(t, server, root, { vm: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  await ferryJson(server, ['protect', 'vm', '--site', 'dr', '--wait']);

  // Lose every stored chunk, as a store restored from an old backup would.
  const packs = path.join(server.dataDir, 'store', 'packs');
  await fs.rm(packs, { recursive: true });
  await fs.mkdir(packs);
  const failed = await ferry(server, ['points', 'create', 'vm', '--wait', '--json']);
  assert.notEqual(failed.code, 0, 'the agent skipped unchanged chunks the store no longer has, and the index is refused');
  assert.equal(failed.json().error.code, 'chunk-missing');
  assert.match(failed.stderr, /the next cycle sends them again/);

  const healed = await ferryJson(server, ['points', 'create', 'vm', '--wait']);
  assert.ok(healed.point.disks[0].sentBytes > 1024 * 1024, 'the missing data was sent again');
  const restored = await ferryJson(server, ['failover', 'vm', '--test', '--point', healed.point.id, '--wait']);
  assert.ok(await sameBytes(restored.disks[0].path, disk));
});
