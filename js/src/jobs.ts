/**
 * Job records and events: the shapes of design.md, and how one event moves a
 * job record forward. Shared by the sidebar and the notebook widgets' views.
 */

export type JobStatus =
  | 'QUEUED'
  | 'QUEUING'
  | 'RUNNING'
  | 'COMPLETED'
  | 'FAILED'
  | 'CANCELLED';

export const TERMINAL: ReadonlySet<string> = new Set([
  'COMPLETED',
  'FAILED',
  'CANCELLED'
]);

/** Lifecycle order, so that a late snapshot never moves a job backwards. */
const ORDER: Record<string, number> = {
  QUEUED: 0,
  QUEUING: 1,
  RUNNING: 2,
  COMPLETED: 3,
  FAILED: 3,
  CANCELLED: 3
};

export interface IJob {
  id: string;
  agent?: string;
  dataset_id?: string | null;
  status: string;
  progress?: number | null;
  priority?: number | null;
  params?: Record<string, unknown>;
  error?: string | null;
  created_at?: string | null;
  started_at?: string | null;
  completed_at?: string | null;
  metrics?: Record<string, unknown> | null;
  batch_id?: string | null;
  depends_on?: string[] | string | null;
  output_url?: string | null;
  [key: string]: unknown;
}

export interface IEvent {
  id: number;
  type: string;
  job_id?: string | null;
  user?: string;
  ts?: string;
  correlation_id?: string;
  payload?: Record<string, any>;
}

const TYPE_STATUS: Record<string, JobStatus> = {
  'job.submitted': 'QUEUED',
  'job.queued': 'QUEUED',
  'job.queuing': 'QUEUING',
  'job.running': 'RUNNING',
  'job.completed': 'COMPLETED',
  'job.failed': 'FAILED',
  'job.cancelled': 'CANCELLED'
};

export function isTerminal(status: string | undefined | null): boolean {
  return !!status && TERMINAL.has(status);
}

/** The status an event says its job is in, or undefined. */
export function eventStatus(event: IEvent): string | undefined {
  const fromPayload = event.payload?.status;
  if (typeof fromPayload === 'string') {
    return fromPayload.toUpperCase();
  }
  return TYPE_STATUS[event.type];
}

/**
 * Apply one job.* event to a job record (in place). Returns true when the
 * record changed. Terminal states never change; a status never moves back.
 */
export function applyEvent(job: IJob, event: IEvent): boolean {
  if (!event.type.startsWith('job.')) {
    return false;
  }
  const p = event.payload ?? {};
  let changed = false;
  const status = eventStatus(event);
  if (status && !isTerminal(job.status) && (ORDER[status] ?? 0) >= (ORDER[job.status] ?? 0)) {
    if (status !== job.status) {
      job.status = status;
      changed = true;
      if (status === 'RUNNING' && !job.started_at) {
        job.started_at = event.ts ?? null;
      }
      if (isTerminal(status) && !job.completed_at) {
        job.completed_at = event.ts ?? null;
      }
    }
  }
  if (typeof p.progress === 'number' && !isTerminal(job.status)) {
    job.progress = p.progress;
    changed = true;
  }
  if (job.status === 'COMPLETED') {
    job.progress = 1;
  }
  if (p.metrics && typeof p.metrics === 'object') {
    job.metrics = { ...(job.metrics ?? {}), ...p.metrics };
    changed = true;
  }
  for (const key of ['error', 'output_url', 'agent', 'dataset_id', 'batch_id']) {
    if (p[key] !== undefined && p[key] !== null) {
      (job as any)[key] = p[key];
      changed = true;
    }
  }
  if (event.type === 'job.submitted' && !job.created_at) {
    job.created_at = event.ts ?? null;
  }
  return changed;
}

/** Merge a REST snapshot into a record built from events, never moving back. */
export function mergeSnapshot(job: IJob | undefined, snapshot: IJob): IJob {
  if (!job) {
    return { ...snapshot };
  }
  const keepStatus =
    isTerminal(job.status) || (ORDER[job.status] ?? 0) > (ORDER[snapshot.status] ?? 0);
  const merged: IJob = { ...job, ...snapshot };
  if (keepStatus) {
    merged.status = job.status;
    merged.progress = job.progress ?? snapshot.progress;
  }
  return merged;
}

export function shortId(id: string): string {
  return id.length > 10 ? id.slice(0, 8) : id;
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
