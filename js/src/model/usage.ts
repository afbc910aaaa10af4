/**
 * The usage charts, plain SVG, shared by the notebook's Usage widget (widgets/usage.ts) and the
 * sidebar's Usage section (sidebar/usage.ts). They draw what `GET usage/accounts/{user}`,
 * `GET usage/agents` and `GET usage/leaderboard` answer (server/analytics/queries.py).
 */

const SVG = 'http://www.w3.org/2000/svg';
const BAR = '#1976d2';
const RATE = '#388e3c';
const LINES: Record<string, string> = { p50: '#1976d2', p90: '#f57c00', max: '#d32f2f' };

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, unknown>, text = ''): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    el.setAttribute(k, String(v));
  }
  if (text) {
    el.textContent = text;
  }
  return el;
}

function div(className: string, text = ''): HTMLDivElement {
  const el = document.createElement('div');
  el.className = className;
  el.textContent = text;
  return el;
}

/** Seconds as the shortest readable unit. */
export function duration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) {
    return '–';
  }
  if (seconds < 90) {
    return `${Math.round(seconds)} s`;
  }
  if (seconds < 5400) {
    return `${(seconds / 60).toFixed(1)} min`;
  }
  return `${(seconds / 3600).toFixed(1)} h`;
}

function fixed(value: number | null | undefined, digits = 2): string {
  return value === null || value === undefined ? '–' : Number(value).toFixed(digits);
}

/**
 * Bars of GPU-hours per period, the jobs count over each bar, and the success rate (0–100 %) as
 * a line on the right axis.
 */
export function periodChart(periods: any[], width = 420, height = 150): SVGSVGElement {
  const chart = svg('svg', { width: '100%', class: 'chu-periods', viewBox: `0 0 ${width} ${height}`, style: `max-width: ${width}px` });
  const left = 36;
  const bottom = height - 18;
  const top = 14;
  const n = Math.max(periods.length, 1);
  const slot = (width - left - 30) / n;
  const peak = Math.max(1e-9, ...periods.map(p => Number(p.gpu_hours) || 0));
  chart.append(svg('line', { x1: left, y1: bottom, x2: width - 30, y2: bottom, stroke: '#999' }));
  chart.append(svg('text', { x: 2, y: top, class: 'chu-axis', 'font-size': 9, fill: '#666' }, fixed(peak, peak < 10 ? 2 : 0)));
  chart.append(svg('text', { x: 2, y: bottom, class: 'chu-axis', 'font-size': 9, fill: '#666' }, '0'));
  chart.append(svg('text', { x: width - 28, y: top, class: 'chu-axis', 'font-size': 9, fill: '#666' }, '100%'));
  const rate: string[] = [];
  periods.forEach((p, i) => {
    const x = left + i * slot;
    const h = ((Number(p.gpu_hours) || 0) / peak) * (bottom - top);
    const bar = svg('rect', {
      x: x + slot * 0.15, y: bottom - h, width: Math.max(1, slot * 0.7), height: Math.max(h, 0.5), fill: BAR,
      class: 'chu-bar', 'data-period': p.period, 'data-gpu-hours': p.gpu_hours, 'data-jobs': p.jobs
    });
    bar.append(svg('title', {}, `${p.period}: ${fixed(p.gpu_hours)} GPU-hours, ${p.jobs} jobs, ` +
      `${fixed(p.su)} SU, $${fixed(p.cost_usd)}, success ${p.success_rate === null ? '–' : Math.round(p.success_rate * 100) + ' %'}`));
    chart.append(bar);
    if (slot > 14) {
      chart.append(svg('text', { x: x + slot / 2, y: bottom - h - 2, class: 'chu-count', 'text-anchor': 'middle', 'font-size': 9, fill: '#333' }, String(p.jobs)));
    }
    if (p.success_rate !== null && p.success_rate !== undefined) {
      rate.push(`${x + slot / 2},${bottom - p.success_rate * (bottom - top)}`);
    }
  });
  if (rate.length) {
    chart.append(svg('polyline', { points: rate.join(' '), fill: 'none', stroke: RATE, 'stroke-width': 1.5, class: 'chu-rate' }));
  }
  const first = periods[0]?.period ?? '';
  const last = periods[periods.length - 1]?.period ?? '';
  chart.append(svg('text', { x: left, y: height - 4, class: 'chu-axis', 'font-size': 9, fill: '#666' }, first));
  chart.append(svg('text', { x: width - 30, y: height - 4, class: 'chu-axis', 'text-anchor': 'end', 'font-size': 9, fill: '#666' }, last));
  return chart;
}

