/** The view of JobProgress: one job's status, progress, metrics, and cancel. */
import { cancelJob } from '../api/page';
import { barWidth, formatDuration, fraction, jobName, percent, runSeconds, shortId } from '../model/format';
import { describeMetrics, metricsLine } from '../model/metrics';
import { isTerminal, Status } from '../model/states';
import { h, RenderProps, stamp } from './common';

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
  root.append(head, track, meta, more, error, preview, previewNote);
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
  model.on('change:job', update);
  model.on('change:preview', updatePreview);
  model.on('change:preview_error', updatePreview);
  update();
  updatePreview();
  return () => {
    model.off('change:job', update);
    model.off('change:preview', updatePreview);
    model.off('change:preview_error', updatePreview);
    if (previewUrl) {
      URL.revokeObjectURL(previewUrl);
    }
  };
}

export default { render };
