/**
 * The pipeline composer: stages added from the job form (each with a name and
 * its parents picked from a list, or drawn in the DAG: drag from a stage onto
 * another to make it its parent, click an edge to remove it), the DAG drawn
 * and checked before submission, `POST pipelines`, and the definition saved
 * to / opened from a `*.pipeline.json` file in the user's tree (so git
 * versions it; the format's JSON Schema is `protocol/pipelines.py`). Once
 * submitted, each stage's node shows its job's state live, from the event
 * stream the sidebar follows (no polling; the stream replays what it missed
 * with `after=` when it reconnects).
 */
import { Contents } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { EventStream } from '../api/events';
import { EVENTS_LATEST, PIPELINES } from '../api/paths';
import { ApiError, requestAPI } from '../api/rest';
import { JobForm } from '../form/form';
import { applyEvent, IEvent, IJob } from '../model/jobs';
import { isTerminal } from '../model/states';
import { cycleMembers, drawDag, IStage, problems } from './dag';

/** The definition file's `format` (protocol/pipelines.py: PIPELINE_FORMAT). */
export const PIPELINE_FORMAT = 'cosmic-horizons-pipeline';
export const PIPELINE_VERSION = 1;

export interface IPipelineFile {
  format: string;
  version: number;
  parallelLimit?: number | null;
  stages: IStage[];
}

export class PipelineComposer extends Widget {
  stages: IStage[] = [];
  /** Stage name -> job id, once submitted. */
  readonly jobIds = new Map<string, string>();
  readonly status = new Map<string, string>();
  readonly form: JobForm;
  private readonly svg: SVGSVGElement;
  private readonly listEl: HTMLElement;
  private readonly problemsEl: HTMLElement;
  private readonly messageEl: HTMLElement;
  private readonly nameInput: HTMLInputElement;
  private readonly parentsSelect: HTMLSelectElement;
  private readonly pathInput: HTMLInputElement;
  /** The event stream the stages' states come from: the sidebar's, else one of our own. */
  private stream: EventStream | null;
  private ownStream = false;
  private unlisten: (() => void) | null = null;
  /** Job id -> its state as the events tell it (also events that come before `POST pipelines` answers). */
  private readonly jobs = new Map<string, IJob>();
  private following = false;

  constructor(private readonly contents: Contents.IManager, path = 'my.pipeline.json', events?: EventStream) {
    super();
    this.stream = events ?? null;
    this.id = `cosmic-horizons-composer-${Math.random().toString(36).slice(2, 8)}`;
    this.addClass('ch-composer');
    this.title.label = 'Pipeline composer';
    this.title.closable = true;
    this.node.innerHTML = `
      <div class="ch-header"><span class="ch-title">Pipeline composer</span></div>
      <div class="ch-composer-body">
        <div class="ch-composer-left">
          <div class="ch-section-title">New stage</div>
          <div class="ch-field" data-field="name"><label class="ch-field-label">Stage name *
            <input class="ch-input ch-stage-name-input" type="text" placeholder="e.g. calibrate"></label>
            <div class="ch-field-error"></div></div>
          <div class="ch-field" data-field="depends_on"><label class="ch-field-label">Parents (runs after)
            <select class="ch-input ch-parents" multiple></select></label></div>
          <div class="ch-composer-form"></div>
        </div>
        <div class="ch-composer-right">
          <div class="ch-section-title">Stages</div>
          <div class="ch-stages"></div>
          <svg class="ch-dag" xmlns="http://www.w3.org/2000/svg"></svg>
          <div class="ch-composer-problems"></div>
          <div class="ch-composer-actions">
            <button class="jp-mod-styled jp-mod-accept ch-run">Submit pipeline</button>
            <input class="ch-input ch-pipeline-path" type="text" title="Definition file, relative to the server root">
            <button class="jp-mod-styled ch-save">Save</button>
            <button class="jp-mod-styled ch-open">Open</button>
          </div>
          <div class="ch-form-message ch-composer-message"></div>
        </div>
      </div>`;
    this.svg = this.node.querySelector('.ch-dag') as SVGSVGElement;
    this.listEl = this.node.querySelector('.ch-stages')!;
    this.problemsEl = this.node.querySelector('.ch-composer-problems')!;
    this.messageEl = this.node.querySelector('.ch-composer-message')!;
    this.nameInput = this.node.querySelector('.ch-stage-name-input')!;
    this.parentsSelect = this.node.querySelector('.ch-parents')!;
    this.pathInput = this.node.querySelector('.ch-pipeline-path')!;
    this.pathInput.value = path;
    this.form = new JobForm({
      mode: 'stage',
      onStage: body => this.addStage(body),
      extra: () => ({ depends_on: this.selectedParents() })
    });
    this.node.querySelector('.ch-run')!.addEventListener('click', () => void this.run());
    this.node.querySelector('.ch-save')!.addEventListener('click', () => void this.save());
    this.node.querySelector('.ch-open')!.addEventListener('click', () => void this.open(this.pathInput.value));
  }

