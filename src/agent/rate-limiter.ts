/**
 * A token bucket limiting the bytes an agent sends per second (`ferry agent --max-rate`), shared by
 * all its jobs so the limit holds for the agent as a whole. Callers `take` what they are about to
 * send and wait until it fits; a batch larger than the bucket is let through on credit and paid back.
 */
import { FerryError } from '../errors.js';
import { sleep } from '../util/time.js';

/** Limits throughput to `bytesPerSecond`, allowing bursts of up to one second's worth. */
export class RateLimiter {
  private tokens: number;
  private updatedAt = Date.now();
  private queue: Promise<void> = Promise.resolve();

  constructor(readonly bytesPerSecond: number) {
    this.tokens = bytesPerSecond;
  }

  /** Resolves when `bytes` may be sent; calls are served in order. */
  take(bytes: number, signal?: AbortSignal): Promise<void> {
    const turn = this.queue.then(() => this.wait(bytes, signal));
    this.queue = turn.catch(() => undefined);
    return turn;
  }

  private async wait(bytes: number, signal?: AbortSignal): Promise<void> {
    this.refill();
    this.tokens -= bytes;
    if (this.tokens < 0) await sleep((-this.tokens / this.bytesPerSecond) * 1000, signal);
  }

  private refill(): void {
    const now = Date.now();
    this.tokens = Math.min(this.bytesPerSecond, this.tokens + ((now - this.updatedAt) / 1000) * this.bytesPerSecond);
    this.updatedAt = now;
  }
}

/**
 * Parses a rate: bytes per second with an optional binary suffix ("500K", "20M", "1G", "20MB/s"), or
 * bits per second ("100mbit", "1gbit", decimal as network links are).
 */
export function parseRate(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(k|m|g)?(bit|b(?:\/s)?|\/s)?\s*$/i.exec(text);
  if (!match || Number(match[1]) <= 0) {
    throw new FerryError('invalid-request', `--max-rate '${text}' is not a rate like 500K, 20M (bytes per second) or 100mbit`);
  }
  const value = Number(match[1]);
  const unit = (match[2] ?? '').toLowerCase();
  if ((match[3] ?? '').toLowerCase() === 'bit') {
    const scale = { '': 1, k: 1e3, m: 1e6, g: 1e9 }[unit]!;
    return Math.floor((value * scale) / 8);
  }
  const scale = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[unit]!;
  return Math.floor(value * scale);
}
