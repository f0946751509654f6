/** Jobs: every recent job with live progress, newest first, paged; filter to the running ones. */
import { type ReactNode, useId, useState } from 'react';
import type { JobView } from '../../../src/protocol/views.js';
import { Empty, ErrorNotice, ProgressBar, StateBadge } from '../components/bits.js';
import { usePaged } from '../components/pager.js';
import { formatTime, jobDuration } from '../format.js';
import { Link } from '../router.js';
import { useLive, useNow, useTitle } from '../session.js';

/** Jobs as a table with live progress; `empty` when there are none. */
export function JobTable({ jobs, empty, showMachine = true }: { jobs: readonly JobView[]; empty: ReactNode; showMachine?: boolean }) {
  const now = useNow();
  const { pageItems, pager } = usePaged(jobs, 'jobs');
  if (jobs.length === 0) return <>{empty}</>;
  return (
    <>
      <table className="jobs">
        <thead>
          <tr>
            <th scope="col">Job</th>
            {showMachine && <th scope="col">Machine</th>}
            <th scope="col">State</th>
            <th scope="col">Step</th>
            <th scope="col">Progress</th>
            <th scope="col">Started</th>
            <th scope="col">Took</th>
          </tr>
        </thead>
        <tbody>
          {pageItems.map((job) => (
            <tr key={job.id} data-job-kind={job.kind} data-job-state={job.state}>
              <th scope="row">
                <Link to={`/jobs/${job.id}`}>{job.kind}</Link>
                <div className="reason">
                  <code>{job.id}</code>
                </div>
              </th>
              {showMachine && <td>{job.machine ? <Link to={`/machines/${encodeURIComponent(job.machine)}`}>{job.machine}</Link> : '–'}</td>}
              <td>
                <StateBadge state={job.state} />
                {job.error && <div className="reason">{job.error.message}</div>}
              </td>
              <td>{job.step ?? '–'}</td>
              <td>
                <ProgressBar percent={job.progress.percent} label={`${job.kind} ${job.id} progress`} />
              </td>
              <td>{formatTime(job.startedAt ?? job.createdAt)}</td>
              <td>{jobDuration(job, now)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {pager}
    </>
  );
}

/** The jobs page. */
export function JobsPage() {
  useTitle('Jobs');
  const live = useLive();
  const filterId = useId();
  const [activeOnly, setActiveOnly] = useState(false);
  const jobs = activeOnly ? live.jobs.filter((job) => job.state === 'running' || job.state === 'queued') : live.jobs;
  return (
    <>
      <h1 tabIndex={-1}>Jobs</h1>
      {live.loadError && <ErrorNotice>Could not load jobs: {live.loadError}</ErrorNotice>}
      <p className="toolbar">
        <input id={filterId} type="checkbox" checked={activeOnly} onChange={(event) => setActiveOnly(event.target.checked)} />
        <label htmlFor={filterId}>Only queued and running jobs</label>
      </p>
      <JobTable
        jobs={jobs}
        empty={
          <Empty>
            {activeOnly ? 'Nothing is running now.' : 'No jobs yet.'} Jobs start when you protect a machine, take a point, fail over or run a{' '}
            <Link to="/plans">recovery plan</Link>.
          </Empty>
        }
      />
    </>
  );
}
