/**
 * The job form: a submission built from what the server publishes (`GET
 * agents`: each agent's parameter schema; `GET datasets`), with the cost, SU
 * estimate and tips of `POST jobs/optimize` shown live (debounced) before it is
 * sent, and the server's validation errors (`{"error","message","field"}`)
 * shown at the field they name. Plain DOM, like the jobs panel.
 *
 * The same form builds a pipeline's stages in the composer (`mode: 'stage'`):
 * there the button hands the body to the composer instead of submitting it.
 */
import { Widget } from '@lumino/widgets';

import { AGENTS, DATASETS, OPTIMIZE, SUBMIT } from '../api/paths';
import { ApiError, requestAPI } from '../api/rest';
import { createField, FieldError, fieldFor, IField, ISchema } from './fields';

export interface IAgentInfo {
  name: string;
  description?: string;
  requires_dataset?: boolean;
  params_schema: ISchema;
}

/** A submission body (`POST jobs/submit`; a pipeline stage adds `name`). */
export interface ISubmission {
  agent: string;
  dataset_id?: string;
  priority?: number;
  params: { [name: string]: unknown };
  depends_on?: string[];
  name?: string;
}

export interface IJobFormOptions {
  /** 'submit': the button posts jobs/submit; 'stage': it hands the body to `onStage`. */
  mode?: 'submit' | 'stage';
  onSubmitted?: (job: any) => void;
  onStage?: (body: ISubmission) => void;
  /** More of the body, for the estimate (a stage's parents). */
  extra?: () => Partial<ISubmission>;
  /** Milliseconds between the last change and the estimate request. */
  debounceMs?: number;
}

/** Resource parameters every agent has, shown in their own section. */
const RESOURCE_PARAMS = ['gpu_count', 'max_runtime'];

export class JobForm extends Widget {
  agents: IAgentInfo[] = [];
  /** A dataset asked for (by fill) before the list arrived. */
  private pendingDataset: string | undefined;
  /** Whether GET datasets has answered (the select then holds every dataset). */
  datasetsLoaded = false;
  private readonly fields = new Map<string, IField>();
  private agentSelect!: HTMLSelectElement;
  private paramsEl!: HTMLElement;
  private resourcesEl!: HTMLElement;
  private estimateEl!: HTMLElement;
  private tipsEl!: HTMLElement;
  private messageEl!: HTMLElement;
  private button!: HTMLButtonElement;
  private timer: number | undefined;
  private sequence = 0;
  private loaded: Promise<void> | null = null;
  /** The last estimate answer (for tests and the composer). */
  lastEstimate: any = null;

  constructor(private readonly options: IJobFormOptions = {}) {
    super();
    this.addClass('ch-form');
    this.node.addEventListener('input', () => this.changed());
    this.node.addEventListener('change', () => this.changed());
  }

  /** Fetch agents and datasets and build the form (once). */
  load(): Promise<void> {
    if (!this.loaded) {
      this.loaded = this.build();
    }
    return this.loaded;
  }

  private async build(): Promise<void> {
    // The dataset list may take a while on a cold server: the form does not wait for it.
    const datasets = requestAPI<any>(DATASETS).catch(() => ({ datasets: [] }));
    let agents: any;
    try {
      agents = await requestAPI<any>(AGENTS);
    } catch (error) {
      this.node.textContent = `The agents could not be loaded: ${(error as Error).message}`;
      this.loaded = null;
      return;
    }
    this.agents = agents?.agents ?? [];
    this.node.replaceChildren();
    const top = document.createElement('div');
    top.className = 'ch-form-section';
    this.node.appendChild(top);

    const agent = selectField('agent', 'Agent', this.agents.map(a => [a.name, a.name]));
    this.agentSelect = agent.el.querySelector('select')!;
    this.agentSelect.addEventListener('change', () => this.renderParams());
    this.register(agent, top);
    const dataset = selectField('dataset_id', 'Dataset', [['', '—']]);
    this.register(dataset, top);
    void datasets.then(answer => {
      const select = dataset.el.querySelector('select')!;
      const chosen = select.value;
      for (const d of answer?.datasets ?? []) {
        const o = document.createElement('option');
        o.value = String(d.id);
        o.textContent = d.format ? `${d.id} (${d.format})` : String(d.id);
        select.appendChild(o);
      }
      select.value = this.pendingDataset ?? chosen;
      this.pendingDataset = undefined;
      this.datasetsLoaded = true;
      this.changed();
    });

    this.resourcesEl = section(this.node, 'Resources');
    this.register(
      createField('priority', 'Priority (0–10, higher first)', {
        type: 'integer', minimum: 0, maximum: 10, default: 5
      }),
      this.resourcesEl
    );
    this.paramsEl = section(this.node, 'Parameters');

    const footer = document.createElement('div');
    footer.className = 'ch-form-footer';
    footer.innerHTML = `
      <div class="ch-estimate" aria-live="polite"></div>
      <ul class="ch-tips"></ul>
      <div class="ch-form-message"></div>
      <button class="ch-submit jp-mod-styled jp-mod-accept"></button>`;
    this.node.appendChild(footer);
    this.estimateEl = footer.querySelector('.ch-estimate')!;
    this.tipsEl = footer.querySelector('.ch-tips')!;
    this.messageEl = footer.querySelector('.ch-form-message')!;
    this.button = footer.querySelector('.ch-submit')!;
    this.button.textContent = this.options.mode === 'stage' ? 'Add stage' : 'Submit';
    this.button.addEventListener('click', () => void this.submit());
    this.renderParams();
  }

