/** Retention thinning: every point recently, then hourly, then daily; app points on their own schedule. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultThinning, pointsToKeep, type RetainedPoint } from '../../src/orchestration/retention.js';

const HOUR = 3600_000;
const DAY = 24 * HOUR;
const now = Date.parse('2026-06-30T12:00:00Z');
const rules = { retentionSeconds: 30 * 86400, keepAllSeconds: 6 * 3600, hourlySeconds: 7 * 86400, appRetentionSeconds: 0 };

/** A point every 15 minutes for 40 days, every 4th one app-consistent. */
function history(): RetainedPoint[] {
  const points: RetainedPoint[] = [];
  for (let n = 0; n < 40 * 96; n++) points.push({ id: `p${n}`, takenAt: now - n * 15 * 60_000, consistency: n % 4 === 2 ? 'app' : 'crash' });
  return points;
}

test('every point for 6 h, one per hour to 7 days, one per day to 30 days, nothing older', () => {
  const points = history();
  const kept = pointsToKeep(points, rules, now);
  const keptPoints = points.filter((point) => kept.has(point.id));
  const ageOf = (point: RetainedPoint) => (now - point.takenAt) / HOUR;
  assert.equal(keptPoints.filter((point) => ageOf(point) <= 6).length, 25, 'all 25 points of the last 6 h');
  const hourly = keptPoints.filter((point) => ageOf(point) > 6 && ageOf(point) <= 7 * 24);
  const hours = new Set(hourly.map((point) => Math.floor(point.takenAt / HOUR)));
  assert.equal(hourly.length, hours.size, 'at most one per hour bucket');
  assert.ok(hourly.length >= 160 && hourly.length <= 163, `about one per hour for 6.75 days: ${hourly.length}`);
  const daily = keptPoints.filter((point) => ageOf(point) > 7 * 24);
  assert.equal(daily.length, new Set(daily.map((point) => Math.floor(point.takenAt / DAY))).size, 'one per day bucket');
  assert.ok(daily.length >= 22 && daily.length <= 24, `about one per day for 23 days: ${daily.length}`);
  assert.ok(keptPoints.every((point) => ageOf(point) <= 30 * 24), 'nothing past retention');
  assert.ok(hourly.every((point) => point.consistency === 'app'), 'an hour with an app point keeps the app point');
});

test('the newest and pinned points are always kept; app points may be kept longer', () => {
  const old = [
    { id: 'newest', takenAt: now - 90 * DAY, consistency: 'crash' as const },
    { id: 'older', takenAt: now - 100 * DAY, consistency: 'crash' as const },
    { id: 'app-95d', takenAt: now - 95 * DAY, consistency: 'app' as const },
  ];
  assert.deepEqual([...pointsToKeep(old, rules, now)], ['newest'], 'the newest point survives retention, alone');
  assert.deepEqual([...pointsToKeep(old, rules, now, new Set(['older']))].sort(), ['newest', 'older'], 'a pinned point too');
  const appRules = { ...rules, appRetentionSeconds: 120 * 86400 };
  assert.deepEqual([...pointsToKeep(old, appRules, now)].sort(), ['app-95d', 'newest'], 'app points on their own schedule');
});

test('defaults follow the retention', () => {
  assert.deepEqual(defaultThinning(86400), { keepAllSeconds: 6 * 3600, hourlySeconds: 86400, appRetentionSeconds: 0 });
  assert.deepEqual(defaultThinning(3600), { keepAllSeconds: 3600, hourlySeconds: 3600, appRetentionSeconds: 0 });
});
