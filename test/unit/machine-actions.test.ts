/** What a machine's state, direction, test failover and points allow an operator to do (`MachineView.actions`). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { allowedActions } from '../../src/orchestration/machines.js';

test('actions follow the state table, the direction, the test failover and the points', () => {
  const forward = (state: string) => ({ state, direction: 'forward' });
  assert.deepEqual(allowedActions(forward('unprotected'), null, false), ['protect']);
  assert.deepEqual(allowedActions(forward('protecting'), null, false), [], 'nothing until the first point');
  assert.deepEqual(allowedActions(forward('protected'), null, true), ['pause', 'test-failover', 'planned-failover', 'unplanned-failover', 'migrate', 'test-migrate', 'export']);
  assert.deepEqual(allowedActions(forward('protected'), 'ready', true), ['pause', 'cleanup', 'planned-failover', 'unplanned-failover', 'migrate', 'export'], 'one test failover at a time');
  assert.deepEqual(allowedActions(forward('protected'), 'creating', true).includes('cleanup'), false, 'not while it is being written');
  assert.deepEqual(allowedActions(forward('failed-over'), null, true), ['change-point', 'commit', 'export']);
  assert.deepEqual(allowedActions(forward('committed'), null, true), ['reprotect', 'export']);
  assert.deepEqual(allowedActions({ state: 'protected', direction: 'reverse' }, null, true), ['pause', 'test-failover', 'failback', 'export'], 'in reverse: failback, not failover');
  assert.deepEqual(allowedActions(forward('migrated'), null, true), ['complete-migration', 'export']);
  assert.deepEqual(allowedActions(forward('migration-completed'), null, false), []);
});
