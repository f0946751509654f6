/**
 * `npm run bench`: Ferry's replication side by side with cp, rsync, restic and borg in one run, on a
 * raw disk image holding a realistic ext4 file system.
 *
 *   npm run build && npm run bench                                    # 2 GiB, all five scenarios
 *   npm run bench -- --size 256M --churn-seconds 60                   # a quick run
 *   npm run bench -- --only 1,4 --keep --work-dir /var/tmp/ferry-bench
 *
 * Scenarios (docs/benchmarks.md has the targets and the last results):
 *   1. initial replication: `ferry protect --wait` vs cp, rsync, restic backup (and borg create)
 *   2. incremental cycle after overwriting 1% of the 4 KiB blocks: `ferry points create --wait`
 *      vs `rsync --inplace --no-whole-file`, the next `restic backup` and `borg create`
 *   3. store size after the cycles vs restic's and borg's repositories
 *   4. `ferry failover --test --wait` (materialise a point as a raw disk) vs cp
 *   5. a writer churning 20 MB/s into a disk while a policy takes a point every 30 s: RPO and CPU
 *
 * Every tool reads the same image state, cold (the page cache is dropped before each timed step when
 * permitted), and every output is durable (fsynced) before its clock stops. During every timed Ferry
 * step the server's and agent's RSS is sampled (bench/memory.ts) against the 300 MB target. Results go to
 * WORK_DIR/bench-results.json and .md; the rest of the work dir is removed unless --keep.
 */
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { buildImage, generateTree, overwriteRandomBlocks, type TreeSummary } from './disk-image.js';
import { describeEnvironment, type Environment } from './environment.js';
import { FerryCluster, sampleDelta } from './ferry-cluster.js';
import { highestPeaks, MEMORY_SAMPLE_MS, MemorySampler, sampleMemoryDuring, type StepMemoryByProcess } from './memory.js';
import { childrenCpu, dropCaches, duAllocated, duBytes, fileCount, fsyncFile, initClockTicks, loadAverage, run, sleep, spawnCollect, timed } from './measure.js';
import { runConversionBenchmark } from './conversion.js';
import { type BenchOptions, parseOptions, SCENARIOS, USAGE } from './options.js';
import { Borg, checkTools, cpCopy, Restic, rsyncDelta, rsyncInitial } from './peers.js';
import { measureReference, type ReferenceMeasures } from './reference.js';
import { formatBytes, formatMB, formatRate, formatSeconds, median, ratio, renderMarkdown, renderSummary, renderText, type ScenarioTable, type SummaryTarget } from './report.js';

const startedAt = Date.now();
function say(message: string): void {
  const elapsed = Math.round((Date.now() - startedAt) / 1000);
  console.log(`[${String(Math.floor(elapsed / 60)).padStart(2, '0')}:${String(elapsed % 60).padStart(2, '0')}] ${message}`);
}

/** Everything the run measured, as written to bench-results.json. */
interface Results {
  command: string;
  startedAt: string;
  endedAt?: string;
  options: Record<string, unknown>;
  environment: Environment;
  tools: Record<string, string>;
  coldReads: boolean;
  load: { before: number[]; after?: number[]; samples: number[] };
  /** The machine's own speed (SHA-256, durable small writes) at the start and the end of the run. */
  reference: { before: ReferenceMeasures; after?: ReferenceMeasures };
  image?: { sizeBytes: number; tree: TreeSummary; allocatedBytes: number };
  measurements: Record<string, unknown>;
  tables: ScenarioTable[];
  /** Targets over several scenarios' steps (peak memory), after the tables' own in the summary. */
  summaryTargets: SummaryTarget[];
}

/** Peak memory of the Ferry server and agent over a timed step. */
type FerryMemory = StepMemoryByProcess<'server' | 'agent'>;

/** The issue's bound on each daemon's RSS while replicating: 300 MB, MB = 10^6 bytes. */
const RSS_LIMIT_BYTES = 300e6;

