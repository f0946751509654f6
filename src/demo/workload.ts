/**
 * The demo's workload: keeps changing files inside the sample machines' disks (a counter and a
 * journal in /app) every few seconds, and pauses when asked. The pause protocol is what the demo's
 * pre-point/post-point hooks use, so the demo's points are consistent:
 *   hook "pause":  create CONTROL/pause-request, wait for CONTROL/paused
 *   workload:      sees the request, finishes its current write, writes CONTROL/paused, stops writing
 *   hook "resume": delete CONTROL/pause-request; the workload deletes CONTROL/paused and goes on
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { ensureDirectory } from '../util/durable-fs.js';
import { sleep } from '../util/time.js';
import { writeFilesInImage } from './ext4-image.js';
import type { SampleMachine } from './sample-machines.js';

/** The control directory of one machine's workload. */
export function controlDirectory(workloadRoot: string, machineName: string): string {
  return path.join(workloadRoot, machineName);
}

/** Runs until `signal` aborts: one write round per machine every `intervalMs`, honouring pause requests. */
export async function runWorkload(machines: SampleMachine[], workloadRoot: string, options: { intervalMs: number; signal: AbortSignal; log: (line: string) => void }): Promise<void> {
  const counters = new Map<string, number>();
  const journals = new Map<string, string[]>();
  for (const machine of machines) await ensureDirectory(controlDirectory(workloadRoot, machine.name));
  let nextWrite = 0;
  while (!options.signal.aborted) {
    for (const machine of machines) {
      const control = controlDirectory(workloadRoot, machine.name);
      const pauseRequested = existsSync(path.join(control, 'pause-request'));
      const paused = existsSync(path.join(control, 'paused'));
      if (pauseRequested && !paused) await fs.writeFile(path.join(control, 'paused'), `${process.pid}\n`);
      if (!pauseRequested && paused) await fs.rm(path.join(control, 'paused'), { force: true });
      if (pauseRequested || Date.now() < nextWrite) continue;
      const count = (counters.get(machine.name) ?? 0) + 1;
      counters.set(machine.name, count);
      const line = `${new Date().toISOString()} ${machine.name} write #${count}`;
      const journal = [...(journals.get(machine.name) ?? []), line].slice(-500);
      journals.set(machine.name, journal);
      await writeFilesInImage(machine.disks[0]!, [
        { fsPath: '/app/counter.txt', data: `${count}\n` },
        { fsPath: '/app/journal.log', data: `${journal.join('\n')}\n` },
      ]).catch((error: Error) => options.log(`write to ${machine.name} failed: ${error.message}`));
    }
    if (Date.now() >= nextWrite) nextWrite = Date.now() + options.intervalMs;
    await sleep(200, options.signal).catch(() => undefined);
  }
}

/** The pre-point hook: asks the workload to pause and waits (up to `timeoutMs`) until it has. */
export async function pauseWorkload(control: string, timeoutMs: number): Promise<void> {
  await ensureDirectory(control);
  await fs.writeFile(path.join(control, 'pause-request'), `${process.pid}\n`);
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(path.join(control, 'paused'))) {
    if (Date.now() > deadline) {
      await fs.rm(path.join(control, 'pause-request'), { force: true });
      throw new FerryError('hook-failed', `workload in ${control} did not confirm the pause within ${timeoutMs / 1000}s`);
    }
    await sleep(100);
  }
}

/** The post-point hook: lets the workload go on. */
export async function resumeWorkload(control: string): Promise<void> {
  await fs.rm(path.join(control, 'pause-request'), { force: true });
}
