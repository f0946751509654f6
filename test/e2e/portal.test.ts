/**
 * The portal end to end: Debian's Chromium (driven by playwright-core) against a real server and agent
 * replicating real ext4 sample disks. A wrong token is refused; the operator signs in, adds a site and
 * edits a policy, protects a machine from its page and watches the initial replication reach 100% live
 * (through the event stream: the page learns of the end without asking), runs a test failover behind
 * its confirmation (Escape cancels one), cleans it up, sees the job history, creates a recovery plan and signs out.
 * A screenshot of each page goes to test/e2e/portal-output/ (docs/portal.md links them).
 * Needs /usr/bin/chromium: skipped without it, failed in CI (CI=true).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium, type Page } from 'playwright-core';
import type { JobView, MachineView } from '../../src/protocol/views.js';
import { connectAgent, defer, ext4Disk, sameBytes, startServer, tempDir, waitFor } from './harness.js';

/** Debian's Chromium, installed by .ci/run; playwright downloads no browser of its own. */
const CHROMIUM = '/usr/bin/chromium';
/** Where the screenshots go (ignored by git: they are made by every run). */
const OUTPUT_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'portal-output');

/** Skips (or, in CI, fails) without Chromium. */
function requireChromium(t: TestContext): boolean {
  if (existsSync(CHROMIUM)) return true;
  if (process.env.CI === 'true') assert.fail(`this test needs ${CHROMIUM} (CI installs Debian's chromium package)`);
  t.skip(`needs ${CHROMIUM} (apt-get install chromium)`);
  return false;
}

/** The token the portal keeps in the page's sessionStorage (a string expression: this file has no DOM types). */
async function storedToken(page: Page): Promise<string | null> {
  return page.evaluate<string | null>("sessionStorage.getItem('ferry.token')");
}

async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: path.join(OUTPUT_DIR, `${name}.png`), fullPage: true });
}

