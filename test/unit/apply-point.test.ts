/**
 * Applying a recovery point to a disk (reprotect, failback) on real files in a temporary directory:
 * only differing chunks are fetched and written, zero chunks are zeroed without a fetch, the target is
 * created or resized to the point's disk, a chunk that fails its hash is never written, and an abort
 * stops the work. The job itself runs against a real HTTP server on 127.0.0.1 speaking the agent API.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { AgentState } from '../../src/agent/agent-state.js';
import { applyDiskImage, applyPointJob, type FetchChunks } from '../../src/agent/apply-point.js';
import { ApiClient } from '../../src/client/api-client.js';
import { encodeChunkBatch, FrameEncoding, type OutgoingFrame } from '../../src/protocol/chunk-batch.js';
import type { ApplyPointJob } from '../../src/protocol/views.js';
import { compressChunk } from '../../src/store/chunk-object.js';
import { hashChunk, isAllZero } from '../../src/store/chunking.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { createLogger } from '../../src/util/logger.js';
import { buildDisk, ferryError, tempDirFor } from './helpers.js';

const CHUNK = 4096;

/** The index of `image` cut in `chunkSize` chunks, as an agent would have committed it. */
function indexOf(image: Buffer, chunkSize = CHUNK): DiskIndex {
  const index = DiskIndex.empty(image.length, chunkSize);
  for (let position = 0; position < index.chunkCount; position++) {
    const data = image.subarray(position * chunkSize, position * chunkSize + index.lengthAt(position));
    if (!isAllZero(data)) index.setHash(position, hashChunk(data));
  }
  return index;
}

/** A fetcher serving the chunks of `image` by name, recording every request it gets. */
function fetcherOf(image: Buffer, chunkSize = CHUNK): { fetchChunks: FetchChunks; requests: string[][] } {
  const chunks = new Map<string, Buffer>();
  for (let start = 0; start < image.length; start += chunkSize) {
    const data = image.subarray(start, Math.min(start + chunkSize, image.length));
    chunks.set(hashChunk(data).toString('hex'), Buffer.from(data));
  }
  const requests: string[][] = [];
  const fetchChunks: FetchChunks = async (hashHexes) => {
    requests.push(hashHexes);
    return hashHexes.map((hex) => {
      const data = chunks.get(hex);
      assert.ok(data, `asked for chunk ${hex}, which the point does not hold`);
      return { data, wireBytes: data.length };
    });
  };
  return { fetchChunks, requests };
}

const chunkOf = (image: Buffer, position: number, chunkSize = CHUNK) => image.subarray(position * chunkSize, (position + 1) * chunkSize);
const hexOf = (image: Buffer, position: number) => hashChunk(chunkOf(image, position)).toString('hex');

test('a target differing in a few chunks has only those fetched (each distinct chunk once) and ends byte-identical', async (t) => {
  const directory = await tempDirFor(t);
  const source = buildDisk(CHUNK, Array(20).fill('random'), 1000); // a short last chunk
  chunkOf(source, 10).copy(source, 11 * CHUNK); // chunks 10 and 11 hold the same bytes
  const target = Buffer.from(source);
  for (const position of [3, 10, 11, 19]) target[position * CHUNK + 5]! ^= 0xff;
  const targetPath = path.join(directory, 'disk0.raw');
  await fs.writeFile(targetPath, target);

  const { fetchChunks, requests } = fetcherOf(source);
  const progress: number[] = [];
  const result = await applyDiskImage({ path: targetPath, index: indexOf(source), fetchChunks, onProgress: (done) => progress.push(done) });

  assert.ok((await fs.readFile(targetPath)).equals(source), 'the target now holds the point disk, byte for byte');
  assert.deepEqual(requests.flat().sort(), [hexOf(source, 3), hexOf(source, 10), hexOf(source, 19)].sort(), 'only the differing chunks, chunk 10/11 once');
  assert.deepEqual(result, { changedBytes: 3 * CHUNK + 1000, receivedBytes: 2 * CHUNK + 1000, chunksWritten: 4, chunksCompared: 20 });
  assert.equal(progress.at(-1), source.length, 'progress ends at the disk size');

  const again = await applyDiskImage({ path: targetPath, index: indexOf(source), fetchChunks });
  assert.deepEqual(again, { changedBytes: 0, receivedBytes: 0, chunksWritten: 0, chunksCompared: 20 }, 'a disk that already matches costs no transfer and no write');
  assert.equal(requests.length, 1);
});

