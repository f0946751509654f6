/** Human durations ("30s", "5m", "24h", "365d", "1h30m") to and from seconds, for policies and CLI flags. */
import { FerryError } from '../errors.js';

const unitSeconds: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };

/** Parses a duration such as "90s", "5m", "1h30m" or "365d" into whole seconds; throws invalid-request otherwise. */
export function parseDuration(text: string, what = 'duration'): number {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const parts = [...trimmed.matchAll(/(\d+)([smhdw])/g)];
  const consumed = parts.map((part) => part[0]).join('');
  if (parts.length === 0 || consumed !== trimmed) {
    throw new FerryError('invalid-request', `${what} '${text}' is not a duration like 30s, 5m, 24h or 7d`);
  }
  return parts.reduce((total, part) => total + Number(part[1]) * unitSeconds[part[2]!]!, 0);
}

/** Formats seconds compactly: 90 -> "1m30s", 86400 -> "1d". */
export function formatDuration(totalSeconds: number): string {
  let rest = Math.max(0, Math.round(totalSeconds));
  if (rest === 0) return '0s';
  let text = '';
  for (const [unit, size] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]] as const) {
    if (rest >= size) {
      text += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  return text;
}
