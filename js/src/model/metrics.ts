/**
 * How a job's metrics read to people: the few that say how the job is doing,
 * in human units, and the rest behind "details".
 *
 * Agents report whatever metrics they like (``report(**metrics)``), so this
 * knows the common ones by name and writes any other value plainly. Memory is
 * labelled by where it was measured: an agent on a CPU reports its peak RSS
 * under ``vram_usage`` too, and calling that VRAM misleads.
 */
import { formatBytes } from './format';

export interface IMetricLine {
  key: string;
  label: string;
  text: string;
}

/** True when the job's reported device is a GPU (agents report ``device`` as its name, or "cpu (N threads)"). */
export function onGpu(metrics: Record<string, unknown>): boolean {
  const device = metrics.device;
  return typeof device === 'string' && device !== '' && !device.toLowerCase().startsWith('cpu');
}

function count(n: number): string {
  const units: [number, string][] = [
    [1e9, ' G'],
    [1e6, ' M'],
    [1e3, ' k']
  ];
  for (const [size, suffix] of units) {
    if (Math.abs(n) >= size) {
      return `${+(n / size).toPrecision(3)}${suffix}`;
    }
  }
  return `${+n.toPrecision(4)}`;
}

function fluxDensity(jy: number, unit: string): string {
  const a = Math.abs(jy);
  if (a !== 0 && a < 1e-3) {
    return `${+(jy * 1e6).toPrecision(3)} µ${unit}`;
  }
  if (a !== 0 && a < 1) {
    return `${+(jy * 1e3).toPrecision(3)} m${unit}`;
  }
  return `${+jy.toPrecision(4)} ${unit}`;
}

function plain(value: unknown): string {
  if (typeof value === 'number') {
    return Number.isInteger(value) ? count(value) : `${+value.toPrecision(4)}`;
  }
  if (Array.isArray(value)) {
    return value.map(plain).join(', ');
  }
  if (value !== null && typeof value === 'object') {
    return JSON.stringify(value);
  }
  return String(value);
}

type Formatter = (value: unknown, metrics: Record<string, unknown>) => [string, string] | undefined;

const num = (v: unknown): number | undefined => (typeof v === 'number' && isFinite(v) ? v : undefined);

/** The metrics known by name, in the order they are worth showing; the first four present are the headline. */
const KNOWN: [string, Formatter][] = [
  ['stage', v => (v ? ['stage', String(v)] : undefined)],
  [
    'vram_usage',
    (v, m) => {
      const n = num(v);
      return n === undefined ? undefined : [onGpu(m) ? 'VRAM' : 'RAM', formatBytes(n)];
    }
  ],
  ['visibilities_processed', v => (num(v) === undefined ? undefined : ['visibilities', count(num(v)!)])],
  ['image_rms', v => (num(v) === undefined ? undefined : ['rms', fluxDensity(num(v)!, 'Jy/beam')])],
  ['dynamic_range', v => (num(v) === undefined ? undefined : ['dynamic range', count(Math.round(num(v)!))])],
  ['sources_found', v => (num(v) === undefined ? undefined : ['sources', count(num(v)!)])],
  ['flagged_fraction', v => (num(v) === undefined ? undefined : ['flagged', `${+(num(v)! * 100).toPrecision(3)}%`])],
  ['peak_jy_beam', v => (num(v) === undefined ? undefined : ['peak', fluxDensity(num(v)!, 'Jy/beam')])],
  [
    'beam_arcsec',
    v =>
      Array.isArray(v) && v.length >= 2
        ? ['beam', `${+Number(v[0]).toPrecision(3)}″ × ${+Number(v[1]).toPrecision(3)}″`]
        : undefined
  ],
  ['device', v => (v ? ['device', String(v)] : undefined)]
];

const HEADLINE = 4;

/** The headline metrics (at most four) and the rest, each as a label and a text. */
export function describeMetrics(metrics: Record<string, unknown> | null | undefined): {
  headline: IMetricLine[];
  details: IMetricLine[];
} {
  const m = metrics ?? {};
  const known: IMetricLine[] = [];
  const seen = new Set<string>();
  for (const [key, format] of KNOWN) {
    if (key in m) {
      seen.add(key);
      const line = format(m[key], m);
      if (line) {
        known.push({ key, label: line[0], text: line[1] });
      }
    }
  }
  const rest = Object.keys(m)
    .filter(k => !seen.has(k))
    .sort()
    .map(k => {
      const label = k.replace(/_/g, ' ');
      if (k.endsWith('_per_s') && num(m[k]) !== undefined) {
        return { key: k, label: label.replace(/ per s$/, ''), text: `${count(num(m[k])!)}/s` };
      }
      if (k.endsWith('_bytes') && num(m[k]) !== undefined) {
        return { key: k, label: label.replace(/ bytes$/, ''), text: formatBytes(num(m[k])!) };
      }
      return { key: k, label, text: plain(m[k]) };
    });
  return { headline: known.slice(0, HEADLINE), details: [...known.slice(HEADLINE), ...rest] };
}

/** One line for a job row: "RAM 667.5 MB · visibilities 1.2 M". */
export function metricsLine(lines: IMetricLine[]): string {
  return lines.map(l => `${l.label} ${l.text}`).join(' · ');
}
