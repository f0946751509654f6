/**
 * Verification of what recovery points need from the store: every index they name exists and decodes
 * (its checksum and name match), and every chunk those indexes name exists (quick) or, with `deep`,
 * reads back with a valid header and hashes to its name. Each problem names every point it affects.
 *
 * Memory: chunks are checked a window at a time and their data is dropped at once; what is kept is one
 * entry per distinct chunk checked (so a chunk shared by many points is read once) and the problems.
 */
import { FerryError } from '../errors.js';
import { type ChunkStore, mapLimited } from './chunk-store.js';

/** One recovery point, as verify names it. */
export interface PointRef {
  machine: string;
  pointId: string;
}

/** One committed point and the indexes of its disks, as verify is given it. */
export interface PointToVerify extends PointRef {
  indexHashes: readonly string[];
}

/** Kinds of problem verify reports. */
export type VerifyProblemKind = 'missing-index' | 'corrupt-index' | 'missing-chunk' | 'corrupt-chunk';

/** One missing or damaged object and every point that needs it. */
export interface VerifyProblem {
  kind: VerifyProblemKind;
  /** The index's name, for index problems. */
  index?: string;
  /** The chunk's name (its SHA-256), for chunk problems. */
  chunk?: string;
  /** What exactly is wrong, for a person. */
  message: string;
  /** Every point that names the object, sorted by machine then point id. */
  points: PointRef[];
}

/** What one verification found. */
export interface VerifyReport {
  deep: boolean;
  /** Points, distinct indexes and distinct chunks looked at; `bytesRead` is chunk bytes read back (deep). */
  checked: { points: number; indexes: number; chunks: number; bytesRead: number };
  /** Every problem, the most serious kinds first (indexes, then chunks), at most `maxProblems`. */
  problems: VerifyProblem[];
  /** Problems found beyond `maxProblems` (their points are still in `affectedPoints`). */
  problemsOmitted: number;
  /** Every point at least one problem affects, sorted; empty when the store is sound. */
  affectedPoints: PointRef[];
}

/** Options of one verification. */
export interface VerifyOptions {
  /** Read every chunk back and re-hash it, instead of only checking it exists. */
  deep: boolean;
  /** Stops the verification (throws the signal's reason) between windows. */
  signal?: AbortSignal;
  /** Most problems listed in the report; default 1000. */
  maxProblems?: number;
}

/** Distinct chunks checked together (each window's reads are in flight at once, up to the concurrency). */
const WINDOW = 1024;
const QUICK_CONCURRENCY = 32;
const DEEP_CONCURRENCY = 8;

const PENDING = 'pending' as const;

/**
 * Checks every index of `points` and every chunk those indexes name. Resolves with a report; it throws
 * only when it cannot do its job (aborted, or an error that is not about one object's integrity).
 */
