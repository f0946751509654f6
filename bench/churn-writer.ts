/**
 * The churn writer of scenario 5, run as its own process:
 *
 *   node --import tsx bench/churn-writer.ts IMAGE BYTES_PER_SECOND SECONDS SEED
 *
 * Overwrites random 4 KiB-aligned blocks of IMAGE with random bytes at a steady BYTES_PER_SECOND
 * (in 50 ms steps, writes go to the page cache like a guest's would) for SECONDS, then prints
 * `{"bytes", "blocks", "seconds"}` on stdout. Stops early on SIGTERM and still prints.
 */
import { closeSync, fstatSync, openSync, writeSync } from 'node:fs';
import { RandomBytes, seededRandom } from './disk-image.js';

const [image, rateText, secondsText, seedText] = process.argv.slice(2);
if (!image || !rateText || !secondsText) {
  console.error('usage: churn-writer.ts IMAGE BYTES_PER_SECOND SECONDS [SEED]');
  process.exit(2);
}
const rate = Number(rateText);
const seconds = Number(secondsText);
const fd = openSync(image, 'r+');
const blockCount = Math.floor(fstatSync(fd).size / 4096);
const random = seededRandom(Number(seedText ?? 1));
const source = new RandomBytes(`churn:${seedText ?? 1}`);

const start = Date.now();
let blocks = 0;
let stopping = false;
process.on('SIGTERM', () => (stopping = true));

function finish(): void {
  closeSync(fd);
  process.stdout.write(`${JSON.stringify({ bytes: blocks * 4096, blocks, seconds: (Date.now() - start) / 1000 })}\n`);
  process.exit(0);
}

function step(): void {
  const elapsed = (Date.now() - start) / 1000;
  if (stopping || elapsed >= seconds) return finish();
  const due = Math.floor((rate * elapsed) / 4096) - blocks;
  if (due > 0) {
    const data = source.next(due * 4096);
    for (let n = 0; n < due; n++) writeSync(fd, data, n * 4096, 4096, Math.floor(random() * blockCount) * 4096);
    blocks += due;
  }
  setTimeout(step, 50);
}
step();
