/**
 * Sub-chunk delta uploads, end to end (real server and agent, a raw disk of random data): scattered
 * 4 KiB writes cost about 4 KiB each on the wire, not a 64 KiB chunk each, and the point restores
 * byte-identical. Without the agent's state (no block fingerprints) the next cycle sends whole chunks
 * and still works, and the cycle after it is a delta again. When the server cannot rebuild a delta
 * (its base chunk is gone from the store, or a fingerprint collision hid a changed block) the agent
 * sends those chunks whole and the point is still right. Changed chunks of many sparse windows are
 * gathered into batches no larger than the server's staging buffers (seen through a recording proxy).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { crc32 } from 'node:zlib';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { BlockFingerprints } from '../../src/agent/block-fingerprints.js';
import { decodeChunkBatch } from '../../src/protocol/chunk-batch.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { connectAgent, defer, ferryJson, restoresIdentical, startServer, tempDir, type TestServer } from './harness.js';

const BLOCK = 4096;
const CHUNK = 64 * 1024;
const DISK_BYTES = 8 * 1024 * 1024;

/** Writes random 4 KiB blocks at `blocks` (block numbers) of `disk`; returns the chunks they fall in. */
async function writeBlocks(disk: string, blocks: readonly number[]): Promise<Set<number>> {
  const handle = await fs.open(disk, 'r+');
  try {
    for (const block of blocks) await handle.write(randomBytes(BLOCK), 0, BLOCK, block * BLOCK);
    await handle.sync();
  } finally {
    await handle.close();
  }
  return new Set(blocks.map((block) => Math.floor((block * BLOCK) / CHUNK)));
}

/** `count` distinct random block numbers of the disk. */
function randomBlocks(count: number): number[] {
  const chosen = new Set<number>();
  while (chosen.size < count) chosen.add(Math.floor(Math.random() * (DISK_BYTES / BLOCK)));
  return [...chosen];
}

/** Takes a point now and returns its one disk's figures, after checking the job succeeded. */
async function takePoint(server: TestServer): Promise<{ id: string; changedBytes: number; sentBytes: number }> {
  const { job, point } = await ferryJson(server, ['points', 'create', 'vm', '--wait']);
  assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
  return { id: point.id, changedBytes: point.disks[0].changedBytes, sentBytes: point.disks[0].sentBytes };
}

