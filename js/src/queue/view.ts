/**
 * The Slurm queue view: every job Slurm holds for the user (`GET slurm/queue`),
 * ours marked, refreshed every few seconds while it is visible. Shown only
 * when the server's backend is Slurm (the endpoint answers 409 otherwise).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { SLURM_QUEUE } from '../api/paths';
import { ApiError, requestAPI } from '../api/rest';

export const QUEUE_PANEL_ID = 'cosmic-horizons-slurm-queue';

export interface ISlurmQueueJob {
  id: string;
  state: string;
  reason: string | null;
  time_used: string;
  time_limit: string;
  nodes: number | null;
  nodelist: string | null;
  partition: string;
  name: string;
  ours: boolean;
  job_id: string | null;
}

const COLUMNS: [string, (j: ISlurmQueueJob) => string][] = [
  ['ID', j => j.id],
  ['Name', j => j.name],
  ['State', j => j.state],
  ['Reason', j => j.reason ?? ''],
  ['Time', j => `${j.time_used} / ${j.time_limit}`],
  ['Nodes', j => (j.nodelist ? `${j.nodes ?? ''} ${j.nodelist}` : String(j.nodes ?? ''))]
];

export class SlurmQueueView extends Widget {
  private timer: number | undefined;
  private readonly body: HTMLElement;
  private readonly status: HTMLElement;
  /** The last answer, for tests. */
  jobs: ISlurmQueueJob[] = [];

  constructor(private readonly intervalMs = 3000) {
    super();
    this.id = QUEUE_PANEL_ID;
    this.addClass('ch-queue');
    this.node.innerHTML = `
      <div class="ch-header"><span class="ch-title">Slurm queue</span></div>
      <div class="ch-queue-status"></div>
      <table><thead><tr>${COLUMNS.map(c => `<th>${c[0]}</th>`).join('')}</tr></thead><tbody></tbody></table>`;
    this.body = this.node.querySelector('tbody')!;
    this.status = this.node.querySelector('.ch-queue-status')!;
  }

  /** One refresh; false when the server has no Slurm queue (another backend). */
  async refresh(): Promise<boolean> {
    try {
      const answer = await requestAPI<any>(SLURM_QUEUE);
      this.jobs = answer?.jobs ?? [];
      this.render();
      this.status.className = 'ch-queue-status';
      this.status.textContent = `${this.jobs.length} job(s) · ${new Date().toLocaleTimeString()}`;
      return true;
    } catch (error) {
      if (error instanceof ApiError && (error.status === 409 || error.status === 404)) {
        return false;
      }
      this.status.className = 'ch-queue-status ch-queue-error';
      this.status.textContent = (error as Error).message;
      return true;
    }
  }

  private render(): void {
    this.body.replaceChildren(
      ...this.jobs.map(job => {
        const tr = document.createElement('tr');
        tr.dataset.slurmId = job.id;
        tr.dataset.ours = String(job.ours);
        tr.dataset.state = job.state;
        tr.title = job.ours ? `Cosmic Horizons job ${job.job_id}` : 'Submitted outside Cosmic Horizons';
        for (const [, cell] of COLUMNS) {
          const td = document.createElement('td');
          td.textContent = cell(job);
          tr.appendChild(td);
        }
        return tr;
      })
    );
  }

  start(): void {
    window.clearInterval(this.timer);
    this.timer = window.setInterval(() => {
      if (this.isVisible) {
        void this.refresh();
      }
    }, this.intervalMs);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }
}

/** Add the view to the left sidebar when the server's backend is Slurm. */
export async function registerSlurmQueue(app: JupyterFrontEnd, icon: LabIcon): Promise<SlurmQueueView | null> {
  const view = new SlurmQueueView();
  if (!(await view.refresh())) {
    view.dispose();
    return null;
  }
  view.title.icon = icon;
  view.title.caption = 'Slurm: your whole queue';
  app.shell.add(view, 'left', { rank: 852 });
  view.start();
  (window as any).cosmicHorizonsSlurmQueue = view;
  return view;
}
