/**
 * The RPO of a machine over time, drawn as SVG against its threshold. Ferry keeps no RPO history: it is
 * derived from the recovery points kept. At time t the RPO is t minus the time the newest point taken
 * before t was taken, so it climbs while no point arrives and drops to (nearly) zero at each point: a
 * sawtooth. Points thinned away by retention make older teeth look taller than they were.
 */
import { useId } from 'react';
import type { PointView } from '../../../src/protocol/views.js';
import { formatDuration } from '../format.js';

const WIDTH = 640;
const HEIGHT = 180;
const PAD = { left: 56, right: 12, top: 12, bottom: 28 };

/** Props of RpoChart: the machine's points (any order), its threshold and the time to draw up to. */
export interface RpoChartProps {
  points: readonly PointView[];
  thresholdSeconds: number | null;
  now: number;
  /** How far back to draw; default the last 24 hours (or since the oldest point, if later). */
  windowSeconds?: number;
}

/** The sawtooth as (time ms, RPO s) corners, from the oldest point in the window to `now`. */
export function rpoSeries(points: readonly PointView[], now: number, windowSeconds: number): { t: number; rpo: number }[] {
  const times = points.map((point) => Date.parse(point.takenAt)).filter((t) => t <= now).sort((a, b) => a - b);
  if (times.length === 0) return [];
  const start = Math.max(times[0]!, now - windowSeconds * 1000);
  // The newest point at or before the window's start still sets the RPO there.
  let base = times.filter((t) => t <= start).pop() ?? times[0]!;
  const series = [{ t: start, rpo: (start - base) / 1000 }];
  for (const t of times) {
    if (t <= start) continue;
    series.push({ t, rpo: (t - base) / 1000 }, { t, rpo: 0 });
    base = t;
  }
  series.push({ t: now, rpo: (now - base) / 1000 });
  return series;
}

/** The chart, with a text summary for screen readers. */
export function RpoChart({ points, thresholdSeconds, now, windowSeconds = 86_400 }: RpoChartProps) {
  const titleId = useId();
  const descId = useId();
  const series = rpoSeries(points, now, windowSeconds);
  if (series.length === 0) return <p className="empty">No recovery point yet: the RPO chart starts with the first point.</p>;
  const start = series[0]!.t;
  const span = Math.max(now - start, 60_000);
  const worst = Math.max(...series.map((corner) => corner.rpo));
  const top = Math.max(worst, thresholdSeconds ?? 0, 60) * 1.15;
  const x = (t: number) => PAD.left + ((t - start) / span) * (WIDTH - PAD.left - PAD.right);
  const y = (rpo: number) => HEIGHT - PAD.bottom - (rpo / top) * (HEIGHT - PAD.top - PAD.bottom);
  const path = series.map((corner, i) => `${i === 0 ? 'M' : 'L'}${x(corner.t).toFixed(1)},${y(corner.rpo).toFixed(1)}`).join(' ');
  const current = series[series.length - 1]!.rpo;
  const over = thresholdSeconds !== null && worst > thresholdSeconds;
  const clock = (t: number) => new Date(t).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  return (
    <figure className="rpo-chart">
      <svg viewBox={`0 0 ${WIDTH} ${HEIGHT}`} role="img" aria-labelledby={`${titleId} ${descId}`} preserveAspectRatio="none">
        <title id={titleId}>RPO over time</title>
        <desc id={descId}>
          {`RPO now ${formatDuration(current)}, worst ${formatDuration(worst)} since ${clock(start)}` +
            (thresholdSeconds !== null ? `, threshold ${formatDuration(thresholdSeconds)}${over ? ' (exceeded)' : ''}` : '')}
        </desc>
        <line className="axis" x1={PAD.left} y1={y(0)} x2={WIDTH - PAD.right} y2={y(0)} />
        <line className="axis" x1={PAD.left} y1={PAD.top} x2={PAD.left} y2={y(0)} />
        <text className="tick" x={PAD.left - 6} y={y(0)} textAnchor="end" dominantBaseline="middle">0</text>
        <text className="tick" x={PAD.left - 6} y={y(top / 1.15)} textAnchor="end" dominantBaseline="middle">{formatDuration(top / 1.15)}</text>
        {thresholdSeconds !== null && (
          <g>
            <line className="threshold" x1={PAD.left} y1={y(thresholdSeconds)} x2={WIDTH - PAD.right} y2={y(thresholdSeconds)} />
            <text className="tick threshold-label" x={WIDTH - PAD.right} y={y(thresholdSeconds) - 4} textAnchor="end">
              threshold {formatDuration(thresholdSeconds)}
            </text>
          </g>
        )}
        <path className="rpo-line" d={path} />
        <text className="tick" x={PAD.left} y={HEIGHT - 8} textAnchor="start">{clock(start)}</text>
        <text className="tick" x={WIDTH - PAD.right} y={HEIGHT - 8} textAnchor="end">now</text>
      </svg>
      <figcaption>
        RPO derived from the recovery points kept (time since the newest point at each moment), against the policy's threshold.
      </figcaption>
    </figure>
  );
}
