/**
 * Recovery plans: each plan's groups (machines that run in parallel) and their before/after actions,
 * its last run step by step; run a plan, resume a run waiting at a manual step, cancel it; create and
 * delete plans.
 */
import { type FormEvent, useCallback, useEffect, useId, useState } from 'react';
import type { PlanAction, PlanOperationView, PlanView } from '../../../src/protocol/plans.js';
import { api, segment } from '../api.js';
import { Empty, ErrorNotice, FormOutcome, StateBadge } from '../components/bits.js';
import { ConfirmDialog } from '../components/dialog.js';
import { formatTime } from '../format.js';
import { Link } from '../router.js';
import { useLive, useSession, useTitle } from '../session.js';

/** Operations that take a recovery point. */
const POINT_OPERATIONS = ['test-failover', 'unplanned-failover'];

/** What an operation does to every machine of the plan, for the confirmation. */
const OPERATION_WORDS: Record<string, string> = {
  'test-failover': 'writes a test copy of each machine at its recovery site; production keeps running',
  cleanup: "deletes each machine's test copy",
  'planned-failover': "has each machine's agent run its shutdown command, take a final point and brings the machine up at its recovery site; replication stops",
  'unplanned-failover': 'brings each machine up at its recovery site from the chosen point without contacting the source; later writes are lost',
  commit: "makes each machine's failover final",
  reprotect: 'turns replication around for each machine',
  failback: 'stops each machine at the recovery site and writes its source disks from a final point',
};

/** One action in a line. */
function describeAction(action: PlanAction): string {
  if (action.kind === 'manual') return `manual step: ${action.instruction}`;
  return `script \`${action.command}\` (timeout ${action.timeoutSeconds}s${action.continueOnError ? ', continue on error' : ''})`;
}

