/**
 * Measuring: running a command under the clock, CPU time of processes from /proc, sizes on disk,
 * dropping the page cache so every tool reads cold.
 */
import { execFile, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Runs a command to completion; throws with its stderr on a non-zero exit. */
export async function run(command: string, args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<{ stdout: string; stderr: string }> {
  try {
    return await execFileAsync(command, args, { env: options.env ?? process.env, cwd: options.cwd, maxBuffer: 256 * 2 ** 20 });
  } catch (error) {
    const failure = error as { code?: number; stderr?: string; stdout?: string };
    throw new Error(`${command} ${args.join(' ')} exited ${failure.code}: ${(failure.stderr || failure.stdout || String(error)).trim().slice(-2000)}`);
  }
}

/** Kernel clock ticks per second (for /proc/PID/stat times). */
let clockTicks = 100;
export async function initClockTicks(): Promise<void> {
  clockTicks = Number((await run('getconf', ['CLK_TCK'])).stdout.trim()) || 100;
}

/** Fields of /proc/PID/stat after the command name, so index 0 is field 3 (state). */
async function statFields(file: string): Promise<string[]> {
  const text = await fs.readFile(file, 'utf8');
  return text.slice(text.lastIndexOf(')') + 2).split(' ');
}

/** CPU seconds (user, system) a running process has used. */
export async function processCpu(pid: number): Promise<{ user: number; system: number }> {
  const fields = await statFields(`/proc/${pid}/stat`);
  return { user: Number(fields[11]) / clockTicks, system: Number(fields[12]) / clockTicks };
}

/** CPU seconds of each thread of a process, summed by thread name (main thread = the process name). */
export async function threadCpu(pid: number): Promise<Record<string, number>> {
  const byName: Record<string, number> = {};
  for (const tid of await fs.readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const text = await fs.readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => null);
    if (!text) continue;
    const name = tid === String(pid) ? 'main' : text.slice(text.indexOf('(') + 1, text.lastIndexOf(')'));
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    byName[name] = (byName[name] ?? 0) + (Number(fields[11]) + Number(fields[12])) / clockTicks;
  }
  return byName;
}

/** I/O counters of a process: bytes through read/write syscalls (files and sockets) and from/to disk. */
export async function processIo(pid: number): Promise<{ rchar: number; wchar: number; readBytes: number; writeBytes: number }> {
  const text = await fs.readFile(`/proc/${pid}/io`, 'utf8');
  const value = (key: string) => Number(new RegExp(`^${key}: (\\d+)`, 'm').exec(text)?.[1] ?? 0);
  return { rchar: value('rchar'), wchar: value('wchar'), readBytes: value('read_bytes'), writeBytes: value('write_bytes') };
}

/** CPU seconds of this process's waited-for children (cutime + cstime): how a peer tool's CPU is measured. */
export async function childrenCpu(): Promise<number> {
  const fields = await statFields('/proc/self/stat');
  return (Number(fields[13]) + Number(fields[14])) / clockTicks;
}

/** Result of one timed step. */
export interface Timed<T = void> {
  seconds: number;
  /** CPU seconds of the processes doing the work. */
  cpuSeconds: number;
  value: T;
}

/** Times `work`; CPU is that of child processes this process waited for meanwhile, plus `extraCpu()` deltas. */
export async function timed<T>(work: () => Promise<T>, extraCpu: () => Promise<number> = async () => 0): Promise<Timed<T>> {
  const cpuBefore = (await childrenCpu()) + (await extraCpu());
  const start = process.hrtime.bigint();
  const value = await work();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const cpuSeconds = (await childrenCpu()) + (await extraCpu()) - cpuBefore;
  return { seconds, cpuSeconds, value };
}

/** Makes `file` durable (fsync), as a tool that writes a replica or a store should. */
export async function fsyncFile(file: string): Promise<void> {
  const handle = await fs.open(file, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes back dirty pages and drops the page cache; false if not permitted. */
export async function dropCaches(): Promise<boolean> {
  try {
    await run('sync', []);
    await fs.writeFile('/proc/sys/vm/drop_caches', '3\n');
    return true;
  } catch {
    return false;
  }
}

/** Apparent size in bytes of everything under `target` (`du -sb`). */
export async function duBytes(target: string): Promise<number> {
  const { stdout } = await run('du', ['-sb', target]);
  return Number(stdout.split(/\s/)[0]);
}

/** Space allocated on disk for everything under `target` (`du -s --block-size=1`). */
export async function duAllocated(target: string): Promise<number> {
  const { stdout } = await run('du', ['-s', '--block-size=1', target]);
  return Number(stdout.split(/\s/)[0]);
}

/** Number of files under `target`. */
export async function fileCount(target: string): Promise<number> {
  const { stdout } = await run('find', [target, '-type', 'f']);
  return stdout.split('\n').filter(Boolean).length;
}

/** Load average (1, 5, 15 min). */
export async function loadAverage(): Promise<number[]> {
  return (await fs.readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).map(Number);
}

/** Starts a long-running child with stdout captured; resolves its exit with the captured stdout. */
export function spawnCollect(command: string, args: string[], options: { env?: NodeJS.ProcessEnv } = {}) {
  const child = spawn(command, args, { env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (data: Buffer) => (stdout += data.toString()));
  child.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