async function main(): Promise<void> {
  let options: BenchOptions | 'help';
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (error) {
    console.error(`bench: ${(error as Error).message}`);
    process.exit(2);
  }
  if (options === 'help') {
    console.log(USAGE);
    return;
  }
  const opts = options;
  await initClockTicks();
  if (!existsSync(path.join(path.dirname(opts.ferryBin), '..', 'dist', 'cli', 'main.js'))) {
    console.error(`bench: ${opts.ferryBin} is not built yet; run \`npm run build\` first`);
    process.exit(2);
  }
  let tools: Record<string, string>;
  try {
    tools = await checkTools();
  } catch (error) {
    console.error(`bench: ${(error as Error).message}`);
    process.exit(2);
  }

  const work = opts.workDir;
  await fs.mkdir(work, { recursive: true });
  const coldReads = opts.dropCaches ? await dropCaches() : false;
  const results: Results = {
    command: `npm run bench -- ${process.argv.slice(2).join(' ')}`.trim().replace(/ --$/, ''),
    startedAt: new Date(startedAt).toISOString(),
    options: { ...opts, only: [...opts.only] },
    environment: await describeEnvironment(work, opts.ferryBin),
    tools,
    coldReads,
    load: { before: await loadAverage(), samples: [] },
    reference: { before: await measureReference(work) },
    measurements: {},
    tables: [],
    summaryTargets: [],
  };
  const sizeBytes = opts.sizeBytes;
  say(`ferry bench: ${formatBytes(sizeBytes)} image, scenarios ${[...opts.only].join(',')}, work dir ${work}`);
  say(`ferry ${results.environment.ferry.commit}${results.environment.ferry.dirty ? ' (with uncommitted changes)' : ''} at ${opts.ferryBin}`);
  const ref = results.reference.before;
  say(`machine: SHA-256 ${ref.sha256MiBPerSecond} MiB/s on one thread, durable 64 KiB write ${ref.durableWrite64KiBMs} ms (${ref.plainWrite64KiBMs} ms without fsync), load ${results.load.before.join(' ')}`);
  say(coldReads ? 'page cache dropped before every timed step (cold reads)' : 'page cache NOT dropped: every tool reads warm');
  const loadTimer = setInterval(() => void loadAverage().then((load) => results.load.samples.push(load[0]!)), 30_000);
  const cold = async () => {
    if (coldReads) await dropCaches();
  };

  // The disk image: built once per size/fill/seed (reused from --work-dir), copied for each use.
  const base = path.join(work, 'base.raw');
  const baseMeta = path.join(work, 'base.json');
  const wantedMeta = JSON.stringify({ sizeBytes, fill: opts.fill, seed: opts.seed, version: 1 });
  let tree: TreeSummary;
  if (existsSync(base) && (await fs.readFile(baseMeta, 'utf8').catch(() => '')).startsWith(wantedMeta.slice(0, -1))) {
    tree = (JSON.parse(await fs.readFile(baseMeta, 'utf8')) as { tree: TreeSummary }).tree;
    say(`reusing the image ${base}`);
  } else {
    const treeDir = path.join(work, 'tree');
    await fs.rm(treeDir, { recursive: true, force: true });
    say(`generating ${formatBytes(sizeBytes * opts.fill)} of files ...`);
    tree = await generateTree(treeDir, sizeBytes * opts.fill, opts.seed);
    say(`${tree.files} files: text ${formatBytes(tree.textBytes)}, binaries ${formatBytes(tree.binaryBytes)}, duplicates ${formatBytes(tree.duplicateBytes)}, small files ${formatBytes(tree.smallFileBytes)}; building the ext4 image ...`);
    await buildImage(base, sizeBytes, treeDir);
    await fs.rm(treeDir, { recursive: true, force: true });
    await fs.writeFile(baseMeta, `${wantedMeta.slice(0, -1)},"tree":${JSON.stringify(tree)}}`);
  }
  results.image = { sizeBytes, tree, allocatedBytes: await duAllocated(base) };
  const disk = path.join(work, 'disk.raw');
  const churnDisk = path.join(work, 'churn.raw');
  await run('cp', [base, disk]);
  if (opts.only.has(5)) await run('cp', [base, churnDisk]);

  const machines: Record<string, string[]> = { bench: [disk] };
  if (opts.only.has(5)) machines.churn = [churnDisk];
  await fs.rm(path.join(work, 'ferry'), { recursive: true, force: true });
  const cluster = await FerryCluster.start(opts.ferryBin, path.join(work, 'ferry'), machines);
  let writer: ReturnType<typeof spawnCollect> | null = null;
  const interrupt = () => {
    writer?.child.kill('SIGTERM');
    void cluster.stop().finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupt);
  process.once('SIGTERM', interrupt);
  say(`ferry server ${cluster.url} (pid ${cluster.serverPid}), agent pid ${cluster.agentPid}`);
  await cluster.cli(['site', 'add', 'dr', '--path', path.join(work, 'site')]);
  await cluster.cli(['policy', 'add', 'bench', '--interval', '1d', '--retention', '365d']);

  const tables: ScenarioTable[] = results.tables;
  const m = results.measurements;
  /** Peak memory of the daemons during each scenario's timed Ferry steps (scenario 2: the highest over its cycles). */
  const memory: Partial<Record<1 | 2 | 4 | 5, FerryMemory>> = {};
  m.memory = memory;
  const ferryCpu = () => cluster.daemonsCpu();
  const print = (table: ScenarioTable) => {
    tables.push(table);
    console.log(`\n${renderText(table)}\n`);
  };

  try {
    const needInitial = opts.only.has(1) || opts.only.has(2) || opts.only.has(3) || opts.only.has(4);
    const restic = new Restic(path.join(work, 'restic-repo'), path.join(work, 'restic-cache'));
    const borg = new Borg(path.join(work, 'borg-repo'), path.join(work, 'borg-home'));
    const rsyncDest = path.join(work, 'rsync-dest.raw');

    // 1. Initial replication.
    if (needInitial) {
      const s1: Record<string, any> = {};
      const tput = (seconds: number) => sizeBytes / seconds;
      if (opts.only.has(1)) {
        await cold();
        say('1: cp ...');
        s1.cp = await timed(() => cpCopy(disk, path.join(work, 'cp-copy.raw')));
        await fs.rm(path.join(work, 'cp-copy.raw'), { force: true });
      }
      await cold();
      say('1: ferry protect --wait ...');
      const before = await cluster.sample();
      const { value: protect, memory: protectMemory } = await sampleMemoryDuring(cluster.pids, () =>
        timed(() => cluster.cli(['protect', 'bench', '--site', 'dr', '--policy', 'bench', '--wait']), ferryCpu),
      );
      const processes = sampleDelta(before, await cluster.sample());
      memory[1] = protectMemory;
      const job = await cluster.api(`/jobs/${protect.value.job.id}`);
      const [point] = (await cluster.cli(['points', 'list', 'bench'])).points;
      s1.ferry = { ...protect, value: undefined, job: { createdAt: job.createdAt, startedAt: job.startedAt, endedAt: job.endedAt }, sentBytes: sumDisks(point, 'sentBytes'), changedBytes: sumDisks(point, 'changedBytes'), processes };
      if (opts.only.has(1) || opts.only.has(2)) {
        await cold();
        say('1: rsync ...');
        s1.rsync = await timed(() => rsyncInitial(disk, rsyncDest));
      }
      if (opts.only.has(1) || opts.only.has(2) || opts.only.has(3)) {
        await restic.init();
        await cold();
        say('1: restic backup ...');
        s1.restic = await timed(() => restic.backup(disk));
        await borg.init();
        await cold();
        say('1: borg create ...');
        s1.borg = await timed(() => borg.create(disk));
      }
      m.initial = s1;
      if (opts.only.has(1)) {
        const ferryTput = tput(s1.ferry.seconds);
        const row = (tool: string, entry: { seconds: number; cpuSeconds: number }, stored: string) => [
          tool,
          formatSeconds(entry.seconds),
          formatRate(tput(entry.seconds)),
          `${entry.cpuSeconds.toFixed(1)} s`,
          stored,
          tool === 'ferry' ? '-' : ratio(ferryTput / tput(entry.seconds)),
        ];
        print({
          scenario: 1,
          title: `${SCENARIOS[1]} of a ${formatBytes(sizeBytes)} disk`,
          columns: ['tool', 'time', 'throughput', 'CPU', 'sent / added', 'ferry speed / tool'],
          rows: [
            row('ferry', s1.ferry, `${formatBytes(s1.ferry.sentBytes)} sent`),
            row('cp', s1.cp, formatBytes(sizeBytes)),
            row('rsync', s1.rsync, `${formatBytes(s1.rsync.value.totalBytesSent)} sent`),
            row('restic', s1.restic, `${formatBytes(s1.restic.value.dataAdded)} added`),
            row('borg', s1.borg, `${formatBytes(s1.borg.value.deduplicatedSize)} added`),
          ],
          targets: [
            { name: 'ferry throughput vs cp', measured: ratio(ferryTput / tput(s1.cp.seconds)), goal: '>= 0.70x', pass: ferryTput >= 0.7 * tput(s1.cp.seconds) },
            { name: 'ferry throughput vs restic', measured: ratio(ferryTput / tput(s1.restic.seconds)), goal: '> 1.00x', pass: ferryTput > tput(s1.restic.seconds) },
          ],
          notes: [
            `ferry time is \`ferry protect --wait\` from request to job success (the job itself ran ${((Date.parse(s1.ferry.job.endedAt) - Date.parse(s1.ferry.job.createdAt)) / 1000).toFixed(2)} s); CPU is server + agent + CLI.`,
            `ferry CPU by thread: agent ${threadSummary(processes.agentThreads)}; server ${threadSummary(processes.serverThreads)}.`,
            memoryNote('`ferry protect --wait`', protectMemory),
            'borg is not a target of this scenario; it is timed because scenario 3 needs its first archive.',
          ],
        });
      }
    }

    // 2 and 3. Incremental cycles.
    if (opts.cycles > 0) {
      const cycles: Record<string, any>[] = [];
      for (let cycle = 1; cycle <= opts.cycles; cycle++) {
        const change = await overwriteRandomBlocks(disk, opts.changeFraction, `${opts.seed}:${cycle}`);
        const entry: Record<string, any> = { cycle, changedBlocks: change.blocks, changedBytes: change.bytes };
        await cold();
        const before = await cluster.sample();
        const { value: created, memory: cycleMemory } = await sampleMemoryDuring(cluster.pids, () => timed(() => cluster.cli(['points', 'create', 'bench', '--wait']), ferryCpu));
        const processes = sampleDelta(before, await cluster.sample());
        entry.ferry = { seconds: created.seconds, cpuSeconds: created.cpuSeconds, sentBytes: sumDisks(created.value.point, 'sentBytes'), changedBytes: sumDisks(created.value.point, 'changedBytes'), processes, memory: cycleMemory };
        await cold();
        entry.rsync = await timed(() => rsyncDelta(disk, rsyncDest));
        await cold();
        entry.restic = await timed(() => restic.backup(disk));
        await cold();
        entry.borg = await timed(() => borg.create(disk));
        cycles.push(entry);
        say(
          `cycle ${cycle}/${opts.cycles}: ferry ${formatSeconds(entry.ferry.seconds)} (${formatBytes(entry.ferry.sentBytes)} sent), rsync ${formatSeconds(entry.rsync.seconds)} (${formatBytes(entry.rsync.value.totalBytesSent)}), restic ${formatSeconds(entry.restic.seconds)} (${formatBytes(entry.restic.value.dataAdded)}), borg ${formatSeconds(entry.borg.seconds)} (${formatBytes(entry.borg.value.deduplicatedSize)})`,
        );
      }
      m.cycles = cycles;
      memory[2] = highestPeaks(cycles.map((c) => c.ferry.memory as FerryMemory));
      const med = (pick: (entry: Record<string, any>) => number) => median(cycles.map(pick));
      const ferryTime = med((c) => c.ferry.seconds);
      const ferrySent = med((c) => c.ferry.sentBytes);
      const rsyncTime = med((c) => c.rsync.seconds);
      const rsyncSent = med((c) => c.rsync.value.totalBytesSent);
      if (opts.only.has(2)) {
        const n = cycles.length;
        print({
          scenario: 2,
          title: `${SCENARIOS[2].replace('1%', `${(opts.changeFraction * 100).toFixed(2).replace(/\.?0+$/, '')}%`)}, median of ${n} cycle${n > 1 ? 's' : ''}`,
          columns: ['tool', 'time', 'CPU', 'bytes sent / added', 'tool time / ferry time'],
          rows: [
            ['ferry', formatSeconds(ferryTime), `${med((c) => c.ferry.cpuSeconds).toFixed(1)} s`, `${formatBytes(ferrySent)} sent`, '-'],
            ['rsync --inplace --no-whole-file', formatSeconds(rsyncTime), `${med((c) => c.rsync.cpuSeconds).toFixed(1)} s`, `${formatBytes(rsyncSent)} sent (${formatBytes(med((c) => c.rsync.value.literalBytes))} literal)`, ratio(rsyncTime / ferryTime)],
            ['restic backup', formatSeconds(med((c) => c.restic.seconds)), `${med((c) => c.restic.cpuSeconds).toFixed(1)} s`, `${formatBytes(med((c) => c.restic.value.dataAdded))} added`, ratio(med((c) => c.restic.seconds) / ferryTime)],
            ['borg create', formatSeconds(med((c) => c.borg.seconds)), `${med((c) => c.borg.cpuSeconds).toFixed(1)} s`, `${formatBytes(med((c) => c.borg.value.deduplicatedSize))} added`, ratio(med((c) => c.borg.seconds) / ferryTime)],
          ],
          targets: [
            { name: 'ferry cycle vs rsync delta (speed-up)', measured: ratio(rsyncTime / ferryTime), goal: '>= 3.00x', pass: rsyncTime >= 3 * ferryTime },
            { name: 'ferry bytes sent vs rsync', measured: `${formatBytes(ferrySent)} vs ${formatBytes(rsyncSent)}`, goal: 'fewer', pass: ferrySent < rsyncSent },
          ],
          notes: [
            `each cycle overwrites ${cycles[0]!.changedBlocks} random 4 KiB blocks (${formatBytes(cycles[0]!.changedBytes)}); ferry changed chunks: ${formatBytes(med((c) => c.ferry.changedBytes))} per cycle.`,
            `ferry sent = chunk payload uploaded (points' sentBytes); the agent passed ${formatBytes(med((c) => c.ferry.processes.agentWrittenBytes))} to write syscalls per cycle (HTTP bodies and headers, its state file, logs).`,
            `rsync sent = "Total bytes sent" of --stats; it also received ${formatBytes(med((c) => c.rsync.value.totalBytesReceived))} of block checksums.`,
            `ferry CPU by thread (cycle 1): agent ${threadSummary(cycles[0]!.ferry.processes.agentThreads)}; server ${threadSummary(cycles[0]!.ferry.processes.serverThreads)}.`,
            memoryNote(`\`ferry points create --wait\` (highest of ${n} cycle${n > 1 ? 's' : ''})`, memory[2]),
          ],
        });
      }
      if (opts.only.has(3)) {
        const store = path.join(cluster.serverDataDir, 'store');
        const sizes = {
          ferry: { bytes: await duBytes(store), allocated: await duAllocated(store), files: await fileCount(store) },
          restic: { bytes: await duBytes(path.join(work, 'restic-repo')), allocated: await duAllocated(path.join(work, 'restic-repo')), files: await fileCount(path.join(work, 'restic-repo')) },
          borg: { bytes: await duBytes(path.join(work, 'borg-repo')), allocated: await duAllocated(path.join(work, 'borg-repo')), files: await fileCount(path.join(work, 'borg-repo')) },
        };
        m.storeSizes = sizes;
        const row = (tool: string, size: { bytes: number; allocated: number; files: number }) => [
          tool,
          formatBytes(size.bytes),
          formatBytes(size.allocated),
          String(size.files),
          tool === 'ferry' ? '-' : ratio(sizes.ferry.bytes / size.bytes),
        ];
        print({
          scenario: 3,
          title: `${SCENARIOS[3]}: initial + ${cycles.length} cycles (${cycles.length + 1} versions of ${formatBytes(sizeBytes)})`,
          columns: ['store', 'du -sb', 'allocated', 'files', 'ferry / store'],
          rows: [row('ferry store/', sizes.ferry), row('restic repository', sizes.restic), row('borg repository', sizes.borg)],
          targets: [
            { name: 'ferry store vs restic repository', measured: ratio(sizes.ferry.bytes / sizes.restic.bytes), goal: '<= 1.00x', pass: sizes.ferry.bytes <= sizes.restic.bytes },
            { name: 'ferry store vs borg repository', measured: ratio(sizes.ferry.bytes / sizes.borg.bytes), goal: '<= 1.00x', pass: sizes.ferry.bytes <= sizes.borg.bytes },
          ],
          notes: [
            `restic repository format v${await restic.repositoryVersion()} (v2 compresses with zstd), borg with its default lz4 compression, ferry with its server defaults; allocated = file system blocks used (ferry keeps its chunks in pack files, one per upload batch).`,
            `logical data protected: ${cycles.length + 1} versions x ${formatBytes(sizeBytes)} = ${formatBytes((cycles.length + 1) * sizeBytes)}.`,
          ],
        });
      }
    }

    // 4. Materialise the latest point as a raw disk.
    if (opts.only.has(4)) {
      await cold();
      say('4: ferry failover --test --wait ...');
      const { value: failover, memory: failoverMemory } = await sampleMemoryDuring(cluster.pids, () =>
        timed(async () => {
          const document = await cluster.cli(['failover', 'bench', '--test', '--wait']);
          await fsyncFile(document.disks[0].path);
          return document;
        }, ferryCpu),
      );
      memory[4] = failoverMemory;
      const output = failover.value.disks[0].path as string;
      const identical = await run('cmp', ['-s', output, disk]).then(() => true, () => false);
      const outputAllocated = await duAllocated(output);
      await cluster.cli(['failover', 'cleanup', 'bench']);
      await cold();
      say('4: cp ...');
      const cp = await timed(() => cpCopy(disk, path.join(work, 'cp-copy.raw')));
      await fs.rm(path.join(work, 'cp-copy.raw'), { force: true });
      m.materialise = { ferry: { seconds: failover.seconds, cpuSeconds: failover.cpuSeconds, identical, outputAllocated }, cp };
      const speed = cp.seconds / failover.seconds;
      print({
        scenario: 4,
        title: `${SCENARIOS[4]} (${formatBytes(sizeBytes)})`,
        columns: ['tool', 'time', 'throughput', 'CPU', 'written (allocated)', 'ferry speed / tool'],
        rows: [
          ['ferry failover --test', formatSeconds(failover.seconds), formatRate(sizeBytes / failover.seconds), `${failover.cpuSeconds.toFixed(1)} s`, formatBytes(outputAllocated), '-'],
          ['cp', formatSeconds(cp.seconds), formatRate(sizeBytes / cp.seconds), `${cp.cpuSeconds.toFixed(1)} s`, formatBytes(sizeBytes), ratio(speed)],
        ],
        targets: [{ name: 'ferry materialise vs cp', measured: ratio(speed), goal: '>= 0.70x', pass: speed >= 0.7 }],
        notes: [
          `the materialised disk is ${identical ? 'byte-identical to' : 'DIFFERENT FROM'} the source image (cmp); ferry leaves all-zero chunks as holes.`,
          memoryNote('`ferry failover --test --wait`', failoverMemory),
        ],
      });
    }

    // 5. Sustained churn.
    if (opts.only.has(5)) {
      const interval = opts.churnIntervalSeconds;
      await cluster.cli(['policy', 'add', 'churn', '--interval', `${interval}s`, '--retention', `${Math.max(3600, interval * 4)}s`]);
      say('5: protecting the churn machine ...');
      await cluster.cli(['protect', 'churn', '--site', 'dr', '--policy', 'churn', '--wait']);
      await cluster.cli(['points', 'create', 'churn', '--wait']);
      const rate = opts.churnBytesPerSecond;
      say(`5: writer at ${(rate / 1e6).toFixed(0)} MB/s for ${opts.churnSeconds} s, a point every ${interval} s ...`);
      const before = await cluster.sample();
      const cpuBefore = await childrenCpu();
      const churnSampler = await MemorySampler.start(cluster.pids);
      const windowStart = Date.now();
      writer = spawnCollect(process.execPath, [...process.execArgv, path.join(import.meta.dirname, 'churn-writer.ts'), churnDisk, String(rate), String(opts.churnSeconds), String(opts.seed)]);
      let writerDone = false;
      const writerResult = writer.done.then((outcome) => ((writerDone = true), outcome));
      const rpoSamples: { at: number; rpoSeconds: number | null; state: string }[] = [];
      let pointsAtWriterEnd: number | null = null;
      const deadline = () => Date.now() - windowStart > (opts.churnSeconds + Math.max(300, interval * 4)) * 1000;
      for (;;) {
        const view = await cluster.api(`/machines/churn`);
        rpoSamples.push({ at: (Date.now() - windowStart) / 1000, rpoSeconds: view.rpoSeconds, state: view.replication.state });
        if (writerDone && pointsAtWriterEnd === null) pointsAtWriterEnd = view.pointCount;
        if (pointsAtWriterEnd !== null && view.pointCount > pointsAtWriterEnd) break; // first commit after the writer stopped
        if (deadline()) break;
        await sleep(1000);
      }
      const windowEnd = Date.now();
      const churnMemory = await churnSampler.stop();
      memory[5] = churnMemory;
      const written = JSON.parse((await writerResult).stdout.trim() || '{}') as { bytes: number; seconds: number };
      writer = null;
      const processes = sampleDelta(before, await cluster.sample());
      const writerCpu = (await childrenCpu()) - cpuBefore;
      const points = ((await cluster.cli(['points', 'list', 'churn'])).points as any[]).filter((point) => Date.parse(point.createdAt) > windowStart && Date.parse(point.createdAt) <= windowEnd);
      const sent = points.reduce((total, point) => total + sumDisks(point, 'sentBytes'), 0);
      const cycleSeconds = points.map((point) => (Date.parse(point.createdAt) - Date.parse(point.takenAt)) / 1000);
      const rpos = rpoSamples.map((sample) => sample.rpoSeconds ?? 0);
      const maxRpo = Math.max(...rpos);
      const cpu = processes.serverCpuSeconds + processes.agentCpuSeconds;
      const windowSeconds = (windowEnd - windowStart) / 1000;
      m.churn = { windowSeconds, written, writerCpu, points: points.map((p) => ({ id: p.id, takenAt: p.takenAt, createdAt: p.createdAt, sentBytes: sumDisks(p, 'sentBytes'), changedBytes: sumDisks(p, 'changedBytes') })), rpoSamples, maxRpo, processes, sentBytes: sent };
      print({
        scenario: 5,
        title: `${SCENARIOS[5]}: ${(written.bytes / written.seconds / 1e6).toFixed(1)} MB/s of random 4 KiB writes into a ${formatBytes(sizeBytes)} disk, a point every ${interval} s`,
        columns: ['measure', 'value'],
        rows: [
          ['window (writer start to first point after it stopped)', formatSeconds(windowSeconds)],
          ['written by the churn writer', `${formatBytes(written.bytes)} in ${formatSeconds(written.seconds)}`],
          ['points committed in the window', String(points.length)],
          ['cycle time (takenAt to commit), median / max', cycleSeconds.length ? `${formatSeconds(median(cycleSeconds))} / ${formatSeconds(Math.max(...cycleSeconds))}` : '-'],
          ['RPO, median / max of 1 s samples', `${median(rpos).toFixed(0)} s / ${maxRpo.toFixed(0)} s`],
          ['replicated (sentBytes of those points)', formatBytes(sent)],
          ['ferry CPU (server + agent)', `${cpu.toFixed(1)} s (${(cpu / windowSeconds).toFixed(2)} cores on average)`],
          ['ferry CPU per MB replicated', sent ? `${((cpu * 1000) / (sent / 1e6)).toFixed(1)} ms/MB` : '-'],
          ['writer CPU (not counted above)', `${writerCpu.toFixed(1)} s`],
          ['ferry peak RSS in the window, server / agent', `${formatMB(churnMemory.server.peakBytes)} / ${formatMB(churnMemory.agent.peakBytes)}`],
        ],
        targets: [{ name: 'max RPO under churn', measured: `${maxRpo.toFixed(0)} s`, goal: '< 60 s', pass: maxRpo < 60 }],
        notes: [
          `ferry CPU by thread: agent ${threadSummary(processes.agentThreads)}; server ${threadSummary(processes.serverThreads)}.`,
          memoryNote('the window', churnMemory),
          'MB = 10^6 bytes here, as the 20 MB/s churn limit is quoted.',
        ],
      });
    }
  } finally {
    writer?.child.kill('SIGTERM');
    await cluster.stop();
  }

  // Scenario 6 needs no server: `ferry image convert` against `qemu-img convert`, from the same image.
  try {
    if (opts.only.has(6)) {
      say(`scenario 6: ${SCENARIOS[6]}`);
      const { table, results: conversions } = await runConversionBenchmark({ baseImage: base, workDir: work, ferryBin: opts.ferryBin, say, dropCachesBetween: coldReads, runs: opts.conversionRuns });
      m.conversion = conversions;
      print(table);
    }
  } finally {
    clearInterval(loadTimer);
  }

  const memoryTarget = peakRssTarget(memory, opts.only);
  if (memoryTarget) results.summaryTargets.push(memoryTarget);
  results.load.after = await loadAverage();
  results.reference.after = await measureReference(work);
  results.endedAt = new Date().toISOString();
  const summary = renderSummary(tables, results.summaryTargets);
  console.log(`summary (load average before ${results.load.before.join(' ')}, after ${results.load.after.join(' ')}):\n${summary.text}\n`);
  const markdown = [
    `# Ferry benchmark results`,
    '',
    `Command: \`${results.command}\`, ${results.startedAt} to ${results.endedAt}.`,
    '',
    environmentMarkdown(results),
    '',
    '## Summary',
    '',
    summary.markdown,
    '',
    '## Scenarios',
    '',
    ...tables.map(renderMarkdown),
  ].join('\n');
  await fs.writeFile(path.join(work, 'bench-results.json'), `${JSON.stringify(results, null, 2)}\n`);
  await fs.writeFile(path.join(work, 'bench-results.md'), `${markdown}\n`);
  if (!opts.keep) {
    for (const entry of await fs.readdir(work)) {
      if (!['bench-results.json', 'bench-results.md'].includes(entry)) await fs.rm(path.join(work, entry), { recursive: true, force: true });
    }
  }
  say(`results: ${path.join(work, 'bench-results.json')} and bench-results.md${opts.keep ? '' : ' (the rest of the work dir was removed; --keep keeps it)'}`);
}

