/**
 * Memory of the Ferry daemons while a timed step runs: the resident set size (VmRSS) of the server and
 * agent node processes read from /proc/PID/status every 200 ms, and the kernel's own high-water mark
 * (VmHWM), reset at the step's start through /proc/PID/clear_refs so it catches spikes between samples
 * and belongs to that step alone. The target is "under 300 MB RSS" per process.
 */
import { promises as fs } from 'node:fs';

/** How often the sampler reads /proc/PID/status. */
export const MEMORY_SAMPLE_MS = 200;

/** One reading of /proc/PID/status, in bytes (the kernel reports kB = 1024 bytes). */
export interface MemoryReading {
  /** VmRSS: resident now (anonymous + file-backed + shared memory). */
  rssBytes: number;
  /** VmHWM: the largest VmRSS since the process started or since the last reset. */
  hwmBytes: number;
  /** RssAnon: the anonymous part of VmRSS (JS heap, buffers, native allocations). */
  anonBytes: number;
}

/** Reads VmRSS, VmHWM and RssAnon of a running process. */
export async function processMemory(pid: number): Promise<MemoryReading> {
  const text = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const kB = (key: string) => {
    const match = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
    if (!match) throw new Error(`/proc/${pid}/status has no ${key} (a kernel thread or a zombie?)`);
    return Number(match[1]) * 1024;
  };
  return { rssBytes: kB('VmRSS'), hwmBytes: kB('VmHWM'), anonBytes: kB('RssAnon') };
}

/** Resets a process's VmHWM to its current VmRSS (`echo 5 > /proc/PID/clear_refs`); false if not permitted. */
export async function resetPeakRss(pid: number): Promise<boolean> {
  try {
    await fs.writeFile(`/proc/${pid}/clear_refs`, '5\n');
    return true;
  } catch {
    return false;
  }
}

/** The executable and command line of a process, as the kernel sees them. */
export interface ProcessIdentity {
  pid: number;
  /** Target of /proc/PID/exe. */
  exe: string;
  args: string[];
}

/** Who `pid` is; throws unless it is a node process, so a wrapper shell or `npx` is never measured instead. */
export async function nodeProcessIdentity(pid: number): Promise<ProcessIdentity> {
  const [exe, node, cmdline] = await Promise.all([fs.readlink(`/proc/${pid}/exe`), fs.realpath(process.execPath), fs.readFile(`/proc/${pid}/cmdline`, 'utf8')]);
  const args = cmdline.split('\0').filter(Boolean);
  if (exe !== node) throw new Error(`pid ${pid} runs ${exe} (${args.join(' ')}), not node (${node}): its memory would not be Ferry's`);
  return { pid, exe, args };
}

/** One process's memory over one timed step. */
export interface StepMemory {
  pid: number;
  /** The step's peak RSS: the larger of the final VmHWM (when it is this step's own) and the largest VmRSS sample. */
  peakBytes: number;
  /** Where peakBytes came from: the kernel's high-water mark, or only the 200 ms samples. */
  peakSource: 'VmHWM' | 'VmRSS samples';
  /** True if VmHWM was reset at the step's start, so it covers this step only. */
  hwmReset: boolean;
  maxSampledRssBytes: number;
  /** RssAnon at the largest VmRSS sample. */
  anonAtMaxSampleBytes: number;
  startRssBytes: number;
  endRssBytes: number;
  meanRssBytes: number;
  samples: number;
}

/** Peak memory of each named process over one step, e.g. { server: ..., agent: ... }. */
export type StepMemoryByProcess<Name extends string = string> = Record<Name, StepMemory>;

interface Track {
  pid: number;
  hwmReset: boolean;
  hwmAtStart: number;
  start: MemoryReading;
  last: MemoryReading;
  max: MemoryReading;
  rssTotal: number;
  samples: number;
}

/**
 * Samples the memory of a set of processes from `start()` to `stop()`. The timer is unref'd, so a
 * sampler left running after an error never keeps the bench alive.
 */
