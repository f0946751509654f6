/** Small pieces every page uses: badges for states and health, progress bars, notices and empty states. */
import type { ReactNode } from 'react';
import type { HealthLevel, JobView } from '../../../src/protocol/views.js';

/** A health level as a word with a colour (never colour alone). */
export function HealthBadge({ level }: { level: HealthLevel }) {
  return <span className={`badge badge-${level}`}>{level}</span>;
}

const STATE_TONES: Record<string, string> = {
  succeeded: 'healthy',
  protected: 'healthy',
  ready: 'healthy',
  committed: 'healthy',
  running: 'info',
  queued: 'neutral',
  failed: 'critical',
  cancelled: 'neutral',
  waiting: 'warning',
  paused: 'warning',
  unprotected: 'neutral',
};

/** A state (of a job, machine, run) as a badge; tone by the state's meaning. */
export function StateBadge({ state }: { state: string }) {
  const tone = STATE_TONES[state] ?? (state.endsWith('ing') ? 'info' : 'neutral');
  return <span className={`badge badge-${tone}`}>{state}</span>;
}

/** A labelled progress bar with its percentage written out. */
export function ProgressBar({ percent, label }: { percent: number; label: string }) {
  const value = Math.max(0, Math.min(100, Math.round(percent)));
  return (
    <div className="progress" role="progressbar" aria-label={label} aria-valuemin={0} aria-valuemax={100} aria-valuenow={value}>
      <div className="progress-fill" style={{ width: `${value}%` }} />
      <span className="progress-text">{value}%</span>
    </div>
  );
}

/** A job's progress: a bar while it runs, its state once ended. */
export function JobProgress({ job }: { job: JobView }) {
  if (job.state === 'running' || job.state === 'queued') return <ProgressBar percent={job.progress.percent} label={`${job.kind} ${job.id} progress`} />;
  return <span>{job.state === 'succeeded' ? '100%' : '–'}</span>;
}

/** An error with what to do next. */
export function ErrorNotice({ children }: { children: ReactNode }) {
  return (
    <div role="alert" className="notice notice-error">
      {children}
    </div>
  );
}

/** What an empty list means and what to do about it. */
export function Empty({ children }: { children: ReactNode }) {
  return <div className="empty">{children}</div>;
}

/**
 * The end of a create form: what the server refused (an alert), what was created (a status), and the
 * submit button, laid out across the form's two columns.
 */
export function FormOutcome({ what, error, created, submitLabel }: { what: string; error: string | null; created: string | null; submitLabel: string }) {
  return (
    <>
      {error && (
        <p role="alert" className="notice notice-error span-2">
          The server refused the {what}: {error}
        </p>
      )}
      {created && (
        <p role="status" className="notice span-2">
          {created}
        </p>
      )}
      <div className="span-2">
        <button type="submit" className="button-primary">
          {submitLabel}
        </button>
      </div>
    </>
  );
}