  private register(field: IField, parent: HTMLElement): void {
    this.fields.set(field.name, field);
    parent.appendChild(field.el);
  }

  get agent(): IAgentInfo | undefined {
    return this.agents.find(a => a.name === this.agentSelect?.value);
  }

  /** The chosen agent's parameters as fields; values already typed are kept by name. */
  private renderParams(): void {
    const kept = new Map<string, unknown>();
    for (const [name, field] of this.fields) {
      if (name.startsWith('params.')) {
        try {
          kept.set(name, field.read());
        } catch {
          // An unreadable value is dropped with its old field.
        }
        field.el.remove();
        this.fields.delete(name);
      }
    }
    const schema = this.agent?.params_schema ?? {};
    const required = new Set(schema.required ?? []);
    for (const [param, sub] of Object.entries(schema.properties ?? {})) {
      const name = `params.${param}`;
      const field = createField(name, label(param), sub, required.has(param));
      this.register(field, RESOURCE_PARAMS.includes(param) ? this.resourcesEl : this.paramsEl);
      if (kept.get(name) !== undefined) {
        field.set(kept.get(name));
      }
    }
    const datasetField = this.fields.get('dataset_id')!;
    datasetField.el.classList.toggle('ch-optional', !this.agent?.requires_dataset);
    this.changed();
  }

  /** Fill the form from a (partial) submission: "Run as job…", a saved stage. */
  async fill(body: Partial<ISubmission>): Promise<void> {
    await this.load();
    if (body.agent) {
      this.agentSelect.value = body.agent;
      this.renderParams();
    }
    for (const [name, field] of this.fields) {
      if (name === 'agent') {
        continue;
      }
      const value = name.startsWith('params.')
        ? body.params?.[name.slice('params.'.length)]
        : (body as any)[name];
      field.set(value);
      if (name === 'dataset_id' && !this.datasetsLoaded) {
        this.pendingDataset = value === undefined ? undefined : String(value);
      }
    }
    this.changed();
  }

  /** The body the form describes; a FieldError when a value cannot be read. */
  submission(): ISubmission {
    const body: ISubmission = { agent: this.agentSelect.value, params: {} };
    for (const [name, field] of this.fields) {
      if (name === 'agent') {
        continue;
      }
      const value = field.read();
      if (value === undefined) {
        continue;
      }
      if (name.startsWith('params.')) {
        body.params[name.slice('params.'.length)] = value;
      } else {
        (body as any)[name] = value;
      }
    }
    return body;
  }