test('a disk spanning many windows: differences everywhere are found, progress climbs to the disk size', async (t) => {
  const directory = await tempDirFor(t);
  const source = buildDisk(CHUNK, Array(300).fill('random'));
  const target = Buffer.from(source);
  const changed = [0, 63, 64, 65, 127, 128, 200, 299];
  for (const position of changed) randomBytes(CHUNK).copy(target, position * CHUNK);
  const targetPath = path.join(directory, 'disk.raw');
  await fs.writeFile(targetPath, target);

  const { fetchChunks, requests } = fetcherOf(source);
  const progress: number[] = [];
  const result = await applyDiskImage({ path: targetPath, index: indexOf(source), fetchChunks, onProgress: (done) => progress.push(done) });
  assert.ok((await fs.readFile(targetPath)).equals(source));
  assert.equal(result.chunksWritten, changed.length);
  assert.equal(result.chunksCompared, 300);
  assert.deepEqual(requests.flat().sort(), changed.map((position) => hexOf(source, position)).sort());
  assert.ok(requests.every((request) => request.length <= 64), 'each window asks for its own chunks');
  assert.deepEqual(progress, [...progress].sort((a, b) => a - b), 'progress never goes back');
  assert.equal(progress.at(-1), source.length);
});

test('zero chunks of the point zero the target without fetching anything', async (t) => {
  const directory = await tempDirFor(t);
  const source = buildDisk(CHUNK, ['random', 'zero', 'random', 'zero', 'zero', 'random'], 300);
  const target = Buffer.from(source);
  randomBytes(CHUNK).copy(target, 1 * CHUNK);
  randomBytes(10).copy(target, 4 * CHUNK + 100);
  const targetPath = path.join(directory, 'disk.raw');
  await fs.writeFile(targetPath, target);

  const result = await applyDiskImage({
    path: targetPath,
    index: indexOf(source),
    fetchChunks: async () => assert.fail('nothing should be fetched for zero chunks'),
  });
  assert.ok((await fs.readFile(targetPath)).equals(source));
  assert.deepEqual(result, { changedBytes: 2 * CHUNK, receivedBytes: 0, chunksWritten: 2, chunksCompared: 6 });
});

test('a missing target is created (0600, with its directory) at the size of the point disk', async (t) => {
  const directory = await tempDirFor(t);
  const source = buildDisk(CHUNK, ['random', 'zero', 'zero', 'random', 'zero'], 2000);
  const targetPath = path.join(directory, 'new', 'site', 'disk0.raw');
  const { fetchChunks, requests } = fetcherOf(source);

  const result = await applyDiskImage({ path: targetPath, index: indexOf(source), fetchChunks });
  const stat = await fs.stat(targetPath);
  assert.equal(stat.size, source.length);
  assert.equal(stat.mode & 0o777, 0o600);
  assert.ok((await fs.readFile(targetPath)).equals(source));
  assert.equal(requests.flat().length, 2, 'zero chunks come from the new file itself');
  assert.equal(result.chunksWritten, 2);
});

test('a larger file is truncated to the point disk, a smaller one extended', async (t) => {
  const directory = await tempDirFor(t);
  const source = buildDisk(CHUNK, ['random', 'random', 'zero', 'random']);
  const { fetchChunks } = fetcherOf(source);

  const largerPath = path.join(directory, 'larger.raw');
  await fs.writeFile(largerPath, Buffer.concat([source, randomBytes(3 * CHUNK + 17)]));
  const trimmed = await applyDiskImage({ path: largerPath, index: indexOf(source), fetchChunks });
  assert.ok((await fs.readFile(largerPath)).equals(source));
  assert.equal(trimmed.chunksWritten, 0, 'the chunks it had were right; only its tail went');

  const smallerPath = path.join(directory, 'smaller.raw');
  await fs.writeFile(smallerPath, source.subarray(0, CHUNK + 100));
  const extended = await applyDiskImage({ path: smallerPath, index: indexOf(source), fetchChunks });
  assert.ok((await fs.readFile(smallerPath)).equals(source));
  assert.equal(extended.chunksWritten, 2, 'chunk 1 (cut short) and chunk 3; chunk 2 reads as zeros once extended');
});

