/**
 * The operations a machine's page offers, one per name in MachineView.actions (the server decides
 * which its state allows): the button, the confirmation text that says what will happen in plain
 * words, whether it takes a recovery point, and the API call. Keeping them in one table keeps the
 * wording consistent and the page thin.
 */
import type { ReactNode } from 'react';
import type { MachineView } from '../../src/protocol/views.js';
import { api, segment } from './api.js';
import { formatBytes } from './format.js';

/** Which point an operation uses: the API's selector ("latest", "latest-app" or a point id). */
export type PointChoice = string;

/** What a button needs to ask and do. */
export interface MachineAction {
  /** The button's text. */
  label: string;
  /** The dialog's title. */
  title: string;
  confirmLabel: string;
  danger: boolean;
  /** The operation takes a recovery point (the dialog shows the point picker). */
  takesPoint: boolean;
  /** The operation needs a site and policy (protect: the dialog asks for them). */
  takesSite?: boolean;
  /** Why it cannot run as the machine is configured now (the dialog says so instead of confirming). */
  blocker?: (machine: MachineView) => ReactNode | null;
  /** What will happen, for the dialog; `point` describes the chosen point in words. */
  describe: (machine: MachineView, point: string) => ReactNode;
  /** Calls the API; answers the job it started, if any. */
  run: (machine: MachineView, options: { point: PointChoice; site: string; policy: string }) => Promise<{ job?: { id: string } } | unknown>;
}

const at = (machine: MachineView) => (machine.site ? `site ${machine.site}` : 'the recovery site');
const disksOf = (machine: MachineView) => {
  const total = machine.disks.reduce((sum, disk) => sum + (disk.sizeBytes ?? 0), 0);
  return `${machine.disks.length} disk${machine.disks.length === 1 ? '' : 's'} (${formatBytes(total)})`;
};
const post = (machine: MachineView, path: string, body?: unknown) => api('POST', `/machines/${segment(machine.name)}${path}`, body);
const noShutdown = (machine: MachineView) =>
  machine.hooks.shutdown ? null : (
    <>
      {machine.name} has no shutdown command, so the server would refuse. Set one first: <code>ferry machine set {machine.name} --shutdown 'systemctl stop …'</code>.
    </>
  );

