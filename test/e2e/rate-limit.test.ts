/** `ferry agent --max-rate`: replication of incompressible data is held to the rate, and still correct. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { connectAgent, ferryJson, sameBytes, startServer, tempDir } from './harness.js';

test('an agent limited to 2 MiB/s takes about 3 s for 8 MiB of new data', async (t) => {
  const root = await tempDir(t);
  const disk = path.join(root, 'vm.raw');
  await fs.writeFile(disk, randomBytes(8 * 1024 * 1024));
  const server = await startServer(t, path.join(root, 'server'));
  await connectAgent(t, server, root, { vm: [disk] }, ['--max-rate', '2M']);
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);
  const started = Date.now();
  await ferryJson(server, ['protect', 'vm', '--site', 'dr', '--wait']);
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 2500, `8 MiB at 2 MiB/s with a 2 MiB burst cannot take ${elapsed} ms`);
  const [point] = (await ferryJson(server, ['points', 'list', 'vm'])).points;
  assert.equal(point.disks[0].sentBytes, 8 * 1024 * 1024);
  const restored = await ferryJson(server, ['failover', 'vm', '--test', '--wait']);
  assert.ok(await sameBytes(restored.disks[0].path, disk));
});
