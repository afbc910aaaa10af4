/**
 * The sky map both the notebook's Sky widget and the sidebar's Sky panel draw: Aladin Lite v3
 * (bundled, its WebAssembly inlined: nothing is fetched from a CDN) with our own layers on it.
 *
 * Offline first: without a configured HiPS survey the background is blank and no tile is asked
 * of any server; the restored images (FITS served by the extension), the sources, the footprints,
 * the coverage MOC and the annotations are ours.
 */
import type { Annotation, Footprint, ImageLayer, SkySource, SkyView } from './types';

/** Aladin Lite is loaded on first use (2 MB with its WebAssembly), once per page. */
let aladinModule: Promise<any> | null = null;
function loadAladin(): Promise<any> {
  if (!aladinModule) {
    aladinModule = import('aladin-lite').then(async mod => {
      const A = mod.default;
      await A.init;
      return A;
    });
  }
  return aladinModule;
}

export interface SkyMapOptions {
  view: SkyView;
  /** A HiPS survey (URL or CDS id) as background; empty: a blank sky. */
  survey?: string;
  onSource?: (source: SkySource) => void;
  onFootprint?: (footprint: Footprint) => void;
  onClick?: (ra: number, dec: number) => void;
}

const COLORS = { source: '#00e5ff', footprint: '#ffb300', coverage: '#7cb342', annotation: '#ff4081' };

/** Angular distance in degrees (haversine: good at every separation). */
export function separation(ra1: number, dec1: number, ra2: number, dec2: number): number {
  const r = Math.PI / 180;
  const h =
    Math.sin(((dec2 - dec1) * r) / 2) ** 2 +
    Math.cos(dec1 * r) * Math.cos(dec2 * r) * Math.sin(((ra2 - ra1) * r) / 2) ** 2;
  return (2 * Math.asin(Math.min(1, Math.sqrt(h)))) / r;
}

export class SkyMap {
  readonly aladin: any;
  private A: any;
  private sources: any = null;
  private footprintOverlay: any;
  private annotationOverlay: any;
  private coverage: any = null;
  readonly images = new Map<string, any>();
  private footprints: Footprint[] = [];
  private imagesPending = 0;
  private imageWaiters: (() => void)[] = [];

  private constructor(A: any, aladin: any, options: SkyMapOptions) {
    this.A = A;
    this.aladin = aladin;
    this.footprintOverlay = A.graphicOverlay({ name: 'footprints', color: COLORS.footprint, lineWidth: 2 });
    this.annotationOverlay = A.graphicOverlay({ name: 'annotations', color: COLORS.annotation, lineWidth: 2 });
    aladin.addOverlay(this.footprintOverlay);
    aladin.addOverlay(this.annotationOverlay);
    let sourceClickedAt = -1;
    aladin.on('objectClicked', (object: any) => {
      if (object && object.data && typeof object.data.ra_deg === 'number') {
        sourceClickedAt = performance.now();
        options.onSource?.(object.data as SkySource);
      }
    });
    aladin.on('click', (event: any) => {
      if (!event || typeof event.ra !== 'number') {
        return;
      }
      options.onClick?.(event.ra, event.dec);
      // A click on a source is the source's, not its footprint's (whichever callback ran first).
      setTimeout(() => {
        const hit = performance.now() - sourceClickedAt < 250 ? undefined : this.footprintAt(event.ra, event.dec);
        if (hit) {
          options.onFootprint?.(hit);
        }
      }, 0);
    });
  }

  static async create(el: HTMLElement, options: SkyMapOptions): Promise<SkyMap> {
    const A = await loadAladin();
    const { view } = options;
    const aladin = A.aladin(el, {
      target: `${view.ra} ${view.dec}`,
      fov: view.fov,
      projection: view.projection || 'TAN',
      cooFrame: 'ICRS',
      // A blank sky unless an operator configured a survey: no tile request leaves the page.
      survey: options.survey || [],
      showReticle: false,
      showSimbadPointerControl: false,
      showShareControl: false,
      showGotoControl: true,
      showZoomControl: true,
      showFullscreenControl: false,
      showLayersControl: true,
      showCooGridControl: true,
      showProjectionControl: false,
      showContextMenu: false,
      showFrame: true,
      showCooLocation: true,
      showStatusBar: false,
      backgroundColor: 'rgb(10, 12, 20)',
      // Aladin Lite reports each start to CDS unless told not to: no request leaves an offline lab.
      log: false
    });
    return new SkyMap(A, aladin, options);
  }

  /** The smallest footprint containing (ra, dec): what a click there opens. */
  footprintAt(ra: number, dec: number): Footprint | undefined {
    let best: Footprint | undefined;
    for (const f of this.footprints) {
      if (separation(ra, dec, f.ra_deg, f.dec_deg) <= f.radius_deg && (!best || f.radius_deg < best.radius_deg)) {
        best = f;
      }
    }
    return best;
  }