export class MemorySampler<Name extends string> {
  private timer: NodeJS.Timeout | null = null;
  private inFlight: Promise<void> | null = null;

  private constructor(private readonly tracks: Record<Name, Track>) {}

  /** Checks every pid is a node process, resets its VmHWM, takes a first reading and starts sampling. */
  static async start<Name extends string>(processes: Record<Name, number>, intervalMs = MEMORY_SAMPLE_MS): Promise<MemorySampler<Name>> {
    const tracks = {} as Record<Name, Track>;
    for (const [name, pid] of Object.entries(processes) as [Name, number][]) {
      await nodeProcessIdentity(pid);
      const hwmAtStart = (await processMemory(pid)).hwmBytes;
      const hwmReset = await resetPeakRss(pid);
      const start = await processMemory(pid);
      tracks[name] = { pid, hwmReset, hwmAtStart, start, last: start, max: start, rssTotal: start.rssBytes, samples: 1 };
    }
    const sampler = new MemorySampler(tracks);
    sampler.timer = setInterval(() => {
      if (!sampler.inFlight) sampler.inFlight = sampler.sampleAll().finally(() => (sampler.inFlight = null));
    }, intervalMs);
    sampler.timer.unref();
    return sampler;
  }

  private async sampleAll(): Promise<void> {
    await Promise.all(
      Object.values<Track>(this.tracks).map(async (track) => {
        const reading = await processMemory(track.pid).catch(() => null); // exited: keep what was seen
        if (!reading) return;
        track.last = reading;
        track.samples++;
        track.rssTotal += reading.rssBytes;
        if (reading.rssBytes > track.max.rssBytes) track.max = reading;
      }),
    );
  }

  /** Stops sampling, takes a last reading and returns each process's peak over the step. */
  async stop(): Promise<StepMemoryByProcess<Name>> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.inFlight;
    await this.sampleAll();
    const result = {} as StepMemoryByProcess<Name>;
    for (const [name, track] of Object.entries(this.tracks) as [Name, Track][]) {
      // Without a reset, VmHWM is the peak since the process started; it is this step's only if it rose during it.
      const hwmIsThisStep = track.hwmReset || track.last.hwmBytes > track.hwmAtStart;
      const peakBytes = Math.max(track.max.rssBytes, hwmIsThisStep ? track.last.hwmBytes : 0);
      result[name] = {
        pid: track.pid,
        peakBytes,
        peakSource: hwmIsThisStep && track.last.hwmBytes > track.max.rssBytes ? 'VmHWM' : 'VmRSS samples',
        hwmReset: track.hwmReset,
        maxSampledRssBytes: track.max.rssBytes,
        anonAtMaxSampleBytes: track.max.anonBytes,
        startRssBytes: track.start.rssBytes,
        endRssBytes: track.last.rssBytes,
        meanRssBytes: Math.round(track.rssTotal / track.samples),
        samples: track.samples,
      };
    }
    return result;
  }
}

/** Runs `work` while sampling the memory of `processes`; the sampler stops whether `work` succeeds or not. */
export async function sampleMemoryDuring<Name extends string, T>(processes: Record<Name, number>, work: () => Promise<T>): Promise<{ value: T; memory: StepMemoryByProcess<Name> }> {
  const sampler = await MemorySampler.start(processes);
  let memory: StepMemoryByProcess<Name>;
  let value: T;
  try {
    value = await work();
  } finally {
    memory = await sampler.stop();
  }
  return { value, memory };
}

/** The step with the highest peak for each process, e.g. over the incremental cycles or over scenarios. */
export function highestPeaks<Name extends string>(steps: StepMemoryByProcess<Name>[]): StepMemoryByProcess<Name> {
  const result = {} as StepMemoryByProcess<Name>;
  for (const step of steps) {
    for (const [name, memory] of Object.entries(step) as [Name, StepMemory][]) {
      if (!result[name] || memory.peakBytes > result[name].peakBytes) result[name] = memory;
    }
  }
  return result;
}
