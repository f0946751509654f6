/**
 * Fault injection for crash tests. A crash test needs the server to die at one exact instant (say,
 * inside the transaction that commits a point), which no outside `kill` can hit reliably. So the
 * server names a few such instants, and when the environment variable FERRY_FAULT names one of them,
 * the process SIGKILLs itself there: no cleanup, no flush, exactly like a power cut of the process.
 *
 * Without FERRY_FAULT (every real installation) `faultPoint` only compares two strings. Never set it
 * outside a test.
 */
import { writeSync } from 'node:fs';

/** The environment variable that arms a fault point. */
export const FAULT_ENV = 'FERRY_FAULT';

/**
 * The instants where a fault can be injected:
 * - `index-stored`: `POST /indexes` has stored the index durably, before it answers (the agent
 *   never learns the upload succeeded, and the commit request has not been sent).
 * - `commit-point`: inside the SQLite transaction of `Points.commit`, after the point, its disks,
 *   the machine and the job have been written, before the transaction commits.
 */
export const FAULT_POINTS = ['index-stored', 'commit-point'] as const;

/** One of `FAULT_POINTS`. */
export type FaultPoint = (typeof FAULT_POINTS)[number];

/**
 * SIGKILLs this process when FERRY_FAULT equals `point`; otherwise returns at once. Says so on stderr
 * first (synchronously: nothing asynchronous runs after the kill), so a test's log shows why the
 * process died.
 */
export function faultPoint(point: FaultPoint): void {
  if (process.env[FAULT_ENV] !== point) return;
  writeSync(2, `${FAULT_ENV}=${point}: killing this process (pid ${process.pid}) with SIGKILL\n`);
  process.kill(process.pid, 'SIGKILL');
}

/**
 * The fault armed in this process's environment, for a warning at start-up: the name if it is one of
 * `FAULT_POINTS`, `unknown` if FERRY_FAULT is set to anything else, null if it is not set.
 */
export function armedFault(): { name: string; known: boolean } | null {
  const value = process.env[FAULT_ENV];
  if (!value) return null;
  return { name: value, known: (FAULT_POINTS as readonly string[]).includes(value) };
}
