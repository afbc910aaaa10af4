/**
 * The sidebar's Usage section (in the jobs panel): the caller's GPU-hours, jobs and success rate per
 * period and each agent's runtime over time, from `GET usage/*` (model/usage.ts draws them).
 * Folded by default: it asks the server only while open (then again every minute).
 */
import { requestAPI } from '../api/rest';
import { renderUsage } from '../model/usage';

const REFRESH_MS = 60_000;

export class UsageSection {
  readonly node: HTMLDetailsElement;
  private body: HTMLElement;
  private select: HTMLSelectElement;
  private timer: number | undefined;

  constructor() {
    this.node = document.createElement('details');
    this.node.className = 'ch-usage';
    this.node.innerHTML = `
      <summary class="ch-section-title">Usage</summary>
      <div class="ch-usage-head">per <select class="ch-usage-period">
        <option value="day">day</option><option value="week" selected>week</option><option value="month">month</option>
      </select></div>
      <div class="ch-usage-body"></div>`;
    this.body = this.node.querySelector('.ch-usage-body')!;
    this.select = this.node.querySelector('.ch-usage-period')!;
    this.select.addEventListener('change', () => void this.refresh());
    this.node.addEventListener('toggle', () => {
      window.clearInterval(this.timer);
      if (this.node.open) {
        void this.refresh();
        this.timer = window.setInterval(() => void this.refresh(), REFRESH_MS);
      }
    });
  }

  /** Ask the server again (the caller's name comes with the agents' figures). */
  async refresh(): Promise<void> {
    const period = this.select.value;
    try {
      const agents = await requestAPI<any>(`usage/agents?period=${period}`);
      const account = await requestAPI<any>(`usage/accounts/${encodeURIComponent(agents.user)}?period=${period}`);
      let board: any = null;
      if (agents.operator) {
        board = await requestAPI<any>(`usage/leaderboard?period=month`);
      }
      renderUsage(this.body, account, agents, board);
      this.node.dataset.state = 'ok';
    } catch (error) {
      this.body.textContent = `Usage unavailable: ${(error as Error).message}`;
      this.node.dataset.state = 'error';
    }
  }

  dispose(): void {
    window.clearInterval(this.timer);
  }
}
