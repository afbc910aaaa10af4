/**
 * The API's paths, relative to its prefix (which comes from the Python
 * protocol through the generated module): the one place the TypeScript spells
 * them. No JupyterLab import, so the widgets' bundles can use it.
 */
export { API_PREFIX } from '../model/protocol.generated';

const q = encodeURIComponent;

export const EVENTS = 'events';
export const EVENTS_LATEST = 'events/latest';
export const GPUS = 'gpus';

export function gpuHistoryPath(seconds: number): string {
  return `gpus/history?seconds=${seconds}`;
}

export function historyPath(page: number, pageSize: number): string {
  return `jobs/history/list?page=${page}&page_size=${pageSize}`;
}

/** One job: GET its record, DELETE to cancel it. */
export function jobPath(id: string): string {
  return `jobs/${q(id)}`;
}

export function jobLogsPath(id: string, offset: number): string {
  return `${jobPath(id)}/logs?offset=${offset}`;
}

export function jobOutputsPath(id: string): string {
  return `${jobPath(id)}/outputs`;
}

/** A dataset's staging to a target: DELETE to cancel the transfer. */
export function stagingStatusPath(datasetId: string, targetResource?: string | null): string {
  const query = targetResource ? `?target_resource=${q(targetResource)}` : '';
  return `jobs/dataset/${q(datasetId)}/staging-status${query}`;
}

/** The job form, the pipeline composer and the Slurm queue view (issue 13). */
export const AGENTS = 'agents';
export const DATASETS = 'datasets';
export const SUBMIT = 'jobs/submit';
export const OPTIMIZE = 'jobs/optimize';
export const PIPELINES = 'pipelines';
export const SLURM_QUEUE = 'slurm/queue';
