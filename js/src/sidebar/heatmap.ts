/**
 * The sidebar's GPU heatmap data: what `gpus/history` answers, turned into
 * the rows × times arrays that model/heatmap.ts draws.
 */
import { IGpuInfo, IHeatmapData, nodesOf, renderNodes } from '../model/heatmap';

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

/**
 * The sidebar's GPUs per node (the server's host and the compute nodes jobs ran on), under
 * the heatmap in ``gpuEl``; shown whatever the server's own NVML found.
 */
export function showNodes(gpuEl: HTMLElement, inventory: any): void {
  let el = gpuEl.querySelector('.ch-nodes') as HTMLElement | null;
  if (!el) {
    el = document.createElement('div');
    el.className = 'ch-nodes';
    gpuEl.append(el);
  }
  renderNodes(el, nodesOf(inventory));
}
