/** How the sidebar and the widgets' views write jobs, sizes and times. */

export function shortId(id: string): string {
  return id.length > 10 ? id.slice(0, 8) : id;
}

/** What a job is, for people: "agent · dataset" (either may be missing). */
export function jobName(job: { agent?: unknown; dataset_id?: unknown }): string {
  return [job.agent, job.dataset_id].filter(Boolean).join(' · ');
}

/** A progress value (anything) as a fraction in [0, 1]; missing is 0. */
export function fraction(progress: unknown): number {
  return Math.max(0, Math.min(1, Number(progress ?? 0)));
}

/** A fraction as a progress bar's CSS width. */
export function barWidth(p: number): string {
  return `${(p * 100).toFixed(1)}%`;
}

/** A fraction as whole percent: "42%". */
export function percent(p: number): string {
  return `${Math.round(p * 100)}%`;
}

/** A byte count as people read it (decimal units). */
export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let k = 0;
  while (n >= 1000 && k < units.length - 1) {
    n /= 1000;
    k++;
  }
  return `${n.toFixed(k ? 1 : 0)} ${units[k]}`;
}

export function formatDuration(seconds: number): string {
  if (!isFinite(seconds) || seconds < 0) {
    return '';
  }
  if (seconds < 60) {
    return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  }
  const m = Math.floor(seconds / 60);
  if (m < 60) {
    return `${m} min ${Math.round(seconds % 60)} s`;
  }
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function parseTime(value: string | null | undefined): number | undefined {
  if (!value) {
    return undefined;
  }
  const t = Date.parse(value);
  return isNaN(t) ? undefined : t / 1000;
}

/**
 * Seconds a job has run: from its start to its end, or to now while it has no
 * end time. Undefined before it starts; undefined too for an ended job without
 * an end time when `ended` says it has ended (the sidebar passes whether the
 * job is terminal; the progress view passes false and counts on to now).
 */
export function runSeconds(
  job: { started_at?: string | null; completed_at?: string | null },
  ended = false
): number | undefined {
  const start = parseTime(job.started_at);
  if (!start) {
    return undefined;
  }
  const end = parseTime(job.completed_at) ?? (ended ? undefined : Date.now() / 1000);
  return end === undefined ? undefined : end - start;
}

/** What the GPU views show where the server has none. */
export function noGpuText(reason?: unknown): string {
  return `No GPU on this server${reason ? ` (${reason})` : ''}.`;
}