/** One agent's runtime over time: p50, p90 and max per period (seconds, log-free linear axis). */
export function runtimeChart(agent: any, width = 420, height = 90): SVGSVGElement {
  const periods: any[] = agent.by_period ?? [];
  const chart = svg('svg', {
    width: '100%', class: 'chu-runtime', 'data-agent': agent.agent, viewBox: `0 0 ${width} ${height}`, style: `max-width: ${width}px`
  });
  const left = 44;
  const bottom = height - 14;
  const top = 8;
  const peak = Math.max(1e-9, ...periods.map(p => Number(p.runtime_seconds?.max) || 0));
  const n = periods.length;
  const x = (i: number) => left + (n <= 1 ? (width - left) / 2 : (i / (n - 1)) * (width - left - 6));
  chart.append(svg('text', { x: 2, y: top + 6, class: 'chu-axis', 'font-size': 9, fill: '#666' }, duration(peak)));
  chart.append(svg('line', { x1: left, y1: bottom, x2: width - 6, y2: bottom, stroke: '#999' }));
  for (const key of ['max', 'p90', 'p50']) {
    const xy = periods
      .map((p, i) => [i, p.runtime_seconds?.[key]] as const)
      .filter(([, v]) => v !== null && v !== undefined)
      .map(([i, v]) => [x(i), bottom - (Number(v) / peak) * (bottom - top), periods[i].period, Number(v)] as const);
    if (xy.length) {
      const line = svg('polyline', {
        points: xy.map(([px, py]) => `${px},${py}`).join(' '), fill: 'none', stroke: LINES[key], 'stroke-width': 1.5, class: `chu-${key}`
      });
      line.append(svg('title', {}, `${agent.agent} runtime ${key}`));
      chart.append(line);
      for (const [px, py, period, v] of xy) {  // a dot per period: one period alone still shows
        const dot = svg('circle', { cx: px, cy: py, r: 2, fill: LINES[key] });
        dot.append(svg('title', {}, `${period}: runtime ${key} ${duration(v)}`));
        chart.append(dot);
      }
    }
  }
  return chart;
}

/** The whole usage view into ``root``: totals, the period chart, each agent's runtime, the leaderboard. */
export function renderUsage(root: HTMLElement, account: any, agents: any, leaderboard: any): void {
  root.replaceChildren();
  const totals = account?.totals;
  if (totals) {
    const rate = totals.success_rate === null ? '–' : `${Math.round(totals.success_rate * 100)} %`;
    root.append(div('chu-totals',
      `${account.user}: ${totals.jobs} jobs · ${fixed(totals.gpu_hours)} GPU-hours · ${fixed(totals.su)} SU · ` +
      `$${fixed(totals.cost_usd)} · success ${rate}` +
      (totals.gpu_utilization === null || totals.gpu_utilization === undefined ? '' : ` · GPU util ${fixed(totals.gpu_utilization, 0)} %`)));
    root.append(div('chu-caption', `GPU-hours per ${account.period} (bars), jobs (numbers), success rate (line)`));
    root.append(periodChart(account.by_period ?? []));
  }
  for (const agent of agents?.agents ?? []) {
    const failure = agent.failure_rate === null ? '–' : `${Math.round(agent.failure_rate * 100)} %`;
    root.append(div('chu-agent',
      `${agent.agent}: ${agent.jobs} jobs, runtime p50 ${duration(agent.runtime_seconds?.p50)}, p90 ${duration(agent.runtime_seconds?.p90)}, ` +
      `queue wait p50 ${duration(agent.queue_wait_seconds?.p50)}, failures ${failure}`));
    root.append(runtimeChart(agent));
  }
  const items: any[] = leaderboard?.items ?? [];
  if (items.length) {
    root.append(div('chu-caption', `Leaderboard by ${leaderboard.by === 'su' ? 'SUs' : 'GPU-hours'}`));
    const table = document.createElement('table');
    table.className = 'chu-leaderboard';
    for (const item of items) {
      const tr = document.createElement('tr');
      for (const text of [`${item.rank}.`, item.user, `${fixed(item.gpu_hours)} GPU-h`, `${fixed(item.su)} SU`, `${item.jobs} jobs`]) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.append(td);
      }
      table.append(tr);
    }
    root.append(table);
  }
}
