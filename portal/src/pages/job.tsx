/**
 * One job: its state, progress, step, error and result; for a job that runs others (a recovery plan
 * run, a planned failover) its steps and child jobs. Cancel is offered where the server allows it.
 */
import { useEffect, useState } from 'react';
import type { JobView } from '../../../src/protocol/views.js';
import { api, segment } from '../api.js';
import { ErrorNotice, ProgressBar, StateBadge } from '../components/bits.js';
import { ConfirmDialog } from '../components/dialog.js';
import { formatTime, jobDuration } from '../format.js';
import { Link } from '../router.js';
import { useLive, useNow, useSession, useTitle } from '../session.js';

/** Kinds an agent runs: cancelling one while running is safe (its point is never committed). */
const AGENT_JOB_KINDS = ['initial-replication', 'point', 'final-point', 'apply-point'];
/** Kinds that carry an operation step by step: their steps' jobs are cancelled instead. */
const OPERATION_JOB_KINDS = ['planned-failover', 'migrate', 'failback', 'reprotect', 'plan', 'plan-manual'];

/** Whether the server would cancel `job` now (see Jobs.cancel in src/orchestration/jobs.ts). */
export function cancellable(job: JobView): boolean {
  if (OPERATION_JOB_KINDS.includes(job.kind)) return false;
  if (job.state === 'queued') return true;
  return job.state === 'running' && AGENT_JOB_KINDS.includes(job.kind);
}

/** The job page for `id`. */
export function JobPage({ id }: { id: string }) {
  useTitle(`Job ${id}`);
  const live = useLive();
  const { store } = useSession();
  const now = useNow();
  const [job, setJob] = useState<JobView | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [confirming, setConfirming] = useState(false);
  // The live copy (from the stream) says when to load the details again.
  const liveCopy = live.jobs.find((candidate) => candidate.id === id);
  const childrenKey = live.jobs.filter((candidate) => candidate.parentId === id).map((candidate) => `${candidate.id}:${candidate.state}`).join();
  const version = liveCopy ? `${liveCopy.state}/${liveCopy.step}/${liveCopy.progress.percent}` : '';

  useEffect(() => {
    api<JobView>('GET', `/jobs/${segment(id)}`).then(
      (answer) => {
        setJob(answer);
        setError(null);
      },
      (failure: Error) => setError(failure.message),
    );
  }, [id, version, childrenKey]);

  if (error && !job) {
    return (
      <>
        <h1 tabIndex={-1}>Job {id}</h1>
        <ErrorNotice>
          {error} See the <Link to="/jobs">Jobs</Link> page for the jobs the server has.
        </ErrorNotice>
      </>
    );
  }
  if (!job) return <p>Loading…</p>;
  const shown = { ...job, ...(liveCopy ?? {}), steps: job.steps, children: job.children };

  return (
    <>
      <h1 tabIndex={-1}>
        {shown.kind} <StateBadge state={shown.state} />
      </h1>
      <dl className="facts">
        <dt>Job</dt>
        <dd>
          <code>{shown.id}</code>
          {shown.parentId && (
            <>
              {' '}
              (part of <Link to={`/jobs/${shown.parentId}`}>{shown.parentId}</Link>)
            </>
          )}
        </dd>
        <dt>Machine</dt>
        <dd>{shown.machine ? <Link to={`/machines/${encodeURIComponent(shown.machine)}`}>{shown.machine}</Link> : '–'}</dd>
        <dt>Step</dt>
        <dd>{shown.step ?? '–'}</dd>
        <dt>Progress</dt>
        <dd>
          <ProgressBar percent={shown.progress.percent} label="Job progress" />
        </dd>
        <dt>Times</dt>
        <dd>
          created {formatTime(shown.createdAt)}, started {formatTime(shown.startedAt)}, ended {formatTime(shown.endedAt)}; took {jobDuration(shown, now)}
        </dd>
        {shown.resyncReason && (
          <>
            <dt>Resync</dt>
            <dd>{shown.resyncReason}</dd>
          </>
        )}
        {shown.error && (
          <>
            <dt>Error</dt>
            <dd>
              <span className="reason">
                {shown.error.code}: {shown.error.message}
                {shown.error.retryable ? ' (retryable: the scheduler tries again)' : ''}
              </span>
            </dd>
          </>
        )}
        {shown.result && (
          <>
            <dt>Result</dt>
            <dd>
              <pre>{JSON.stringify(shown.result, null, 2)}</pre>
            </dd>
          </>
        )}
      </dl>
      {cancellable(shown) && (
        <p>
          <button type="button" className="button-danger-outline" onClick={() => setConfirming(true)}>
            Cancel job…
          </button>
        </p>
      )}
      {confirming && (
        <ConfirmDialog
          title={`Cancel ${shown.kind} ${shown.id}`}
          confirmLabel="Cancel job"
          danger
          onClose={() => setConfirming(false)}
          onConfirm={async () => {
            setJob(await api<JobView>('POST', `/jobs/${segment(id)}/cancel`));
            void store.reload();
          }}
        >
          <p>
            {shown.state === 'queued'
              ? 'The job has not started: it is dropped.'
              : 'The agent stops; the point it was taking is never committed, and what it uploaded is collected later.'}{' '}
            The scheduler queues the machine's next point as usual: pause the machine to stop replication. Continue?
          </p>
        </ConfirmDialog>
      )}
      {shown.steps && shown.steps.length > 0 && (
        <section aria-labelledby="steps-heading">
          <h2 id="steps-heading">Steps</h2>
          <ol className="steps">
            {shown.steps.map((step) => (
              <li key={step.number}>
                <StateBadge state={step.state} /> {step.name}
                {step.instruction && <div className="reason">Waiting for: {step.instruction}</div>}
                <ul>
                  {step.items.map((item, index) => (
                    <li key={index}>
                      {item.machine ?? 'action'}: {item.state}
                      {item.jobId && (
                        <>
                          {' '}
                          (<Link to={`/jobs/${item.jobId}`}>{item.jobId}</Link>)
                        </>
                      )}
                      {item.error && <span className="reason"> {item.error}</span>}
                    </li>
                  ))}
                </ul>
              </li>
            ))}
          </ol>
        </section>
      )}
      {shown.children && shown.children.length > 0 && (
        <section aria-labelledby="children-heading">
          <h2 id="children-heading">Jobs it started</h2>
          <ul className="plain">
            {shown.children.map((child) => (
              <li key={child.id}>
                <Link to={`/jobs/${child.id}`}>{child.kind}</Link> {child.machine && `of ${child.machine}`} <StateBadge state={child.state} />
                {child.error && <span className="reason"> {child.error.message}</span>}
              </li>
            ))}
          </ul>
        </section>
      )}
    </>
  );
}
