/** The honest label of a point, for every combination of snapshot method, hook and validity. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { labelConsistency } from '../../src/agent/replicator.js';

const snapshot = (method: 'reflink' | 'fsfreeze' | 'none', atOneInstant: boolean, valid: boolean) => ({ method, atOneInstant, stillValid: () => valid });

test('labels are never higher than what was done', () => {
  const cases: [ReturnType<typeof snapshot>, boolean, string][] = [
    [snapshot('none', false, false), false, 'inconsistent'], // read live, nothing held it still
    [snapshot('none', false, false), true, 'app'], // the hook held the machine quiet for the whole read
    [snapshot('reflink', true, true), false, 'crash'], // one disk cloned at one instant
    [snapshot('reflink', true, true), true, 'app'],
    [snapshot('reflink', false, false), false, 'inconsistent'], // several disks cloned one after another
    [snapshot('reflink', false, false), true, 'app'], // ...while the hook held the machine quiet
    [snapshot('fsfreeze', true, true), false, 'crash'],
    [snapshot('fsfreeze', true, true), true, 'app'],
    [snapshot('fsfreeze', true, false), false, 'inconsistent'], // thawed by the bound before the read ended
    [snapshot('fsfreeze', true, false), true, 'inconsistent'], // the hook was released at the snapshot
  ];
  for (const [given, hook, expected] of cases) {
    const notes: string[] = [];
    assert.equal(labelConsistency(given, hook, notes), expected, `${given.method} oneInstant=${given.atOneInstant} valid=${given.stillValid()} hook=${hook}`);
    if (given.method === 'fsfreeze' && !given.stillValid()) assert.match(notes.join(), /thawed before the read ended/);
  }
});
