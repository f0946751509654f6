/**
 * Runs a machine's pre-point or post-point hook: a shell command, with a timeout after which its
 * whole process group is killed. Its output is kept (the tail) for the error message.
 */
import { spawn } from 'node:child_process';
import { FerryError } from '../errors.js';

/** Result of a hook that succeeded. */
export interface HookResult {
  output: string;
}

/** Runs `command` with `sh -c`; resolves on exit 0, throws hook-failed otherwise (including timeout). */
export function runHook(command: string, options: { timeoutSeconds: number; env: Record<string, string>; name: string }): Promise<HookResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', command], { env: { ...process.env, ...options.env }, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-4000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    }, options.timeoutSeconds * 1000);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new FerryError('hook-failed', `${options.name} hook could not start: ${error.message}`));
    });
    // The hook is done when its own process exits: a background process it left holding stdout must not
    // make us wait. Output still in the pipes is given a moment to arrive.
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      const finish = () => {
        if (code === 0 && !timedOut) return resolve({ output });
        const why = timedOut ? `timed out after ${options.timeoutSeconds}s` : signal ? `was killed by ${signal}` : `exited with code ${code}`;
        const tail = output.trim().split('\n').slice(-3).join(' | ');
        reject(new FerryError('hook-failed', `${options.name} hook ${why}${tail ? `: ${tail}` : ''}`));
      };
      const grace = setTimeout(finish, 100);
      child.once('close', () => {
        clearTimeout(grace);
        finish();
      });
    });
  });
}
