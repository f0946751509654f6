/** The event log: what happened to machines and the system, for `ferry events` and the portal. */
import type { EventView } from '../protocol/views.js';
import type { CoreContext } from './context.js';

/** Records and lists events. */
export class Events {
  constructor(private readonly context: CoreContext) {}

  /** Appends one event. */
  async record(event: { machineId?: string | null; severity: 'info' | 'warning' | 'error'; code: string; message: string }): Promise<void> {
    await this.context.db
      .insertInto('events')
      .values({ at: this.context.now(), machine_id: event.machineId ?? null, severity: event.severity, code: event.code, message: event.message })
      .execute();
    const log = event.severity === 'error' ? this.context.log.error.bind(this.context.log) : this.context.log.info.bind(this.context.log);
    log({ code: event.code, machineId: event.machineId }, event.message);
  }

  /** Newest first; `alertsOnly` keeps warnings and errors. */
  async list(options: { machineId?: string; limit: number; alertsOnly?: boolean }): Promise<EventView[]> {
    let query = this.context.db
      .selectFrom('events')
      .leftJoin('machines', 'machines.id', 'events.machine_id')
      .select(['events.id', 'events.at', 'events.severity', 'events.code', 'events.message', 'machines.name as machine'])
      .orderBy('events.id', 'desc')
      .limit(options.limit);
    if (options.machineId) query = query.where('events.machine_id', '=', options.machineId);
    if (options.alertsOnly) query = query.where('events.severity', '!=', 'info');
    const rows = await query.execute();
    return rows.map((row) => ({
      id: row.id,
      at: new Date(row.at).toISOString(),
      machine: row.machine ?? null,
      severity: row.severity,
      code: row.code,
      message: row.message,
    }));
  }
}
