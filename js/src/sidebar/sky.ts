/**
 * The sidebar's Sky panel: the coverage of the caller's processed sky and each job's footprint on
 * an Aladin Lite map, live (a job that ends redraws it); a click on a footprint opens its job in
 * the jobs panel.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { EventStream } from '../api/events';
import { requestAPI } from '../api/rest';
import { IEvent } from '../model/jobs';
import { isTerminal } from '../model/states';
import { SkyMap } from '../sky/map';
import type { Footprint, SkyView } from '../sky/types';

export interface ISkyPanelOptions {
  /** Show a job (the jobs panel, its row opened). */
  openJob?: (jobId: string) => void;
}

/** The view that shows every footprint: centred on their mean position, as wide as their spread. */
export function viewOf(footprints: Footprint[]): SkyView {
  const shown = footprints.filter(f => f.ra_deg !== null && f.ra_deg !== undefined);
  if (!shown.length) {
    return { ra: 0, dec: 0, fov: 180 };
  }
  // Mean of unit vectors: right across RA = 0/360.
  let x = 0;
  let y = 0;
  let z = 0;
  const r = Math.PI / 180;
  for (const f of shown) {
    x += Math.cos(f.dec_deg * r) * Math.cos(f.ra_deg * r);
    y += Math.cos(f.dec_deg * r) * Math.sin(f.ra_deg * r);
    z += Math.sin(f.dec_deg * r);
  }
  const ra = ((Math.atan2(y, x) / r) + 360) % 360;
  const dec = Math.atan2(z, Math.hypot(x, y)) / r;
  let far = 0;
  for (const f of shown) {
    const d = Math.acos(Math.min(1, Math.sin(dec * r) * Math.sin(f.dec_deg * r) +
      Math.cos(dec * r) * Math.cos(f.dec_deg * r) * Math.cos((f.ra_deg - ra) * r))) / r;
    far = Math.max(far, d + f.radius_deg);
  }
  return { ra, dec, fov: Math.min(180, Math.max(2.2 * far, 0.05)) };
}

export class SkyPanel extends Widget {
  map: SkyMap | null = null;
  footprints: Footprint[] = [];
  private mapEl: HTMLElement;
  private noteEl: HTMLElement;
  private stream: EventStream | null = null;
  private starting: Promise<void> | null = null;
  private reloadTimer: number | undefined;

  constructor(private readonly options: ISkyPanelOptions = {}) {
    super();
    this.id = 'cosmic-horizons-sky';
    this.addClass('ch-panel');
    this.addClass('ch-sky-panel');
    this.title.caption = 'Sky: your results';
    this.node.innerHTML = `
      <div class="ch-header"><span class="ch-title">Sky</span>
        <button class="ch-sky-reload jp-Button" title="Redraw the coverage">⟳</button></div>
      <div class="ch-sky-map" style="width:100%;height:calc(100% - 60px);min-height:240px"></div>
      <div class="ch-sky-note"></div>`;
    this.mapEl = this.node.querySelector('.ch-sky-map') as HTMLElement;
    this.noteEl = this.node.querySelector('.ch-sky-note') as HTMLElement;
    this.node.querySelector('.ch-sky-reload')!.addEventListener('click', () => void this.reload());
  }

  /** The map is made when the panel is first shown: Aladin Lite needs a sized element. */
  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (!this.starting) {
      this.starting = this.start();
    }
  }

  private async start(): Promise<void> {
    try {
      const [settings, footprints] = await Promise.all([
        requestAPI<{ survey: string | null }>('sky/settings'),
        requestAPI<{ items: Footprint[] }>('sky/footprints')
      ]);
      this.footprints = footprints.items;
      this.map = await SkyMap.create(this.mapEl, {
        view: viewOf(this.footprints),
        survey: settings.survey ?? '',
        onFootprint: f => this.open(f.job_id)
      });
      (this.node as any).skyMap = this.map;
      await this.draw();
      this.stream = new EventStream(events => this.onEvents(events));
      this.stream.connect();
    } catch (error) {
      this.noteEl.textContent = `The sky could not be drawn: ${error}`;
    }
  }

  private open(jobId: string): void {
    this.node.dataset.openedJob = jobId;
    this.options.openJob?.(jobId);
  }

  private onEvents(events: IEvent[]): void {
    // A job that ended may have written an image: its footprint and the coverage change.
    if (events.some(e => e.type?.startsWith('job.') && isTerminal(String(e.type).slice(4).toUpperCase()))) {
      window.clearTimeout(this.reloadTimer);
      this.reloadTimer = window.setTimeout(() => void this.reload(), 300);
    }
  }

  async reload(): Promise<void> {
    if (!this.map) {
      return;
    }
    this.footprints = (await requestAPI<{ items: Footprint[] }>('sky/footprints')).items;
    await this.draw();
  }

  private async draw(): Promise<void> {
    const map = this.map!;
    map.setFootprints(this.footprints);
    const moc = await requestAPI<Record<string, number[]>>('sky/coverage');
    map.setCoverage(moc);
    const located = this.footprints.filter(f => f.ra_deg !== null).length;
    this.noteEl.textContent = `${located} of ${this.footprints.length} jobs on the sky`;
    this.node.dataset.footprints = String(located);
  }

  dispose(): void {
    this.stream?.dispose();
    window.clearTimeout(this.reloadTimer);
    super.dispose();
  }
}
