/** The process logger: pino, JSON lines on stderr, level from FERRY_LOG_LEVEL (default "info"). */
import { pino, type Logger } from 'pino';

/** Creates a logger for one component ("server", "agent", ...). */
export function createLogger(component: string): Logger {
  return pino({ level: process.env.FERRY_LOG_LEVEL ?? 'info', base: { component } }, pino.destination(2));
}

export type { Logger };
