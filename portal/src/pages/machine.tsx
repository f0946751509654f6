/**
 * A machine: its state, direction, health and why, replication progress, disks, an RPO chart, the
 * timeline of its recovery points, its jobs and events, and the actions its state allows (each behind
 * a confirmation that says what will happen).
 */
import { useCallback, useEffect, useId, useState } from 'react';
import type { MachineView, PointView, PolicyView, SiteView } from '../../../src/protocol/views.js';
import { MACHINE_ACTIONS, type MachineAction } from '../actions.js';
import { api, segment } from '../api.js';
import { Empty, ErrorNotice, HealthBadge, ProgressBar, StateBadge } from '../components/bits.js';
import { ConfirmDialog } from '../components/dialog.js';
import { usePaged } from '../components/pager.js';
import { RpoChart } from '../components/rpo-chart.js';
import { formatAgo, formatBytes, formatDuration, formatTime } from '../format.js';
import { Link } from '../router.js';
import { useLive, useNow, useSession, useTitle } from '../session.js';
import { JobTable } from './jobs.js';
import { EventList, RpoMeter } from './overview.js';

/** The machine page for `name`. */
export function MachinePage({ name }: { name: string }) {
  useTitle(name);
  const live = useLive();
  const { store } = useSession();
  const now = useNow();
  const machine = live.machines.find((known) => known.name === name);
  const [points, setPoints] = useState<PointView[] | null>(null);
  const [pointsError, setPointsError] = useState<string | null>(null);
  const [open, setOpen] = useState<string | null>(null);
  const [started, setStarted] = useState<{ text: string; jobId: string | null } | null>(null);

  // Points change when a point is committed or expires: reload them when the machine says so.
  const pointsKey = machine ? `${machine.pointCount}/${machine.lastPointAt ?? ''}` : '';
  useEffect(() => {
    if (!machine) return;
    api<{ points: PointView[] }>('GET', `/machines/${segment(name)}/points`).then(
      (answer) => {
        setPoints(answer.points);
        setPointsError(null);
      },
      (error: Error) => setPointsError(error.message),
    );
  }, [name, pointsKey, Boolean(machine)]);

  const machineJobs = live.jobs.filter((job) => job.machine === name);
  const machineEvents = live.events.filter((event) => event.machine === name);
  const pointPages = usePaged(points ?? [], 'points');
  const eventPages = usePaged(machineEvents, 'events');

  if (!live.loaded) return <p>Loading…</p>;
  if (!machine) {
    return (
      <>
        <h1 tabIndex={-1}>{name}</h1>
        <ErrorNotice>
          There is no machine named {name}. It may have been renamed or never registered: see the <Link to="/">overview</Link> for the machines the server
          knows.
        </ErrorNotice>
      </>
    );
  }

  const replicationJob = machine.replication.jobId ? live.jobs.find((job) => job.id === machine.replication.jobId) : undefined;
  const percent = replicationJob?.progress.percent ?? machine.replication.percent;
  const known = machine.actions.filter((action) => MACHINE_ACTIONS[action]);
  const cliOnly = machine.actions.filter((action) => !MACHINE_ACTIONS[action]);
  const action = open ? MACHINE_ACTIONS[open] : undefined;

  return (
    <>
      <h1 tabIndex={-1}>
        {machine.name} <StateBadge state={machine.state} /> <HealthBadge level={machine.health.level} />
      </h1>

      {started && (
        <p className="notice" role="status">
          {started.text}
          {started.jobId && (
            <>
              {' '}
              Follow it: <Link to={`/jobs/${started.jobId}`}>job {started.jobId}</Link>.
            </>
          )}
        </p>
      )}

      <section aria-labelledby="actions-heading">
        <h2 id="actions-heading">Actions</h2>
        {known.length === 0 ? (
          <Empty>
            No operation is allowed while {machine.name} is {machine.state}
            {machine.replication.jobId ? '; wait for the running job to end' : ''}.
          </Empty>
        ) : (
          <div className="actions">
            {known.map((name) => (
              <button key={name} type="button" className={MACHINE_ACTIONS[name]!.danger ? 'button-danger-outline' : ''} onClick={() => setOpen(name)}>
                {MACHINE_ACTIONS[name]!.label}
              </button>
            ))}
          </div>
        )}
        {cliOnly.length > 0 && (
          <p className="help">
            Also allowed now, from the CLI: {cliOnly.join(', ')} (see <code>ferry --help</code>).
          </p>
        )}
      </section>

      {action && open && (
        <ActionDialog
          key={open}
          action={action}
          machine={machine}
          points={points ?? []}
          onClose={() => setOpen(null)}
          onDone={(answer) => {
            const job = (answer as { job?: { id: string } } | null)?.job;
            setStarted({ text: `${action.title}: ${machine.name}. The server accepted the request.`, jobId: job?.id ?? null });
            void store.reload();
          }}
        />
      )}

      <section aria-labelledby="status-heading">
        <h2 id="status-heading">Status</h2>
        <dl className="facts">
          <dt>State</dt>
          <dd>
            {machine.state}, replicating {machine.direction === 'reverse' ? 'in reverse (from the recovery site)' : 'forward (to the recovery site)'}
          </dd>
          <dt>Health</dt>
          <dd>
            {machine.health.level}
            {machine.health.reasons.length > 0 && (
              <ul>
                {machine.health.reasons.map((reason) => (
                  <li key={reason}>{reason}</li>
                ))}
              </ul>
            )}
          </dd>
          <dt>Replication</dt>
          <dd>
            {machine.replication.state}
            {machine.replication.resyncReason && ` (${machine.replication.resyncReason})`}
            {percent !== null && machine.replication.jobId && (
              <>
                <ProgressBar percent={percent} label={`${machine.replication.state} progress`} />
                {machine.replication.etaSeconds !== null && <span> about {formatDuration(machine.replication.etaSeconds)} left</span>}
              </>
            )}
            {machine.replication.error && <div className="reason">{machine.replication.error.message}</div>}
          </dd>
          <dt>RPO</dt>
          <dd>
            <RpoMeter machine={machine} now={now} />
          </dd>
          <dt>Last point</dt>
          <dd>
            {machine.lastPointAt ? `${formatTime(machine.lastPointAt)} (${formatAgo(machine.lastPointAt, now)})` : 'none yet'}, {machine.pointCount} kept
          </dd>
          <dt>Site and policy</dt>
          <dd>
            {machine.site ?? 'no site'}, policy {machine.policy ?? 'none'}
          </dd>
          <dt>Agent</dt>
          <dd>
            {machine.agent.name}, {machine.agent.online ? 'online' : 'offline'} (seen {formatAgo(machine.agent.lastSeenAt, now)})
            {machine.recoveryAgent && `; at the recovery site ${machine.recoveryAgent.name}, ${machine.recoveryAgent.online ? 'online' : 'offline'}`}
          </dd>
          {machine.testFailover && (
            <>
              <dt>Test failover</dt>
              <dd>
                <StateBadge state={machine.testFailover.state} /> from point {machine.testFailover.pointId}
                <ul>
                  {machine.testFailover.disks.map((disk) => (
                    <li key={disk.position}>
                      disk {disk.position}: <code>{disk.path}</code> ({formatBytes(disk.sizeBytes)})
                    </li>
                  ))}
                </ul>
              </dd>
            </>
          )}
          {machine.failover && (
            <>
              <dt>Failover</dt>
              <dd>
                {machine.failover.kind}, <StateBadge state={machine.failover.state} />
                {machine.failover.pointId && ` from point ${machine.failover.pointId}`}
                {machine.failover.error && <div className="reason">{machine.failover.error}</div>}
                <ul>
                  {machine.failover.disks.map((disk) => (
                    <li key={disk.position}>
                      disk {disk.position}: <code>{disk.path}</code>
                    </li>
                  ))}
                </ul>
              </dd>
            </>
          )}
          {machine.reprotect && (
            <>
              <dt>Reprotect</dt>
              <dd>
                towards {machine.reprotect.direction}, <StateBadge state={machine.reprotect.state} />
                {machine.reprotect.error && <div className="reason">{machine.reprotect.error}</div>}
              </dd>
            </>
          )}
        </dl>
      </section>

      <section aria-labelledby="disks-heading">
        <h2 id="disks-heading">Disks</h2>
        <table>
          <thead>
            <tr>
              <th scope="col">#</th>
              <th scope="col">Path</th>
              <th scope="col">Size</th>
              <th scope="col">At the recovery site</th>
              <th scope="col">Problem</th>
            </tr>
          </thead>
          <tbody>
            {machine.disks.map((disk) => (
              <tr key={disk.id}>
                <td>{disk.position}</td>
                <td>
                  <code>{disk.path}</code>
                </td>
                <td>{formatBytes(disk.sizeBytes)}</td>
                <td>{disk.recoveryPath ? <code>{disk.recoveryPath}</code> : '–'}</td>
                <td>{disk.error ?? '–'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>

      <section aria-labelledby="rpo-heading">
        <h2 id="rpo-heading">RPO over the last 24 hours</h2>
        {points && <RpoChart points={points} thresholdSeconds={machine.rpoThresholdSeconds} now={now} />}
      </section>

      <section aria-labelledby="points-heading">
        <h2 id="points-heading">Recovery points</h2>
        {pointsError && <ErrorNotice>Could not load the points: {pointsError}</ErrorNotice>}
        {points && points.length === 0 ? (
          <Empty>
            No recovery point yet.{' '}
            {machine.state === 'unprotected' ? 'Protect the machine to take the first one.' : 'The first one is taken by the initial replication.'}
          </Empty>
        ) : (
          points && (
            <>
              <PointStrip points={points} now={now} />
              <table>
                <thead>
                  <tr>
                    <th scope="col">Taken</th>
                    <th scope="col">Consistency</th>
                    <th scope="col">Changed</th>
                    <th scope="col">Sent</th>
                    <th scope="col">Point</th>
                  </tr>
                </thead>
                <tbody>
                  {pointPages.pageItems.map((point) => (
                    <tr key={point.id}>
                      <td>{formatTime(point.takenAt)}</td>
                      <td>
                        <ConsistencyBadge consistency={point.consistency} />
                        {point.note && <div className="reason">{point.note}</div>}
                      </td>
                      <td>{formatBytes(point.disks.reduce((sum, disk) => sum + disk.changedBytes, 0))}</td>
                      <td>{formatBytes(point.disks.reduce((sum, disk) => sum + disk.sentBytes, 0))}</td>
                      <td>
                        <code>{point.id}</code>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
              {pointPages.pager}
            </>
          )
        )}
      </section>

      <section aria-labelledby="jobs-heading">
        <h2 id="jobs-heading">Jobs</h2>
        <JobTable jobs={machineJobs} empty={<Empty>No jobs for {machine.name} yet.</Empty>} showMachine={false} />
      </section>

      <section aria-labelledby="events-heading">
        <h2 id="events-heading">Events</h2>
        {machineEvents.length === 0 ? <Empty>No events recorded for {machine.name}.</Empty> : <EventList events={eventPages.pageItems} />}
        {eventPages.pager}
      </section>
    </>
  );
}

/** A consistency as a badge: app (hooks ran), crash, inconsistent. */
function ConsistencyBadge({ consistency }: { consistency: PointView['consistency'] }) {
  const tone = consistency === 'app' ? 'healthy' : consistency === 'crash' ? 'info' : 'warning';
  return <span className={`badge badge-${tone}`}>{consistency}</span>;
}

/** The points of the last 24 hours as marks on a time line, shaped by consistency. */
function PointStrip({ points, now }: { points: readonly PointView[]; now: number }) {
  const start = now - 86_400_000;
  const recent = points.filter((point) => Date.parse(point.takenAt) >= start);
  const summary = `${recent.length} points in the last 24 hours: ${recent.filter((p) => p.consistency === 'app').length} app-consistent, ${
    recent.filter((p) => p.consistency === 'crash').length
  } crash-consistent, ${recent.filter((p) => p.consistency === 'inconsistent').length} inconsistent`;
  return (
    <figure className="point-strip">
      <svg viewBox="0 0 640 36" role="img" aria-label={summary} preserveAspectRatio="none">
        <line className="axis" x1={0} y1={18} x2={640} y2={18} />
        {recent.map((point) => {
          const x = ((Date.parse(point.takenAt) - start) / 86_400_000) * 632 + 4;
          return point.consistency === 'app' ? (
            <circle key={point.id} className="mark-app" cx={x} cy={18} r={5} />
          ) : point.consistency === 'crash' ? (
            <rect key={point.id} className="mark-crash" x={x - 4} y={14} width={8} height={8} />
          ) : (
            <path key={point.id} className="mark-inconsistent" d={`M${x - 5},23 L${x},13 L${x + 5},23 Z`} />
          );
        })}
      </svg>
      <figcaption>
        Timeline of the last 24 hours (now at the right): ● app-consistent, ■ crash-consistent, ▲ inconsistent.
      </figcaption>
    </figure>
  );
}

/** The confirmation of one action, with the point picker or site choice it needs. */
function ActionDialog({
  action,
  machine,
  points,
  onClose,
  onDone,
}: {
  action: MachineAction;
  machine: MachineView;
  points: readonly PointView[];
  onClose: () => void;
  onDone: (answer: unknown) => void;
}) {
  const [point, setPoint] = useState('latest');
  const [site, setSite] = useState('');
  const [policy, setPolicy] = useState('default');
  const blocker = action.blocker?.(machine) ?? null;
  const pointWords =
    point === 'latest'
      ? 'the latest point'
      : point === 'latest-app'
        ? 'the latest application-consistent point'
        : `point ${point} (${formatTime(points.find((candidate) => candidate.id === point)?.takenAt)})`;
  const describedMachine = action.takesSite && site ? { ...machine, site } : machine;
  return (
    <ConfirmDialog
      title={`${action.title}: ${machine.name}`}
      confirmLabel={action.confirmLabel}
      danger={action.danger}
      canConfirm={!blocker && (!action.takesSite || site !== '')}
      onClose={onClose}
      onConfirm={async () => onDone(await action.run(machine, { point, site, policy }))}
    >
      {action.takesSite && <SiteChoice site={site} policy={policy} onSite={setSite} onPolicy={setPolicy} />}
      {action.takesPoint && <PointPicker points={points} value={point} onChange={setPoint} />}
      <p className="what-happens">{action.describe(describedMachine, pointWords)}</p>
      {blocker && (
        <p role="alert" className="notice notice-error">
          {blocker}
        </p>
      )}
      {!blocker && <p>Continue?</p>}
    </ConfirmDialog>
  );
}

/** Latest, latest app-consistent, or one point from the list. */
export function PointPicker({ points, value, onChange }: { points: readonly PointView[]; value: string; onChange: (point: string) => void }) {
  const selectId = useId();
  const specific = value !== 'latest' && value !== 'latest-app';
  const [chosen, setChosen] = useState(points[0]?.id ?? '');
  const pick = useCallback((id: string) => {
    setChosen(id);
    onChange(id);
  }, [onChange]);
  return (
    <fieldset className="point-picker">
      <legend>Recovery point</legend>
      <label>
        <input type="radio" name="point" value="latest" checked={value === 'latest'} onChange={() => onChange('latest')} data-autofocus />
        Latest point{points[0] ? ` (${formatTime(points[0].takenAt)}, ${points[0].consistency})` : ''}
      </label>
      <label>
        <input type="radio" name="point" value="latest-app" checked={value === 'latest-app'} onChange={() => onChange('latest-app')} />
        Latest application-consistent point
      </label>
      <label>
        <input type="radio" name="point" value="specific" checked={specific} onChange={() => onChange(chosen)} disabled={points.length === 0} />
        A point from the list
      </label>
      {specific && (
        <div className="indent">
          <label htmlFor={selectId}>Point</label>
          <select id={selectId} value={chosen} onChange={(event) => pick(event.target.value)}>
            {points.map((point) => (
              <option key={point.id} value={point.id}>
                {formatTime(point.takenAt)}, {point.consistency} ({point.id})
              </option>
            ))}
          </select>
        </div>
      )}
    </fieldset>
  );
}

/** The site (required) and policy protect asks for; says what to do when there is no site. */
function SiteChoice({ site, policy, onSite, onPolicy }: { site: string; policy: string; onSite: (site: string) => void; onPolicy: (policy: string) => void }) {
  const siteId = useId();
  const policyId = useId();
  const [sites, setSites] = useState<SiteView[] | null>(null);
  const [policies, setPolicies] = useState<PolicyView[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    Promise.all([api<{ sites: SiteView[] }>('GET', '/sites'), api<{ policies: PolicyView[] }>('GET', '/policies')]).then(([siteAnswer, policyAnswer]) => {
      setSites(siteAnswer.sites);
      setPolicies(policyAnswer.policies);
      if (siteAnswer.sites.length === 1) onSite(siteAnswer.sites[0]!.name);
    }, (failure: Error) => setError(failure.message));
  }, []);
  if (error) return <ErrorNotice>Could not load sites and policies: {error}</ErrorNotice>;
  if (!sites) return <p>Loading sites…</p>;
  if (sites.length === 0) {
    return (
      <Empty>
        There is no recovery site yet. Add one on <Link to="/settings">Sites &amp; policies</Link>, then protect the machine.
      </Empty>
    );
  }
  const chosenPolicy = policies.find((candidate) => candidate.name === policy);
  return (
    <div className="form-grid">
      <label htmlFor={siteId}>Recovery site</label>
      <select id={siteId} value={site} onChange={(event) => onSite(event.target.value)} data-autofocus required>
        <option value="">Choose a site…</option>
        {sites.map((candidate) => (
          <option key={candidate.name} value={candidate.name}>
            {candidate.name} ({candidate.path})
          </option>
        ))}
      </select>
      <label htmlFor={policyId}>Policy</label>
      <select id={policyId} value={policy} onChange={(event) => onPolicy(event.target.value)}>
        {policies.map((candidate) => (
          <option key={candidate.name} value={candidate.name}>
            {candidate.name}: a point every {formatDuration(candidate.intervalSeconds)}, kept {formatDuration(candidate.retentionSeconds)}
          </option>
        ))}
      </select>
      {chosenPolicy && (
        <p className="help span-2">
          RPO threshold {formatDuration(chosenPolicy.rpoThresholdSeconds)}: the machine turns critical when its newest point is older.
        </p>
      )}
    </div>
  );
}