/** Every action the portal knows, by the name MachineView.actions uses. */
export const MACHINE_ACTIONS: Record<string, MachineAction> = {
  protect: {
    label: 'Protect…',
    title: 'Protect machine',
    confirmLabel: 'Protect',
    danger: false,
    takesPoint: false,
    takesSite: true,
    describe: (machine) => (
      <>
        Protect {machine.name}: the agent <strong>{machine.agent.name}</strong> copies its {disksOf(machine)} in full to the chunk store (the initial
        replication), then takes recovery points as the policy says. Failovers will bring it up at the site chosen here. The machine keeps running.
      </>
    ),
    run: (machine, options) => post(machine, '/protect', { site: options.site, policy: options.policy }),
  },
  pause: {
    label: 'Pause replication…',
    title: 'Pause replication',
    confirmLabel: 'Pause',
    danger: false,
    takesPoint: false,
    describe: (machine) => (
      <>
        Pause replication of {machine.name}: no new recovery points are taken until you resume, so its RPO keeps growing and will pass its threshold. The
        points kept so far stay.
      </>
    ),
    run: (machine) => post(machine, '/pause'),
  },
  resume: {
    label: 'Resume replication…',
    title: 'Resume replication',
    confirmLabel: 'Resume',
    danger: false,
    takesPoint: false,
    describe: (machine) => <>Resume replication of {machine.name}: the next recovery point is taken as soon as one is due.</>,
    run: (machine) => post(machine, '/resume'),
  },
  'test-failover': {
    label: 'Test failover…',
    title: 'Test failover',
    confirmLabel: 'Start test failover',
    danger: false,
    takesPoint: true,
    describe: (machine, point) => (
      <>
        Test failover of {machine.name}: the server writes the disks of {point} at {at(machine)} as a separate test copy. Production keeps running and
        replication continues. Clean the test up when you are done.
      </>
    ),
    run: (machine, options) => post(machine, '/test-failover', { point: options.point }),
  },
  'test-migrate': {
    label: 'Test migration…',
    title: 'Test migration',
    confirmLabel: 'Start test migration',
    danger: false,
    takesPoint: true,
    describe: (machine, point) => (
      <>
        Test the migration of {machine.name}: the server writes the disks of {point} at {at(machine)} as a test copy you can boot and check. Production
        keeps running and replication continues. Clean the test up when you are done.
      </>
    ),
    run: (machine, options) => post(machine, '/test-failover', { point: options.point }),
  },
  cleanup: {
    label: 'Clean up test failover…',
    title: 'Clean up test failover',
    confirmLabel: 'Clean up',
    danger: true,
    takesPoint: false,
    describe: (machine) => (
      <>
        Clean up the test failover of {machine.name}: the server deletes the test copy's disks
        {machine.testFailover?.disks.length ? (
          <>
            {' '}
            ({machine.testFailover.disks.map((disk) => disk.path).join(', ')})
          </>
        ) : null}
        . Production, replication and the recovery points are not touched.
      </>
    ),
    run: (machine) => api('DELETE', `/machines/${segment(machine.name)}/test-failover`),
  },
  'planned-failover': {
    label: 'Planned failover…',
    title: 'Planned failover',
    confirmLabel: 'Fail over',
    danger: true,
    takesPoint: false,
    blocker: noShutdown,
    describe: (machine) => (
      <>
        Planned failover of {machine.name}: the agent runs <code>{machine.hooks.shutdown ?? '(no shutdown command)'}</code> to stop the workload, takes a
        final point, and the machine comes up at {at(machine)} from it: nothing acknowledged is lost. Replication stops. Then commit, or change the point.
      </>
    ),
    run: (machine) => post(machine, '/failover', { mode: 'planned' }),
  },
  'unplanned-failover': {
    label: 'Unplanned failover…',
    title: 'Unplanned failover',
    confirmLabel: 'Fail over',
    danger: true,
    takesPoint: true,
    describe: (machine, point) => (
      <>
        Unplanned failover of {machine.name}: the machine comes up at {at(machine)} from {point}. The source is not contacted (it may be gone), so whatever
        it wrote after that point is lost. Replication stops. Before you commit you can still change the point.
      </>
    ),
    run: (machine, options) => post(machine, '/failover', { mode: 'unplanned', point: options.point }),
  },
  'change-point': {
    label: 'Change point…',
    title: 'Change the failover point',
    confirmLabel: 'Change point',
    danger: true,
    takesPoint: true,
    describe: (machine, point) => (
      <>
        Change the point of {machine.name}'s failover: its disks at {at(machine)} are rewritten from {point}. Anything written to the failed-over machine
        since the failover is lost.
      </>
    ),
    run: (machine, options) => post(machine, '/failover', { mode: 'change-point', point: options.point }),
  },
  commit: {
    label: 'Commit…',
    title: 'Commit the failover',
    confirmLabel: 'Commit',
    danger: true,
    takesPoint: false,
    describe: (machine) => (
      <>
        Commit the failover of {machine.name}: the machine at {at(machine)} becomes the one you keep, and the point can no longer be changed. Afterwards,
        reprotect replicates it back so that you can fail back.
      </>
    ),
    run: (machine) => post(machine, '/commit'),
  },
  reprotect: {
    label: 'Reprotect…',
    title: 'Reprotect',
    confirmLabel: 'Reprotect',
    danger: false,
    takesPoint: false,
    describe: (machine) => (
      <>
        Reprotect {machine.name}: replication turns around.{' '}
        {machine.direction === 'forward'
          ? `The site agent reads the disks at ${at(machine)} and replicates them, and the source site's disks are brought up to date, so that you can fail back later.`
          : 'Replication runs from the source site to the recovery site again, as before the failover.'}{' '}
        The first point compares every disk with the store and can take a while.
      </>
    ),
    run: (machine) => post(machine, '/reprotect', {}),
  },
  failback: {
    label: 'Fail back…',
    title: 'Fail back',
    confirmLabel: 'Fail back',
    danger: true,
    takesPoint: false,
    blocker: (machine) =>
      machine.hooks.recoveryShutdown ? null : (
        <>
          {machine.name} has no recovery shutdown command, so the server would refuse. Set one first:{' '}
          <code>ferry machine set {machine.name} --recovery-shutdown '…'</code>.
        </>
      ),
    describe: (machine) => (
      <>
        Fail back {machine.name}: the agent at the recovery site runs <code>{machine.hooks.recoveryShutdown ?? '(no recovery shutdown command)'}</code> to
        stop the workload there, takes a final point, and the source site's disks are written from it. Then commit to keep the machine at the source.
      </>
    ),
    run: (machine) => post(machine, '/failback'),
  },
  migrate: {
    label: 'Migrate…',
    title: 'Migrate',
    confirmLabel: 'Migrate',
    danger: true,
    takesPoint: false,
    blocker: noShutdown,
    describe: (machine) => (
      <>
        Migrate {machine.name}: the agent runs <code>{machine.hooks.shutdown ?? '(no shutdown command)'}</code> to stop the workload, takes a final point,
        and the machine comes up at {at(machine)} for good. The source is retired: there is no failback. Then complete the migration.
      </>
    ),
    run: (machine) => post(machine, '/migrate'),
  },
  'complete-migration': {
    label: 'Complete migration…',
    title: 'Complete the migration',
    confirmLabel: 'Complete migration',
    danger: true,
    takesPoint: false,
    describe: (machine) => (
      <>
        Complete the migration of {machine.name}: all its recovery points are deleted and their space reclaimed. There is no way back after this.
      </>
    ),
    run: (machine) => post(machine, '/migrate/complete'),
  },
};
