/**
 * Job records and events: the shapes of design.md, and how one event moves a
 * job record forward. Shared by the sidebar and the notebook widgets' views.
 */
import { isTerminal, JOB_SUBMITTED, lifecycleRank, Status, TYPE_STATUS } from './states';

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
  if (status && !isTerminal(job.status) && lifecycleRank(status) >= lifecycleRank(job.status)) {
    if (status !== job.status) {
      job.status = status;
      changed = true;
      if (status === Status.RUNNING && !job.started_at) {
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
  if (job.status === Status.COMPLETED) {
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
  if (event.type === JOB_SUBMITTED && !job.created_at) {
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
    isTerminal(job.status) || lifecycleRank(job.status) > lifecycleRank(snapshot.status);
  const merged: IJob = { ...job, ...snapshot };
  if (keepStatus) {
    merged.status = job.status;
    merged.progress = job.progress ?? snapshot.progress;
  }
  return merged;
}
