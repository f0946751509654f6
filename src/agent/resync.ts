/**
 * Resync detection: whether a replication cycle can lean on the agent's memory of the last point
 * (agent-state.ts), and if not, why. A cycle normally compares each chunk with the disk's last
 * committed index and asks the server only about chunks that differ. That memory cannot serve when
 * it is gone (the agent's data directory is new or was removed, or the agent discarded it after the
 * store reported missing chunks), when it was cut in another chunk size, or when the disk changed
 * size (no change tracker may then call the disk unchanged). Such a cycle is a resync: it reads the
 * disk whole and checks its chunks with the store wherever the memory does not cover them. The agent
 * says so when it starts the job; the server decides whether it counts (only for a machine that
 * already has points) and shows it as the `resyncing` replication state.
 */
import type { JobStartRequest } from '../protocol/requests.js';
import type { ReplicateJob } from '../protocol/views.js';
import { probeDiskImage } from '../disks/formats.js';
import type { AgentState } from './agent-state.js';

/** Longest reason the server accepts (`jobStartRequest`). */
const MAX_REASON_LENGTH = 2000;

/**
 * Why this cycle of `job` cannot replicate incrementally, naming each disk concerned (disks with the
 * same reason grouped), or null when every disk can. A disk that cannot be opened is left out: the
 * cycle fails on it anyway, with its own error.
 */
export async function resyncReason(job: Pick<ReplicateJob, 'disks' | 'chunkSize'>, state: AgentState): Promise<string | null> {
  const disksByReason = new Map<string, number[]>();
  const add = (reason: string, position: number) => disksByReason.set(reason, [...(disksByReason.get(reason) ?? []), position]);
  for (const disk of job.disks) {
    const previous = await state.lastIndex(disk.id);
    if (!previous) {
      const forgotten = await state.forgottenBecause(disk.id);
      add(
        forgotten
          ? `the agent discarded its record of the last point (${forgotten})`
          : 'the agent has no record of the last point (its data directory is new, or its state was removed)',
        disk.position,
      );
      continue;
    }
    if (previous.chunkSize !== job.chunkSize) {
      add(`the last point was cut in ${previous.chunkSize}-byte chunks, this cycle in ${job.chunkSize}-byte ones`, disk.position);
      continue;
    }
    const size = await probeDiskImage(disk.path).then((image) => image.size, () => null);
    if (size !== null && size !== previous.diskSize) add(`its size changed from ${previous.diskSize} to ${size} bytes`, disk.position);
  }
  if (disksByReason.size === 0) return null;
  const reason = [...disksByReason]
    .map(([why, positions]) => `${positions.length === 1 ? 'disk' : 'disks'} ${positions.join(', ')}: ${why}`)
    .join('; ');
  return reason.length <= MAX_REASON_LENGTH ? reason : `${reason.slice(0, MAX_REASON_LENGTH - 3)}...`;
}

/** The body of `POST /agent/jobs/ID/start` for `job`: `resync` with its reason when `resyncReason` finds one. */
export async function jobStartBody(job: Pick<ReplicateJob, 'disks' | 'chunkSize'>, state: AgentState): Promise<JobStartRequest> {
  const reason = await resyncReason(job, state);
  return reason === null ? {} : { resync: { reason } };
}
