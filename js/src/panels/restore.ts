/**
 * Our live panels in a reopened notebook: live when their model still exists, else their
 * last state in words, never "Error displaying widget: model not found".
 *
 * A panel's output holds the widget view (a model id) and, under PANEL_MIME, the panel's
 * summary lines (cosmic_horizons_lab/notebook/widgets/summary.py). This renderer wins over
 * the widget manager's for such outputs (a lower rank than its -10). It shows the summary
 * at once, then asks the notebook's widget manager (@jupyter-widgets/jupyterlab-manager)
 * whether the model exists, as that manager's own renderer would, but without its error:
 * if it does, the manager's renderer draws the live panel in its place; if not, the summary
 * stays, with a hint to re-run the cell. While live, the panel's `panel_summary` follows its
 * state and is written into the output, so a saved notebook holds the last state.
 *
 * The manager is reached through the renderer it registers in the notebook's rendermime
 * (its `_manager` promise): the package exports no other way to a notebook's manager
 * that an extension built without @jupyter-widgets/base could use. The manager's own
 * API is then used as documented: `has_model`, `restoredStatus`, `restored`, `get_model`.
 * Nothing here changes the notebook on open; the output is written only when the live
 * panel's summary differs from the saved one.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { IRenderMimeRegistry, IRenderMime } from '@jupyterlab/rendermime';
import type { ISignal } from '@lumino/signaling';
import { Panel, Widget } from '@lumino/widgets';

export const PANEL_MIME = 'application/vnd.cosmic-horizons.panel+json';
export const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';
/** The widget manager's renderer is registered at rank -10; ours must come first. */
export const PANEL_RANK = -20;
/** As the manager's get_model: a model may register a little after its display data. */
const LATE_MODEL_MS = 2000;
/** How long to look for the notebook's widget manager once its kernel is ready. */
const MANAGER_WAIT_MS = 20000;

interface IPanelData {
  model_id: string;
  kind: string;
  lines: string[];
  hint?: string;
}

/** The part of @jupyter-widgets' WidgetModel (a Backbone model) we use. */
interface IWidgetModel {
  get(name: string): unknown;
  on(event: string, callback: () => void, context?: unknown): void;
  off(event: string, callback: () => void, context?: unknown): void;
}

/** The part of the notebook's widget manager (LabWidgetManager) we use. */
interface IWidgetManager {
  readonly restoredStatus: boolean;
  readonly restored: ISignal<unknown, void>;
  has_model(id: string): boolean;
  get_model(id: string): Promise<IWidgetModel>;
}

interface ISessionLike {
  ready: Promise<void>;
  session?: { kernel?: unknown } | null;
}

const sleep = (ms: number) => new Promise<void>(resolve => setTimeout(resolve, ms));

