/** The view of GpuHeatmap: the server's GPUs × time, utilisation and memory (or "no GPU"),
 * and below it the GPUs per node (the server's host and the compute nodes jobs ran on),
 * each with the job that holds it. */
import { noGpuText } from '../model/format';
import { drawHeatmap, IHeatmapData, renderNodes } from '../model/heatmap';
import { floats, h, RenderProps, stamp } from './common';

function render({ model, el }: RenderProps): () => void {
  const root = h('div', 'chw chw-heatmap');
  const head = h('div', 'chw-head');
  const title = h('span', 'chw-name', 'GPUs');
  const summary = h('span', 'chw-counts');
  head.append(title, summary);
  const canvas = h('canvas', 'chw-canvas');
  const none = h('div', 'chw-nogpu');
  const nodes = h('div', 'chw-nodes');
  root.append(head, canvas, none, nodes);
  el.append(root);

  const updateNodes = () => {
    renderNodes(nodes, model.get('nodes') ?? []);
    stamp(root);
  };
  const update = () => {
    const available = !!model.get('available');
    root.dataset.state = available ? 'ok' : 'none';
    if (!available) {
      none.textContent = noGpuText(model.get('reason'));
      canvas.style.display = 'none';
      summary.textContent = '';
      stamp(root);
      return;
    }
    none.textContent = '';
    canvas.style.display = '';
    const gpus = model.get('gpus') ?? [];
    const data: IHeatmapData = {
      gpus,
      times: floats(model.get('times'), 'f64'),
      util: floats(model.get('util'), 'f32'),
      mem: floats(model.get('mem'), 'f32'),
      window: Number(model.get('window') ?? 300)
    };
    const nt = data.times.length;
    const last = gpus.map((g: any, row: number) =>
      nt ? `GPU ${g.index}: ${Math.round(data.util[row * nt + nt - 1])}%` : `GPU ${g.index}`
    );
    summary.textContent = last.join(' · ');
    // Drawn after layout, so the canvas knows its width.
    requestAnimationFrame(() => drawHeatmap(canvas, data));
    stamp(root);
  };
  const names = ['change:available', 'change:times', 'change:util', 'change:gpus', 'change:reason'];
  for (const n of names) {
    model.on(n, update);
  }
  model.on('change:nodes', updateNodes);
  update();
  updateNodes();
  return () => {
    for (const n of names) {
      model.off(n, update);
    }
    model.off('change:nodes', updateNodes);
  };
}

export default { render };
