/**
 * Store maintenance on the whole system: garbage collection with no grace period, run again and again
 * while a replication cycle of a large random disk is under way, deletes only garbage and never breaks
 * a point (the new one and the earlier one restore byte-identical); `ferry store stats` shows dedupe
 * across two identical disks; `ferry store verify` finds a flipped byte (deep) and a missing chunk,
 * exits non-zero and names exactly the points they affect.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { ApiClient } from '../../src/client/api-client.js';
import { encodeChunkBatch, FrameEncoding } from '../../src/protocol/chunk-batch.js';
import type { JobView } from '../../src/protocol/views.js';
import { connectAgent, ferry, ferryJson, sleep, startServer, tempDir, type TestServer, waitFor, waitForJob, restoresIdentical } from './harness.js';
import { storedChunkEntries } from './store-files.js';

const MiB = 1024 * 1024;
const CHUNK = 64 * 1024; // the server's default chunk size
const DISK_BYTES = 96 * MiB;
const TWIN_BYTES = 8 * MiB;
/** Unreferenced chunks planted in the store: garbage the collections must delete. */
const GARBAGE_CHUNKS = 40;
/** New data written at the start of the disk after point 1, stored (old, unreferenced) before point 2's cycle. */
const EARLY_BYTES = 2 * MiB;

/** Random data in 8 MiB pieces, every fourth piece left zero. */
async function randomDisk(file: string, bytes: number): Promise<void> {
  const handle = await fs.open(file, 'w');
  await handle.truncate(bytes);
  for (let offset = 0; offset < bytes; offset += 8 * MiB) {
    if ((offset / (8 * MiB)) % 4 !== 3) await handle.write(randomBytes(8 * MiB), 0, 8 * MiB, offset);
  }
  await handle.close();
}

/** Overwrites `count` random blocks of `blockBytes` (aligned to their size) from `start` on. */
async function scribble(file: string, count: number, start: number, blockBytes: number): Promise<void> {
  const handle = await fs.open(file, 'r+');
  for (let n = 0; n < count; n++) {
    const block = Math.floor(start / blockBytes + Math.random() * ((DISK_BYTES - start) / blockBytes));
    await handle.write(randomBytes(blockBytes), 0, blockBytes, block * blockBytes);
  }
  await handle.close();
}

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

/** The SHA-256 of every non-zero 64 KiB chunk of an image. */
async function chunkHashes(file: string): Promise<Set<string>> {
  const data = await fs.readFile(file);
  const hashes = new Set<string>();
  for (let offset = 0; offset < data.length; offset += CHUNK) {
    const chunk = data.subarray(offset, offset + CHUNK);
    if (chunk.some((byte) => byte !== 0)) hashes.add(sha256(chunk));
  }
  return hashes;
}

/** Sends chunks to the store the way an agent does, so they are stored exactly as real uploads are. */
async function plantChunks(server: TestServer, agentToken: string, chunks: Buffer[]): Promise<void> {
  const agent = new ApiClient({ baseUrl: server.url, token: agentToken });
  const frames = chunks.map((data) => ({ hash: createHash('sha256').update(data).digest(), payload: data, encoding: FrameEncoding.Raw }));
  await agent.postBinary('/chunks', encodeChunkBatch(frames));
}