/** Sum of a per-disk counter of a point. */
function sumDisks(point: { disks: Record<string, number>[] } | undefined, key: 'sentBytes' | 'changedBytes'): number {
  return (point?.disks ?? []).reduce((total, disk) => total + (disk[key] ?? 0), 0);
}

/** "ferry peak RSS during STEP: server 123 MB (RSS 80 MB before, 95 MB after), agent ...": one note of a scenario. */
function memoryNote(step: string, memory: FerryMemory): string {
  const one = (name: string, process: FerryMemory['server']) => `${name} ${formatMB(process.peakBytes)} (RSS ${formatMB(process.startRssBytes)} before, ${formatMB(process.endRssBytes)} after)`;
  return `ferry peak RSS during ${step}: ${one('server', memory.server)}, ${one('agent', memory.agent)}; VmHWM and ${MEMORY_SAMPLE_MS} ms VmRSS samples of the node processes, MB = 10^6 bytes.`;
}

/** The summary's memory target: each daemon's highest peak RSS over the selected scenarios' Ferry steps, against 300 MB. */
function peakRssTarget(memory: Partial<Record<1 | 2 | 4 | 5, FerryMemory>>, only: ReadonlySet<number>): SummaryTarget | null {
  const scenarios = ([1, 2, 4, 5] as const).filter((scenario) => only.has(scenario) && memory[scenario]);
  if (!scenarios.length) return null;
  const peaks = highestPeaks(scenarios.map((scenario) => memory[scenario]!));
  return {
    scenarios: [...scenarios],
    name: 'peak RSS server / agent while replicating',
    measured: `${formatMB(peaks.server.peakBytes)} / ${formatMB(peaks.agent.peakBytes)}`,
    goal: '<= 300 MB',
    pass: peaks.server.peakBytes <= RSS_LIMIT_BYTES && peaks.agent.peakBytes <= RSS_LIMIT_BYTES,
  };
}