  view(): SkyView {
    const [ra, dec] = this.aladin.getRaDec();
    const [fov] = this.aladin.getFov();
    return { ra, dec, fov, projection: this.aladin.getProjectionName?.() ?? 'TAN' };
  }

  goto(view: SkyView): void {
    this.aladin.gotoRaDec(view.ra, view.dec);
    this.aladin.setFoV(view.fov);
  }

  world2pix(ra: number, dec: number): [number, number] | null {
    return this.aladin.world2pix(ra, dec) ?? null;
  }

  /** One layer per image URL; layers no longer listed are removed. Resolves once each new one is drawn. */
  setImages(layers: ImageLayer[]): Promise<void> {
    const wanted = new Set(layers.map(l => l.url));
    for (const [url, layer] of this.images) {
      if (!wanted.has(url)) {
        this.aladin.removeImageLayer?.(layer.layer ?? layer.id);
        this.images.delete(url);
      }
    }
    for (const layer of layers) {
      if (this.images.has(layer.url)) {
        continue;
      }
      this.imagesPending += 1;
      const done = () => {
        this.imagesPending -= 1;
        if (this.imagesPending === 0) {
          this.imageWaiters.splice(0).forEach(w => w());
        }
      };
      const name = layer.name || `job ${layer.job_id.slice(0, 8)}`;
      const image = this.A.image(layer.url, {
        name,
        imgFormat: 'fits',
        successCallback: done,
        errorCallback: (e: unknown) => {
          console.warn(`sky map: image ${layer.url} failed`, e);
          done();
        }
      });
      this.images.set(layer.url, image);
      this.aladin.setOverlayImageLayer(image, `image-${layer.job_id}`);
    }
    return this.imagesLoaded();
  }

  imagesLoaded(): Promise<void> {
    return this.imagesPending === 0 ? Promise.resolve() : new Promise(resolve => this.imageWaiters.push(resolve));
  }

  setSources(sources: SkySource[]): void {
    if (this.sources) {
      this.sources.removeAll();
    } else {
      this.sources = this.A.catalog({ name: 'sources', color: COLORS.source, sourceSize: 14, shape: 'circle', onClick: null });
      this.aladin.addCatalog(this.sources);
    }
    this.sources.addSources(sources.map(s => this.A.source(s.ra_deg, s.dec_deg, s)));
  }

  setFootprints(footprints: Footprint[]): void {
    this.footprints = footprints.filter(f => Number.isFinite(f.ra_deg) && Number.isFinite(f.radius_deg));
    this.footprintOverlay.removeAll();
    for (const f of this.footprints) {
      this.footprintOverlay.add(this.A.circle(f.ra_deg, f.dec_deg, f.radius_deg, { color: COLORS.footprint }));
    }
  }

  /** The coverage as an IVOA MOC JSON object (`{"order": [ipix…]}`). */
  setCoverage(moc: Record<string, number[]> | null): void {
    if (this.coverage) {
      this.aladin.removeLayer?.(this.coverage) ?? this.aladin.removeOverlay?.(this.coverage);
      this.coverage = null;
    }
    if (moc && Object.keys(moc).length) {
      this.coverage = this.A.MOCFromJSON(moc, { name: 'coverage', color: COLORS.coverage, opacity: 0.25, lineWidth: 1, fill: true, perimeter: true });
      this.aladin.addMOC(this.coverage);
    }
  }

  setAnnotations(annotations: Annotation[]): void {
    this.annotationOverlay.removeAll();
    for (const a of annotations) {
      const s = a.shape;
      if (s.type === 'polygon' && s.vertices?.length) {
        this.annotationOverlay.add(this.A.polygon(s.vertices.map(v => [v[0], v[1]]), { color: COLORS.annotation }));
      } else if (s.type === 'circle' && s.ra !== undefined && s.dec !== undefined) {
        this.annotationOverlay.add(this.A.circle(s.ra, s.dec, s.radius ?? 0.01, { color: COLORS.annotation }));
      } else if (s.ra !== undefined && s.dec !== undefined) {
        // A point: a small cross-less circle a few pixels across at any zoom.
        this.annotationOverlay.add(this.A.circle(s.ra, s.dec, this.view().fov / 200, { color: COLORS.annotation, lineWidth: 3 }));
      }
    }
  }

  /** The view as PNG (a data URL): what a snapshot keeps. */
  async png(): Promise<string> {
    return await this.aladin.getViewDataURL({ format: 'image/png' });
  }

  /** Resolves after the next two animation frames: what is set now is on screen then. */
  static frame(): Promise<void> {
    return new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(() => resolve())));
  }
}