/** The static form of one panel: its lines, the first as title, and the hint. */
export function renderSummary(node: HTMLElement, data: IPanelData, saved: boolean): void {
  node.textContent = '';
  node.className = 'ch-panel-summary';
  node.dataset.kind = data.kind;
  node.dataset.state = saved ? 'saved' : 'checking';
  Object.assign(node.style, {
    fontFamily: 'var(--jp-code-font-family)', fontSize: 'var(--jp-code-font-size)',
    padding: '4px 8px', borderLeft: '3px solid var(--jp-border-color1)', whiteSpace: 'pre-wrap'
  });
  const [title, ...rest] = data.lines.length ? data.lines : [data.kind];
  const head = document.createElement('div');
  head.className = 'ch-panel-title';
  head.style.fontWeight = 'bold';
  head.textContent = title;
  node.appendChild(head);
  for (const line of rest) {
    const div = document.createElement('div');
    div.textContent = line;
    node.appendChild(div);
  }
  if (saved) {
    const hint = document.createElement('div');
    hint.className = 'ch-panel-hint';
    Object.assign(hint.style, { fontStyle: 'italic', color: 'var(--jp-ui-font-color2)', marginTop: '2px' });
    hint.textContent = data.hint || 'Saved view: re-run the cell for the live panel.';
    node.appendChild(hint);
  }
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`);
}

/** As summary.panel_html in Python: what other readers of the saved notebook show. */
function summaryHtml(data: IPanelData): string {
  const [head, ...rest] = data.lines.length ? data.lines : [data.kind];
  const body = rest.map(l => `<div>${escapeHtml(l)}</div>`).join('');
  return `<div class="ch-panel-saved" data-kind="${escapeHtml(data.kind)}"><div><b>${escapeHtml(head)}</b></div>` +
    `${body}<div><i>${escapeHtml(data.hint || '')}</i></div></div>`;
}

/** The first ancestor widget that has a property `name` (the output area, the notebook panel). */
function ancestorWith(widget: Widget, name: string): any {
  for (let w: Widget | null = widget.parent; w; w = w.parent) {
    if ((w as any)[name]) {
      return w;
    }
  }
  return null;
}

/**
 * The notebook's widget manager, through the renderer it registers in the notebook's
 * rendermime once the kernel is ready; null when there is none (no kernel, or no manager).
 */
async function findManager(rendermime: IRenderMimeRegistry, session: ISessionLike | null): Promise<IWidgetManager | null> {
  if (session) {
    await session.ready;
    if (!session.session?.kernel) {
      return null; // no kernel: no model can be alive
    }
  }
  const deadline = Date.now() + MANAGER_WAIT_MS;
  while (Date.now() < deadline) {
    if (rendermime.getFactory(WIDGET_MIME)) {
      const probe = rendermime.createRenderer(WIDGET_MIME) as any;
      const pending = probe?._manager as { promise: Promise<IWidgetManager> } | undefined;
      const manager = pending ? await Promise.race([pending.promise, sleep(50).then(() => null)]) : null;
      probe?.dispose?.();
      if (manager) {
        return manager;
      }
      if (!pending) {
        return null; // a manager renderer of another shape: we cannot ask it, stay static
      }
    }
    await sleep(200);
  }
  return null;
}

/** Whether the manager has (or, within LATE_MODEL_MS of its restore, gets) this model. */
async function modelAlive(manager: IWidgetManager, id: string, disposed: () => boolean): Promise<boolean> {
  if (manager.has_model(id)) {
    return true;
  }
  if (!manager.restoredStatus) {
    // The manager is still reading the kernel's models: wait for it, as its renderer does.
    let done = () => {};
    const restored = new Promise<void>(resolve => (done = resolve));
    manager.restored.connect(done);
    await restored;
    manager.restored.disconnect(done);
  }
  const deadline = Date.now() + LATE_MODEL_MS;
  while (!disposed()) {
    if (manager.has_model(id)) {
      return true;
    }
    if (Date.now() > deadline) {
      return false;
    }
    await sleep(100);
  }
  return false;
}

export class PanelRenderer extends Panel implements IRenderMime.IRenderer {
  constructor(options: IRenderMime.IRendererOptions) {
    super();
    this.addClass('ch-panel-restore');
    this._summary = new Widget();
    this.addWidget(this._summary);
    void options;
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    const data = model.data[PANEL_MIME] as unknown as IPanelData;
    this._model = model;
    this._data = data;
    if (this._liveId === data.model_id) {
      return; // our own write of the summary (or an update of it): the live panel stays
    }
    this._disposeLive();
    this._liveId = null;
    renderSummary(this._summary.node, data, false);
    this._summary.show();
    const attempt = ++this._attempt;
    void this._connect(model, data, attempt);
  }

  private async _connect(model: IRenderMime.IMimeModel, data: IPanelData, attempt: number): Promise<void> {
    const stale = () => this.isDisposed || attempt !== this._attempt;
    try {
      // The output area (and the notebook around it) are known once it has taken us in.
      const until = Date.now() + 5000;
      let area = ancestorWith(this, 'rendermime');
      while (!area && !stale() && Date.now() < until) {
        await sleep(20);
        area = ancestorWith(this, 'rendermime');
      }
      const manager = area ? await findManager(area.rendermime, ancestorWith(this, 'sessionContext')?.sessionContext ?? null) : null;
      if (!manager || stale() || !(await modelAlive(manager, data.model_id, stale)) || stale()) {
        if (!stale()) {
          renderSummary(this._summary.node, data, true);
        }
        return;
      }
      const live = area.rendermime.createRenderer(WIDGET_MIME) as Widget & IRenderMime.IRenderer;
      this._live = live;
      this._liveId = data.model_id;
      this.addWidget(live);
      await live.renderModel(model);
      if (stale()) {
        return;
      }
      this._summary.hide();
      this._summary.node.dataset.state = 'live';
      await this._follow(manager, data.model_id);
    } catch {
      if (!stale()) {
        this._disposeLive();
        renderSummary(this._summary.node, data, true);
        this._summary.show();
      }
    }
  }

  /** Keep the output's saved summary equal to the live panel's (written only when it differs). */
  private async _follow(manager: IWidgetManager, id: string): Promise<void> {
    const widgetModel = await manager.get_model(id);
    if (this.isDisposed || this._liveId !== id) {
      return;
    }
    const update = () => {
      const lines = widgetModel.get('panel_summary');
      const model = this._model;
      const data = this._data;
      if (!model || !data || !Array.isArray(lines) || !lines.length) {
        return;
      }
      if (JSON.stringify(lines) === JSON.stringify(data.lines)) {
        return;
      }
      const next: IPanelData = { ...data, lines: lines.map(String) };
      this._data = next;
      model.setData({
        data: { ...model.data, [PANEL_MIME]: next as any, 'text/html': summaryHtml(next), 'text/plain': next.lines.join('\n') }
      });
    };
    widgetModel.on('change:panel_summary', update, this);
    this._unfollow = () => widgetModel.off('change:panel_summary', update, this);
    update();
  }

  private _disposeLive(): void {
    this._unfollow?.();
    this._unfollow = null;
    this._live?.dispose();
    this._live = null;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._disposeLive();
    super.dispose();
  }

  private _summary: Widget;
  private _live: Widget | null = null;
  private _liveId: string | null = null;
  private _model: IRenderMime.IMimeModel | null = null;
  private _data: IPanelData | null = null;
  private _attempt = 0;
  private _unfollow: (() => void) | null = null;
}

export const panelRendererFactory: IRenderMime.IRendererFactory = {
  // Not safe: for a trusted output it may show the live widget (which runs code), as the
  // widget manager's renderer does; an untrusted one shows the sanitised text/html instead.
  safe: false,
  mimeTypes: [PANEL_MIME],
  defaultRank: PANEL_RANK,
  createRenderer: options => new PanelRenderer(options)
};

export const restorePlugin: JupyterFrontEndPlugin<void> = {
  id: 'cosmic-horizons-lab:panel-restore',
  description: 'Live panels in reopened notebooks: live when their model exists, else their last state in words.',
  autoStart: true,
  requires: [IRenderMimeRegistry],
  activate: (_app: JupyterFrontEnd, rendermime: IRenderMimeRegistry) => {
    rendermime.addFactory(panelRendererFactory, PANEL_RANK);
  }
};