/** "main thread 12.3 s, other threads 4.5 s": the main (event loop) thread against the rest (libuv pool, V8 workers). */
function threadSummary(threads: Record<string, number>): string {
  const main = threads.main ?? 0;
  const others = Object.entries(threads).reduce((total, [name, seconds]) => (name === 'main' ? total : total + seconds), 0);
  return `main thread ${main.toFixed(1)} s, other threads ${others.toFixed(1)} s`;
}

function environmentMarkdown(results: Results): string {
  const env = results.environment;
  const lines = [
    '| | |',
    '|---|---|',
    `| Machine | ${env.cpus} × ${env.cpuModel}, ${env.memoryGiB} GiB RAM |`,
    `| OS, kernel | ${env.os}, Linux ${env.kernel} |`,
    `| Work dir file system | ${env.workDirFs} |`,
    `| Disk | ${env.disk} |`,
    `| Page cache | ${results.coldReads ? 'dropped before every timed step (cold reads)' : 'not dropped: warm reads'} |`,
    `| Load average | before ${results.load.before.join(' ')}, after ${results.load.after?.join(' ') ?? '-'}; 1-min load sampled every 30 s: mean ${results.load.samples.length ? (results.load.samples.reduce((a, b) => a + b, 0) / results.load.samples.length).toFixed(1) : '-'}, max ${results.load.samples.length ? Math.max(...results.load.samples).toFixed(1) : '-'} |`,
    `| Reference (start / end) | SHA-256 on one thread ${results.reference.before.sha256MiBPerSecond} / ${results.reference.after?.sha256MiBPerSecond ?? '-'} MiB/s; one durable 64 KiB file write (write, fsync, rename, fsync dir) ${results.reference.before.durableWrite64KiBMs} / ${results.reference.after?.durableWrite64KiBMs ?? '-'} ms, ${results.reference.before.plainWrite64KiBMs} / ${results.reference.after?.plainWrite64KiBMs ?? '-'} ms without fsync |`,
    `| Ferry | ${env.ferry.commit}${env.ferry.dirty ? ' + uncommitted changes' : ''} (${env.ferry.bin}), Node ${env.node} |`,
    ...Object.entries(results.tools).map(([tool, version]) => `| ${tool} | ${version} |`),
  ];
  if (results.image) {
    const tree = results.image.tree;
    lines.push(
      `| Image | ${formatBytes(results.image.sizeBytes)} raw, ext4, fully allocated (${formatBytes(results.image.allocatedBytes)} on disk); ${tree.files} files, ${formatBytes(tree.totalBytes)}: text ${formatBytes(tree.textBytes)}, binaries ${formatBytes(tree.binaryBytes)}, duplicates ${formatBytes(tree.duplicateBytes)}, small files ${formatBytes(tree.smallFileBytes)} |`,
    );
  }
  return lines.join('\n');
}

main().catch((error) => {
  console.error(`bench: ${error instanceof Error ? error.stack : String(error)}`);
  process.exit(1);
});
