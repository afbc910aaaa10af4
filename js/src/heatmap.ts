/**
 * The GPU heatmap: GPUs (rows) × time (columns), one panel for utilisation and
 * one for memory, drawn on a canvas. Used by the sidebar and by the notebook's
 * GpuHeatmap widget.
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

/** Turn whatever `gpus/history` answers into heatmap data (see design.md). */
export function heatmapFromHistory(body: any, window: number): IHeatmapData {
  const gpus: IGpuInfo[] = [];
  const byGpu = new Map<number, { ts: number; util: number; mem: number }[]>();
  const rawGpus: any[] = Array.isArray(body?.gpus) ? body.gpus : [];
  for (const g of rawGpus) {
    const index = Number(g.index ?? g.gpu ?? gpus.length);
    gpus.push({ index, name: g.name, memory_total: g.memory_total_mb ?? g.memory_total });
    byGpu.set(index, []);
    // Samples may be nested under each GPU ...
    for (const s of Array.isArray(g.samples) ? g.samples : []) {
      byGpu.get(index)!.push(sample(s));
    }
  }
  // ... or flat, each naming its GPU.
  const flat: any[] = Array.isArray(body?.samples) ? body.samples : Array.isArray(body) ? body : [];
  const totals = new Map(rawGpus.map(g => [Number(g.index ?? 0), Number(g.memory_total_mb ?? g.memory_total ?? 0)]));
  const add = (s: any) => {
    const index = Number(s.gpu ?? s.index ?? s.gpu_index ?? 0);
    if (!byGpu.has(index)) {
      byGpu.set(index, []);
      gpus.push({ index, name: s.name });
    }
    byGpu.get(index)!.push(sample(s, totals.get(index)));
  };
  for (const s of flat) {
    if (Array.isArray(s.gpus)) {
      // One sample time, every GPU's reading: {"ts", "gpus": [{"index", "utilization", "memory_used_mb"}]}.
      for (const g of s.gpus) {
        add({ ...g, ts: s.ts });
      }
    } else {
      add(s);
    }
  }
  gpus.sort((a, b) => a.index - b.index);
  const times = Array.from(
    new Set(Array.from(byGpu.values()).flatMap(list => list.map(s => s.ts)))
  ).sort((a, b) => a - b);
  const pos = new Map(times.map((ts, k) => [ts, k]));
  const util = new Float32Array(gpus.length * times.length).fill(NaN);
  const mem = new Float32Array(gpus.length * times.length).fill(NaN);
  gpus.forEach((g, row) => {
    for (const s of byGpu.get(g.index) ?? []) {
      const k = pos.get(s.ts)!;
      util[row * times.length + k] = s.util;
      mem[row * times.length + k] = s.mem;
    }
  });
  return { gpus, times, util, mem, window };
}

function sample(s: any, total?: number): { ts: number; util: number; mem: number } {
  const ts = typeof s.ts === 'number' ? s.ts : Date.parse(s.ts ?? s.time ?? '') / 1000;
  const util = Number(s.utilization ?? s.util ?? s.gpu_util ?? s.utilisation ?? NaN);
  let mem = Number(s.memory_percent ?? s.mem_percent ?? NaN);
  const used = s.memory_used_mb ?? s.memory_used;
  const of = s.memory_total_mb ?? s.memory_total ?? total;
  if (isNaN(mem) && used !== undefined && of) {
    mem = (100 * Number(used)) / Number(of);
  }
  return { ts, util, mem };
}
