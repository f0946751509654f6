/**
 * Opens the metadata database: SQLite (better-sqlite3) in the data directory, in WAL mode with full
 * fsync on commit, migrated to the newest schema before use.
 */
import SqliteDatabase from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect } from 'kysely';
import { FerryError } from '../errors.js';
import { migrationProvider } from './migrations.js';
import type { Database } from './schema.js';

/** The query builder over Ferry's schema. */
export type Db = Kysely<Database>;

/** Opens (creating if needed) the SQLite database at `filePath` and applies pending migrations. */
export async function openSqlite(filePath: string): Promise<Db> {
  const sqlite = new SqliteDatabase(filePath);
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('synchronous = FULL'); // a committed transaction survives power loss
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
  await migrate(db);
  return db;
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