  private changed(): void {
    if (!this.loaded || !this.estimateEl) {
      return;
    }
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => void this.estimate(), this.options.debounceMs ?? 400);
  }

  /** Ask `jobs/optimize` about the body as it stands; a stale answer is dropped. */
  async estimate(): Promise<void> {
    const sequence = ++this.sequence;
    this.clearErrors();
    let body: ISubmission;
    try {
      body = { ...this.submission(), ...(this.options.extra?.() ?? {}) };
      delete body.name;
    } catch (error) {
      this.showError(error);
      return;
    }
    this.estimateEl.dataset.state = 'pending';
    try {
      const answer = await requestAPI<any>(OPTIMIZE, { method: 'POST', body: JSON.stringify(body) });
      if (sequence !== this.sequence) {
        return;
      }
      this.lastEstimate = answer;
      this.estimateEl.dataset.state = 'ok';
      this.estimateEl.textContent = estimateText(answer);
      this.tipsEl.replaceChildren(
        ...(answer?.tips ?? []).map((tip: any) => {
          const li = document.createElement('li');
          li.dataset.severity = String(tip.severity ?? 'info');
          li.dataset.field = String(tip.field ?? '');
          li.textContent = String(tip.message ?? '');
          return li;
        })
      );
    } catch (error) {
      if (sequence !== this.sequence) {
        return;
      }
      this.estimateEl.dataset.state = 'invalid';
      this.estimateEl.textContent = 'No estimate until the form is valid.';
      this.tipsEl.replaceChildren();
      this.showError(error);
    }
  }

  async submit(): Promise<void> {
    this.clearErrors();
    let body: ISubmission;
    try {
      body = this.submission();
    } catch (error) {
      this.showError(error);
      return;
    }
    if (this.options.mode === 'stage') {
      this.options.onStage?.(body);
      return;
    }
    this.button.disabled = true;
    try {
      const job = await requestAPI<any>(SUBMIT, { method: 'POST', body: JSON.stringify(body) });
      this.messageEl.dataset.state = 'ok';
      const warnings: string[] = (job?.warnings ?? []).map((w: any) => String(w?.message ?? w));
      this.messageEl.textContent = [`Submitted ${job?.id ?? ''}`.trim(), ...warnings].join(' · ');
      this.options.onSubmitted?.(job);
    } catch (error) {
      this.showError(error);
    } finally {
      this.button.disabled = false;
    }
  }

  /** An error at its field (an ApiError's `field`, a FieldError's), else under the form. */
  showError(error: unknown, prefix = ''): void {
    const field =
      error instanceof ApiError || error instanceof FieldError ? (error as any).field as string | null : null;
    const message = error instanceof Error ? error.message : String(error);
    const name = field && field.startsWith(prefix) ? field.slice(prefix.length) : field;
    const target = fieldFor(this.fields, name);
    if (target) {
      target.showError(message);
    } else {
      this.messageEl.dataset.state = 'error';
      this.messageEl.textContent = message;
    }
  }

  clearErrors(): void {
    for (const field of this.fields.values()) {
      field.showError(null);
    }
    if (this.messageEl) {
      this.messageEl.textContent = '';
      delete this.messageEl.dataset.state;
    }
  }
}

/** "≈ $0.12 · 0.50 SU · 12 min", or why there is no figure yet. */
export function estimateText(answer: any): string {
  const parts: string[] = [];
  if (answer?.estimated_cost_usd !== null && answer?.estimated_cost_usd !== undefined) {
    parts.push(`$${Number(answer.estimated_cost_usd).toFixed(2)}`);
  }
  if (answer?.estimated_su !== null && answer?.estimated_su !== undefined) {
    parts.push(`${Number(answer.estimated_su).toFixed(2)} SU`);
  }
  if (answer?.estimated_runtime_minutes !== null && answer?.estimated_runtime_minutes !== undefined) {
    parts.push(`${Number(answer.estimated_runtime_minutes).toFixed(1)} min`);
  }
  return parts.length
    ? `Estimate: ≈ ${parts.join(' · ')}`
    : 'Estimate: none yet (no similar jobs of yours; set max runtime for an upper bound).';
}

function label(param: string): string {
  const text = param.replace(/_/g, ' ');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function section(parent: HTMLElement, title: string): HTMLElement {
  const el = document.createElement('div');
  el.className = 'ch-form-section';
  const heading = document.createElement('div');
  heading.className = 'ch-section-title';
  heading.textContent = title;
  el.appendChild(heading);
  parent.appendChild(el);
  return el;
}

/** A select of fixed choices that shows errors like the schema's fields. */
function selectField(name: string, text: string, choices: [string, string][]): IField {
  const field = createField(name, text, { type: 'string', enum: choices.map(c => c[0]) });
  const select = field.el.querySelector('select')!;
  select.replaceChildren(
    ...choices.map(([value, shown]) => {
      const o = document.createElement('option');
      o.value = value;
      o.textContent = shown;
      return o;
    })
  );
  return {
    ...field,
    read: () => (select.value === '' ? undefined : select.value),
    set: (value: unknown) => {
      if (value !== undefined && value !== null) {
        select.value = String(value);
      } else if (name !== 'agent') {
        select.value = '';
      }
    }
  };
}
