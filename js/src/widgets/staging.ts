/** The view of Staging: one dataset's transfer to a target, live, with cancel. */
import { callApi } from '../api/page';
import { stagingStatusPath } from '../api/paths';
import { barWidth, formatBytes as bytes, formatDuration, fraction } from '../model/format';
import { JobStatus, Status } from '../model/states';
import { h, RenderProps, stamp } from './common';

const ENDED = new Set(['completed', 'failed', 'cancelled']);

/** The job state whose colours a transfer state borrows. */
const AS_JOB_STATUS: Record<string, JobStatus> = {
  completed: Status.COMPLETED,
  failed: Status.FAILED,
  cancelled: Status.CANCELLED,
  running: Status.RUNNING
};

function render({ model, el }: RenderProps): () => void {
  const root = h('div', 'chw chw-staging');
  const head = h('div', 'chw-head');
  const status = h('span', 'chw-status');
  const name = h('span', 'chw-name');
  const cancel = h('button', 'chw-button chw-cancel', 'Cancel');
  head.append(status, name, cancel);
  const track = h('div', 'chw-track');
  const bar = h('div', 'chw-bar');
  track.append(bar);
  const meta = h('div', 'chw-meta');
  const error = h('div', 'chw-error');
  root.append(head, track, meta, error);
  el.append(root);
  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    const t = model.get('transfer') ?? {};
    if (!(await callApi('DELETE', stagingStatusPath(t.dataset_id ?? '', t.target_resource)))) {
      model.send({ action: 'cancel' });
    }
  });

  const update = () => {
    const t = model.get('transfer') ?? {};
    const st = String(t.status ?? 'not_staged');
    root.dataset.status = st;
    status.textContent = st.toUpperCase().replace('_', ' ');
    status.dataset.status = AS_JOB_STATUS[st] ?? st;
    name.textContent = `${t.dataset_id ?? ''} → ${t.target_resource ?? ''}`;
    cancel.style.display = ENDED.has(st) || st === 'not_staged' ? 'none' : '';
    const p = fraction(t.progress);
    bar.style.width = barWidth(p);
    bar.dataset.status = status.dataset.status ?? '';
    const parts = [`${bytes(Number(t.bytes_transferred ?? 0))} of ${bytes(Number(t.total_bytes ?? 0))}`];
    if (t.rate_bytes_per_second) {
      parts.push(`${bytes(Number(t.rate_bytes_per_second))}/s`);
    }
    if (t.eta_seconds !== null && t.eta_seconds !== undefined && !ENDED.has(st)) {
      parts.push(`ETA ${formatDuration(Number(t.eta_seconds))}`);
    }
    if (t.phase && !ENDED.has(st)) {
      parts.push(String(t.phase));
    }
    if (t.stale) {
      parts.push('stale (past the purge age)');
    }
    meta.textContent = parts.join(' · ');
    error.textContent = t.error ? String(t.error) : model.get('error') ?? '';
    stamp(root);
  };
  model.on('change:transfer', update);
  model.on('change:error', update);
  update();
  return () => {
    model.off('change:transfer', update);
    model.off('change:error', update);
  };
}

export default { render };