test('gc during replication keeps every point intact; stats show dedupe; verify names the points a damaged chunk affects', async (t) => {
  const root = await tempDir(t);
  const disk = path.join(root, 'vm.raw');
  await randomDisk(disk, DISK_BYTES);
  const twinA = path.join(root, 'twin-a.raw');
  const twinB = path.join(root, 'twin-b.raw');
  await randomDisk(twinA, TWIN_BYTES);
  await fs.copyFile(twinA, twinB); // two identical disks: stored once
  const server = await startServer(t, path.join(root, 'server'));
  // Throttled, so point 2's cycle lasts long enough for several collections whatever the machine's speed.
  const { token } = await connectAgent(t, server, root, { vm: [disk], twin: [twinA, twinB] }, ['--max-rate', '8M']);
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);

  // Point 1 of vm, and twin's one point.
  const vmProtect = await ferryJson(server, ['protect', 'vm', '--site', 'dr', '--wait']);
  const point1 = vmProtect.job.result.pointId as string;
  const snapshot1 = path.join(root, 'vm-point1.raw');
  await fs.copyFile(disk, snapshot1);
  const twinPoint = (await ferryJson(server, ['protect', 'twin', '--site', 'dr', '--wait'])).job.result.pointId as string;

  // Garbage: chunks nothing references. And the data the disk will hold at its start for point 2,
  // already in the store, unreferenced and older than point 2's job: the cycle is told it is present.
  const garbage = Array.from({ length: GARBAGE_CHUNKS }, () => randomBytes(CHUNK));
  const early = randomBytes(EARLY_BYTES);
  const earlyChunks = Array.from({ length: EARLY_BYTES / CHUNK }, (_, n) => early.subarray(n * CHUNK, (n + 1) * CHUNK));
  await plantChunks(server, token, [...garbage, ...earlyChunks]);
  const handle = await fs.open(disk, 'r+');
  await handle.write(early, 0, early.length, 0);
  await handle.close();
  // Whole chunks rewritten (sent whole: what keeps the throttled cycle long) and scattered 4 KiB blocks
  // (sent as deltas, so collections also run while the server reads their bases from point 1's chunks).
  await scribble(disk, 2000, EARLY_BYTES, CHUNK);
  await scribble(disk, 1000, EARLY_BYTES, 4096);
  const snapshot2 = path.join(root, 'vm-point2.raw');
  await fs.copyFile(disk, snapshot2);
  await sleep(6000); // past the collector's timestamp slack (5 s), so the planted chunks count as old

  // Point 2, with a collection (no grace period at all) started again and again while it runs.
  const { job } = await ferryJson(server, ['points', 'create', 'vm']);
  await waitFor(async () => {
    const current = await server.admin.get<JobView>(`/jobs/${job.id}`);
    if (current.state !== 'running' && current.state !== 'queued') throw new Error(`job ended before any collection: ${current.state}`);
    return current.progress.doneBytes > DISK_BYTES * 0.1;
  }, 'replication to be under way', 120_000);
  const collections: { heldBackByJob: string | null; deleted: { chunks: number; indexes: number } }[] = [];
  for (let round = 0; round < 500; round++) {
    const state = (await server.admin.get<JobView>(`/jobs/${job.id}`)).state;
    if (state !== 'running' && state !== 'queued') break;
    collections.push(await ferryJson(server, ['store', 'gc', '--grace', '0s']));
  }
  const finished = await waitForJob(server.admin, job.id);
  assert.equal(finished.state, 'succeeded', `the cycle must survive the collections: ${JSON.stringify(finished.error)}`);
  const point2 = finished.result!.pointId as string;
  const during = collections.filter((collection) => collection.heldBackByJob === job.id);
  assert.ok(during.length >= 2, `collections ran while the job was active (${during.length} of ${collections.length})`);
  t.diagnostic(`${during.length} collections while point 2's job was active, ${collections.length} in all`);
  collections.push(await ferryJson(server, ['store', 'gc', '--grace', '0s']));
  const deletedChunks = collections.reduce((total, collection) => total + collection.deleted.chunks, 0);
  assert.equal(deletedChunks, GARBAGE_CHUNKS, 'exactly the planted garbage was deleted');
  assert.equal(collections.reduce((total, collection) => total + collection.deleted.indexes, 0), 0);

  // The chunks the cycle was told were present were not sent again, and were kept.
  const [newest] = (await ferryJson(server, ['points', 'list', 'vm'])).points;
  assert.equal(newest.id, point2);
  assert.ok(newest.disks[0].sentBytes <= newest.disks[0].changedBytes - EARLY_BYTES, `the early data was found in the store, not sent (${JSON.stringify(newest.disks[0])})`);
  assert.ok(await restoresIdentical(server, 'vm', point2, [snapshot2]), 'point 2 restores byte-identical');
  assert.ok(await restoresIdentical(server, 'vm', point1, [snapshot1]), 'point 1 restores byte-identical');
  assert.ok(await restoresIdentical(server, 'twin', twinPoint, [twinA, twinA]), "twin's point restores byte-identical");

  // Stats: three points; twin's identical disks (and what point 2 shares with point 1) are stored once.
  const stats = await ferryJson(server, ['store', 'stats']);
  assert.equal(stats.points, 3);
  assert.equal(stats.machines, 2);
  assert.equal(stats.logicalBytes, 2 * DISK_BYTES + 2 * TWIN_BYTES);
  assert.equal(stats.unreferenced.chunks, 0, 'nothing left for the collector');
  assert.ok(stats.dedupeRatio > 1, `dedupe ratio ${stats.dedupeRatio}`);
  assert.ok(stats.logicalDataBytes - stats.uniqueChunkBytes >= TWIN_BYTES, 'the second twin disk adds no unique data');
  // Random data does not compress; the mostly-zero chunks the scribbling made do.
  assert.ok(stats.compressionRatio > 0.9, `compression ratio ${stats.compressionRatio}`);
  assert.equal((await ferry(server, ['store', 'verify', '--deep'])).code, 0, 'the store verifies clean before it is damaged');

  // Damage: flip a byte in a chunk only point 1 has; delete a pack holding a chunk only twin's point has
  // (twin's cycle wrote its own packs: all it holds is twin's, and every chunk of it goes missing).
  const inPoint1 = await chunkHashes(snapshot1);
  const inPoint2 = await chunkHashes(snapshot2);
  const inTwin = await chunkHashes(twinA);
  const entries = await storedChunkEntries(server.dataDir);
  const toFlip = entries.find(({ hash }) => inPoint1.has(hash) && !inPoint2.has(hash) && !inTwin.has(hash));
  const toRemove = entries.find(({ hash }) => inTwin.has(hash) && !inPoint1.has(hash) && !inPoint2.has(hash));
  assert.ok(toFlip && toRemove, 'found a chunk of point 1 only and one of twin only');
  const flipped = toFlip.hash;
  const bytes = await fs.readFile(toFlip.packFile);
  bytes[toFlip.offset + toFlip.length - 1]! ^= 0x01;
  await fs.writeFile(toFlip.packFile, bytes);
  const removedChunks = entries.filter((entry) => entry.packFile === toRemove.packFile).map((entry) => entry.hash).sort();
  assert.ok(removedChunks.every((hash) => inTwin.has(hash) && !inPoint1.has(hash) && !inPoint2.has(hash)), "the removed pack holds only twin's chunks");
  await fs.rm(toRemove.packFile);
  const missingProblems = removedChunks.map((hash) => ['missing-chunk', hash, [{ machine: 'twin', pointId: twinPoint }]]);

  const quick = await ferry(server, ['store', 'verify', '--json']);
  assert.equal(quick.code, 1, `quick verify fails on the missing chunk: ${quick.stderr}`);
  const quickReport = quick.json().error.details.report;
  assert.deepEqual(quickReport.affectedPoints, [{ machine: 'twin', pointId: twinPoint }], 'a quick verify cannot see the flipped byte');
  assert.deepEqual(
    quickReport.problems.map((problem: { kind: string; chunk: string; points: unknown }) => [problem.kind, problem.chunk, problem.points]).sort(),
    missingProblems,
  );

  const deep = await ferry(server, ['store', 'verify', '--deep', '--json']);
  assert.equal(deep.code, 1, 'deep verify exits non-zero');
  const body = deep.json();
  assert.equal(body.error.code, 'corrupt-data');
  const report = body.error.details.report;
  assert.equal(report.deep, true);
  const problems = report.problems.map((problem: { kind: string; chunk: string; points: unknown }) => [problem.kind, problem.chunk, problem.points]);
  assert.deepEqual(problems.filter(([kind]: [string]) => kind === 'missing-chunk').sort(), missingProblems, 'missing chunks are listed first');
  assert.deepEqual(problems.slice(missingProblems.length), [['corrupt-chunk', flipped, [{ machine: 'vm', pointId: point1 }]]]);
  assert.deepEqual(report.affectedPoints, [
    { machine: 'twin', pointId: twinPoint },
    { machine: 'vm', pointId: point1 },
  ]);
  for (const pointId of [point1, twinPoint]) assert.ok(deep.stderr.includes(pointId), `stderr names ${pointId}: ${deep.stderr}`);
  assert.ok(!deep.stderr.includes(point2), 'point 2 is not affected');

  const human = await ferry(server, ['store', 'verify', '--deep']);
  assert.equal(human.code, 1);
  assert.match(human.stdout, /corrupt-chunk/);
  assert.ok(human.stdout.includes(flipped) && human.stdout.includes(point1), human.stdout);
});
