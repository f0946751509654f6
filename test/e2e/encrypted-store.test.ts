/**
 * An encrypted chunk store end to end: a server whose store is created with a key file, an agent
 * protecting a real ext4 disk, test failover byte-identical; no byte of the disk's distinctive content
 * anywhere in the store's files; a restart with the wrong key (or none) refused with a one-line reason and
 * nothing changed; a restart with the right key restores every point and keeps replicating.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { writeFilesInImage } from '../../src/demo/ext4-image.js';
import { encodeChunkObject } from '../../src/store/chunk-object.js';
import { connectAgent, ext4Disk, ferryBin, ferryJson, freePort, startServer, tempDir, restoresIdentical } from './harness.js';

const MARKER = 'FERRY-E2E-PLAINTEXT-7c41b9 must never appear in the store';

/** Runs `ferry server ...` expecting it to exit on its own (within 30 s); returns its exit code and stderr. */
async function serverExit(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [ferryBin, 'server', ...args], { env: { ...process.env, FERRY_LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (exitCode) => resolve(exitCode)));
  clearTimeout(timer);
  return { code, stderr };
}

/** Every file under `directory` (recursively) with its bytes. */
async function filesUnder(directory: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  for (const entry of await fs.readdir(directory, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) files.set(path.relative(directory, path.join(entry.parentPath, entry.name)), await fs.readFile(path.join(entry.parentPath, entry.name)));
  }
  return files;
}

test('encrypted store: failover restores byte-identical, no plaintext at rest, wrong key refused, right key restores', async (t) => {
  const root = await tempDir(t);
  const keyFile = path.join(root, 'store.key');
  await fs.writeFile(keyFile, randomBytes(32), { mode: 0o600 });
  const dataDir = path.join(root, 'server');
  const port = await freePort();
  const keyArgs = ['--store-key-file', keyFile];
  let server = await startServer(t, dataDir, { port, extraArgs: keyArgs });

  // The marker every 16 KiB among random bytes: chunks zstd cannot shrink, so without encryption the
  // marker would be in the store as it is (checked below); and as text, which compression alone hides.
  const blob = Array.from({ length: 16 }, () => [randomBytes(16 * 1024 - MARKER.length), Buffer.from(MARKER)]).flat();
  const disk = await ext4Disk(root, 'web', 32, {
    'app/notes.txt': `${MARKER}\n`.repeat(200),
    'app/blob.bin': Buffer.concat(blob),
    'etc/hostname': 'web\n',
  });
  const image = await fs.readFile(disk);
  const plainObjects = Array.from({ length: image.length / 65536 }, (_, n) => encodeChunkObject(image.subarray(n * 65536, (n + 1) * 65536), 'k', { compressionLevel: 3, dataKey: null }));
  assert.ok(plainObjects.some((object) => object.includes(MARKER)), 'control: an unencrypted zstd store would show the marker');
  await connectAgent(t, server, root, { web: [disk] });
  await ferryJson(server, ['site', 'add', 'dr', '--path', path.join(root, 'site')]);

  await ferryJson(server, ['protect', 'web', '--site', 'dr', '--wait']);
  const atPoint1 = path.join(root, 'web-at-point1.img');
  await fs.copyFile(disk, atPoint1);
  const [point1] = (await ferryJson(server, ['points', 'list', 'web'])).points;
  assert.ok(await restoresIdentical(server, 'web', point1.id, [atPoint1]), 'test failover of an encrypted store is byte-identical');

  const config = JSON.parse(await fs.readFile(path.join(dataDir, 'store', 'config.json'), 'utf8'));
  assert.equal(config.encryption.cipher, 'aes-256-gcm');
  assert.equal(config.encryption.kdf.name, 'keyfile');
  assert.equal(config.compression.algorithm, 'zstd');
  const stored = await filesUnder(path.join(dataDir, 'store'));
  assert.ok([...stored.keys()].some((file) => file.startsWith('packs/')), 'the store holds packs of chunks');
  for (const [file, content] of stored) {
    assert.equal(content.includes(MARKER), false, `${file} must not hold plaintext from the disk`);
  }

  // A restart with the wrong key, or without one: refused with one line, the store left as it was.
  await server.kill('SIGTERM');
  const before = await filesUnder(path.join(dataDir, 'store'));
  const wrongKey = path.join(root, 'wrong.key');
  await fs.writeFile(wrongKey, randomBytes(32).toString('hex') + '\n');
  const listen = ['--data-dir', dataDir, '--listen', `127.0.0.1:${port}`];
  const wrong = await serverExit([...listen, '--store-key-file', wrongKey]);
  assert.equal(wrong.code, 4, wrong.stderr);
  assert.match(wrong.stderr, /^ferry: the store at \S+ is encrypted and the key given does not open it\n$/);
  const missing = await serverExit(listen);
  assert.equal(missing.code, 2, missing.stderr);
  assert.match(missing.stderr, /^ferry: the store at \S+ is encrypted; give its key with --store-key-file/);
  const passphrase = await serverExit(listen, { FERRY_STORE_PASSPHRASE: 'not how this store was made' });
  assert.equal(passphrase.code, 4, passphrase.stderr);
  assert.match(passphrase.stderr, /encrypted with a key file, but a passphrase was given/);
  const conflicting = await serverExit([...listen, ...keyArgs, '--store-compression', 'none']);
  assert.equal(conflicting.code, 4, conflicting.stderr);
  assert.match(conflicting.stderr, /created with compression 'zstd'/);
  assert.deepEqual(await filesUnder(path.join(dataDir, 'store')), before, 'refused starts change nothing in the store');

  // The right key: the old point restores, and the agent (still running) replicates new changes.
  server = await startServer(t, dataDir, { port, extraArgs: [...keyArgs, '--store-compression', 'zstd'] });
  assert.ok(await restoresIdentical(server, 'web', point1.id, [atPoint1]), 'point 1 restores after the restart');
  await writeFilesInImage(disk, [{ fsPath: '/etc/hostname', data: 'web after restart\n' }]);
  const atPoint2 = path.join(root, 'web-at-point2.img');
  await fs.copyFile(disk, atPoint2);
  const point2 = (await ferryJson(server, ['points', 'create', 'web', '--wait'])).point;
  assert.ok(point2.disks[0].sentBytes > 0);
  assert.ok(await restoresIdentical(server, 'web', point2.id, [atPoint2]), 'a point taken after the restart restores');
});
