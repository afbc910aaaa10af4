/**
 * The Cosmic Horizons sidebar: the caller's jobs, live, with status, progress,
 * cancel, a log tail and output links; and the GPU heatmap. Plain DOM in a
 * Lumino widget; rows are keyed by job id and patched in place.
 */
import { PageConfig } from '@jupyterlab/coreutils';
import { Widget } from '@lumino/widgets';

import { ConnectionState, EventStream } from '../api/events';
import {
  EVENTS_LATEST,
  GPUS,
  gpuHistoryPath,
  historyPath,
  jobLogsPath,
  jobOutputsPath,
  jobPath
} from '../api/paths';
import { ApiError, requestAPI } from '../api/rest';
import {
  barWidth,
  formatBytes,
  formatDuration,
  fraction,
  jobName,
  noGpuText,
  percent,
  runSeconds,
  shortId
} from '../model/format';
import { drawHeatmap, IHeatmapData } from '../model/heatmap';
import { applyEvent, IEvent, IJob, mergeSnapshot } from '../model/jobs';
import { describeMetrics, metricsLine } from '../model/metrics';
import { isTerminal, Status } from '../model/states';
import { heatmapFromHistory, showNodes } from './heatmap';
import { UsageSection } from './usage';

export interface IPanelOptions {
  /** Open a path (relative to the server root) in Lab. */
  openPath?: (path: string) => void;
  /** Seconds of GPU history shown. */
  gpuWindow?: number;
  /** How many of the newest jobs to list. */
  pageSize?: number;
  /** Open the job form (the header's "New job" button). */
  onNewJob?: () => void;
}

interface IRow {
  el: HTMLElement;
  expanded: boolean;
  logOffset: number;
  logTimer?: number;
}

export class JobsPanel extends Widget {
  readonly jobs = new Map<string, IJob>();
  private readonly rows = new Map<string, IRow>();
  private readonly dirty = new Set<string>();
  private renderPending = false;
  private stream: EventStream;
  private listEl: HTMLElement;
  private emptyEl: HTMLElement;
  private stateEl: HTMLElement;
  private gpuEl: HTMLElement;
  private canvas: HTMLCanvasElement;
  private gpuTimer: number | undefined;
  private gpuData: IHeatmapData | null = null;
  private fetching = new Set<string>();
  readonly usage = new UsageSection();

  constructor(private readonly options: IPanelOptions = {}) {
    super();
    this.id = 'cosmic-horizons-sidebar';
    this.addClass('ch-panel');
    this.title.caption = 'Cosmic Horizons jobs';
    this.node.innerHTML = `
      <div class="ch-header">
        <span class="ch-title">Cosmic Horizons</span>
        <span class="ch-conn" data-state="connecting" title="event stream"></span>
        <button class="ch-head-button ch-new-job jp-Button" title="Open the job form">＋ New job</button>
        <button class="ch-refresh jp-Button" title="Reload the job list">⟳</button>
      </div>
      <div class="ch-section-title">Jobs</div>
      <div class="ch-empty">No jobs yet. Submit one from a notebook: <code>Lab().submit(…)</code></div>
      <div class="ch-jobs"></div>
      <div class="ch-section-title">GPUs</div>
      <div class="ch-gpus"><canvas class="ch-heatmap"></canvas><div class="ch-nogpu"></div></div>`;
    this.listEl = this.node.querySelector('.ch-jobs')!;
    this.emptyEl = this.node.querySelector('.ch-empty')!;
    this.stateEl = this.node.querySelector('.ch-conn')!;
    this.gpuEl = this.node.querySelector('.ch-gpus')!;
    this.canvas = this.node.querySelector('.ch-heatmap')!;
    this.node.append(this.usage.node);
    this.node
      .querySelector('.ch-refresh')!
      .addEventListener('click', () => void this.reload());
    this.node
      .querySelector('.ch-new-job')!
      .addEventListener('click', () => this.options.onNewJob?.());
    this.stream = new EventStream(
      events => this.onEvents(events),
      state => this.onState(state)
    );
  }

  /** Open the event stream first, then load the list: no change falls between. */
  async start(): Promise<void> {
    try {
      const latest = await requestAPI<any>(EVENTS_LATEST);
      this.stream.lastId = Number(latest?.last_event_id ?? 0);
    } catch {
      // An older server: replay from the start, which also misses nothing.
    }
    this.stream.connect();
    void this.reload();
    void this.refreshGpus();
    this.gpuTimer = window.setInterval(() => {
      if (this.isVisible) {
        void this.refreshGpus();
      }
    }, 5000);
  }

  get eventStream(): EventStream {
    return this.stream;
  }

  async reload(): Promise<void> {
    try {
      const page = await requestAPI<any>(historyPath(1, this.options.pageSize ?? 100));
      const items: IJob[] = Array.isArray(page) ? page : page?.items ?? [];
      for (const item of items) {
        this.jobs.set(item.id, mergeSnapshot(this.jobs.get(item.id), item));
        this.dirty.add(item.id);
      }
      this.scheduleRender();
    } catch (error) {
      this.showError(error);
    }
  }

