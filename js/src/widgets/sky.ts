/**
 * The view of the Sky widget: an Aladin Lite map with the jobs' images, sources, footprints,
 * coverage and annotations (traitlets, kept current by the kernel), a row for the clicked
 * source, and the annotation and snapshot tools (actions sent to the kernel, which calls the API).
 */
import { SkyMap } from '../sky/map';
import type { Annotation, AnnotationShape, SkySource } from '../sky/types';
import { h, RenderProps, stamp } from './common';

const ROW_COLUMNS = ['ra_deg', 'dec_deg', 'flux_jy', 'peak_jy_beam', 'snr', 'anomaly', 'anomaly_score', 'anomaly_detail', 'job_id'];

function fmt(value: unknown): string {
  if (typeof value === 'number') {
    return Math.abs(value) >= 1e4 || (Math.abs(value) < 1e-3 && value !== 0) ? value.toExponential(3) : value.toFixed(4).replace(/\.?0+$/, '');
  }
  return value === null || value === undefined ? '—' : String(value);
}

function render({ model, el }: RenderProps): () => void {
  const started = performance.now();
  const root = h('div', 'chw chw-sky');
  const mapEl = h('div', 'chw-sky-map');
  mapEl.style.width = '100%';
  mapEl.style.height = `${model.get('height') || 480}px`;
  const row = h('table', 'chw-sky-row');
  const tools = h('div', 'chw-sky-tools');
  const shapeSel = h('select', 'chw-sky-shape');
  for (const kind of ['point', 'circle', 'polygon']) {
    const opt = h('option', '', kind);
    opt.value = kind;
    shapeSel.append(opt);
  }
  const note = h('input', 'chw-sky-note');
  note.placeholder = 'note';
  const mark = h('button', 'chw-button chw-sky-mark', 'Mark');
  const finish = h('button', 'chw-button chw-sky-finish', 'Save annotation');
  const snapName = h('input', 'chw-sky-snapname');
  snapName.placeholder = 'snapshot name';
  const snap = h('button', 'chw-button chw-sky-snap', 'Save snapshot');
  const snapList = h('select', 'chw-sky-snapshots');
  const open = h('button', 'chw-button chw-sky-open', 'Open');
  const exportLink = h('a', 'chw-sky-export', 'DS9');
  tools.append(shapeSel, note, mark, finish, snapName, snap, snapList, open, exportLink);
  const status = h('div', 'chw-note chw-sky-status');
  const error = h('div', 'chw-error');
  root.append(mapEl, row, tools, status, error);
  el.append(root);

  let map: SkyMap | null = null;
  let drawing: AnnotationShape | null = null;
  let disposed = false;

  const showRow = (source: SkySource) => {
    row.replaceChildren();
    row.dataset.ra = String(source.ra_deg);
    row.dataset.dec = String(source.dec_deg);
    for (const key of ROW_COLUMNS.filter(k => k in source)) {
      const tr = h('tr');
      tr.append(h('th', '', key), h('td', '', fmt(source[key])));
      tr.dataset.column = key;
      row.append(tr);
    }
    model.set('selected', source);
    model.save_changes();
  };

  const onClick = (ra: number, dec: number) => {
    if (!drawing) {
      return;
    }
    if (drawing.type === 'point') {
      drawing.ra = ra;
      drawing.dec = dec;
    } else if (drawing.type === 'circle') {
      if (drawing.ra === undefined) {
        drawing.ra = ra;
        drawing.dec = dec;
      } else {
        const r = Math.PI / 180;
        const d = Math.acos(Math.min(1, Math.sin(dec * r) * Math.sin(drawing.dec! * r) + Math.cos(dec * r) * Math.cos(drawing.dec! * r) * Math.cos((ra - drawing.ra) * r)));
        drawing.radius = d / r;
      }
    } else {
      drawing.vertices = [...(drawing.vertices ?? []), [ra, dec]];
    }
    status.textContent = `marking ${drawing.type}: ${JSON.stringify(drawing)}`;
  };

  const apply = async () => {
    if (!map) {
      return;
    }
    map.setSources(model.get('sources') ?? []);
    map.setFootprints(model.get('footprints') ?? []);
    map.setCoverage(model.get('coverage') ?? null);
    map.setAnnotations((model.get('annotations') ?? []) as Annotation[]);
    const snapshots: { id: string; name: string }[] = model.get('snapshots') ?? [];
    snapList.replaceChildren(...snapshots.map(s => {
      const opt = h('option', '', s.name);
      opt.value = s.id;
      return opt;
    }));
    exportLink.href = model.get('export_url') || '#';
    root.dataset.sources = String((model.get('sources') ?? []).length);
    root.dataset.annotations = String((model.get('annotations') ?? []).length);
    await map.setImages(model.get('images') ?? []);
    stamp(root);
  };

  const onView = () => {
    const view = model.get('view');
    if (map && view && typeof view.ra === 'number') {
      map.goto(view);
    }
  };

  SkyMap.create(mapEl, {
    view: model.get('view') ?? { ra: 0, dec: 0, fov: 1 },
    survey: model.get('survey') ?? '',
    onSource: showRow,
    onFootprint: f => model.send({ action: 'open_job', job_id: f.job_id }),
    onClick
  })
    .then(async created => {
      if (disposed) {
        return;
      }
      map = created;
      (root as any).skyMap = map;
      root.dataset.mapMs = (performance.now() - started).toFixed(1);
      await apply();
      root.dataset.layersMs = (performance.now() - started).toFixed(1);
      await SkyMap.frame();
      // From display to the first frame that shows the images and the sources: the benchmark's figure.
      const ms = performance.now() - started;
      root.dataset.firstFrameMs = ms.toFixed(1);
      model.set('first_frame_ms', ms);
      model.save_changes();
    })
    .catch(e => {
      error.textContent = `the sky map could not start: ${e}`;
      root.dataset.failed = String(e);
    });

  mark.addEventListener('click', () => {
    drawing = { type: shapeSel.value as AnnotationShape['type'] };
    status.textContent = `click the map to mark a ${drawing.type}`;
  });
  finish.addEventListener('click', () => {
    if (!drawing) {
      return;
    }
    model.send({ action: 'annotate', shape: drawing, note: note.value });
    drawing = null;
    note.value = '';
    status.textContent = '';
  });
  snap.addEventListener('click', async () => {
    if (!map) {
      return;
    }
    const png = await map.png();
    model.send({ action: 'snapshot', name: snapName.value || new Date().toISOString(), view: map.view(), png });
  });
  open.addEventListener('click', () => {
    if (snapList.value) {
      model.send({ action: 'open_snapshot', id: snapList.value });
    }
  });

  const onChange = () => void apply();
  const onOpened = () => {
    const id: string = model.get('opened_job') || '';
    root.dataset.openedJob = id;
    if (id) {
      status.textContent = `job ${id} opened`;
    }
  };
  const onError = () => {
    error.textContent = model.get('error') || '';
  };
  for (const name of ['sources', 'footprints', 'coverage', 'annotations', 'images', 'snapshots', 'export_url']) {
    model.on(`change:${name}`, onChange);
  }
  model.on('change:view', onView);
  model.on('change:error', onError);
  model.on('change:opened_job', onOpened);
  onError();
  return () => {
    disposed = true;
    for (const name of ['sources', 'footprints', 'coverage', 'annotations', 'images', 'snapshots', 'export_url']) {
      model.off(`change:${name}`, onChange);
    }
    model.off('change:view', onView);
    model.off('change:error', onError);
    model.off('change:opened_job', onOpened);
  };
}

export default { render };
