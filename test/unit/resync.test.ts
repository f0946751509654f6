/**
 * Resync detection on the agent (src/agent/resync.ts): with real files for the disks and a real
 * AgentState, which cycles can lean on the memory of the last point and which must resync, and why.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { AgentState } from '../../src/agent/agent-state.js';
import { jobStartBody, resyncReason } from '../../src/agent/resync.js';
import { jobStartRequest } from '../../src/protocol/requests.js';
import { DiskIndex } from '../../src/store/disk-index.js';
import { tempDirFor } from './helpers.js';

const CHUNK = 65536;

/** Two disk image files of 1 MiB and the job that names them, with an empty agent state. */
async function setUp(t: test.TestContext) {
  const root = await tempDirFor(t, 'ferry-resync-');
  const disks = [0, 1].map((position) => ({ id: `d-${position}`, position, path: path.join(root, `disk${position}.raw`) }));
  for (const disk of disks) await fs.writeFile(disk.path, Buffer.alloc(1 << 20, disk.position + 1));
  const state = new AgentState(path.join(root, 'agent'));
  const job = { disks, chunkSize: CHUNK };
  /** Records both disks as committed at their current size, as a successful cycle does. */
  const commitBoth = async () => {
    for (const disk of disks) await state.saveIndex(disk.id, DiskIndex.empty((await fs.stat(disk.path)).size, CHUNK));
  };
  return { root, disks, state, job, commitBoth };
}

test('no record of the last point for any disk: a resync naming both disks at once', async (t) => {
  const { state, job } = await setUp(t);
  assert.equal(await resyncReason(job, state), 'disks 0, 1: the agent has no record of the last point (its data directory is new, or its state was removed)');
});

test('both disks remembered at their size and chunk size: no resync, and the start body is empty', async (t) => {
  const { state, job, commitBoth } = await setUp(t);
  await commitBoth();
  assert.equal(await resyncReason(job, state), null);
  assert.deepEqual(await jobStartBody(job, state), {});
});

test('the state directory removed between cycles: a resync again', async (t) => {
  const { root, state, job, commitBoth } = await setUp(t);
  await commitBoth();
  await fs.rm(path.join(root, 'agent', 'state'), { recursive: true });
  assert.match((await resyncReason(job, state))!, /^disks 0, 1: the agent has no record/);
});

test('a disk forgotten after the store reported missing chunks says so, until its next index is saved', async (t) => {
  const { disks, state, job, commitBoth } = await setUp(t);
  await commitBoth();
  await state.forget(disks[1]!.id);
  assert.equal(await resyncReason(job, state), 'disk 1: the agent discarded its record of the last point (the store lacked chunks the agent had skipped as unchanged)');
  await commitBoth();
  assert.equal(await resyncReason(job, state), null);
  assert.equal(await state.forgottenBecause(disks[1]!.id), null);
});

test('a disk that changed size, or a record cut in another chunk size, is a resync naming the sizes', async (t) => {
  const { disks, state, job, commitBoth } = await setUp(t);
  await commitBoth();
  await fs.truncate(disks[0]!.path, 3 << 20);
  assert.equal(await resyncReason(job, state), `disk 0: its size changed from ${1 << 20} to ${3 << 20} bytes`);
  assert.equal(
    await resyncReason({ ...job, chunkSize: 2 * CHUNK }, state),
    `disks 0, 1: the last point was cut in ${CHUNK}-byte chunks, this cycle in ${2 * CHUNK}-byte ones`,
  );
});

test('a disk that cannot be opened is left to the cycle, which fails on it with its own error', async (t) => {
  const { disks, state, job, commitBoth } = await setUp(t);
  await commitBoth();
  await fs.rm(disks[0]!.path);
  assert.equal(await resyncReason(job, state), null);
});

test('the start body carries the reason and passes the server schema, even for very many disks', async (t) => {
  const { root, state } = await setUp(t);
  const many = Array.from({ length: 64 }, (_, position) => ({ id: `disk-with-a-rather-long-identifier-${position}`, position, path: path.join(root, `missing-${position}`) }));
  const body = await jobStartBody({ disks: many, chunkSize: CHUNK }, state);
  assert.match(body.resync!.reason, /^disks 0, 1, 2, .*63: the agent has no record/);
  assert.ok(jobStartRequest.safeParse(body).success);
  // Reasons that differ per disk cannot be grouped; the text is cut to what the server accepts.
  for (const disk of many) await state.forget(disk.id, `reason number ${disk.position} `.repeat(5));
  const long = await jobStartBody({ disks: many, chunkSize: CHUNK }, state);
  assert.equal(long.resync!.reason.length, 2000);
  assert.ok(long.resync!.reason.endsWith('...'));
  assert.ok(jobStartRequest.safeParse(long).success);
});