  private onState(state: ConnectionState): void {
    this.stateEl.dataset.state = state;
    this.stateEl.title = `event stream: ${state}`;
  }

  private onEvents(events: IEvent[]): void {
    for (const event of events) {
      if (!event.job_id || !event.type.startsWith('job.')) {
        continue;
      }
      let job = this.jobs.get(event.job_id);
      if (!job) {
        job = { id: event.job_id, status: Status.QUEUED, agent: event.payload?.agent };
        this.jobs.set(job.id, job);
        void this.fetchJob(job.id);
      }
      if (applyEvent(job, event)) {
        this.dirty.add(job.id);
      }
    }
    this.scheduleRender();
  }

  private async fetchJob(id: string): Promise<void> {
    if (this.fetching.has(id)) {
      return;
    }
    this.fetching.add(id);
    try {
      const record = await requestAPI<IJob>(jobPath(id));
      this.jobs.set(id, mergeSnapshot(this.jobs.get(id), record));
      this.dirty.add(id);
      this.scheduleRender();
    } catch {
      // The event already gave status; the record fills in on the next reload.
    } finally {
      this.fetching.delete(id);
    }
  }

  /** Coalesce: a burst of events costs one render. */
  private scheduleRender(): void {
    if (this.renderPending) {
      return;
    }
    this.renderPending = true;
    window.setTimeout(() => {
      this.renderPending = false;
      this.render();
    }, 0);
  }

  private render(): void {
    const ordered = Array.from(this.jobs.values()).sort((a, b) =>
      (b.created_at ?? '').localeCompare(a.created_at ?? '')
    );
    this.emptyEl.style.display = ordered.length ? 'none' : '';
    for (const id of this.dirty) {
      const job = this.jobs.get(id);
      if (job) {
        this.renderRow(job);
      }
    }
    this.dirty.clear();
    // Keep DOM order newest first, moving only rows out of place.
    let previous: Element | null = null;
    for (const job of ordered) {
      const el = this.rows.get(job.id)?.el;
      if (!el) {
        continue;
      }
      const expected: Element | null = previous
        ? previous.nextElementSibling
        : this.listEl.firstElementChild;
      if (expected !== el) {
        this.listEl.insertBefore(el, expected);
      }
      previous = el;
    }
  }

  private renderRow(job: IJob): void {
    let row = this.rows.get(job.id);
    if (!row) {
      const el = document.createElement('div');
      el.className = 'ch-job';
      el.dataset.jobId = job.id;
      el.innerHTML = `
        <div class="ch-job-line">
          <span class="ch-status"></span>
          <span class="ch-name"></span>
          <span class="ch-id"></span>
          <button class="ch-cancel jp-Button" title="Cancel this job">✕</button>
        </div>
        <div class="ch-progress"><div class="ch-bar"></div></div>
        <div class="ch-meta"></div>
        <div class="ch-details" hidden>
          <div class="ch-error"></div>
          <div class="ch-outputs"></div>
          <pre class="ch-log"></pre>
        </div>`;
      row = { el, expanded: false, logOffset: 0 };
      this.rows.set(job.id, row);
      const r = row;
      el.querySelector('.ch-job-line')!.addEventListener('click', event => {
        if ((event.target as HTMLElement).closest('.ch-cancel')) {
          return;
        }
        this.toggle(job.id, r);
      });
      el.querySelector('.ch-cancel')!.addEventListener('click', () => void this.cancel(job.id));
      this.listEl.appendChild(el);
    }
    const el = row.el;
    el.dataset.status = job.status;
    const status = el.querySelector('.ch-status') as HTMLElement;
    status.textContent = job.status;
    status.dataset.status = job.status;
    const nameEl = el.querySelector('.ch-name') as HTMLElement;
    nameEl.textContent = jobName(job);
    nameEl.title = jobName(job);
    const idEl = el.querySelector('.ch-id') as HTMLElement;
    idEl.textContent = shortId(job.id);
    idEl.title = job.id;
    (el.querySelector('.ch-cancel') as HTMLElement).style.visibility = isTerminal(job.status)
      ? 'hidden'
      : 'visible';
    const progress = fraction(job.progress);
    const bar = el.querySelector('.ch-bar') as HTMLElement;
    bar.style.width = barWidth(progress);
    bar.dataset.status = job.status;
    const parts = [percent(progress)];
    const seconds = runSeconds(job, isTerminal(job.status));
    if (seconds !== undefined) {
      parts.push(formatDuration(seconds));
    }
    const { headline } = describeMetrics(job.metrics);
    if (headline.length) {
      parts.push(metricsLine(headline));
    }
    (el.querySelector('.ch-meta') as HTMLElement).textContent = parts.join(' · ');
    (el.querySelector('.ch-error') as HTMLElement).textContent = job.error ? String(job.error) : '';
    if (row.expanded && isTerminal(job.status)) {
      void this.loadOutputs(job.id, row);
    }
  }

