/** `ferry store stats`, `ferry store verify [--deep]`, `ferry store gc [--grace D]`. */
import type { Command } from 'commander';
import { FerryError } from '../errors.js';
import type { StoreGcView, StoreStatsView, StoreVerifyView } from '../protocol/store.js';
import { parseDuration } from '../util/duration.js';
import { CliContext } from './context.js';
import { formatBytes, printFields, printTable } from './output.js';

/** Verification and collection run to completion before the server answers: wait as long as that takes. */
const MAINTENANCE_TIMEOUT_MS = 7 * 86_400_000;

function ratio(value: number | null): string | null {
  return value === null ? null : value.toFixed(2);
}

function printStats(stats: StoreStatsView): void {
  printFields([
    ['location', stats.location],
    ['points', `${stats.points} (${stats.machines} machine(s))`],
    ['logical size', `${formatBytes(stats.logicalBytes)} over all points; ${formatBytes(stats.latestLogicalBytes)} in each machine's newest point`],
    ['logical data', `${formatBytes(stats.logicalDataBytes)} (non-zero chunks over all points)`],
    ['unique chunks', `${stats.uniqueChunks}, ${formatBytes(stats.uniqueChunkBytes)}`],
    ['stored', `${formatBytes(stats.stored.totalBytes)} (${stats.stored.chunks} chunk(s) in ${stats.stored.packs} pack(s) ${formatBytes(stats.stored.chunkBytes)}, ${stats.stored.indexes} index(es) ${formatBytes(stats.stored.indexBytes)})`],
    [
      'unreferenced',
      `${stats.unreferenced.chunks} chunk(s) ${formatBytes(stats.unreferenced.chunkBytes)}, ${stats.unreferenced.indexes} index(es) ${formatBytes(stats.unreferenced.indexBytes)}`,
    ],
    ['dedupe ratio', ratio(stats.dedupeRatio)],
    ['compression ratio', ratio(stats.compressionRatio)],
    ['unreadable indexes', stats.unreadableIndexes > 0 ? `${stats.unreadableIndexes} (left out above; run \`ferry store verify\`)` : 0],
  ]);
}

function pointList(points: { machine: string; pointId: string }[]): string {
  return points.map((point) => `${point.machine} ${point.pointId}`).join(', ');
}

export function registerStoreCommands(program: Command): void {
  const store = program.command('store').description('the chunk store: statistics, verification, garbage collection');

  store
    .command('stats')
    .description('sizes of the points and of the store, dedupe and compression ratios')
    .action(async (_options: unknown, command: Command) => {
      const cli = CliContext.of(command);
      cli.print(await cli.client.get<StoreStatsView>('/store/stats', undefined, MAINTENANCE_TIMEOUT_MS), printStats);
    });

  store
    .command('verify')
    .description('check that every index and chunk the recovery points need is in the store; fails naming every affected point')
    .option('--deep', 'read every chunk back and re-hash it (otherwise only check it exists)')
    .action(async (options: { deep?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const report = await cli.client.request<StoreVerifyView>('POST', '/store/verify', { json: { deep: Boolean(options.deep) }, timeoutMs: MAINTENANCE_TIMEOUT_MS });
      const checked = `${report.checked.points} point(s), ${report.checked.indexes} index(es), ${report.checked.chunks} chunk(s)${report.deep ? `, ${formatBytes(report.checked.bytesRead)} read back` : ''}`;
      if (report.affectedPoints.length === 0) {
        cli.print(report, () => console.log(`store verified (${report.deep ? 'deep' : 'quick'}): ${checked}; no problems`));
        return;
      }
      if (!cli.json) {
        printTable(
          ['PROBLEM', 'OBJECT', 'POINTS', 'DETAIL'],
          report.problems.map((problem) => [problem.kind, problem.chunk ?? problem.index, pointList(problem.points), problem.message]),
        );
        if (report.problemsOmitted > 0) console.log(`... and ${report.problemsOmitted} more problem(s)`);
      }
      // With --json, the error body printed by main() carries the whole report in details.report.
      const count = report.problems.length + report.problemsOmitted;
      throw new FerryError('corrupt-data', `store verification found ${count} problem(s) (checked ${checked}); affected points: ${pointList(report.affectedPoints)}`, {
        details: { report },
      });
    });

  store
    .command('gc')
    .description('delete chunks and indexes no recovery point references (replication in progress is never affected)')
    .option('--grace <duration>', "keep unreferenced objects younger than this (default: the server's, 1h)")
    .action(async (options: { grace?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const body = options.grace === undefined ? {} : { graceSeconds: parseDuration(options.grace, '--grace') };
      const result = await cli.client.request<StoreGcView>('POST', '/store/gc', { json: body, timeoutMs: MAINTENANCE_TIMEOUT_MS });
      cli.print(result, (gc) => {
        console.log(
          `garbage collection${gc.interrupted ? ' (interrupted)' : ''}: deleted ${gc.deleted.chunks} chunk(s) and ${gc.deleted.indexes} index(es), ${formatBytes(gc.deleted.bytes)} freed`,
        );
        const recent = gc.keptRecent.chunks + gc.keptRecent.indexes;
        const heldBack = gc.heldBackByJob ? `, held back by replication job ${gc.heldBackByJob}` : '';
        console.log(`kept ${gc.marked.chunks} referenced chunk(s) and ${recent} unreferenced object(s) newer than ${gc.cutoff}${heldBack}`);
        console.log(
          `packs: ${gc.packs.deleted} deleted, ${gc.packs.repacked} rewritten without their dead chunks` +
            (gc.unreclaimed.chunks > 0 ? `; ${gc.unreclaimed.chunks} dead chunk(s), ${formatBytes(gc.unreclaimed.bytes)}, left in packs that are mostly live` : ''),
        );
      });
    });
}
