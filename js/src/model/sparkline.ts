/**
 * A job's own resource series as a small SVG chart: utilisation (%) and memory, one line
 * each, over the job's time. No chart library: two polylines in a viewBox. Used by the
 * progress widget (widgets/progress.ts); the series come from `GET jobs/{id}/resources`.
 */

const SVG = 'http://www.w3.org/2000/svg';
export const UTIL_COLOUR = '#1976d2';
export const MEM_COLOUR = '#8e24aa';

export interface IResourceSeries {
  /** Seconds since the epoch, ascending. */
  times: ArrayLike<number>;
  /** Percent (a CPU process tree may exceed 100). */
  util: ArrayLike<number>;
  /** Bytes used. */
  mem: ArrayLike<number>;
  /** Bytes total per point (0 when unknown). */
  memTotal: ArrayLike<number>;
}

/** The polyline's points for ``values`` scaled to ``top`` over ``width`` × ``height``. */
export function linePoints(
  times: ArrayLike<number>,
  values: ArrayLike<number>,
  top: number,
  width: number,
  height: number
): string {
  const n = Math.min(times.length, values.length);
  if (n === 0) {
    return '';
  }
  const t0 = times[0];
  const span = Math.max(times[n - 1] - t0, 1e-9);
  const out: string[] = [];
  for (let k = 0; k < n; k++) {
    const x = n === 1 ? width : ((times[k] - t0) / span) * width;
    const v = Math.max(0, Math.min(top, Number(values[k]) || 0));
    const y = height - (v / (top || 1)) * (height - 2) - 1;
    out.push(`${x.toFixed(1)},${y.toFixed(1)}`);
  }
  return out.join(' ');
}

/** (Re)draw the chart into ``svg``: the utilisation line on 0..max(100, peak), memory on 0..total (or peak). */
export function drawSparkline(svg: SVGSVGElement, series: IResourceSeries, width = 240, height = 36): void {
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  svg.setAttribute('preserveAspectRatio', 'none');
  let peakUtil = 100;
  let memTop = 0;
  for (let k = 0; k < series.util.length; k++) {
    peakUtil = Math.max(peakUtil, Number(series.util[k]) || 0);
  }
  for (let k = 0; k < series.mem.length; k++) {
    const total = k < series.memTotal.length ? Number(series.memTotal[k]) || 0 : 0;
    memTop = Math.max(memTop, total, (Number(series.mem[k]) || 0) * 1.1);
  }
  const frame = svg.querySelector('rect') ?? document.createElementNS(SVG, 'rect');
  frame.setAttribute('x', '0');
  frame.setAttribute('y', '0');
  frame.setAttribute('width', String(width));
  frame.setAttribute('height', String(height));
  frame.setAttribute('fill', 'rgba(128,128,128,0.08)');
  if (!frame.parentNode) {
    svg.append(frame);
  }
  const lines: [string, ArrayLike<number>, number, string][] = [
    ['util', series.util, peakUtil, UTIL_COLOUR],
    ['mem', series.mem, memTop, MEM_COLOUR]
  ];
  for (const [name, values, top, colour] of lines) {
    let line = svg.querySelector(`polyline[data-series="${name}"]`);
    if (!line) {
      line = document.createElementNS(SVG, 'polyline');
      line.setAttribute('data-series', name);
      line.setAttribute('fill', 'none');
      line.setAttribute('stroke', colour);
      line.setAttribute('stroke-width', '1.5');
      line.setAttribute('vector-effect', 'non-scaling-stroke');
      svg.append(line);
    }
    line.setAttribute('points', linePoints(series.times, values, top, width, height));
  }
}
