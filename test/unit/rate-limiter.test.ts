/** The agent's bandwidth limit: a token bucket, and the rates it understands. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseRate, RateLimiter } from '../../src/agent/rate-limiter.js';

test('sending 3 seconds worth after the 1-second burst takes about 2 seconds', async () => {
  const limiter = new RateLimiter(1024 * 1024);
  const started = Date.now();
  for (let n = 0; n < 12; n++) await limiter.take(256 * 1024); // 3 MiB at 1 MiB/s, 1 MiB of burst
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 1900 && elapsed < 3000, `took ${elapsed} ms`);
});

test('rates: bytes with binary suffixes, bits with decimal ones; nonsense refused', () => {
  assert.equal(parseRate('500K'), 500 * 1024);
  assert.equal(parseRate('20M'), 20 * 1024 * 1024);
  assert.equal(parseRate('20MB/s'), 20 * 1024 * 1024);
  assert.equal(parseRate('1G'), 1024 ** 3);
  assert.equal(parseRate('100mbit'), 12_500_000);
  assert.equal(parseRate('4096'), 4096);
  for (const bad of ['fast', '0', '-5M', '10 parsecs']) assert.throws(() => parseRate(bad), /not a rate/);
});
