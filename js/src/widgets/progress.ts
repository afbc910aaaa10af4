/** The view of JobProgress: one job's status, progress, metrics, a live chart of its own
 * resource samples (utilisation and memory, from the kernel's poll of jobs/{id}/resources),
 * and cancel. */
import { cancelJob } from '../api/page';
import {
  barWidth,
  formatBytes,
  formatDuration,
  fraction,
  jobName,
  percent,
  runSeconds,
  shortId
} from '../model/format';
import { describeMetrics, metricsLine } from '../model/metrics';
import { drawSparkline, MEM_COLOUR, UTIL_COLOUR } from '../model/sparkline';
import { isTerminal, Status } from '../model/states';
import { floats, h, RenderProps, stamp } from './common';

function render({ model, el }: RenderProps): () => void {
  const root = h('div', 'chw chw-progress');
  const head = h('div', 'chw-head');
  const status = h('span', 'chw-status');
  const name = h('span', 'chw-name');
  const id = h('span', 'chw-id');
  const cancel = h('button', 'chw-button chw-cancel', 'Cancel');
  head.append(status, name, id, cancel);
  const track = h('div', 'chw-track');
  const bar = h('div', 'chw-bar');
  track.append(bar);
  const meta = h('div', 'chw-meta');
  const more = h('details', 'chw-details');
  const moreSummary = h('summary', '', 'details');
  const moreTable = h('dl', 'chw-metrics');
  more.append(moreSummary, moreTable);
  const error = h('div', 'chw-error');
  const preview = h('img', 'chw-preview');
  const previewNote = h('div', 'chw-note');
  const chart = h('div', 'chw-resources');
  chart.style.cssText = 'display:none;align-items:center;gap:8px;margin-top:4px;font-size:11px';
  const spark = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  spark.classList.add('chw-sparkline');
  const chartText = h('span', 'chw-resources-text');
  chartText.style.color = 'var(--jp-ui-font-color2, #666)';
  chart.append(spark, chartText);
  root.append(head, track, meta, chart, more, error, preview, previewNote);
  el.append(root);

  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    const id = model.get('job')?.id;
    if (!id || !(await cancelJob(id))) {
      model.send({ action: 'cancel' });
    }
  });

  let previewUrl = '';
  const update = () => {
    const job = model.get('job') ?? {};
    const st: string = job.status ?? Status.QUEUED;
    root.dataset.status = st;
    root.dataset.jobId = job.id ?? '';
    status.textContent = st;
    status.dataset.status = st;
    name.textContent = jobName(job);
    id.textContent = job.id ? shortId(job.id) : '';
    id.title = job.id ?? '';
    cancel.style.display = isTerminal(st) ? 'none' : '';
    const p = fraction(job.progress);
    bar.style.width = barWidth(p);
    bar.dataset.status = st;
    const parts = [percent(p)];
    const seconds = runSeconds(job);
    if (seconds !== undefined) {
      parts.push(formatDuration(seconds));
    }
    const { headline, details } = describeMetrics(job.metrics);
    if (headline.length) {
      parts.push(metricsLine(headline));
    }
    meta.textContent = parts.join(' · ');
    more.style.display = details.length ? '' : 'none';
    moreTable.replaceChildren(
      ...details.flatMap(d => {
        const dt = h('dt', '', d.label);
        dt.dataset.key = d.key;
        return [dt, h('dd', '', d.text)];
      })
    );
    error.textContent = job.error ? String(job.error) : '';
    stamp(root);
  };
  const updatePreview = () => {
    const png = model.get('preview');
    if (previewUrl) {
      URL.revokeObjectURL(previewUrl);
      previewUrl = '';
    }
    if (png && png.byteLength) {
      previewUrl = URL.createObjectURL(new Blob([png], { type: 'image/png' }));
      preview.src = previewUrl;
      preview.alt = model.get('preview_alt') ?? 'quick-look image';
      preview.style.display = '';
    } else {
      preview.style.display = 'none';
    }
    // Why there is no picture, in one line (set by the kernel when drawing it failed).
    previewNote.textContent = model.get('preview_error') ?? '';
  };
  const updateChart = () => {
    const times = floats(model.get('res_times'), 'f64');
    const n = times.length;
    const kind: string = model.get('res_kind') ?? '';
    chart.dataset.kind = kind;
    chart.dataset.points = String(n);
    if (!n) {
      chart.style.display = 'none';
      return;
    }
    chart.style.display = 'flex';
    const util = floats(model.get('res_util'), 'f32');
    const mem = floats(model.get('res_mem'), 'f64');
    const memTotal = floats(model.get('res_mem_total'), 'f64');
    // A GPU's memory on the scale of its total; a process's RSS on its own peak (the machine's
    // total would flatten it to the axis).
    drawSparkline(spark, { times, util, mem, memTotal: kind === 'gpu' ? memTotal : [] });
    const what = kind === 'gpu' ? 'GPU' : 'CPU';
    const memory = kind === 'gpu' ? 'memory' : 'RSS';
    const latestUtil = `${Math.round(util[n - 1])}%`;
    const latestMem = formatBytes(mem[n - 1]);
    const utilText = h('span', 'chw-res-util', `${what} ${latestUtil}`);
    utilText.style.color = UTIL_COLOUR;
    const memText = h('span', 'chw-res-mem', `${memory} ${latestMem}`);
    memText.style.color = MEM_COLOUR;
    const host = model.get('res_host');
    chartText.replaceChildren(utilText, ' · ', memText, host ? ` · ${host}` : '');
    chart.title = `${n} samples of the job's own ${what}${kind === 'gpu' ? 's' : ''}`;
    stamp(root);
  };
  const chartNames = ['change:res_times', 'change:res_util', 'change:res_mem', 'change:res_kind'];
  for (const name of chartNames) {
    model.on(name, updateChart);
  }
  updateChart();
  model.on('change:job', update);
  model.on('change:preview', updatePreview);
  model.on('change:preview_error', updatePreview);
  update();
  updatePreview();
  return () => {
    model.off('change:job', update);
    for (const name of chartNames) {
      model.off(name, updateChart);
    }
    model.off('change:preview', updatePreview);
    model.off('change:preview_error', updatePreview);
    if (previewUrl) {
      URL.revokeObjectURL(previewUrl);
    }
  };
}

export default { render };
