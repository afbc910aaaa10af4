/**
 * The GPU heatmap: GPUs (rows) × time (columns), one panel for utilisation and
 * one for memory, drawn on a canvas. Shared by the sidebar (which reads the
 * data from the API: sidebar/heatmap.ts) and the notebook's GpuHeatmap view
 * (which gets it from the kernel).
 */

export interface IGpuInfo {
  index: number;
  name?: string;
  memory_total?: number;
}

export interface IHeatmapData {
  gpus: IGpuInfo[];
  /** Sample times, seconds since the epoch, ascending. */
  times: ArrayLike<number>;
  /** Utilisation in percent, row-major: gpus.length × times.length. */
  util: ArrayLike<number>;
  /** Memory used in percent of total, same layout. */
  mem: ArrayLike<number>;
  /** Seconds of history shown. */
  window: number;
}

// A perceptually ordered ramp (viridis, 8 stops), interpolated.
const RAMP = [
  [68, 1, 84],
  [70, 50, 127],
  [54, 92, 141],
  [39, 127, 142],
  [31, 161, 135],
  [74, 194, 109],
  [159, 218, 58],
  [253, 231, 37]
];

export function colour(percent: number): string {
  if (!isFinite(percent)) {
    return 'rgba(128,128,128,0.15)';
  }
  const x = Math.min(1, Math.max(0, percent / 100)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  const c = RAMP[i].map((v, k) => Math.round(v + (RAMP[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

/** Draw both panels into the canvas, sized to its CSS width. */
export function drawHeatmap(canvas: HTMLCanvasElement, data: IHeatmapData): void {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(160, canvas.clientWidth || canvas.parentElement?.clientWidth || 300);
  const n = data.gpus.length;
  const rowH = n > 8 ? 8 : 14;
  const panelH = Math.max(rowH * n, 14);
  const left = 34;
  const top = 14;
  const gap = 22;
  const bottom = 16;
  const height = top + panelH + gap + panelH + bottom;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext('2d');
  if (!ctx) {
    return;
  }
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const style = getComputedStyle(canvas);
  const fg = style.color || '#333';
  ctx.font = '10px sans-serif';
  ctx.fillStyle = fg;

  const t = data.times;
  const nt = t.length;
  const end = nt ? t[nt - 1] : Date.now() / 1000;
  const start = end - data.window;
  const plotW = width - left - 4;
  const x = (ts: number) => left + ((ts - start) / data.window) * plotW;

  const panels: [string, ArrayLike<number>, number][] = [
    ['utilisation %', data.util, top],
    ['memory %', data.mem, top + panelH + gap]
  ];
  for (const [label, values, y0] of panels) {
    ctx.fillStyle = fg;
    ctx.textBaseline = 'bottom';
    ctx.fillText(label, left, y0 - 2);
    ctx.fillStyle = 'rgba(128,128,128,0.12)';
    ctx.fillRect(left, y0, plotW, panelH);
    for (let g = 0; g < n; g++) {
      const y = y0 + g * rowH;
      for (let k = 0; k < nt; k++) {
        if (t[k] < start) {
          continue;
        }
        const x0 = x(t[k]);
        const x1 = k + 1 < nt ? x(t[k + 1]) : left + plotW;
        ctx.fillStyle = colour(values[g * nt + k]);
        ctx.fillRect(x0, y, Math.max(1, x1 - x0 + 0.5), rowH - 1);
      }
      ctx.fillStyle = fg;
      ctx.textBaseline = 'middle';
      ctx.textAlign = 'right';
      ctx.fillText(`${data.gpus[g].index}`, left - 4, y + rowH / 2);
      ctx.textAlign = 'left';
    }
  }
  // Colour key: 0 → 100 %, top right.
  const keyW = Math.min(80, plotW / 3);
  const keyX = left + plotW - keyW - 24;
  for (let k = 0; k < keyW; k++) {
    ctx.fillStyle = colour((100 * k) / keyW);
    ctx.fillRect(keyX + k, 3, 1.5, 8);
  }
  ctx.fillStyle = fg;
  ctx.textBaseline = 'middle';
  ctx.textAlign = 'right';
  ctx.fillText('0', keyX - 3, 7);
  ctx.textAlign = 'left';
  ctx.fillText('100%', keyX + keyW + 3, 7);
  ctx.fillStyle = fg;
  ctx.textBaseline = 'top';
  const yAxis = top + 2 * panelH + gap + 3;
  ctx.fillText(`-${Math.round(data.window)} s`, left, yAxis);
  ctx.textAlign = 'right';
  ctx.fillText('now', left + plotW, yAxis);
  ctx.textAlign = 'left';
}

/** One GPU (or a CPU-only job's reading) of a node, as `GET gpus` lists it in `nodes`. */
export interface INodeGpu {
  kind: 'gpu' | 'cpu';
  uuid: string | null;
  index: number | null;
  name?: string | null;
  utilization: number;
  memory_bytes?: number | null;
  memory_total_bytes?: number | null;
  power_watts?: number | null;
  temperature_c?: number | null;
  /** The caller's job on it (null for another user's job, or none). */
  job_id: string | null;
  job_status?: string | null;
  held: boolean;
}

/** A node: the server's host (`source: server`) or a compute node jobs sampled themselves on. */
export interface INode {
  host: string;
  source: 'server' | 'jobs';
  gpus: INodeGpu[];
}

/** The nodes of a `GET gpus` answer (none when it has no `nodes`). */
export function nodesOf(inventory: any): INode[] {
  return Array.isArray(inventory?.nodes) ? (inventory.nodes as INode[]) : [];
}

function cellText(g: INodeGpu): string {
  const gib = (n?: number | null) => (n ? `${(n / 2 ** 30).toFixed(1)} GiB` : '');
  const parts = [
    g.kind === 'gpu' ? `GPU ${g.index ?? '?'}${g.name ? ` (${g.name})` : ''}` : 'CPU of a job',
    `${Math.round(g.utilization)}%`
  ];
  if (g.memory_bytes) {
    parts.push(g.memory_total_bytes && g.kind === 'gpu' ? `${gib(g.memory_bytes)} of ${gib(g.memory_total_bytes)}` : gib(g.memory_bytes));
  }
  if (g.power_watts !== null && g.power_watts !== undefined) {
    parts.push(`${Math.round(g.power_watts)} W`);
  }
  if (g.temperature_c !== null && g.temperature_c !== undefined) {
    parts.push(`${Math.round(g.temperature_c)} °C`);
  }
  parts.push(g.job_id ? `job ${g.job_id}${g.job_status ? ` (${g.job_status})` : ''}` : g.held ? "another user's job" : 'free');
  if (g.uuid) {
    parts.push(g.uuid);
  }
  return parts.join(' · ');
}

/**
 * Draw the GPUs per node into ``el``: one row per node (its host name), one square per GPU
 * coloured by its utilisation, marked with the job that holds it. DOM, not canvas, so each
 * GPU's details are a tooltip and the tests can read them.
 */
export function renderNodes(el: HTMLElement, nodes: INode[]): void {
  el.replaceChildren();
  el.dataset.nodes = String(nodes.length);
  for (const node of nodes) {
    const row = document.createElement('div');
    row.className = 'chw-node';
    row.dataset.host = node.host;
    row.dataset.source = node.source;
    row.style.cssText = 'display:flex;align-items:center;gap:4px;margin:2px 0;font-size:11px';
    const label = document.createElement('span');
    label.className = 'chw-node-host';
    label.textContent = node.source === 'server' ? `${node.host} (server)` : node.host;
    label.style.cssText = 'min-width:90px;font-family:var(--jp-code-font-family, monospace)';
    row.append(label);
    for (const g of node.gpus) {
      const cell = document.createElement('span');
      cell.className = 'chw-node-gpu';
      cell.dataset.kind = g.kind;
      cell.dataset.jobId = g.job_id ?? '';
      cell.dataset.held = String(g.held);
      cell.title = cellText(g);
      const pct = g.kind === 'cpu' ? Math.min(100, g.utilization) : g.utilization;
      cell.style.cssText =
        `display:inline-flex;align-items:center;justify-content:center;min-width:26px;height:18px;padding:0 3px;` +
        `border-radius:2px;background:${colour(pct)};color:${pct > 60 ? '#000' : '#fff'};` +
        (g.held ? 'outline:2px solid var(--jp-brand-color1, #1976d2);outline-offset:-2px;' : '');
      const job = g.job_id ? ` ${g.job_id.slice(0, 4)}` : '';
      cell.textContent = `${g.kind === 'gpu' ? g.index ?? '?' : 'cpu'}${job}`;
      row.append(cell);
    }
    el.append(row);
  }
}