/** The recovery plans page. */
export function PlansPage() {
  useTitle('Recovery plans');
  const live = useLive();
  const { store } = useSession();
  const [plans, setPlans] = useState<PlanView[] | null>(null);
  const [operations, setOperations] = useState<PlanOperationView[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [dialog, setDialog] = useState<{ kind: 'run' | 'resume' | 'cancel' | 'delete'; plan: PlanView } | null>(null);
  // A plan run's job changing (a step ended, it waits, it ended) is the cue to reload the plans.
  const runsKey = live.jobs
    .filter((job) => job.kind === 'plan' || job.parentId !== null)
    .map((job) => `${job.id}:${job.state}:${job.step}`)
    .join();

  const load = useCallback(() => {
    Promise.all([api<{ plans: PlanView[] }>('GET', '/plans'), api<{ operations: PlanOperationView[] }>('GET', '/plan-operations')]).then(
      ([planAnswer, operationAnswer]) => {
        setPlans(planAnswer.plans);
        setOperations(operationAnswer.operations);
        setError(null);
      },
      (failure: Error) => setError(failure.message),
    );
  }, []);
  useEffect(load, [load, runsKey]);

  return (
    <>
      <h1 tabIndex={-1}>Recovery plans</h1>
      {error && <ErrorNotice>Could not load the plans: {error}</ErrorNotice>}
      {plans === null && !error && <p>Loading…</p>}
      {plans?.length === 0 && (
        <Empty>No recovery plan yet. A plan runs an operation (test failover, failover…) on groups of machines in order; create one below.</Empty>
      )}
      {plans?.map((plan) => {
        const run = plan.lastRun;
        const inProgress = run !== null && (run.state === 'running' || run.state === 'waiting');
        return (
          <section key={plan.name} className="plan" aria-labelledby={`plan-${plan.name}`}>
            <h2 id={`plan-${plan.name}`}>{plan.name}</h2>
            {plan.description && <p>{plan.description}</p>}
            <ol className="groups">
              {plan.groups.map((group, index) => (
                <li key={index}>
                  <strong>Group {index + 1}:</strong>{' '}
                  {group.machines.map((machine, machineIndex) => (
                    <span key={machine}>
                      {machineIndex > 0 && ', '}
                      <Link to={`/machines/${encodeURIComponent(machine)}`}>{machine}</Link>
                    </span>
                  ))}
                  {(group.before.length > 0 || group.after.length > 0) && (
                    <ul>
                      {group.before.map((action, actionIndex) => (
                        <li key={`b${actionIndex}`}>before: {describeAction(action)}</li>
                      ))}
                      {group.after.map((action, actionIndex) => (
                        <li key={`a${actionIndex}`}>after: {describeAction(action)}</li>
                      ))}
                    </ul>
                  )}
                </li>
              ))}
            </ol>
            {run ? (
              <div className="run">
                <p>
                  Last run: {run.operation} <StateBadge state={run.state} /> started {formatTime(run.createdAt)}
                  {run.currentStep !== null && `, step ${run.currentStep} of ${run.totalSteps}`} (<Link to={`/jobs/${run.jobId}`}>job {run.jobId}</Link>)
                </p>
                {run.waitingFor && (
                  <p className="notice" role="status">
                    Waiting for you: {run.waitingFor}. Resume when it is done.
                  </p>
                )}
                {run.error && <p className="reason">{run.error}</p>}
                <ol className="steps">
                  {run.steps.map((step) => (
                    <li key={step.number}>
                      <StateBadge state={step.state} /> {step.name}
                    </li>
                  ))}
                </ol>
              </div>
            ) : (
              <p>Never run.</p>
            )}
            <div className="actions">
              <button type="button" onClick={() => setDialog({ kind: 'run', plan })} disabled={inProgress}>
                Run…
              </button>
              {run?.state === 'waiting' && (
                <button type="button" className="button-primary" onClick={() => setDialog({ kind: 'resume', plan })}>
                  Resume…
                </button>
              )}
              {inProgress && (
                <button type="button" className="button-danger-outline" onClick={() => setDialog({ kind: 'cancel', plan })}>
                  Cancel run…
                </button>
              )}
              {!inProgress && (
                <button type="button" className="button-danger-outline" onClick={() => setDialog({ kind: 'delete', plan })}>
                  Delete…
                </button>
              )}
            </div>
          </section>
        );
      })}
      {dialog && (
        <PlanDialog
          key={`${dialog.kind}-${dialog.plan.name}`}
          kind={dialog.kind}
          plan={dialog.plan}
          operations={operations}
          onClose={() => setDialog(null)}
          onDone={() => {
            load();
            void store.reload();
          }}
        />
      )}
      <CreatePlanForm machines={live.machines.map((machine) => machine.name)} onCreated={load} />
    </>
  );
}

function PlanDialog({
  kind,
  plan,
  operations,
  onClose,
  onDone,
}: {
  kind: 'run' | 'resume' | 'cancel' | 'delete';
  plan: PlanView;
  operations: PlanOperationView[];
  onClose: () => void;
  onDone: () => void;
}) {
  const available = operations.filter((operation) => operation.available).map((operation) => operation.name);
  const [operation, setOperation] = useState(available[0] ?? '');
  const [point, setPoint] = useState('latest');
  const operationId = useId();
  const pointId = useId();
  const machines = plan.groups.flatMap((group) => group.machines).join(', ');
  const path = `/plans/${segment(plan.name)}`;
  const done = async (call: Promise<unknown>) => {
    await call;
    onDone();
  };
  if (kind === 'run') {
    return (
      <ConfirmDialog
        title={`Run recovery plan ${plan.name}`}
        confirmLabel="Run plan"
        danger={operation !== 'test-failover' && operation !== 'cleanup'}
        canConfirm={operation !== ''}
        onClose={onClose}
        onConfirm={() => done(api('POST', `${path}/runs`, { operation, ...(POINT_OPERATIONS.includes(operation) ? { point } : {}) }))}
      >
        <div className="form-grid">
          <label htmlFor={operationId}>Operation</label>
          <select id={operationId} value={operation} onChange={(event) => setOperation(event.target.value)} data-autofocus>
            {available.map((name) => (
              <option key={name} value={name}>
                {name}
              </option>
            ))}
          </select>
          {POINT_OPERATIONS.includes(operation) && (
            <>
              <label htmlFor={pointId}>Recovery point</label>
              <select id={pointId} value={point} onChange={(event) => setPoint(event.target.value)}>
                <option value="latest">Latest point of each machine</option>
                <option value="latest-app">Latest application-consistent point of each machine</option>
              </select>
            </>
          )}
        </div>
        <p className="what-happens">
          Run {operation || 'an operation'} on {machines}, group by group ({plan.groups.length} group{plan.groups.length === 1 ? '' : 's'}, their actions
          before and after): it {OPERATION_WORDS[operation] ?? 'runs on each machine'}. A failure stops the run; a manual step waits for you. Continue?
        </p>
      </ConfirmDialog>
    );
  }
  const words = {
    resume: { title: `Resume ${plan.name}`, label: 'Resume', text: `Resume the run of ${plan.name}: you confirm that "${plan.lastRun?.waitingFor ?? ''}" is done, and the run goes on with the next step.`, call: () => api('POST', `${path}/resume`) },
    cancel: { title: `Cancel the run of ${plan.name}`, label: 'Cancel run', text: `Cancel the run of ${plan.name}: it stops after the step in progress (at once if it waits at a manual step). What the finished steps did stays done.`, call: () => api('POST', `${path}/cancel`) },
    delete: { title: `Delete plan ${plan.name}`, label: 'Delete plan', text: `Delete the plan ${plan.name} and its run history. The machines are not touched.`, call: () => api('DELETE', path) },
  }[kind];
  return (
    <ConfirmDialog title={words.title} confirmLabel={words.label} danger={kind !== 'resume'} onClose={onClose} onConfirm={() => done(words.call())}>
      <p className="what-happens">{words.text} Continue?</p>
    </ConfirmDialog>
  );
}

function CreatePlanForm({ machines, onCreated }: { machines: string[]; onCreated: () => void }) {
  const nameId = useId();
  const descriptionId = useId();
  const groupsId = useId();
  const groupsHelpId = useId();
  const [name, setName] = useState('');
  const [description, setDescription] = useState('');
  const [groups, setGroups] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [created, setCreated] = useState<string | null>(null);
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    setCreated(null);
    const parsed = groups
      .split('\n')
      .map((line) => line.split(/[,\s]+/).filter(Boolean))
      .filter((line) => line.length > 0)
      .map((line) => ({ machines: line }));
    try {
      await api('POST', '/plans', { name: name.trim(), description, groups: parsed });
      setCreated(`Plan ${name.trim()} created.`);
      setName('');
      setDescription('');
      setGroups('');
      onCreated();
    } catch (failure) {
      setError((failure as Error).message);
    }
  };
  return (
    <section aria-labelledby="create-plan-heading" className="form-section">
      <h2 id="create-plan-heading">Create a plan</h2>
      <form onSubmit={(event) => void submit(event)} className="form-grid">
        <label htmlFor={nameId}>Name</label>
        <input id={nameId} value={name} onChange={(event) => setName(event.target.value)} required />
        <label htmlFor={descriptionId}>Description</label>
        <input id={descriptionId} value={description} onChange={(event) => setDescription(event.target.value)} />
        <label htmlFor={groupsId}>Groups</label>
        <textarea id={groupsId} value={groups} onChange={(event) => setGroups(event.target.value)} rows={4} aria-describedby={groupsHelpId} required />
        <p id={groupsHelpId} className="help span-2">
          One group per line, machine names separated by commas; groups run in order, the machines of a group in parallel. Known machines:{' '}
          {machines.length ? machines.join(', ') : 'none yet'}. Script and manual actions: <code>ferry plan create --before/--after</code> (docs/cli.md).
        </p>
        <FormOutcome what="plan" error={error} created={created} submitLabel="Create plan" />
      </form>
    </section>
  );
}