test('a fetched chunk that does not hash to its name is refused and never written; nor is one of the wrong length', async (t) => {
  const directory = await tempDirFor(t);
  const source = buildDisk(CHUNK, ['random', 'random', 'random', 'random']);
  const target = Buffer.from(source);
  target[2 * CHUNK]! ^= 0x01;
  const targetPath = path.join(directory, 'disk.raw');
  await fs.writeFile(targetPath, target);
  const index = indexOf(source);

  const forged = randomBytes(CHUNK);
  await assert.rejects(
    applyDiskImage({ path: targetPath, index, fetchChunks: async (hashes) => hashes.map(() => ({ data: forged, wireBytes: CHUNK })) }),
    (error: unknown) => ferryError('chunk-hash-mismatch', [hexOf(source, 2), targetPath])(error) && !(error as { retryable: boolean }).retryable,
  );
  assert.ok((await fs.readFile(targetPath)).equals(target), 'the target is untouched: its old chunk 2 is still there');

  const short = Buffer.from(chunkOf(source, 2)); // the right bytes for chunk 2 of a disk whose chunk 2 would be longer
  const shortIndex = indexOf(source);
  shortIndex.setHash(2, hashChunk(short.subarray(0, 100)));
  await assert.rejects(
    applyDiskImage({ path: targetPath, index: shortIndex, fetchChunks: async (hashes) => hashes.map(() => ({ data: short.subarray(0, 100), wireBytes: 100 })) }),
    ferryError('corrupt-data', ['100 bytes']),
  );
  assert.ok((await fs.readFile(targetPath)).equals(target));

  await assert.rejects(applyDiskImage({ path: targetPath, index, fetchChunks: async () => [] }), ferryError('corrupt-data', ['received 0']));
  assert.ok((await fs.readFile(targetPath)).equals(target));
});

test('an aborted signal stops the work: before it starts, and between windows', async (t) => {
  const directory = await tempDirFor(t);
  const source = buildDisk(CHUNK, Array(256).fill('random'));
  const index = indexOf(source);
  const { fetchChunks, requests } = fetcherOf(source);

  const missingPath = path.join(directory, 'never.raw');
  await assert.rejects(applyDiskImage({ path: missingPath, index, fetchChunks, signal: AbortSignal.abort() }), { name: 'AbortError' });
  await assert.rejects(fs.stat(missingPath), { code: 'ENOENT' }, 'nothing was created');

  const targetPath = path.join(directory, 'disk.raw');
  await fs.writeFile(targetPath, Buffer.alloc(source.length, 0xaa)); // every chunk differs
  const controller = new AbortController();
  const stopping: FetchChunks = async (hashes) => {
    controller.abort();
    return fetchChunks(hashes);
  };
  await assert.rejects(applyDiskImage({ path: targetPath, index, fetchChunks: stopping, signal: controller.signal }), { name: 'AbortError' });
  assert.ok(requests.length <= 2, `stopped after the windows already under way (${requests.length} fetches)`);
  const after = await fs.readFile(targetPath);
  assert.ok(after.subarray(source.length - CHUNK).equals(Buffer.alloc(CHUNK, 0xaa)), 'the last window was never written');
});

test('a target that is neither a file nor a block device is refused', async (t) => {
  const directory = await tempDirFor(t);
  const source = buildDisk(CHUNK, ['random']);
  await assert.rejects(applyDiskImage({ path: directory, index: indexOf(source), fetchChunks: fetcherOf(source).fetchChunks }), (error: unknown) => {
    ferryError('io-error', [directory])(error);
    assert.equal((error as { retryable: boolean }).retryable, false, 'a directory stays a directory');
    return true;
  });
});

