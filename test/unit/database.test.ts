/**
 * The metadata database's write modes (src/db/database.ts), on a real SQLite file: ordinary commits
 * are fsynced (`synchronous = FULL`); `withoutFsync` relaxes that for its own statements only, holding
 * the one connection so nothing else (no transaction) runs relaxed, and puts it back even when its
 * write fails. What it writes is committed like anything else.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import SqliteDatabase from 'better-sqlite3';
import { sql } from 'kysely';
import { type Db, openSqlite, withoutFsync } from '../../src/db/database.js';
import { tempDirFor } from './helpers.js';

async function synchronousSetting(db: Db): Promise<number> {
  const { rows } = await sql<{ synchronous: number }>`PRAGMA synchronous`.execute(db);
  return rows[0]!.synchronous;
}

const FULL = 2;
const NORMAL = 1;

test('withoutFsync relaxes synchronous for its own statements only; others wait for the connection', async (t) => {
  const file = path.join(await tempDirFor(t), 'ferry.db');
  const db = await openSqlite(file);
  t.after(() => db.destroy());
  assert.equal(await synchronousSetting(db), FULL);

  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  let seenInside = -1;
  const relaxed = withoutFsync(db, async (connection) => {
    seenInside = await synchronousSetting(connection);
    await sql`CREATE TABLE seen (at INTEGER)`.execute(connection);
    await held; // another caller's transaction starts meanwhile
    await sql`INSERT INTO seen VALUES (1)`.execute(connection);
  });
  let seenByTransaction = -1;
  const transaction = db.transaction().execute(async (trx) => {
    seenByTransaction = await synchronousSetting(trx);
  });
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(seenByTransaction, -1, 'the transaction waits for the held connection');
  release();
  await Promise.all([relaxed, transaction]);
  assert.equal(seenInside, NORMAL);
  assert.equal(seenByTransaction, FULL, 'the transaction ran with full fsync');
  assert.equal(await synchronousSetting(db), FULL);

  // A failing write puts the setting back too.
  await assert.rejects(withoutFsync(db, async (connection) => sql`INSERT INTO no_such_table VALUES (1)`.execute(connection)), /no such table/);
  assert.equal(await synchronousSetting(db), FULL);

  // What it wrote is committed: another connection reads it.
  const reader = new SqliteDatabase(file, { readonly: true });
  t.after(() => reader.close());
  assert.deepEqual(reader.prepare('SELECT at FROM seen').all(), [{ at: 1 }]);
});
