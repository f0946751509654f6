/**
 * Opens the metadata database: SQLite (better-sqlite3) in the data directory, in WAL mode with full
 * fsync on commit, migrated to the newest schema before use.
 */
import SqliteDatabase from 'better-sqlite3';
import { Kysely, Migrator, sql, SqliteDialect } from 'kysely';
import { FerryError } from '../errors.js';
import { migrationProvider } from './migrations.js';
import type { Database } from './schema.js';

/** The query builder over Ferry's schema. */
export type Db = Kysely<Database>;

/** Databases opened by `openSqlite`: the ones `withoutFsync` relaxes. */
const sqliteDatabases = new WeakSet<Db>();

/** Opens (creating if needed) the SQLite database at `filePath` and applies pending migrations. */
export async function openSqlite(filePath: string): Promise<Db> {
  const sqlite = new SqliteDatabase(filePath);
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('synchronous = FULL'); // a committed transaction survives power loss
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
  sqliteDatabases.add(db);
  await migrate(db);
  return db;
}

/**
 * Runs `write` (statements outside any transaction) with SQLite's `synchronous = NORMAL`: its commit is
 * not fsynced, so it survives the server crashing but may be lost with the machine's power; the
 * database stays consistent either way (WAL), and the next ordinary commit or checkpoint makes it
 * durable too. For frequent writes worth little after a power loss: an agent's last-seen time, a job's
 * progress. Why: better-sqlite3 commits on the event loop, and while a replication's packs are being
 * fsynced such a commit waited 60-150 ms for its own fsync, every request of the server with it.
 * `write` gets the one connection, held throughout, so no other statement (no transaction) runs under
 * the relaxed setting. On a database not opened by `openSqlite`, it just runs `write`.
 */
export async function withoutFsync<T>(db: Db, write: (connection: Db) => Promise<T>): Promise<T> {
  if (!sqliteDatabases.has(db)) return write(db);
  return db.connection().execute(async (connection) => {
    await sql`PRAGMA synchronous = NORMAL`.execute(connection);
    try {
      return await write(connection);
    } finally {
      await sql`PRAGMA synchronous = FULL`.execute(connection);
    }
  });
}

/** Applies every pending migration; throws io-error naming the failed one. */
export async function migrate(db: Db): Promise<void> {
  const migrator = new Migrator({ db, provider: migrationProvider });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    const failed = results?.find((result) => result.status === 'Error')?.migrationName ?? 'unknown';
    throw new FerryError('io-error', `database migration ${failed} failed: ${(error as Error).message}`, { cause: error });
  }
}