// --- the job over HTTP -------------------------------------------------------------------------------

async function serve(t: TestContext, handler: (request: http.IncomingMessage, body: Buffer, response: http.ServerResponse) => void): Promise<string> {
  const server = http.createServer((request, response) => {
    const received: Buffer[] = [];
    request.on('data', (piece: Buffer) => received.push(piece));
    request.on('end', () => handler(request, Buffer.concat(received), response));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function sendJson(response: http.ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(JSON.stringify(body));
}

/** Compressible chunk bytes, so the server can send them as zstd frames. */
function compressibleChunk(seed: number): Buffer {
  const data = Buffer.alloc(CHUNK);
  for (let at = 0; at < CHUNK; at++) data[at] = (at * seed) & 0x0f;
  return data;
}

test('applyPointJob: starts, fetches each disk index and only the chunks it lacks (raw or zstd), forgets the disks, reports counts', async (t) => {
  const directory = await tempDirFor(t);
  const disk0 = Buffer.concat([compressibleChunk(3), randomBytes(CHUNK), Buffer.alloc(CHUNK), compressibleChunk(5)]);
  const disk1 = buildDisk(CHUNK, ['random', 'random', 'random'], 512);
  const images = [disk0, disk1];
  const chunks = new Map<string, Buffer>();
  for (const image of images) for (let start = 0; start < image.length; start += CHUNK) {
    const data = image.subarray(start, start + CHUNK);
    if (!isAllZero(data)) chunks.set(hashChunk(data).toString('hex'), data);
  }

  const path0 = path.join(directory, 'disk0.raw');
  const stale0 = Buffer.from(disk0);
  stale0[5]! ^= 1; // chunk 0 (compressible) differs
  stale0[3 * CHUNK + 5]! ^= 1; // and chunk 3
  randomBytes(CHUNK).copy(stale0, 2 * CHUNK); // chunk 2 should be zeros
  await fs.writeFile(path0, stale0);
  const path1 = path.join(directory, 'missing', 'disk1.raw'); // written from scratch

  const calls: { method: string; url: string; body: unknown }[] = [];
  let wireBytesSent = 0;
  const url = await serve(t, (request, body, response) => {
    const url = request.url ?? '';
    const json = request.headers['content-type'] === 'application/json' && body.length ? JSON.parse(body.toString('utf8')) : undefined;
    calls.push({ method: request.method ?? '', url, body: json });
    assert.equal(request.headers.authorization, 'Bearer agent-token');
    const indexMatch = /\/disks\/(\d+)\/index$/.exec(url);
    if (indexMatch) {
      response.writeHead(200, { 'content-type': 'application/octet-stream' });
      response.end(indexOf(images[Number(indexMatch[1])]!).encode());
    } else if (url.endsWith('/chunks/read')) {
      const frames: OutgoingFrame[] = (json as { hashes: string[] }).hashes.map((hex) => {
        const data = chunks.get(hex)!;
        const compressed = compressChunk(data, 1);
        const payload = compressed ?? data;
        wireBytesSent += payload.length;
        return { hash: Buffer.from(hex, 'hex'), payload, encoding: compressed ? FrameEncoding.Zstd : FrameEncoding.Raw };
      });
      response.writeHead(200, { 'content-type': 'application/octet-stream' });
      response.end(Buffer.concat(encodeChunkBatch(frames)));
    } else if (url.endsWith('/complete')) {
      sendJson(response, 200, { id: 'j1', kind: 'apply-point', state: 'succeeded' });
    } else {
      sendJson(response, 200, {});
    }
  });

  const state = new AgentState(path.join(directory, 'agent'));
  await state.saveIndex('d0', indexOf(stale0));
  const job: ApplyPointJob = {
    id: 'j1',
    kind: 'apply-point',
    machine: { id: 'm1', name: 'web-01' },
    pointId: 'p7',
    disks: [
      { id: 'd1', position: 1, path: path1, sizeBytes: disk1.length, chunkSize: CHUNK },
      { id: 'd0', position: 0, path: path0, sizeBytes: disk0.length, chunkSize: CHUNK },
    ],
  };
  const view = await applyPointJob(job, { client: new ApiClient({ baseUrl: url, token: 'agent-token' }), state, log: createLogger('test'), signal: new AbortController().signal });

  assert.equal(view.state, 'succeeded');
  assert.ok((await fs.readFile(path0)).equals(disk0));
  assert.ok((await fs.readFile(path1)).equals(disk1));
  assert.equal(calls[0]?.url, '/api/v1/agent/jobs/j1/start', 'the job is started first');
  assert.deepEqual(calls.at(-1), {
    method: 'POST',
    url: '/api/v1/agent/jobs/j1/complete',
    body: {
      disks: [
        { position: 0, changedBytes: 3 * CHUNK, receivedBytes: wireBytesSent - (CHUNK + CHUNK + 512), chunksWritten: 3 },
        { position: 1, changedBytes: disk1.length, receivedBytes: CHUNK + CHUNK + 512, chunksWritten: 3 },
      ],
    },
  });
  const reads = calls.filter((call) => call.url.endsWith('/chunks/read')).flatMap((call) => (call.body as { hashes: string[] }).hashes);
  assert.equal(reads.length, 5, 'disk 1 whole (3 chunks), disk 0 its two changed non-zero chunks');
  assert.ok(wireBytesSent < 5 * CHUNK, 'the compressible chunks came compressed');
  const progress = calls.filter((call) => call.url.endsWith('/progress')).map((call) => call.body as { doneBytes: number; totalBytes: number; step: string });
  assert.ok(progress.length >= 1);
  assert.deepEqual(progress.at(-1)?.doneBytes, disk0.length + disk1.length);
  assert.ok(progress.every((report) => report.totalBytes === disk0.length + disk1.length));
  for (const diskId of ['d0', 'd1']) {
    assert.equal(await state.lastIndex(diskId), null, 'the agent forgot the index it had: it no longer describes the disk');
    assert.match((await state.forgottenBecause(diskId)) ?? '', /rewritten from point p7/);
  }
});

test('applyPointJob: a chunk the server answers with other bytes fails the job with chunk-hash-mismatch before anything is reported complete', async (t) => {
  const directory = await tempDirFor(t);
  const image = buildDisk(CHUNK, ['random', 'random']);
  const calls: string[] = [];
  const url = await serve(t, (request, body, response) => {
    calls.push(request.url ?? '');
    if (request.url?.endsWith('/index')) {
      response.writeHead(200, { 'content-type': 'application/octet-stream' });
      response.end(indexOf(image).encode());
    } else if (request.url?.endsWith('/chunks/read')) {
      const { hashes } = JSON.parse(body.toString('utf8')) as { hashes: string[] };
      response.writeHead(200, { 'content-type': 'application/octet-stream' });
      response.end(Buffer.concat(encodeChunkBatch(hashes.map((hex) => ({ hash: Buffer.from(hex, 'hex'), payload: randomBytes(CHUNK), encoding: FrameEncoding.Raw })))));
    } else {
      sendJson(response, 200, {});
    }
  });
  const targetPath = path.join(directory, 'disk0.raw');
  const job: ApplyPointJob = { id: 'j2', kind: 'apply-point', machine: { id: 'm1', name: 'db' }, pointId: 'p1', disks: [{ id: 'd0', position: 0, path: targetPath, sizeBytes: image.length, chunkSize: CHUNK }] };
  await assert.rejects(
    applyPointJob(job, { client: new ApiClient({ baseUrl: url }), state: new AgentState(path.join(directory, 'agent')), log: createLogger('test'), signal: new AbortController().signal }),
    ferryError('chunk-hash-mismatch'),
  );
  assert.ok(!calls.some((call) => call.endsWith('/complete')));
  assert.ok((await fs.readFile(targetPath)).equals(Buffer.alloc(image.length)), 'the new file holds zeros, never the forged bytes');
});