test('portal: sign in, protect a machine, watch replication, test failover and cleanup, job history', { timeout: 120_000 }, async (t) => {
  if (!requireChromium(t)) return;
  await fs.mkdir(OUTPUT_DIR, { recursive: true });
  const root = await tempDir(t);
  const webDisk = await ext4Disk(root, 'web-01', 32, { 'srv/index.html': '<h1>shop</h1>\n', 'srv/data.bin': randomBytes(6 * 1024 * 1024) });
  const dbDisk = await ext4Disk(root, 'db-01', 16, { 'var/lib/db/table.dat': randomBytes(1024 * 1024) });
  const server = await startServer(t, path.join(root, 'server'));
  await connectAgent(t, server, root, { 'web-01': [webDisk], 'db-01': [dbDisk] });

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
  defer(t, () => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const nav = page.getByRole('navigation', { name: 'Main' });
  page.setDefaultTimeout(20_000);
  const pageErrors: string[] = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('console', (message) => {
    // The refused sign-in is a 401 the browser logs by itself; anything else is the portal's fault.
    if (message.type() === 'error' && !/status of 401/.test(message.text())) pageErrors.push(message.text());
  });
  const apiRequests: { url: string; at: number }[] = [];
  page.on('request', (request) => {
    if (request.url().includes('/api/v1/')) apiRequests.push({ url: request.url(), at: Date.now() });
  });

  // --- sign-in: a wrong token is refused with the API's reason, and nothing is kept ------------
  await page.goto(server.url);
  await page.getByLabel('Admin token').fill('ferry_admin_not-a-real-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'Token refused: token not recognised by this server' }).waitFor();
  assert.equal(await storedToken(page), null, 'a refused token is not stored');
  await screenshot(page, 'sign-in');

  await page.getByLabel('Admin token').fill(server.adminToken);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
  assert.equal(await storedToken(page), server.adminToken, 'the token lives in sessionStorage');
  for (const name of ['web-01', 'db-01']) await page.locator(`tr[data-machine="${name}"]`).waitFor();
  await page.getByTestId('live-status').filter({ hasText: 'Live' }).waitFor();

  // --- sites and policies: add the recovery site, edit the default policy ----------------------
  await nav.getByRole('link', { name: 'Sites & policies' }).click();
  await page.getByRole('heading', { level: 1, name: 'Sites & policies' }).waitFor();
  const siteForm = page.getByRole('form', { name: 'Add a site' });
  await siteForm.getByLabel('Name').fill('dr');
  await siteForm.getByLabel('Path on the server').fill(path.join(root, 'site-dr'));
  await siteForm.getByRole('button', { name: 'Add site' }).click();
  await page.getByRole('status').filter({ hasText: 'Site dr created' }).waitFor();
  await page.getByRole('button', { name: 'Edit site dr' }).click();
  const siteDialog = page.getByRole('dialog', { name: 'Edit site dr' });
  await siteDialog.getByLabel('Disk format').selectOption('vhd:fixed');
  await siteDialog.getByText('Saving changes where and how the next failovers').waitFor();
  await siteDialog.getByRole('button', { name: 'Save' }).click();
  await siteDialog.waitFor({ state: 'detached' });
  await page.getByRole('row', { name: /dr/ }).getByText('vhd:fixed').waitFor();
  assert.equal((await server.admin.get<{ diskFormat: string }>('/sites/dr')).diskFormat, 'vhd:fixed', 'PATCH /sites/dr saved');
  await server.admin.patch('/sites/dr', { diskFormat: 'raw' }); // the test failover below compares a raw copy
  await page.getByRole('button', { name: 'Edit policy default' }).click();
  const policyDialog = page.getByRole('dialog', { name: 'Edit policy default' });
  await policyDialog.getByLabel('RPO threshold').fill('15m');
  await policyDialog.getByText('Saving changes rpo threshold').waitFor();
  await policyDialog.getByRole('button', { name: 'Save' }).click();
  await policyDialog.waitFor({ state: 'detached' });
  await page.getByRole('row', { name: /default/ }).getByText('15m 0s').waitFor();
  assert.equal((await server.admin.get<{ rpoThresholdSeconds: number }>('/policies/default')).rpoThresholdSeconds, 900, 'PATCH /policies/default saved');
  await screenshot(page, 'sites-policies');

  // --- protect web-01 from its page and watch the initial replication live ---------------------
  await nav.getByRole('link', { name: 'Overview' }).click();
  await page.getByRole('link', { name: 'web-01' }).click();
  await page.getByRole('heading', { level: 1, name: /web-01/ }).waitFor();
  await page.getByRole('button', { name: 'Protect…' }).click();
  const protectDialog = page.getByRole('dialog', { name: 'Protect machine: web-01' });
  await protectDialog.getByLabel('Recovery site').selectOption('dr');
  await protectDialog.getByText('Protect web-01: the agent test-agent copies its 1 disk (32 MiB) in full').waitFor();
  await protectDialog.getByRole('button', { name: 'Protect', exact: true }).click();
  await protectDialog.waitFor({ state: 'detached' });
  const protectedAt = Date.now();

  const initialRow = page.locator('tr[data-job-kind="initial-replication"]');
  await initialRow.waitFor();
  const seenPercents = new Set<string>();
  await waitFor(async () => {
    const value = await initialRow.getByRole('progressbar').getAttribute('aria-valuenow');
    if (value !== null) seenPercents.add(value);
    return (await initialRow.getAttribute('data-job-state')) === 'succeeded' && value === '100';
  }, 'the initial replication to reach 100% on the page', 60_000);
  await page.getByRole('heading', { level: 1, name: /web-01 protected/ }).waitFor();
  const [initialJob] = (await server.admin.get<{ jobs: JobView[] }>('/jobs?machine=web-01')).jobs.filter((job) => job.kind === 'initial-replication');
  assert.equal(initialJob?.state, 'succeeded');
  // The page heard of the end from the stream: its last load of jobs came before the job ended.
  const lastJobLoad = Math.max(...apiRequests.filter((request) => /\/api\/v1\/jobs\?/.test(request.url) && request.at >= protectedAt).map((request) => request.at));
  assert.ok(lastJobLoad < Date.parse(initialJob!.endedAt!), `the end of the job arrived by the stream (last jobs load ${lastJobLoad}, job ended ${initialJob!.endedAt})`);
  assert.ok(apiRequests.some((request) => request.url.endsWith('/api/v1/stream')), 'the portal reads the stream');
  assert.ok(seenPercents.has('100'), `progress seen: ${[...seenPercents].join(', ')}`);

  // --- test failover with confirmation, then clean-up ------------------------------------------
  // Keyboard: Escape closes a confirmation without doing anything, and focus returns to its button.
  const testButton = page.getByRole('button', { name: 'Test failover…', exact: true });
  await testButton.focus();
  await page.keyboard.press('Enter');
  await page.getByRole('dialog', { name: 'Test failover: web-01' }).waitFor();
  await page.keyboard.press('Escape');
  await page.getByRole('dialog').waitFor({ state: 'detached' });
  assert.equal(await testButton.evaluate((button) => button === button.ownerDocument.activeElement), true, 'focus returns to the button');
  assert.equal((await server.admin.get<MachineView>('/machines/web-01')).testFailover, null, 'Escape started nothing');

  await testButton.click();
  const testDialog = page.getByRole('dialog', { name: 'Test failover: web-01' });
  assert.ok(await testDialog.getByLabel(/^Latest point/).isChecked(), 'the latest point is chosen by default');
  await testDialog.getByText('Test failover of web-01: the server writes the disks of the latest point at site dr as a separate test copy').waitFor();
  await screenshot(page, 'confirm-test-failover');
  await testDialog.getByRole('button', { name: 'Start test failover' }).click();
  await testDialog.waitFor({ state: 'detached' });
  await page.getByRole('button', { name: 'Clean up test failover…' }).waitFor({ timeout: 60_000 });
  const tested = await server.admin.get<MachineView>('/machines/web-01');
  assert.equal(tested.testFailover?.state, 'ready');
  assert.ok(await sameBytes(tested.testFailover!.disks[0]!.path, webDisk), 'the test copy is the source disk, byte for byte');
  await page.locator('dd').filter({ hasText: tested.testFailover!.disks[0]!.path }).waitFor();
  await page.getByRole('img', { name: /RPO now/ }).waitFor();
  await screenshot(page, 'machine');

  await page.getByRole('button', { name: 'Clean up test failover…' }).click();
  const cleanupDialog = page.getByRole('dialog', { name: 'Clean up test failover: web-01' });
  await cleanupDialog.getByText(`the server deletes the test copy's disks (${tested.testFailover!.disks[0]!.path})`).waitFor();
  await cleanupDialog.getByRole('button', { name: 'Clean up' }).click();
  await cleanupDialog.waitFor({ state: 'detached' });
  await page.getByRole('button', { name: 'Test failover…', exact: true }).waitFor({ timeout: 60_000 });
  assert.equal((await server.admin.get<MachineView>('/machines/web-01')).testFailover, null, 'the test failover is gone');
  assert.equal(existsSync(tested.testFailover!.disks[0]!.path), false, 'its disk was deleted');

  // --- job history -----------------------------------------------------------------------------
  await nav.getByRole('link', { name: 'Jobs' }).click();
  await page.getByRole('heading', { level: 1, name: 'Jobs' }).waitFor();
  for (const kind of ['initial-replication', 'test-failover', 'test-failover-cleanup']) {
    await page.locator(`tr[data-job-kind="${kind}"][data-job-state="succeeded"]`).first().waitFor();
  }
  await screenshot(page, 'jobs');
  await page.locator('tr[data-job-kind="test-failover"]').getByRole('link', { name: 'test-failover' }).click();
  await page.getByRole('heading', { level: 1, name: /test-failover succeeded/ }).waitFor();
  await screenshot(page, 'job');

  // --- recovery plans: create one from the portal ----------------------------------------------
  await nav.getByRole('link', { name: 'Recovery plans' }).click();
  await page.getByRole('heading', { level: 1, name: 'Recovery plans' }).waitFor();
  await page.getByLabel('Name').fill('shop');
  await page.getByLabel('Description').fill('web tier, then the database');
  await page.getByLabel('Groups').fill('web-01\ndb-01');
  await page.getByRole('button', { name: 'Create plan' }).click();
  await page.getByRole('heading', { level: 2, name: 'shop' }).waitFor();
  await screenshot(page, 'plans');

  // --- overview once more (now with a protected machine and events), then sign out -------------
  await nav.getByRole('link', { name: 'Overview' }).click();
  await page.locator('tr[data-machine="web-01"]').getByText('protected', { exact: true }).waitFor();
  await screenshot(page, 'overview');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Admin token').waitFor();
  assert.equal(await storedToken(page), null, 'sign-out forgets the token');

  // --- serving: client routes fall back to the portal, the API keeps its JSON 404s ------------
  const deepLink = await fetch(`${server.url}/machines/web-01`);
  assert.equal(deepLink.status, 200);
  assert.match(deepLink.headers.get('content-type') ?? '', /^text\/html/);
  assert.match(deepLink.headers.get('content-security-policy') ?? '', /default-src 'self'/);
  const unknownApi = await fetch(`${server.url}/api/v1/no-such-route`);
  assert.equal(unknownApi.status, 404);
  assert.equal(((await unknownApi.json()) as { error: { code: string } }).error.code, 'not-found');
  assert.equal((await fetch(`${server.url}/assets/missing.js`)).status, 404);
  assert.equal((await fetch(`${server.url}/api/v1/stream`)).status, 401, 'the stream needs a token');

  assert.deepEqual(pageErrors, [], 'no errors in the page');
});