  protected onAfterAttach(): void {
    Widget.attach(this.form, this.node.querySelector('.ch-composer-form') as HTMLElement);
    void this.form.load();
    this.render();
  }

  protected onBeforeDetach(): void {
    Widget.detach(this.form);
  }

  private selectedParents(): string[] {
    return Array.from(this.parentsSelect.selectedOptions).map(o => o.value);
  }

  /** Add (or, with the same name, replace) a stage from the form's body. */
  addStage(body: any, name?: string, parents?: string[]): void {
    const stageName = (name ?? this.nameInput.value).trim();
    const nameField = this.node.querySelector('.ch-field[data-field="name"] .ch-field-error')!;
    if (!stageName) {
      nameField.textContent = 'Give the stage a name its children can refer to';
      return;
    }
    nameField.textContent = '';
    const stage: IStage = { ...body, name: stageName, depends_on: parents ?? this.selectedParents() };
    const at = this.stages.findIndex(s => s.name === stageName);
    if (at >= 0) {
      this.stages[at] = stage;
    } else {
      this.stages.push(stage);
    }
    this.nameInput.value = '';
    this.jobIds.clear();
    this.status.clear();
    this.render();
  }

  removeStage(name: string): void {
    this.stages = this.stages.filter(s => s.name !== name);
    this.render();
  }

  /** Make `parent` a parent of `child` (an edge drawn in the DAG); a cycle is refused. */
  connect(parent: string, child: string): boolean {
    const stage = this.stages.find(s => s.name === child);
    if (!stage || parent === child || !this.stages.some(s => s.name === parent)) {
      return false;
    }
    if (stage.depends_on.includes(parent)) {
      this.say(`"${child}" already runs after "${parent}"`, 'ok');
      return false;
    }
    const next = this.stages.map(s => (s === stage ? { ...s, depends_on: [...s.depends_on, parent] } : s));
    const cycle = cycleMembers(next);
    if (cycle.size) {
      this.say(`Not added: "${parent}" → "${child}" would make a cycle (${Array.from(cycle).join(' → ')})`, 'error');
      return false;
    }
    this.stages = next;
    this.edited();
    this.say(`"${child}" now runs after "${parent}"`, 'ok');
    return true;
  }

  /** Remove the edge `parent` → `child` (a click on it in the DAG). */
  disconnect(parent: string, child: string): void {
    this.stages = this.stages.map(s =>
      s.name === child ? { ...s, depends_on: s.depends_on.filter(p => p !== parent) } : s
    );
    this.edited();
    this.say(`"${child}" no longer runs after "${parent}"`, 'ok');
  }

  /** The stages changed: what was submitted before no longer describes them. */
  private edited(): void {
    this.jobIds.clear();
    this.status.clear();
    this.render();
  }

  /** Stages list, parents choices, DAG and problems, from `this.stages`. */
  render(): void {
    const chosen = new Set(this.selectedParents());
    this.parentsSelect.replaceChildren(
      ...this.stages.map(s => {
        const o = document.createElement('option');
        o.value = s.name;
        o.textContent = s.name;
        o.selected = chosen.has(s.name);
        return o;
      })
    );
    const found = problems(this.stages);
    this.listEl.replaceChildren(
      ...this.stages.map(s => {
        const el = document.createElement('div');
        el.className = 'ch-stage';
        el.dataset.stage = s.name;
        el.dataset.invalid = String(found.some(p => p.includes(`"${s.name}"`)));
        el.innerHTML = `<span class="ch-stage-name"></span><span class="ch-stage-agent"></span>
          <span class="ch-stage-parents"></span><button class="ch-cancel" title="Remove this stage">✕</button>`;
        el.querySelector('.ch-stage-name')!.textContent = s.name;
        el.querySelector('.ch-stage-agent')!.textContent = s.agent;
        el.querySelector('.ch-stage-parents')!.textContent = s.depends_on.length
          ? `after ${s.depends_on.join(', ')}`
          : '';
        el.querySelector('button')!.addEventListener('click', () => this.removeStage(s.name));
        return el;
      })
    );
    this.problemsEl.replaceChildren(
      ...found.map(text => {
        const li = document.createElement('div');
        li.textContent = text;
        return li;
      })
    );
    this.draw();
  }

  private draw(): void {
    drawDag(this.svg, this.stages, this.status, {
      onConnect: (parent, child) => this.connect(parent, child),
      onRemoveEdge: (parent, child) => this.disconnect(parent, child)
    });
  }

  private say(text: string, state: 'ok' | 'error'): void {
    this.messageEl.textContent = text;
    this.messageEl.dataset.state = state;
  }

