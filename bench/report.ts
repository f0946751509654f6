/**
 * Turning measurements into tables: one per scenario, absolute numbers and ratios, and each target
 * with PASS or MISS. Printed as aligned text and written as Markdown.
 */

/** A target of the issue and how the run did against it. */
export interface TargetResult {
  /** What is compared, e.g. "throughput vs cp". */
  name: string;
  /** The measured value, formatted (e.g. "0.42x"). */
  measured: string;
  /** The goal, formatted (e.g. ">= 0.7x"). */
  goal: string;
  pass: boolean;
}

/** A target measured over several scenarios' steps rather than in one table (e.g. peak memory). */
export interface SummaryTarget extends TargetResult {
  /** The scenarios whose steps were measured, shown in the summary's # column. */
  scenarios: number[];
}

/** One scenario's table. */
export interface ScenarioTable {
  scenario: number;
  title: string;
  columns: string[];
  rows: string[][];
  targets: TargetResult[];
  notes: string[];
}

export const MiB = 2 ** 20;

export function formatBytes(bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/** Megabytes of 10^6 bytes, as the memory target ("300 MB") is quoted: "287 MB". */
export function formatMB(bytes: number): string {
  return `${(bytes / 1e6).toFixed(0)} MB`;
}

export function formatSeconds(seconds: number): string {
  return seconds >= 100 ? `${seconds.toFixed(0)} s` : `${seconds.toFixed(2)} s`;
}

export function formatRate(bytesPerSecond: number): string {
  return `${(bytesPerSecond / MiB).toFixed(0)} MiB/s`;
}

export function ratio(value: number): string {
  if (!Number.isFinite(value)) return '-';
  return value >= 10 ? `${value.toFixed(1)}x` : `${value.toFixed(2)}x`;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function pad(cells: string[][]): string[] {
  const widths = cells[0]!.map((_, column) => Math.max(...cells.map((row) => (row[column] ?? '').length)));
  return cells.map((row) => row.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ').trimEnd());
}

/** The table as text for the terminal. */
export function renderText(table: ScenarioTable): string {
  const lines = [`${table.scenario}. ${table.title}`, ...pad([table.columns, ...table.rows]).map((line) => `  ${line}`)];
  for (const target of table.targets) lines.push(`  ${target.pass ? 'PASS' : 'MISS'}  ${target.name}: ${target.measured} (target ${target.goal})`);
  for (const note of table.notes) lines.push(`  note: ${note}`);
  return lines.join('\n');
}

/** The table as Markdown. */
export function renderMarkdown(table: ScenarioTable): string {
  const row = (cells: string[]) => `| ${cells.join(' | ')} |`;
  const lines = [
    `### ${table.scenario}. ${table.title}`,
    '',
    row(table.columns),
    row(table.columns.map((_, index) => (index === 0 ? '---' : '---:'))),
    ...table.rows.map(row),
    '',
  ];
  if (table.targets.length) {
    lines.push('| Target | Measured | Goal | Result |', '|---|---:|---:|---|');
    for (const target of table.targets) lines.push(row([target.name, target.measured, target.goal, target.pass ? 'PASS' : '**MISS**']));
    lines.push('');
  }
  for (const note of table.notes) lines.push(`- ${note}`);
  if (table.notes.length) lines.push('');
  return lines.join('\n');
}

/** The summary of all targets: one line each, the scenarios' targets first, then those over several scenarios. */
export function renderSummary(tables: ScenarioTable[], extra: SummaryTarget[] = []): { text: string; markdown: string } {
  const rows = [
    ...tables.flatMap((table) => table.targets.map((target) => ({ ...target, scenarios: [table.scenario] }))),
    ...extra,
  ].map((target) => [target.scenarios.join(','), target.name, target.measured, target.goal, target.pass ? 'PASS' : 'MISS']);
  const text = pad([['#', 'target', 'measured', 'goal', 'result'], ...rows]).join('\n');
  const markdown = ['| # | Target | Measured | Goal | Result |', '|---|---|---:|---:|---|', ...rows.map((cells) => `| ${cells.slice(0, 4).join(' | ')} | ${cells[4] === 'PASS' ? 'PASS' : '**MISS**'} |`)].join('\n');
  return { text, markdown };
}
