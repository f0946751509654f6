/**
 * Fault injection (src/util/fault-injection.ts): a fault point does nothing unless FERRY_FAULT names
 * it, and then the process dies of SIGKILL right there, saying so on stderr.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { armedFault, faultPoint } from '../../src/util/fault-injection.js';

const moduleUrl = new URL('../../src/util/fault-injection.ts', import.meta.url).href;

/** Runs a child that passes fault point `point` with FERRY_FAULT=`armed`, then prints "survived". */
function runChild(armed: string | undefined, point: string) {
  const env = { ...process.env };
  delete env.FERRY_FAULT;
  if (armed !== undefined) env.FERRY_FAULT = armed;
  const script = `import { faultPoint } from ${JSON.stringify(moduleUrl)}; faultPoint(${JSON.stringify(point)}); console.log('survived');`;
  return spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { env, encoding: 'utf8' });
}

test('armed: the process dies of SIGKILL at that fault point and names it on stderr', () => {
  const child = runChild('commit-point', 'commit-point');
  assert.equal(child.signal, 'SIGKILL');
  assert.equal(child.stdout, '');
  assert.match(child.stderr, /FERRY_FAULT=commit-point: killing this process \(pid \d+\) with SIGKILL/);
});

test('another fault point armed, or none: the process goes on', () => {
  for (const armed of ['index-stored', undefined]) {
    const child = runChild(armed, 'commit-point');
    assert.equal(child.signal, null, child.stderr);
    assert.equal(child.stdout.trim(), 'survived');
  }
});

test('armedFault reports what FERRY_FAULT holds and whether it names a fault point', (t) => {
  const saved = process.env.FERRY_FAULT;
  t.after(() => {
    if (saved === undefined) delete process.env.FERRY_FAULT;
    else process.env.FERRY_FAULT = saved;
  });
  delete process.env.FERRY_FAULT;
  assert.equal(armedFault(), null);
  faultPoint('commit-point'); // not armed: returns
  process.env.FERRY_FAULT = 'index-stored';
  assert.deepEqual(armedFault(), { name: 'index-stored', known: true });
  process.env.FERRY_FAULT = 'commit-pont';
  assert.deepEqual(armedFault(), { name: 'commit-pont', known: false });
  faultPoint('commit-point'); // a misspelt fault arms nothing
});