  /** Check, then `POST pipelines`; then follow the stages' jobs. */
  async run(): Promise<void> {
    const found = problems(this.stages);
    if (!this.stages.length || found.length) {
      this.say(found.length ? `Not submitted: ${found.join('; ')}` : 'Add a stage first', 'error');
      return;
    }
    try {
      await this.subscribe();
      this.following = true;
      const answer = await requestAPI<any>(PIPELINES, {
        method: 'POST',
        body: JSON.stringify({ stages: this.stages })
      });
      // `stages`: stage name -> job id, as the server named them.
      const ids: { [name: string]: string } = answer?.stages ?? {};
      const jobs: any[] = answer?.jobs ?? [];
      this.jobIds.clear();
      for (const [name, id] of Object.entries(ids)) {
        this.jobIds.set(name, id);
        // What the events said already (they can come before this answer), else the answer's state.
        const known = this.jobs.get(id);
        const job: IJob = known ?? { id, status: jobs.find(j => j?.id === id)?.status ?? 'QUEUED' };
        this.jobs.set(id, job);
        this.status.set(name, job.status);
      }
      this.say(`Submitted pipeline ${answer?.pipeline_id ?? ''}`.trim(), 'ok');
      this.render();
      this.settle();
    } catch (error) {
      this.settle();
      const field = error instanceof ApiError ? error.field : null;
      this.say(field ? `${field}: ${(error as Error).message}` : (error as Error).message, 'error');
    }
  }

  /** Follow the event stream (the sidebar's, else our own, started after the newest event). */
  private async subscribe(): Promise<void> {
    if (this.unlisten) {
      return;
    }
    if (!this.stream) {
      const stream = new EventStream(() => undefined);
      try {
        const latest = await requestAPI<any>(EVENTS_LATEST);
        stream.lastId = Number(latest?.last_event_id ?? 0);
      } catch {
        // An older server: replay from the start, which also misses nothing.
      }
      stream.connect();
      this.stream = stream;
      this.ownStream = true;
    }
    this.unlisten = this.stream.listen(events => this.onEvents(events));
  }

  /** Each job event moves its stage's node; the DAG is redrawn once per batch. */
  private onEvents(events: IEvent[]): void {
    if (!this.following) {
      return;
    }
    const ours = new Set(this.jobIds.values());
    let changed = false;
    for (const event of events) {
      const id = event.job_id;
      if (!id || !event.type.startsWith('job.')) {
        continue;
      }
      // Until POST pipelines answers, the stages' ids are unknown: keep every job's state.
      if (ours.size && !ours.has(id)) {
        continue;
      }
      const job = this.jobs.get(id) ?? { id, status: 'QUEUED' };
      this.jobs.set(id, job);
      changed = applyEvent(job, event) || changed;
    }
    if (!changed || !ours.size) {
      return;
    }
    for (const [name, id] of this.jobIds) {
      const status = this.jobs.get(id)?.status;
      if (status) {
        this.status.set(name, status);
      }
    }
    this.draw();
    this.settle();
  }

  /** Once every stage's job has ended, stop following (and drop the states of others' jobs). */
  private settle(): void {
    const ids = Array.from(this.jobIds.values());
    if (ids.length && !ids.every(id => isTerminal(this.jobs.get(id)?.status ?? ''))) {
      return;
    }
    this.following = false;
    this.jobs.clear();
  }

  /** The definition file: what the composer holds, in the format protocol/pipelines.py describes. */
  definition(): IPipelineFile {
    return { format: PIPELINE_FORMAT, version: PIPELINE_VERSION, stages: this.stages };
  }

  async save(path = this.pathInput.value): Promise<void> {
    try {
      await this.contents.save(path, {
        type: 'file',
        format: 'text',
        content: JSON.stringify(this.definition(), null, 2) + '\n'
      });
      this.say(`Saved ${path}`, 'ok');
    } catch (error) {
      this.say(`Not saved: ${(error as Error).message}`, 'error');
    }
  }

  async open(path: string): Promise<void> {
    try {
      const model = await this.contents.get(path, { type: 'file', format: 'text', content: true });
      const data = JSON.parse(String(model.content)) as IPipelineFile;
      if (data.format !== PIPELINE_FORMAT || !Array.isArray(data.stages)) {
        throw new Error(`${path} is not a ${PIPELINE_FORMAT} file`);
      }
      this.stages = data.stages.map(s => ({ ...s, depends_on: s.depends_on ?? [] }));
      this.pathInput.value = path;
      this.jobIds.clear();
      this.status.clear();
      this.title.label = path.split('/').pop() ?? path;
      this.render();
      this.say(`Opened ${path}`, 'ok');
    } catch (error) {
      this.say(`Not opened: ${(error as Error).message}`, 'error');
    }
  }

  dispose(): void {
    this.unlisten?.();
    if (this.ownStream) {
      this.stream?.dispose();
    }
    this.form.dispose();
    super.dispose();
  }
}
