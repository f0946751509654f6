/**
 * Overview: what is healthy, what is late and what is running, at a glance. Machines by health and
 * state with each RPO against its threshold, sites, running jobs and recent alerts; all live.
 */
import { useEffect, useState } from 'react';
import type { EventView, MachineView, SiteView } from '../../../src/protocol/views.js';
import { api } from '../api.js';
import { Empty, ErrorNotice, HealthBadge, JobProgress, StateBadge } from '../components/bits.js';
import { usePaged } from '../components/pager.js';
import { formatDuration, formatTime } from '../format.js';
import { Link } from '../router.js';
import { useLive, useNow, useTitle } from '../session.js';

/** The RPO now: from the last point's time, so it grows between stream updates. */
export function currentRpo(machine: MachineView, now: number): number | null {
  return machine.lastPointAt ? Math.max(0, (now - Date.parse(machine.lastPointAt)) / 1000) : null;
}

/** RPO against threshold as a meter with the numbers written out. */
export function RpoMeter({ machine, now }: { machine: MachineView; now: number }) {
  const rpo = currentRpo(machine, now);
  const threshold = machine.rpoThresholdSeconds;
  if (rpo === null) return <span>no point yet</span>;
  if (threshold === null) return <span>{formatDuration(rpo)}</span>;
  const ratio = rpo / threshold;
  const tone = ratio > 1 ? 'critical' : ratio > 0.75 ? 'warning' : 'healthy';
  return (
    <span className="rpo-meter">
      <meter min={0} max={threshold} low={threshold * 0.75} high={threshold} optimum={0} value={Math.min(rpo, threshold)} aria-label={`RPO of ${machine.name}`} />
      <span className={`rpo-text tone-${tone}`}>
        {formatDuration(rpo)} / {formatDuration(threshold)}
        {ratio > 1 ? ' (late)' : ''}
      </span>
    </span>
  );
}

const HEALTH_ORDER = ['critical', 'warning', 'healthy'] as const;

