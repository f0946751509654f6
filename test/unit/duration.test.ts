import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { formatDuration, parseDuration } from '../../src/util/duration.js';
import { ferryError } from './helpers.js';

describe('durations', () => {
  test('parseDuration reads single units, combinations and bare seconds', () => {
    assert.equal(parseDuration('30s'), 30);
    assert.equal(parseDuration('5m'), 300);
    assert.equal(parseDuration('24h'), 86400);
    assert.equal(parseDuration('365d'), 365 * 86400);
    assert.equal(parseDuration('2w'), 14 * 86400);
    assert.equal(parseDuration('1h30m'), 5400);
    assert.equal(parseDuration('1d2h3m4s'), 86400 + 7200 + 180 + 4);
    assert.equal(parseDuration('90'), 90);
    assert.equal(parseDuration(' 5m '), 300);
  });

  test('parseDuration refuses anything else with invalid-request naming the input', () => {
    for (const text of ['abc', '5x', '', ' ', '-5m', '1.5h', '5 m', 'm5', '5m-', '1h 30m', '5M']) {
      assert.throws(() => parseDuration(text), ferryError('invalid-request', [`'${text}'`]), `'${text}' should be refused`);
    }
  });

  test('the error names what was being parsed', () => {
    assert.throws(() => parseDuration('soon', 'retention'), ferryError('invalid-request', ["retention 'soon'"]));
  });

  test('formatDuration writes the largest units first and skips empty ones', () => {
    assert.equal(formatDuration(5400), '1h30m');
    assert.equal(formatDuration(90), '1m30s');
    assert.equal(formatDuration(86400), '1d');
    assert.equal(formatDuration(86400 + 1), '1d1s');
    assert.equal(formatDuration(59), '59s');
    assert.equal(formatDuration(0), '0s');
    assert.equal(formatDuration(-5), '0s');
    assert.equal(formatDuration(29.6), '30s');
  });

  test('formatDuration output parses back to the same seconds', () => {
    for (const seconds of [1, 59, 60, 61, 3599, 3600, 5400, 86399, 86400, 90061, 365 * 86400]) {
      assert.equal(parseDuration(formatDuration(seconds)), seconds);
    }
  });
});
