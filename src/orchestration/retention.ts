/**
 * Which recovery points a policy keeps, as one pure function: every point for the recent past, then
 * one per hour, then one per day, up to the retention; application-consistent points can be kept
 * longer on their own schedule. Like the big products do, so months of history stay affordable.
 */

/** The retention part of a policy, in seconds. */
export interface RetentionRules {
  /** Nothing older than this is kept (except the newest point). */
  retentionSeconds: number;
  /** Every point younger than this is kept. */
  keepAllSeconds: number;
  /** Up to this age, one point per hour is kept; beyond it, one per day. */
  hourlySeconds: number;
  /** Application-consistent points younger than this are all kept (0: no special treatment). */
  appRetentionSeconds: number;
}

/** What thinning needs to know of a point. */
export interface RetainedPoint {
  id: string;
  takenAt: number;
  consistency: 'app' | 'crash' | 'inconsistent';
}

/**
 * The ids of the points to keep, of `points` (any order) at time `now`. Always kept: the newest point
 * and the `pinned` ones (in use, e.g. by a test failover). In each hour (or day) bucket the point kept
 * is the newest application-consistent one if there is one, else the newest.
 */
export function pointsToKeep(points: readonly RetainedPoint[], rules: RetentionRules, now: number, pinned: ReadonlySet<string> = new Set()): Set<string> {
  const keep = new Set<string>();
  const newestFirst = [...points].sort((a, b) => b.takenAt - a.takenAt);
  if (newestFirst[0]) keep.add(newestFirst[0].id);
  for (const point of points) if (pinned.has(point.id)) keep.add(point.id);

  const chosenPerBucket = new Map<string, RetainedPoint>();
  for (const point of newestFirst) {
    const ageSeconds = (now - point.takenAt) / 1000;
    if (point.consistency === 'app' && ageSeconds <= rules.appRetentionSeconds) keep.add(point.id);
    if (ageSeconds > rules.retentionSeconds) continue;
    if (ageSeconds <= rules.keepAllSeconds) {
      keep.add(point.id);
      continue;
    }
    const bucketSeconds = ageSeconds <= rules.hourlySeconds ? 3600 : 86400;
    const bucket = `${bucketSeconds}:${Math.floor(point.takenAt / 1000 / bucketSeconds)}`;
    const chosen = chosenPerBucket.get(bucket);
    // Newest first: the first point seen wins, unless a later (older) one is app-consistent and it is not.
    if (!chosen || (chosen.consistency !== 'app' && point.consistency === 'app')) chosenPerBucket.set(bucket, point);
  }
  for (const point of chosenPerBucket.values()) keep.add(point.id);
  return keep;
}

/** Defaults for a policy created without thinning options: all points for up to 6 h, hourly up to 7 days. */
export function defaultThinning(retentionSeconds: number): Omit<RetentionRules, 'retentionSeconds'> {
  return {
    keepAllSeconds: Math.min(retentionSeconds, 6 * 3600),
    hourlySeconds: Math.min(retentionSeconds, 7 * 86400),
    appRetentionSeconds: 0,
  };
}
