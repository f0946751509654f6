/** How the portal writes durations, sizes and times for people. */

/** "45s", "4m 12s", "2h 5m", "3d 4h"; "–" for null. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '–';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** "512 B", "1.5 MiB", "3.2 GiB"; "–" for null. */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** A time in the browser's locale, to the second; "–" for null. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '–';
  return new Date(iso).toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** "12s ago", "5m 3s ago"; "–" for null. */
export function formatAgo(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '–';
  return `${formatDuration((now - Date.parse(iso)) / 1000)} ago`;
}

/** How long a job ran (or has run so far). */
export function jobDuration(job: { startedAt: string | null; endedAt: string | null }, now = Date.now()): string {
  if (!job.startedAt) return '–';
  const end = job.endedAt ? Date.parse(job.endedAt) : now;
  return formatDuration((end - Date.parse(job.startedAt)) / 1000);
}
