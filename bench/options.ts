/**
 * Options of `npm run bench`, parsed and validated once; everything after this trusts them.
 *
 *   npm run bench -- --size 256M --only 1,2 --churn-seconds 60 --keep
 */
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The five scenarios of the benchmark. */
export const SCENARIOS = {
  1: 'Initial replication',
  2: 'Incremental cycle (1% of 4 KiB blocks overwritten)',
  3: 'Store size after the incremental cycles',
  4: 'Materialise a point to a raw disk',
  5: 'Sustained churn',
  6: 'Disk image conversion vs qemu-img',
} as const;
export type Scenario = keyof typeof SCENARIOS;

export interface BenchOptions {
  /** Disk image size in bytes (a multiple of 1 MiB). */
  sizeBytes: number;
  /** Fraction of the file system filled with generated files. */
  fill: number;
  only: Set<Scenario>;
  /** Incremental cycles for scenarios 2 and 3 (scenario 2 alone runs one). */
  cycles: number;
  /** Fraction of the disk's 4 KiB blocks overwritten per incremental cycle. */
  changeFraction: number;
  churnSeconds: number;
  /** Churn writer rate in bytes per second (20 MB/s = 20e6). */
  churnBytesPerSecond: number;
  /** Point interval of the churn policy, seconds. */
  churnIntervalSeconds: number;
  workDir: string;
  /** True when --work-dir was not given: a fresh temporary directory. */
  workDirIsTemp: boolean;
  keep: boolean;
  dropCaches: boolean;
  seed: number;
  /** The `ferry` command to benchmark (bin/ferry of this repository unless --ferry; see `ferryCommand`). */
  ferryBin: string;
  /** Times each conversion pair of scenario 6 is timed (each tool), the median reported. */
  conversionRuns: number;
}

const USAGE = `usage: npm run bench -- [options]

  --size <n>            disk image size, e.g. 2G (default), 512M, 256M
  --fill <fraction>     part of the file system filled with files (default 0.6)
  --only <list>         scenarios to run, e.g. 1,2,3 (default all: 1-6; 6 needs qemu-img)
  --cycles <n>          incremental cycles for scenarios 2-3 (default 10)
  --change <percent>    % of 4 KiB blocks overwritten per cycle (default 1)
  --churn-seconds <n>   length of the churn run of scenario 5 (default 180)
  --churn-rate <MB/s>   churn writer rate in MB/s, 1 MB = 10^6 bytes (default 20)
  --churn-interval <s>  point interval during churn (default 30)
  --work-dir <dir>      where images, stores and repositories go (default: a new temp dir)
  --keep                keep the work dir (otherwise only results and logs are kept)
  --no-drop-caches      do not drop the page cache before each timed step
  --seed <n>            seed of the generated files and changes (default 1)
  --ferry <path>        ferry command to benchmark (default: bin/ferry of this repo; a .js entry
                        such as an older build's bin/ferry.js is run under node)
  --conversion-runs <n> times each conversion pair of scenario 6 is timed, per tool; the median
                        counts (default 3)
`;

/** Parses "2G", "256M", "512MiB", "1048576" into bytes. */
export function parseSize(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!match) throw new Error(`bad size '${text}' (use e.g. 2G or 256M)`);
  const unit = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[match[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.round(Number(match[1]) * unit);
}

function positive(name: string, text: string | undefined, integer = true): number {
  const value = Number(text);
  if (!text || !Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) throw new Error(`${name} needs a positive ${integer ? 'integer' : 'number'}, got '${text}'`);
  return value;
}

/** Parses argv (without node and the script); throws Error with a message for a person. */
export function parseOptions(argv: string[]): BenchOptions | 'help' {
  const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const options: BenchOptions = {
    sizeBytes: 2 * 2 ** 30,
    fill: 0.6,
    only: new Set(Object.keys(SCENARIOS).map(Number) as Scenario[]),
    cycles: 10,
    changeFraction: 0.01,
    churnSeconds: 180,
    churnBytesPerSecond: 20e6,
    churnIntervalSeconds: 30,
    workDir: '',
    workDirIsTemp: true,
    keep: false,
    dropCaches: true,
    seed: 1,
    ferryBin: path.join(repo, 'bin', 'ferry'),
    conversionRuns: 3,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const value = () => {
      const next = argv[++i];
      if (next === undefined) throw new Error(`${flag} needs a value`);
      return next;
    };
    switch (flag) {
      case '-h':
      case '--help':
        return 'help';
      case '--size':
        options.sizeBytes = parseSize(value());
        break;
      case '--fill':
        options.fill = positive('--fill', value(), false);
        break;
      case '--only': {
        const list = value().split(',').map((part) => Number(part.trim()));
        if (list.some((n) => !(n in SCENARIOS))) throw new Error(`--only takes scenario numbers 1-6, e.g. 1,2,3`);
        options.only = new Set(list as Scenario[]);
        break;
      }
      case '--cycles':
        options.cycles = positive('--cycles', value());
        break;
      case '--change':
        options.changeFraction = positive('--change', value(), false) / 100;
        break;
      case '--churn-seconds':
        options.churnSeconds = positive('--churn-seconds', value());
        break;
      case '--churn-rate':
        options.churnBytesPerSecond = positive('--churn-rate', value(), false) * 1e6;
        break;
      case '--churn-interval':
        options.churnIntervalSeconds = positive('--churn-interval', value());
        break;
      case '--work-dir':
        options.workDir = path.resolve(value());
        options.workDirIsTemp = false;
        break;
      case '--keep':
        options.keep = true;
        break;
      case '--no-drop-caches':
        options.dropCaches = false;
        break;
      case '--seed':
        options.seed = positive('--seed', value());
        break;
      case '--ferry':
        options.ferryBin = path.resolve(value());
        break;
      case '--conversion-runs':
        options.conversionRuns = positive('--conversion-runs', value());
        break;
      default:
        throw new Error(`unknown option ${flag}\n\n${USAGE}`);
    }
  }
  if (options.sizeBytes < 64 * 2 ** 20 || options.sizeBytes % 2 ** 20 !== 0) throw new Error('--size must be a whole number of MiB, at least 64M');
  if (options.fill >= 0.9) throw new Error('--fill must be below 0.9 (ext4 needs room for its metadata)');
  if (options.changeFraction > 0.5) throw new Error('--change is a percentage of blocks, at most 50');
  if (!options.only.has(3)) options.cycles = options.only.has(2) ? 1 : 0;
  if (!options.workDir) options.workDir = path.join(os.tmpdir(), `ferry-bench-${process.pid}`);
  return options;
}

export { USAGE };