/** The overview page. */
export function OverviewPage() {
  useTitle('Overview');
  const live = useLive();
  const now = useNow();
  const [sites, setSites] = useState<SiteView[] | null>(null);
  const [siteError, setSiteError] = useState<string | null>(null);
  useEffect(() => {
    api<{ sites: SiteView[] }>('GET', '/sites').then((answer) => setSites(answer.sites), (error: Error) => setSiteError(error.message));
  }, []);

  const machines = [...live.machines].sort(
    (a, b) => HEALTH_ORDER.indexOf(a.health.level) - HEALTH_ORDER.indexOf(b.health.level) || a.name.localeCompare(b.name),
  );
  const counts = Object.fromEntries(HEALTH_ORDER.map((level) => [level, live.machines.filter((machine) => machine.health.level === level).length]));
  const states = new Map<string, number>();
  for (const machine of live.machines) states.set(machine.state, (states.get(machine.state) ?? 0) + 1);
  const running = live.jobs.filter((job) => job.state === 'running' || job.state === 'queued');
  const alerts = live.events.filter((event) => event.severity !== 'info');
  const machinePages = usePaged(machines, 'machines');
  const alertPages = usePaged(alerts, 'alerts');

  return (
    <>
      <h1 tabIndex={-1}>Overview</h1>
      {live.loadError && <ErrorNotice>Could not load the server's state: {live.loadError}</ErrorNotice>}

      <section aria-labelledby="summary-heading" className="summary">
        <h2 id="summary-heading" className="visually-hidden">
          Summary
        </h2>
        <ul className="cards">
          {HEALTH_ORDER.map((level) => (
            <li key={level} className={`card card-${level}`}>
              <span className="card-number">{counts[level]}</span> <span>{level}</span>
            </li>
          ))}
          <li className="card">
            <span className="card-number">{running.length}</span> <span>jobs running</span>
          </li>
        </ul>
        {states.size > 0 && (
          <p>
            By state:{' '}
            {[...states.entries()].map(([state, count], index) => (
              <span key={state}>
                {index > 0 && ', '}
                {count} {state}
              </span>
            ))}
          </p>
        )}
      </section>

      <section aria-labelledby="machines-heading">
        <h2 id="machines-heading">Machines</h2>
        {!live.loaded ? (
          <p>Loading…</p>
        ) : machines.length === 0 ? (
          <Empty>
            No machines yet. Machines appear when an agent registers them: create an agent token with <code>ferry token create --role agent</code>, then run{' '}
            <code>ferry agent --server URL --token TOKEN --machine NAME=DISK</code> on the machine (see docs/cli.md).
          </Empty>
        ) : (
          <>
            <table>
              <thead>
                <tr>
                  <th scope="col">Machine</th>
                  <th scope="col">Health</th>
                  <th scope="col">State</th>
                  <th scope="col">RPO / threshold</th>
                  <th scope="col">Site</th>
                  <th scope="col">Replication</th>
                </tr>
              </thead>
              <tbody>
                {machinePages.pageItems.map((machine) => (
                  <tr key={machine.name} data-machine={machine.name}>
                    <th scope="row">
                      <Link to={`/machines/${encodeURIComponent(machine.name)}`}>{machine.name}</Link>
                    </th>
                    <td>
                      <HealthBadge level={machine.health.level} />
                      {machine.health.reasons[0] && <div className="reason">{machine.health.reasons[0]}</div>}
                    </td>
                    <td>
                      <StateBadge state={machine.state} />
                    </td>
                    <td>
                      <RpoMeter machine={machine} now={now} />
                    </td>
                    <td>{machine.site ?? '–'}</td>
                    <td>
                      {machine.replication.state}
                      {machine.replication.percent !== null && ` ${Math.round(machine.replication.percent)}%`}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            {machinePages.pager}
          </>
        )}
      </section>

      <div className="columns">
        <section aria-labelledby="running-heading">
          <h2 id="running-heading">Jobs running</h2>
          {running.length === 0 ? (
            <Empty>
              Nothing running. Past jobs are on the <Link to="/jobs">Jobs</Link> page.
            </Empty>
          ) : (
            <ul className="plain">
              {running.map((job) => (
                <li key={job.id}>
                  <Link to={`/jobs/${job.id}`}>{job.kind}</Link> {job.machine && `of ${job.machine}`} <StateBadge state={job.state} /> <JobProgress job={job} />
                </li>
              ))}
            </ul>
          )}
        </section>

        <section aria-labelledby="sites-heading">
          <h2 id="sites-heading">Sites</h2>
          {siteError ? (
            <ErrorNotice>Could not load sites: {siteError}</ErrorNotice>
          ) : sites === null ? (
            <p>Loading…</p>
          ) : sites.length === 0 ? (
            <Empty>
              No recovery site yet. <Link to="/settings">Add one on Sites &amp; policies</Link> before protecting a machine.
            </Empty>
          ) : (
            <ul className="plain">
              {sites.map((site) => (
                <li key={site.name}>
                  <strong>{site.name}</strong> ({site.driver}, {site.diskFormat}) at <code>{site.path}</code>,{' '}
                  {live.machines.filter((machine) => machine.site === site.name).length} machine(s)
                </li>
              ))}
            </ul>
          )}
        </section>
      </div>

      <section aria-labelledby="alerts-heading">
        <h2 id="alerts-heading">Recent alerts</h2>
        {alerts.length === 0 ? <Empty>No warnings or errors recorded.</Empty> : <EventList events={alertPages.pageItems} />}
        {alertPages.pager}
      </section>
    </>
  );
}

/** Events as a list: time, severity, machine, message. */
export function EventList({ events }: { events: readonly EventView[] }) {
  return (
    <table>
      <thead>
        <tr>
          <th scope="col">Time</th>
          <th scope="col">Severity</th>
          <th scope="col">Machine</th>
          <th scope="col">What happened</th>
        </tr>
      </thead>
      <tbody>
        {events.map((event) => (
          <tr key={event.id}>
            <td>{formatTime(event.at)}</td>
            <td>
              <span className={`badge badge-${event.severity === 'error' ? 'critical' : event.severity === 'warning' ? 'warning' : 'neutral'}`}>{event.severity}</span>
            </td>
            <td>{event.machine ? <Link to={`/machines/${encodeURIComponent(event.machine)}`}>{event.machine}</Link> : '–'}</td>
            <td>{event.message}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
