import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { FerryError } from '../../src/errors.js';
import { type MachineEvent, type MachineState, allows, jobTransitions, machineTransitions, nextState, testFailoverTransitions } from '../../src/orchestration/lifecycle.js';
import { ferryError } from './helpers.js';

describe('lifecycle', () => {
  test('machines: unprotected -> protecting -> protected', () => {
    assert.equal(nextState(machineTransitions, "machine 'web-01'", 'unprotected', 'protect'), 'protecting');
    assert.equal(nextState(machineTransitions, "machine 'web-01'", 'protecting', 'initial-point-committed'), 'protected');
    assert.equal(nextState(machineTransitions, "machine 'web-01'", 'protected', 'pause'), 'paused');
    assert.equal(nextState(machineTransitions, "machine 'web-01'", 'paused', 'resume'), 'protected');
  });

  test('jobs: queued may start, be cancelled or fail; running may succeed, fail or be cancelled', () => {
    assert.equal(nextState(jobTransitions, 'job j', 'queued', 'start'), 'running');
    assert.equal(nextState(jobTransitions, 'job j', 'queued', 'cancel'), 'cancelled');
    assert.equal(nextState(jobTransitions, 'job j', 'queued', 'fail'), 'failed');
    assert.equal(nextState(jobTransitions, 'job j', 'running', 'succeed'), 'succeeded');
    assert.equal(nextState(jobTransitions, 'job j', 'running', 'fail'), 'failed');
    assert.equal(nextState(jobTransitions, 'job j', 'running', 'cancel'), 'cancelled');
  });

  test('test failovers: creating -> ready or failed -> cleaning, and cleanup may be repeated', () => {
    assert.equal(nextState(testFailoverTransitions, 'tf', 'creating', 'written'), 'ready');
    assert.equal(nextState(testFailoverTransitions, 'tf', 'creating', 'fail'), 'failed');
    assert.equal(nextState(testFailoverTransitions, 'tf', 'ready', 'cleanup'), 'cleaning');
    assert.equal(nextState(testFailoverTransitions, 'tf', 'failed', 'cleanup'), 'cleaning');
    assert.equal(nextState(testFailoverTransitions, 'tf', 'cleaning', 'cleanup'), 'cleaning');
  });

  test('a refused transition is a conflict naming the subject, the state and what is allowed there', () => {
    assert.throws(
      () => nextState(machineTransitions, "machine 'web-01'", 'protecting', 'protect'),
      ferryError('conflict', ["machine 'web-01'", 'is protecting', 'protect', 'allowed there: initial-point-committed']),
    );
    assert.throws(() => nextState(jobTransitions, 'job j1', 'queued', 'succeed'), ferryError('conflict', ['job j1 is queued', 'start, cancel, fail']));
    assert.throws(() => nextState(machineTransitions, "machine 'web-01'", 'unprotected', 'initial-point-committed'), ferryError('conflict', ['is unprotected', 'allowed there: protect']));
  });

  test('a terminal state allows nothing, and says so', () => {
    for (const state of ['succeeded', 'failed', 'cancelled'] as const) {
      for (const event of ['start', 'succeed', 'fail', 'cancel'] as const) {
        assert.throws(() => nextState(jobTransitions, 'job j', state, event), ferryError('conflict', [`is ${state}`, 'nothing']));
      }
    }
    assert.throws(() => nextState(machineTransitions, 'm', 'protected', 'protect'), ferryError('conflict', ['is protected', 'allowed there: pause']));
    assert.throws(() => nextState(machineTransitions, 'm', 'protecting', 'pause'), ferryError('conflict', ['is protecting', 'allowed there: initial-point-committed']));
  });

  test('the conflict details carry state, event and allowed events for programs', () => {
    try {
      nextState(testFailoverTransitions, 'tf', 'ready', 'written');
      assert.fail('expected a conflict');
    } catch (error) {
      assert.ok(error instanceof FerryError);
      assert.deepEqual(error.details, { state: 'ready', event: 'written', allowed: ['cleanup'] });
    }
  });

  test('allows agrees with nextState for every state and event of every table', () => {
    const tables = [
      [machineTransitions, ['protect', 'initial-point-committed']],
      [jobTransitions, ['start', 'succeed', 'fail', 'cancel']],
      [testFailoverTransitions, ['written', 'fail', 'cleanup']],
    ] as const;
    for (const [table, events] of tables) {
      for (const state of Object.keys(table)) {
        for (const event of events) {
          const typedTable = table as Record<string, Partial<Record<string, string>>>;
          const allowed = allows(typedTable, state, event);
          if (allowed) assert.equal(nextState(typedTable, 's', state, event), typedTable[state]![event]);
          else assert.throws(() => nextState(typedTable, 's', state, event), ferryError('conflict'));
        }
      }
    }
  });

  test('the machine table is closed and connected: every target is a state, every state is reachable from unprotected', () => {
    const table = machineTransitions as Record<string, Partial<Record<string, string>>>;
    const states = new Set(Object.keys(table));
    for (const [state, events] of Object.entries(table)) {
      for (const [event, target] of Object.entries(events)) assert.ok(states.has(target!), `${state} --${event}--> ${target}: not a state`);
    }
    const reached = new Set(['unprotected']);
    for (let grew = true; grew; ) {
      grew = false;
      for (const state of [...reached]) for (const target of Object.values(table[state]!)) if (!reached.has(target!)) grew = reached.add(target!).size > 0;
    }
    assert.deepEqual([...reached].sort(), [...states].sort());
  });

  test('a failover goes protected -> failing-over -> failed-over -> committed, and rolls back to protected', () => {
    const walk = (state: MachineState, ...events: MachineEvent[]) => events.reduce((current, event) => nextState(machineTransitions, 'm', current, event), state);
    assert.equal(walk('protected', 'failover', 'failover-done', 'commit'), 'committed');
    assert.equal(walk('paused', 'failover', 'failover-failed'), 'protected');
    assert.equal(walk('protected', 'failover', 'failover-done', 'change-point', 'change-point-failed'), 'failed-over');
    assert.throws(() => walk('protected', 'commit'), ferryError('conflict', ['is protected', 'cannot commit']));
    assert.throws(() => walk('protecting', 'failover'), ferryError('conflict', ['is protecting', 'cannot failover']));
  });
});
