/**
 * Job states as the views use them. The states themselves, which are
 * terminal, and the event type of each come from the Python protocol
 * (cosmic_horizons_lab/protocol/states.py) through the generated module.
 */
import { EVENT_FOR, JOB_STATES, Status, SUBMITTED_EVENT, TERMINAL_STATES } from './protocol.generated';
import type { JobStatus } from './protocol.generated';

export { JOB_STATES, Status, TERMINAL_STATES } from './protocol.generated';
export type { JobStatus } from './protocol.generated';

export const TERMINAL: ReadonlySet<string> = new Set<string>(TERMINAL_STATES);

export function isTerminal(status: string | undefined | null): boolean {
  return !!status && TERMINAL.has(status);
}

/** The event a submission records; its job is then QUEUED. */
export const JOB_SUBMITTED = SUBMITTED_EVENT;

/** The state each job.* event type records (EVENT_FOR read backwards). */
export const TYPE_STATUS: Readonly<Record<string, JobStatus>> = {
  [JOB_SUBMITTED]: Status.QUEUED,
  ...Object.fromEntries(JOB_STATES.map(s => [EVENT_FOR[s], s]))
};

const FIRST_END = Math.min(...TERMINAL_STATES.map(s => JOB_STATES.indexOf(s)));

/**
 * Lifecycle order (the generated states' order; every end ranks alike; an
 * unknown state ranks first), so that a late snapshot never moves a job back.
 */
export function lifecycleRank(status: string | undefined | null): number {
  const k = JOB_STATES.indexOf(status as JobStatus);
  return k < 0 ? 0 : Math.min(k, FIRST_END);
}
