/**
 * Runs a shell command for the server (a recovery plan's script action): `/bin/sh -c`, in its own
 * process group, killed (the whole group) at a timeout or when asked to stop, with the tail of its
 * combined stdout and stderr kept up to a bound. Reports how it ended; deciding what that means is the
 * caller's business.
 */
import { spawn } from 'node:child_process';

/** How a script ended, and the last `maxOutputBytes` of what it printed (stdout and stderr interleaved). */
export interface ScriptOutcome {
  /** Exit code, or null when it was killed by a signal (including at its timeout). */
  exitCode: number | null;
  /** The signal that ended it, if one did. */
  signal: string | null;
  timedOut: boolean;
  /** Stopped because `signal` aborted (the server is stopping). */
  aborted: boolean;
  /** The command could not be started at all (e.g. /bin/sh missing): why. */
  startError: string | null;
  durationMs: number;
  /** The tail of the output, decoded as UTF-8. */
  output: string;
  /** Bytes printed before the kept tail (0 when everything was kept). */
  droppedBytes: number;
}

/** Default bound of kept output: the last 64 KiB. */
export const DEFAULT_SCRIPT_OUTPUT_BYTES = 64 * 1024;

/**
 * Runs `command` with `/bin/sh -c` and resolves when its own process has exited (a background process it
 * left holding the output pipes does not hold it up beyond a short grace). Never rejects.
 */
export function runShellScript(
  command: string,
  options: { timeoutSeconds: number; env?: Record<string, string>; cwd?: string; signal?: AbortSignal; maxOutputBytes?: number },
): Promise<ScriptOutcome> {
  const maxOutput = options.maxOutputBytes ?? DEFAULT_SCRIPT_OUTPUT_BYTES;
  const started = Date.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let kept = 0;
    let dropped = 0;
    const keep = (chunk: Buffer) => {
      chunks.push(chunk);
      kept += chunk.length;
      while (kept > maxOutput && chunks.length > 0) {
        const first = chunks[0]!;
        const excess = kept - maxOutput;
        if (first.length <= excess) {
          chunks.shift();
          kept -= first.length;
          dropped += first.length;
        } else {
          chunks[0] = first.subarray(excess);
          kept -= excess;
          dropped += excess;
        }
      }
    };
    let timedOut = false;
    let aborted = false;
    let settled = false;
    const finish = (outcome: Pick<ScriptOutcome, 'exitCode' | 'signal' | 'startError'>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      resolve({ ...outcome, timedOut, aborted, durationMs: Date.now() - started, output: Buffer.concat(chunks).toString('utf8'), droppedBytes: dropped });
    };
    const child = spawn('/bin/sh', ['-c', command], {
      env: { ...process.env, ...options.env },
      cwd: options.cwd,
      detached: true, // its own process group, so the timeout kills everything it started
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const killGroup = () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, options.timeoutSeconds * 1000);
    const onAbort = () => {
      aborted = true;
      killGroup();
    };
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('error', (error) => finish({ exitCode: null, signal: null, startError: error.message }));
    child.on('exit', (code, signal) => {
      // Output still in the pipes is given a moment to arrive; a background child holding them is not waited for.
      const grace = setTimeout(() => finish({ exitCode: code, signal, startError: null }), 200);
      child.once('close', () => {
        clearTimeout(grace);
        finish({ exitCode: code, signal, startError: null });
      });
    });
  });
}

/** "exited with code 3", "timed out after 60s", "was killed by SIGTERM", "could not start: ..." */
export function describeScriptEnd(outcome: ScriptOutcome, timeoutSeconds: number): string {
  if (outcome.startError) return `could not start: ${outcome.startError}`;
  if (outcome.timedOut) return `timed out after ${timeoutSeconds}s`;
  if (outcome.aborted) return 'was stopped because the server is stopping';
  if (outcome.signal) return `was killed by ${outcome.signal}`;
  return `exited with code ${outcome.exitCode}`;
}