export async function verifyStore(store: ChunkStore, points: readonly PointToVerify[], options: VerifyOptions): Promise<VerifyReport> {
  const pointsByIndex = new Map<string, PointRef[]>();
  for (const point of points) {
    for (const indexHash of new Set(point.indexHashes)) {
      const users = pointsByIndex.get(indexHash) ?? [];
      users.push({ machine: point.machine, pointId: point.pointId });
      pointsByIndex.set(indexHash, users);
    }
  }

  const problems: { entry: VerifyProblem; points: Map<string, PointRef> }[] = [];
  const report = (entry: Omit<VerifyProblem, 'points'>, users: readonly PointRef[]) => {
    const problem = { entry: { ...entry, points: [] }, points: new Map<string, PointRef>() };
    problems.push(problem);
    addUsers(problem.points, users);
    return problem;
  };
  // A chunk's outcome, kept so a chunk shared by many indexes is checked once: null = sound.
  const chunkOutcome = new Map<string, (typeof problems)[number] | null | typeof PENDING>();
  const checked = { points: points.length, indexes: 0, chunks: 0, bytesRead: 0 };
  const concurrency = options.deep ? DEEP_CONCURRENCY : QUICK_CONCURRENCY;

  for (const indexHash of [...pointsByIndex.keys()].sort()) {
    options.signal?.throwIfAborted();
    const users = pointsByIndex.get(indexHash)!;
    checked.indexes++;
    let index;
    try {
      index = await store.getIndex(indexHash);
    } catch (error) {
      const kind = integrityProblem(error, 'index');
      report({ kind, index: indexHash, message: describe(store, kind, 'index', indexHash, error) }, users);
      continue;
    }

    let window: string[] = [];
    const checkWindow = async () => {
      const hashes = window;
      window = [];
      options.signal?.throwIfAborted();
      const outcomes = await mapLimited(hashes, concurrency, (hash) => checkChunk(store, hash, options.deep));
      hashes.forEach((hash, position) => {
        const outcome = outcomes[position]!;
        checked.chunks++;
        checked.bytesRead += outcome.bytesRead;
        chunkOutcome.set(hash, outcome.kind ? report({ kind: outcome.kind, chunk: hash, message: outcome.message }, users) : null);
      });
    };
    for (let position = 0; position < index.chunkCount; position++) {
      if (index.isZeroAt(position)) continue;
      const hash = index.hashAt(position).toString('hex');
      const known = chunkOutcome.get(hash);
      if (known === undefined) {
        chunkOutcome.set(hash, PENDING); // checked with this window, on behalf of this index's points
        window.push(hash);
        if (window.length >= WINDOW) await checkWindow();
      } else if (known !== null && known !== PENDING) {
        addUsers(known.points, users); // a bad chunk an earlier index also names
      }
    }
    if (window.length > 0) await checkWindow();
  }

  const maxProblems = options.maxProblems ?? 1000;
  const affected = new Map<string, PointRef>();
  const finished = problems.map(({ entry, points: users }) => {
    addUsers(affected, [...users.values()]);
    return { ...entry, points: sortRefs([...users.values()]) };
  });
  const order: VerifyProblemKind[] = ['missing-index', 'corrupt-index', 'missing-chunk', 'corrupt-chunk'];
  finished.sort((a, b) => order.indexOf(a.kind) - order.indexOf(b.kind));
  return {
    deep: options.deep,
    checked,
    problems: finished.slice(0, maxProblems),
    problemsOmitted: Math.max(0, finished.length - maxProblems),
    affectedPoints: sortRefs([...affected.values()]),
  };
}

async function checkChunk(store: ChunkStore, hash: string, deep: boolean): Promise<{ kind: VerifyProblemKind | null; message: string; bytesRead: number }> {
  try {
    if (!deep) {
      return (await store.hasChunk(hash)) ? { kind: null, message: '', bytesRead: 0 } : { kind: 'missing-chunk', message: missingChunkMessage(store, hash), bytesRead: 0 };
    }
    const data = await store.getChunk(hash); // checks the header, the codec's integrity and the hash
    return { kind: null, message: '', bytesRead: data.length };
  } catch (error) {
    const kind = integrityProblem(error, 'chunk');
    return { kind, message: describe(store, kind, 'chunk', hash, error), bytesRead: 0 };
  }
}

/**
 * Which problem an error reading an object means. A read the medium refused (io-error) is reported as
 * corrupt, not hidden: a bad sector looks exactly like that. Anything else is not about the object.
 */
function integrityProblem(error: unknown, object: 'index' | 'chunk'): VerifyProblemKind {
  if (error instanceof FerryError) {
    if (error.code === 'not-found') return `missing-${object}`;
    if (error.code === 'corrupt-data' || error.code === 'io-error') return `corrupt-${object}`;
  }
  throw error;
}

/** "not in the store", naming the packs that could not be read when the store was opened (it may have been in one). */
function missingChunkMessage(store: ChunkStore, hash: string): string {
  const damaged = store.damagedContainers;
  if (damaged.length === 0) return `chunk ${hash} is not in the store`;
  const named = damaged.slice(0, 3).map((container) => container.key).join(', ');
  return `chunk ${hash} is not in the store; ${damaged.length} damaged pack(s) could not be read (${named}${damaged.length > 3 ? ', ...' : ''}) and may have held it`;
}

function describe(store: ChunkStore, kind: VerifyProblemKind, object: 'index' | 'chunk', name: string, error: unknown): string {
  if (kind === 'missing-chunk') return missingChunkMessage(store, name);
  if (kind.startsWith('missing')) return `${object} ${name} is not in the store`;
  const message = (error as Error).message;
  return message.includes(name) ? message : `${object} ${name} is damaged: ${message}`;
}

function addUsers(into: Map<string, PointRef>, users: readonly PointRef[]): void {
  for (const user of users) into.set(`${user.machine}\u0000${user.pointId}`, user);
}

function sortRefs(refs: PointRef[]): PointRef[] {
  return refs.sort((a, b) => a.machine.localeCompare(b.machine) || a.pointId.localeCompare(b.pointId));
}
