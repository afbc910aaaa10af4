/** The view of JobQueue: a table of jobs, patched row by row, with cancel. */
import { cancelJob } from '../api/page';
import { barWidth, fraction, shortId } from '../model/format';
import { isTerminal, Status } from '../model/states';
import { h, RenderProps, stamp } from './common';

const COLUMNS = ['status', 'agent', 'dataset', 'id', 'progress', 'created', ''];

function render({ model, el }: RenderProps): () => void {
  const root = h('div', 'chw chw-queue');
  const bar = h('div', 'chw-head');
  const title = h('span', 'chw-name', 'Jobs');
  const counts = h('span', 'chw-counts');
  const onlyActive = h('label', 'chw-filter');
  const checkbox = h('input');
  checkbox.type = 'checkbox';
  onlyActive.append(checkbox, document.createTextNode(' active only'));
  const refresh = h('button', 'chw-button chw-refresh', 'Refresh');
  bar.append(title, counts, onlyActive, refresh);
  const message = h('div', 'chw-error');
  const scroller = h('div', 'chw-scroll');
  const table = h('table', 'chw-table');
  const thead = h('thead');
  const headRow = h('tr');
  for (const c of COLUMNS) {
    headRow.append(h('th', '', c));
  }
  thead.append(headRow);
  const tbody = h('tbody');
  table.append(thead, tbody);
  scroller.append(table);
  root.append(bar, message, scroller);
  el.append(root);

  const rows = new Map<string, { tr: HTMLTableRowElement; sig: string }>();

  tbody.addEventListener('click', event => {
    const button = (event.target as HTMLElement).closest('button.chw-cancel') as HTMLButtonElement;
    if (button) {
      button.disabled = true;
      const id = button.dataset.jobId ?? '';
      void cancelJob(id).then(done => {
        if (!done) {
          model.send({ action: 'cancel', id });
        }
      });
    }
  });
  refresh.addEventListener('click', () => model.send({ action: 'refresh' }));
  checkbox.addEventListener('change', () => {
    model.set('active_only', checkbox.checked);
    model.save_changes();
    update();
  });

  const rowHtml = (job: any) => {
    const p = fraction(job.progress);
    const created = job.created_at ? new Date(job.created_at).toLocaleTimeString() : '';
    const cancel = isTerminal(job.status)
      ? ''
      : `<button class="chw-button chw-cancel" data-job-id="${esc(job.id)}">Cancel</button>`;
    return (
      `<td><span class="chw-status" data-status="${esc(job.status)}">${esc(job.status)}</span></td>` +
      `<td>${esc(job.agent ?? '')}</td><td>${esc(job.dataset_id ?? '')}</td>` +
      `<td class="chw-id" title="${esc(job.id)}">${esc(shortId(job.id))}</td>` +
      `<td><div class="chw-track"><div class="chw-bar" data-status="${esc(job.status)}" style="width:${barWidth(p)}"></div></div></td>` +
      `<td>${esc(created)}</td><td>${cancel}</td>`
    );
  };

  const update = () => {
    const started = performance.now();
    const jobs: any[] = model.get('jobs') ?? [];
    const active = checkbox.checked;
    checkbox.checked = !!model.get('active_only');
    const shown = active ? jobs.filter(j => !isTerminal(j.status)) : jobs;
    const running = jobs.filter(j => j.status === Status.RUNNING).length;
    const queued = jobs.filter(j => !isTerminal(j.status) && j.status !== Status.RUNNING).length;
    counts.textContent = `${jobs.length} job${jobs.length === 1 ? '' : 's'} · ${running} running · ${queued} waiting`;
    message.textContent = model.get('error') ?? '';
    root.dataset.connected = String(!!model.get('connected'));
    if (rows.size === 0 && shown.length > 0) {
      // First fill: one HTML parse for the whole table is far cheaper than a row at a time.
      tbody.innerHTML = shown
        .map(job => `<tr data-job-id="${esc(job.id)}" data-status="${esc(job.status)}">${rowHtml(job)}</tr>`)
        .join('');
      const trs = tbody.children;
      shown.forEach((job, k) => {
        rows.set(job.id, { tr: trs[k] as HTMLTableRowElement, sig: signature(job) });
      });
    }
    const seen = new Set<string>();
    let previous: HTMLTableRowElement | null = null;
    for (const job of shown) {
      seen.add(job.id);
      const sig = signature(job);
      let row = rows.get(job.id);
      if (!row) {
        const tr = h('tr');
        tr.dataset.jobId = job.id;
        row = { tr, sig: '' };
        rows.set(job.id, row);
      }
      if (row.sig !== sig) {
        row.tr.innerHTML = rowHtml(job);
        row.tr.dataset.status = job.status;
        row.sig = sig;
      }
      const expected: Element | null = previous ? previous.nextElementSibling : tbody.firstElementChild;
      if (expected !== row.tr) {
        tbody.insertBefore(row.tr, expected);
      }
      previous = row.tr;
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    // How long this update took to apply to the DOM (read by benchmarks/bench_ui.py).
    root.dataset.renderMs = (performance.now() - started).toFixed(2);
    // ... and until the next frame, so style, layout and paint are counted too.
    requestAnimationFrame(() => {
      root.dataset.paintMs = (performance.now() - started).toFixed(2);
    });
    root.dataset.rows = String(rows.size);
    stamp(root);
  };
  const events = ['change:jobs', 'change:error', 'change:connected', 'change:active_only'];
  for (const e of events) {
    model.on(e, update);
  }
  update();
  return () => {
    for (const e of events) {
      model.off(e, update);
    }
  };
}

function signature(job: any): string {
  return `${job.status}|${job.progress}|${job.agent}|${job.dataset_id}|${job.created_at}`;
}

function esc(value: unknown): string {
  return String(value ?? '').replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`);
}

export default { render };
