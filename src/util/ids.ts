/** Identifiers: a short prefix naming the kind ("job", "pt", ...) and 12 random base-36 characters. */
import { randomBytes } from 'node:crypto';

/** Returns e.g. "job-k3v9x0a1m2qz": unique enough for one installation, short enough to type. */
export function newId(prefix: string): string {
  const bytes = randomBytes(12);
  let text = '';
  for (const byte of bytes) text += (byte % 36).toString(36);
  return `${prefix}-${text}`;
}
