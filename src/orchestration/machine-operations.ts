/**
 * The operations a recovery plan (recovery-plans.ts) runs on each machine of a group: one name per
 * operation, each started the same way and answered with the job that carries it out. The plan engine
 * knows nothing of how an operation works; this registry maps names to the modules that do
 * (test-failover.ts today; failover, commit, reprotect and failback as they are built).
 */
import { FerryError } from '../errors.js';
import type { JobView } from '../protocol/views.js';

/** Every machine operation a plan may run, known to the API whether or not it is built yet. */
export const machineOperationNames = ['test-failover', 'cleanup', 'planned-failover', 'unplanned-failover', 'commit', 'reprotect', 'failback'] as const;
export type MachineOperationName = (typeof machineOperationNames)[number];

/** Options an operation may take; each operation documents which it reads. */
export interface MachineOperationOptions {
  /** Recovery point: "latest", "latest-app", a point id or a time (test and unplanned failover). */
  point?: string;
}

/**
 * Starts `operation` on one machine and returns the job doing it (already ended for an operation that
 * is immediate). Throws as the operation's own request would (conflict naming the machine's state...).
 */
export type MachineOperationStarter = (machineName: string, options: MachineOperationOptions) => Promise<JobView>;

/** The registry: operation name -> starter. */
export class MachineOperations {
  private readonly starters = new Map<MachineOperationName, MachineOperationStarter>();

  /** Makes `operation` available (a module registers what it implements when the core is built). */
  register(operation: MachineOperationName, starter: MachineOperationStarter): void {
    this.starters.set(operation, starter);
  }

  /** The operations available now. */
  available(): MachineOperationName[] {
    return machineOperationNames.filter((name) => this.starters.has(name));
  }

  /** Starts `operation` on `machineName`; invalid-request for an operation not built yet. */
  start(operation: MachineOperationName, machineName: string, options: MachineOperationOptions = {}): Promise<JobView> {
    const starter = this.starters.get(operation);
    if (!starter) {
      throw new FerryError('invalid-request', `operation '${operation}' is not available yet (available: ${this.available().join(', ')})`);
    }
    return starter(machineName, options);
  }
}