async function setUp(t: Parameters<typeof tempDir>[0], diskBytes: Buffer) {
  const root = await tempDir(t);
  const disk = path.join(root, 'vm.raw');
  await fs.writeFile(disk, diskBytes);
  const server = await startServer(t, path.join(root, 'server'));
  const { agentDir } = await connectAgent(t, server, root, { vm: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  const { job } = await ferryJson(server, ['protect', 'vm', '--site', 'dr', '--wait']);
  assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
  return { root, disk, server, agentDir };
}

/** A copy of the disk as it is now, to compare a point's restore with later. */
async function snapshot(root: string, disk: string, name: string): Promise<string> {
  const copy = path.join(root, `${name}.raw`);
  await fs.copyFile(disk, copy);
  return copy;
}

test('scattered 4 KiB writes send about 4 KiB each; without the agent state whole chunks are sent, and deltas resume after', async (t) => {
  const { root, disk, server, agentDir } = await setUp(t, randomBytes(DISK_BYTES));

  const writes = 24;
  const chunks = await writeBlocks(disk, randomBlocks(writes));
  const expected = await snapshot(root, disk, 'after-writes');
  const delta = await takePoint(server);
  t.diagnostic(`${writes} writes in ${chunks.size} chunks: ${delta.sentBytes} bytes sent, ${delta.changedBytes} bytes of changed chunks`);
  assert.equal(delta.changedBytes, chunks.size * CHUNK, 'the chunks holding the writes changed');
  // Random blocks do not compress: each costs its 4 KiB plus a few dozen bytes of delta header.
  assert.ok(delta.sentBytes >= writes * BLOCK, `${delta.sentBytes} bytes sent cannot hold ${writes} random blocks`);
  assert.ok(delta.sentBytes < writes * 6 * 1024, `${writes} scattered 4 KiB writes sent ${delta.sentBytes} bytes, not about ${writes * BLOCK}`);
  assert.ok(await restoresIdentical(server, 'vm', delta.id, [expected]), 'the point rebuilt from deltas restores byte-identical');

  // No agent state: no index, no fingerprints. The cycle (a resync) sends changed chunks whole.
  await fs.rm(path.join(agentDir, 'state'), { recursive: true });
  const resyncChunks = await writeBlocks(disk, randomBlocks(8));
  const expectedResync = await snapshot(root, disk, 'after-resync');
  const resync = await takePoint(server);
  assert.ok(resync.sentBytes >= resyncChunks.size * CHUNK, `without fingerprints, the ${resyncChunks.size} changed chunks go whole: ${resync.sentBytes} bytes`);
  assert.ok(await restoresIdentical(server, 'vm', resync.id, [expectedResync]));

  // That cycle saved fingerprints again: the next one is a delta.
  await writeBlocks(disk, randomBlocks(8));
  const expectedAfter = await snapshot(root, disk, 'after-resync-delta');
  const after = await takePoint(server);
  assert.ok(after.sentBytes < 8 * 6 * 1024, `deltas again after the resync: ${after.sentBytes} bytes`);
  assert.ok(await restoresIdentical(server, 'vm', after.id, [expectedAfter]));
});

test('a delta whose base the store lost, and one a fingerprint collision made wrong, are sent again whole', async (t) => {
  // One chunk of data at the start of the disk, the rest zeros: the first point's pack holds that chunk
  // alone, so losing it loses nothing a later point names.
  const initial = Buffer.alloc(DISK_BYTES);
  randomBytes(CHUNK).copy(initial, 0);
  const { root, disk, server, agentDir } = await setUp(t, initial);

  // Lose the base from the store, behind the server's back: every pack goes (indexes stay).
  await fs.rm(path.join(server.dataDir, 'store', 'packs'), { recursive: true });
  await writeBlocks(disk, [3]); // chunk 0, one block: a delta over the lost chunk
  const expectedLost = await snapshot(root, disk, 'after-lost-base');
  const lost = await takePoint(server);
  assert.ok(lost.sentBytes >= CHUNK, `refused as a delta, sent whole: ${lost.sentBytes} bytes`);
  assert.ok(await restoresIdentical(server, 'vm', lost.id, [expectedLost]));
  const agentLog = await fs.readFile(`${agentDir}.log`, 'utf8');
  assert.match(agentLog, /refused 1 chunk\(s\) sent as changed blocks \(chunk [0-9a-f]{64} was sent as changes to chunk [0-9a-f]{64}, which the store cannot provide/);

  // A collision: the agent's fingerprint of block 5 of chunk 0 is made to equal the new block's CRC, so
  // the agent sees only block 6 changed and sends a delta without block 5. The server's rebuilt chunk
  // fails its SHA-256; the agent sends the chunk whole.
  const stateDir = path.join(agentDir, 'state');
  const indexFile = (await fs.readdir(stateDir)).find((name) => name.endsWith('.index'));
  assert.ok(indexFile, 'the agent saved an index');
  const indexBytes = await fs.readFile(path.join(stateDir, indexFile));
  const indexHash = createHash('sha256').update(indexBytes).digest();
  const fingerprints = BlockFingerprints.decode(await fs.readFile(path.join(stateDir, `${indexFile}.blocks`)), DiskIndex.decode(indexBytes), indexHash);
  assert.ok(fingerprints, 'the agent saved fingerprints for its index');
  const hidden = randomBytes(BLOCK);
  fingerprints.crcs[5] = crc32(hidden);
  await fs.writeFile(path.join(stateDir, `${indexFile}.blocks`), fingerprints.encode(indexHash));
  const handle = await fs.open(disk, 'r+');
  await handle.write(hidden, 0, BLOCK, 5 * BLOCK);
  await handle.write(randomBytes(BLOCK), 0, BLOCK, 6 * BLOCK);
  await handle.close();
  const expectedCollision = await snapshot(root, disk, 'after-collision');
  const collision = await takePoint(server);
  assert.ok(collision.sentBytes >= CHUNK, `the wrong delta was refused and the chunk sent whole: ${collision.sentBytes} bytes`);
  assert.ok(await restoresIdentical(server, 'vm', collision.id, [expectedCollision]));
  assert.match(await fs.readFile(`${agentDir}.log`, 'utf8'), /sent as changed blocks \(chunk sent as [0-9a-f]{64} hashes to [0-9a-f]{64} once rebuilt/);
});

/**
 * A proxy on 127.0.0.1 in front of `target` that forwards every request as it is and hands each chunk
 * batch's body (POST /api/v1/chunks) to `onBatch` first.
 */
async function recordingProxy(t: Parameters<typeof defer>[0], target: string, onBatch: (body: Buffer) => void): Promise<string> {
  const upstream = new URL(target);
  const proxy = http.createServer((request, response) => {
    const parts: Buffer[] = [];
    request.on('data', (part: Buffer) => parts.push(part));
    request.on('end', () => {
      const body = Buffer.concat(parts);
      if (request.method === 'POST' && request.url === '/api/v1/chunks') onBatch(body);
      const forward = http.request({ host: upstream.hostname, port: upstream.port, method: request.method, path: request.url, headers: request.headers }, (answer) => {
        response.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(response);
      });
      forward.on('error', () => response.destroy());
      forward.end(body);
    });
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  defer(t, () => new Promise<void>((resolve) => {
    proxy.close(() => resolve());
    proxy.closeAllConnections(); // an agent still connected must not hold the test open
  }));
  return `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
}

test('changed chunks of sparse windows are gathered into batches of at most 8 MiB of chunks, the server staging size', async (t) => {
  const root = await tempDir(t);
  const disk = path.join(root, 'vm.raw');
  const windowChunks = 128; // the agent's window: 8 MiB of 64 KiB chunks
  const windows = 8;
  await fs.writeFile(disk, randomBytes(windows * windowChunks * CHUNK));
  const server = await startServer(t, path.join(root, 'server'));
  const batches: { chunks: number; chunkBytes: number }[] = [];
  const proxyUrl = await recordingProxy(t, server.url, (body) => {
    const frames = decodeChunkBatch(body);
    const chunkBytes = frames.reduce((total, frame) => total + (frame.delta ? frame.delta.chunkLength : frame.data.length), 0);
    batches.push({ chunks: frames.length, chunkBytes });
  });
  await connectAgent(t, { ...server, url: proxyUrl }, root, { vm: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  const { job } = await ferryJson(server, ['protect', 'vm', '--site', 'dr', '--wait']);
  assert.equal(job.state, 'succeeded', JSON.stringify(job.error));

  // 30 changed chunks in every window: under a quarter of it, so each window's are gathered with the
  // next ones'. Four windows' (7.5 MiB) fit a batch; a fifth would take it to 9.4 MiB.
  const blocks: number[] = [];
  for (let window = 0; window < windows; window++) {
    for (let chunk = 0; chunk < 30; chunk++) blocks.push(((window * windowChunks + chunk * 4) * CHUNK) / BLOCK + (chunk % 16));
  }
  await writeBlocks(disk, blocks);
  const expected = await snapshot(root, disk, 'after-writes');
  batches.length = 0;
  const point = await takePoint(server);
  assert.equal(point.changedBytes, windows * 30 * CHUNK);
  const limit = 8 * 1024 * 1024;
  assert.ok(batches.length > 0, 'the cycle sent batches');
  for (const batch of batches) assert.ok(batch.chunkBytes <= limit, `a batch of ${batch.chunks} chunks holds ${batch.chunkBytes} bytes of chunks, more than ${limit}`);
  assert.ok(batches.some((batch) => batch.chunks > 30), `windows' changes were gathered: ${JSON.stringify(batches)}`);
  assert.equal(batches.reduce((total, batch) => total + batch.chunks, 0), windows * 30, 'every changed chunk was sent once');
  assert.ok(await restoresIdentical(server, 'vm', point.id, [expected]));
});
