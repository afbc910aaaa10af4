/**
 * The view of Timeline: one bar per job from queued to end, coloured by
 * state (the waiting part pale), dependencies drawn as arrows.
 */
import { isTerminal, JobStatus } from '../model/states';
import { RenderProps, h, stamp } from './common';

const SVG = 'http://www.w3.org/2000/svg';
const COLOURS: Record<JobStatus, string> = {
  QUEUED: '#9e9e9e',
  QUEUING: '#78909c',
  RUNNING: '#1976d2',
  COMPLETED: '#388e3c',
  FAILED: '#d32f2f',
  CANCELLED: '#f57c00'
};

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, unknown>): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    el.setAttribute(k, String(v));
  }
  return el;
}

function render({ model, el }: RenderProps): () => void {
  const root = h('div', 'chw chw-timeline');
  const head = h('div', 'chw-head');
  const title = h('span', 'chw-name', 'Timeline');
  const counts = h('span', 'chw-counts');
  head.append(title, counts);
  const holder = h('div', 'chw-scroll');
  root.append(head, holder);
  el.append(root);
  let ticker: number | undefined;

  const update = () => {
    const jobs: any[] = model.get('jobs') ?? [];
    const now = Date.now() / 1000;
    const t0 = Math.min(...jobs.map(j => j.queued ?? now), now);
    const ends = jobs.map(j => j.end ?? (isTerminal(j.status) ? j.start ?? j.queued : now));
    const t1 = Math.max(t0 + 1, ...ends.filter(Number.isFinite));
    const width = Math.max(320, (root.clientWidth || 640) - 8);
    const left = 170;
    const rowH = 22;
    const height = jobs.length * rowH + 24;
    const x = (t: number) => left + ((t - t0) / (t1 - t0)) * (width - left - 10);
    const chart = svg('svg', { width, height, class: 'chw-timeline-svg' });
    const defs = svg('defs', {});
    const marker = svg('marker', { id: 'chw-arrow', viewBox: '0 0 6 6', refX: 6, refY: 3, markerWidth: 6, markerHeight: 6, orient: 'auto' });
    marker.append(svg('path', { d: 'M0,0 L6,3 L0,6 z', fill: 'currentColor' }));
    defs.append(marker);
    chart.append(defs);
    const rowOf = new Map<string, number>();
    jobs.forEach((j, i) => rowOf.set(j.id, i));
    jobs.forEach((j, i) => {
      const y = i * rowH + 4;
      const label = svg('text', { x: 4, y: y + 13, class: 'chw-tl-label' });
      label.textContent = j.label ?? j.id;
      chart.append(label);
      const q = j.queued ?? now;
      const s = j.start;
      const e = ends[i] ?? now;
      const colour = COLOURS[j.status as JobStatus] ?? '#9e9e9e';
      const wait = svg('rect', { x: x(q), y, width: Math.max(1, x(s ?? e) - x(q)), height: rowH - 8, fill: colour, opacity: 0.3 });
      chart.append(wait);
      if (s !== undefined && s !== null) {
        const run = svg('rect', { x: x(s), y, width: Math.max(2, x(e) - x(s)), height: rowH - 8, fill: colour, 'data-status': j.status, 'data-job-id': j.id, class: 'chw-tl-bar' });
        chart.append(run);
      } else {
        wait.setAttribute('data-status', j.status);
        wait.setAttribute('data-job-id', j.id);
        wait.setAttribute('class', 'chw-tl-bar');
      }
      const tip = svg('title', {});
      tip.textContent = `${j.label ?? j.id}: ${j.status}`;
      chart.append(tip);
    });
    // Dependencies: parent's end → child's start.
    jobs.forEach((j, i) => {
      for (const parent of j.depends_on ?? []) {
        const p = rowOf.get(parent);
        if (p === undefined) {
          continue;
        }
        const px = x(ends[p] ?? now);
        const py = p * rowH + 4 + (rowH - 8) / 2;
        const cx = x(j.start ?? j.queued ?? now);
        const cy = i * rowH + 4 + (rowH - 8) / 2;
        chart.append(svg('path', { d: `M${px},${py} C${px + 12},${py} ${cx - 12},${cy} ${cx},${cy}`, fill: 'none', stroke: 'currentColor', 'stroke-width': 1, 'marker-end': 'url(#chw-arrow)', class: 'chw-tl-dep' }));
      }
    });
    const axis = svg('text', { x: left, y: height - 4, class: 'chw-tl-label' });
    axis.textContent = `${Math.round(t1 - t0)} s`;
    chart.append(axis);
    holder.replaceChildren(chart);
    const by: Record<string, number> = {};
    for (const j of jobs) {
      by[j.status] = (by[j.status] ?? 0) + 1;
    }
    counts.textContent = Object.entries(by).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(' · ');
    root.dataset.done = String(jobs.length > 0 && jobs.every(j => isTerminal(j.status)));
    stamp(root);
    // Running bars grow with the clock, without any message from the kernel.
    window.clearTimeout(ticker);
    if (jobs.some(j => !isTerminal(j.status))) {
      ticker = window.setTimeout(update, 1000);
    }
  };
  model.on('change:jobs', update);
  update();
  return () => {
    window.clearTimeout(ticker);
    model.off('change:jobs', update);
  };
}

export default { render };