  private toggle(id: string, row: IRow): void {
    row.expanded = !row.expanded;
    const details = row.el.querySelector('.ch-details') as HTMLElement;
    details.hidden = !row.expanded;
    row.el.classList.toggle('ch-expanded', row.expanded);
    window.clearInterval(row.logTimer);
    if (row.expanded) {
      void this.tailLog(id, row);
      void this.loadOutputs(id, row);
      row.logTimer = window.setInterval(() => {
        void this.tailLog(id, row);
        if (isTerminal(this.jobs.get(id)?.status)) {
          window.clearInterval(row.logTimer);
          void this.tailLog(id, row);
        }
      }, 1500);
    }
  }

  private async tailLog(id: string, row: IRow): Promise<void> {
    try {
      const body = await requestAPI<any>(jobLogsPath(id, row.logOffset));
      const text: string =
        typeof body === 'string' ? body : body?.text ?? body?.data ?? body?.content ?? body?.log ?? '';
      const next = Number(body?.next_offset ?? body?.end ?? row.logOffset + text.length);
      row.logOffset = isFinite(next) ? next : row.logOffset + text.length;
      if (text) {
        const pre = row.el.querySelector('.ch-log') as HTMLElement;
        // A tail: keep the last 4,000 characters.
        pre.textContent = ((pre.textContent ?? '') + text).slice(-4000);
        pre.scrollTop = pre.scrollHeight;
      }
    } catch {
      // No log yet.
    }
  }

  private async loadOutputs(id: string, row: IRow): Promise<void> {
    const box = row.el.querySelector('.ch-outputs') as HTMLElement;
    try {
      const body = await requestAPI<any>(jobOutputsPath(id));
      const files: any[] = Array.isArray(body) ? body : body?.files ?? body?.outputs ?? [];
      const folder = relativeToRoot(body?.directory);
      box.replaceChildren(
        ...files.map(file => {
          const a = document.createElement('a');
          a.className = 'ch-output';
          const name = String(file.path ?? file.name ?? file.url);
          a.textContent = `${name} (${formatBytes(Number(file.size_bytes ?? file.size ?? 0))})`;
          const path = folder !== undefined ? (folder ? `${folder}/${name}` : name) : undefined;
          a.href = file.url ?? '#';
          a.title = path ? `Open ${path} in JupyterLab` : 'Download';
          a.addEventListener('click', event => {
            if (path && this.options.openPath) {
              event.preventDefault();
              this.options.openPath(path);
            }
          });
          a.target = '_blank';
          return a;
        })
      );
    } catch {
      box.replaceChildren();
    }
  }

  async cancel(id: string): Promise<void> {
    try {
      const job = await requestAPI<IJob>(jobPath(id), { method: 'DELETE' });
      if (job?.id) {
        this.jobs.set(id, mergeSnapshot(this.jobs.get(id), job));
        this.dirty.add(id);
        this.scheduleRender();
      }
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 409)) {
        this.showError(error);
      }
    }
  }

  async refreshGpus(): Promise<void> {
    const window_ = this.options.gpuWindow ?? 300;
    const nogpu = this.gpuEl.querySelector('.ch-nogpu') as HTMLElement;
    try {
      const inventory = await requestAPI<any>(GPUS);
      showNodes(this.gpuEl, inventory); // GPUs per node, the compute nodes' too
      const gpus: any[] = Array.isArray(inventory) ? inventory : inventory?.gpus ?? [];
      if (!gpus.length) {
        this.gpuEl.dataset.state = 'none';
        nogpu.textContent = noGpuText(inventory?.reason);
        return;
      }
      const history = await requestAPI<any>(gpuHistoryPath(window_));
      this.gpuData = heatmapFromHistory(
        Array.isArray(history?.gpus) ? history : { ...history, gpus },
        window_
      );
      this.gpuEl.dataset.state = 'ok';
      nogpu.textContent = '';
      drawHeatmap(this.canvas, this.gpuData);
    } catch (error) {
      this.gpuEl.dataset.state = 'error';
      nogpu.textContent = `GPU telemetry unavailable: ${(error as Error).message}`;
    }
  }

  protected onResize(): void {
    if (this.gpuData) {
      drawHeatmap(this.canvas, this.gpuData);
    }
  }

  private showError(error: unknown): void {
    const el = document.createElement('div');
    el.className = 'ch-toast';
    el.textContent = error instanceof Error ? error.message : String(error);
    this.node.insertBefore(el, this.listEl);
    window.setTimeout(() => el.remove(), 6000);
  }

  dispose(): void {
    this.stream.dispose();
    this.usage.dispose();
    window.clearInterval(this.gpuTimer);
    for (const row of this.rows.values()) {
      window.clearInterval(row.logTimer);
    }
    super.dispose();
  }
}

/** A server path as a path relative to Lab's root, or undefined when outside it. */
function relativeToRoot(directory: string | undefined): string | undefined {
  const root = PageConfig.getOption('serverRoot');
  if (!directory || !root) {
    return undefined;
  }
  const r = root.replace(/\/+$/, '');
  if (directory === r) {
    return '';
  }
  return directory.startsWith(r + '/') ? directory.slice(r.length + 1) : undefined;
}
