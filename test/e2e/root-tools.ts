/**
 * Helpers for the e2e tests that need root (loop devices, mount, fsfreeze): a tool check that fails in
 * CI and skips elsewhere, a loop mount undone when the test ends, and live writer processes.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { defer } from './harness.js';

const run = promisify(execFile);
/** test/e2e/fixtures: the writer scripts. */
export const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');

/** Skips (or, in CI, fails) unless this runs as root with the tools the test needs. */
export async function requireRootTools(t: TestContext, tools: string[]): Promise<boolean> {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root');
  for (const tool of tools) {
    const found = await run('sh', ['-c', `command -v ${tool} || test -x /usr/sbin/${tool} || test -x /sbin/${tool}`]).then(() => true, () => false);
    if (!found) missing.push(tool);
  }
  if (missing.length === 0) return true;
  if (process.env.CI === 'true') assert.fail(`this test needs ${missing.join(', ')} (CI must provide them)`);
  t.skip(`needs ${missing.join(', ')}`);
  return false;
}

/** Attaches `image` to a loop device, mounts it at `mountPoint`; undone when the test ends. */
export async function loopMount(t: TestContext, image: string, mountPoint: string): Promise<string> {
  const { stdout } = await run('losetup', ['--find', '--show', image]);
  const device = stdout.trim();
  defer(t, () => run('losetup', ['--detach', device]).catch(() => undefined));
  await fs.mkdir(mountPoint, { recursive: true });
  await run('mount', [device, mountPoint]);
  defer(t, async () => {
    await run('fsfreeze', ['--unfreeze', mountPoint]).catch(() => undefined);
    await run('umount', [mountPoint]).catch(() => run('umount', ['-l', mountPoint]).catch(() => undefined));
  });
  return device;
}

/** Starts fixtures/SCRIPT with `args` as a node process, killed when the test ends. */
export function startWriter(t: TestContext, script: string, args: string[], stdio: 'ignore' | 'pipe' = 'ignore'): ChildProcess {
  const writer = spawn(process.execPath, [path.join(fixtures, script), ...args], { stdio: ['ignore', stdio, 'ignore'] });
  defer(t, () => {
    writer.kill('SIGKILL');
    return new Promise((resolve) => (writer.exitCode !== null ? resolve(undefined) : writer.once('exit', resolve)));
  });
  return writer;
}

