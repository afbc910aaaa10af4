/**
 * A pipeline's stages as a DAG: the checks made before submission (unknown
 * parents, cycles, names used twice; the server makes them again) and a
 * layered SVG drawing (a stage one column right of its deepest parent) in
 * which edges are drawn by mouse: drag from a stage (or its output handle)
 * onto another to make the first its parent; click an edge to remove it.
 */
import { ISubmission } from '../form/form';

export interface IStage extends ISubmission {
  name: string;
  depends_on: string[];
}

/** What is wrong with the stages, one message each; empty when they can be submitted. */
export function problems(stages: IStage[]): string[] {
  const found: string[] = [];
  const names = new Set<string>();
  for (const stage of stages) {
    if (names.has(stage.name)) {
      found.push(`stage name "${stage.name}" is used twice`);
    }
    names.add(stage.name);
  }
  for (const stage of stages) {
    for (const parent of stage.depends_on) {
      if (!names.has(parent)) {
        found.push(`stage "${stage.name}" depends on unknown stage "${parent}"`);
      }
    }
  }
  const cycle = cycleMembers(stages);
  if (cycle.size) {
    found.push(`cycle: ${Array.from(cycle).join(' → ')}`);
  }
  return found;
}

/** The stages on a cycle (Kahn's algorithm: what cannot be ordered). */
export function cycleMembers(stages: IStage[]): Set<string> {
  const known = new Set(stages.map(s => s.name));
  const indegree = new Map(stages.map(s => [s.name, s.depends_on.filter(p => known.has(p)).length]));
  const children = new Map<string, string[]>();
  for (const s of stages) {
    for (const p of s.depends_on) {
      children.set(p, [...(children.get(p) ?? []), s.name]);
    }
  }
  const ready = stages.filter(s => indegree.get(s.name) === 0).map(s => s.name);
  while (ready.length) {
    const name = ready.pop()!;
    indegree.delete(name);
    for (const child of children.get(name) ?? []) {
      const left = (indegree.get(child) ?? 0) - 1;
      indegree.set(child, left);
      if (left === 0) {
        ready.push(child);
      }
    }
  }
  return new Set(indegree.keys());
}

/** Column of each stage: 0 for roots, else one more than its deepest parent (cycles: 0). */
function columns(stages: IStage[]): Map<string, number> {
  const byName = new Map(stages.map(s => [s.name, s]));
  const depth = new Map<string, number>();
  const visiting = new Set<string>();
  const of = (name: string): number => {
    if (depth.has(name)) {
      return depth.get(name)!;
    }
    if (visiting.has(name)) {
      return 0;
    }
    visiting.add(name);
    const parents = (byName.get(name)?.depends_on ?? []).filter(p => byName.has(p));
    const d = parents.length ? Math.max(...parents.map(of)) + 1 : 0;
    visiting.delete(name);
    depth.set(name, d);
    return d;
  };
  stages.forEach(s => of(s.name));
  return depth;
}

const NS = 'http://www.w3.org/2000/svg';
const W = 150;
const H = 40;
const GAP_X = 50;
const GAP_Y = 16;

/** What the drawing does when the user draws or clicks an edge. */
export interface IDagEditing {
  /** An edge drawn from `parent` onto `child`. */
  onConnect?: (parent: string, child: string) => void;
  /** An edge clicked. */
  onRemoveEdge?: (parent: string, child: string) => void;
}

/** A point of the page (client pixels) in the SVG's own coordinates (the drawing is scaled to fit). */
function toSvg(svg: SVGSVGElement, x: number, y: number): { x: number; y: number } {
  const ctm = svg.getScreenCTM();
  if (!ctm) {
    return { x, y };
  }
  const p = new DOMPoint(x, y).matrixTransform(ctm.inverse());
  return { x: p.x, y: p.y };
}

/**
 * Follow a drag that started on stage `from`: a dashed line from its output handle to the
 * pointer, and on release over another stage, `onConnect(from, that stage)`. A press that
 * does not move is a click, not an edge.
 */
function dragEdge(svg: SVGSVGElement, from: string, origin: { x: number; y: number }, down: PointerEvent,
                  onConnect: (parent: string, child: string) => void): void {
  let line: SVGPathElement | null = null;
  const move = (e: PointerEvent): void => {
    if (!line && Math.hypot(e.clientX - down.clientX, e.clientY - down.clientY) < 4) {
      return;
    }
    if (!line) {
      line = document.createElementNS(NS, 'path');
      line.setAttribute('class', 'ch-drag-edge');
      line.setAttribute('stroke', 'currentColor');
      line.setAttribute('stroke-dasharray', '4 3');
      line.setAttribute('fill', 'none');
      line.setAttribute('pointer-events', 'none');
    }
    if (!line.isConnected) {
      svg.appendChild(line); // again, if the DAG was redrawn under the drag
    }
    const p = toSvg(svg, e.clientX, e.clientY);
    line.setAttribute('d', `M${origin.x},${origin.y} L${p.x},${p.y}`);
  };
  const up = (e: PointerEvent): void => {
    window.removeEventListener('pointermove', move);
    window.removeEventListener('pointerup', up);
    const drawn = line !== null;
    line?.remove();
    if (!drawn) {
      return;
    }
    const target = document.elementFromPoint(e.clientX, e.clientY)?.closest('.ch-node') as SVGGElement | null;
    const to = target?.dataset.stage;
    if (to && to !== from && svg.contains(target)) {
      onConnect(from, to);
    }
  };
  window.addEventListener('pointermove', move);
  window.addEventListener('pointerup', up);
}

/** Draw the DAG into `svg`; `status` colours a stage by its job's state; `editing` makes edges drawable. */
export function drawDag(
  svg: SVGSVGElement,
  stages: IStage[],
  status: Map<string, string> = new Map(),
  editing: IDagEditing = {}
): void {
  const column = columns(stages);
  const cycle = cycleMembers(stages);
  const rows = new Map<number, number>();
  const place = new Map<string, { x: number; y: number }>();
  for (const s of stages) {
    const c = column.get(s.name) ?? 0;
    const r = rows.get(c) ?? 0;
    rows.set(c, r + 1);
    place.set(s.name, { x: 10 + c * (W + GAP_X), y: 10 + r * (H + GAP_Y) });
  }
  const width = 20 + (Math.max(0, ...column.values()) + 1) * (W + GAP_X);
  const height = 20 + Math.max(1, ...rows.values()) * (H + GAP_Y);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  svg.innerHTML = `<defs><marker id="ch-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6"
    markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="currentColor"/></marker></defs>`;
  for (const s of stages) {
    const to = place.get(s.name)!;
    for (const p of s.depends_on) {
      const from = place.get(p);
      if (!from) {
        continue;
      }
      const path = document.createElementNS(NS, 'path');
      const x1 = from.x + W;
      const y1 = from.y + H / 2;
      const x2 = to.x;
      const y2 = to.y + H / 2;
      path.setAttribute('d', `M${x1},${y1} C${x1 + 25},${y1} ${x2 - 25},${y2} ${x2},${y2}`);
      path.setAttribute('class', 'ch-edge');
      path.dataset.from = p;
      path.dataset.to = s.name;
      svg.appendChild(path);
      if (editing.onRemoveEdge) {
        // A wide, invisible twin of the edge takes the click (the drawn line is 1 px).
        const hit = document.createElementNS(NS, 'path');
        hit.setAttribute('d', path.getAttribute('d')!);
        hit.setAttribute('class', 'ch-edge-hit');
        hit.setAttribute('stroke', 'transparent');
        hit.setAttribute('stroke-width', '12');
        hit.setAttribute('fill', 'none');
        hit.setAttribute('pointer-events', 'stroke');
        hit.style.cursor = 'pointer';
        hit.dataset.from = p;
        hit.dataset.to = s.name;
        const title = document.createElementNS(NS, 'title');
        title.textContent = `${p} → ${s.name}: click to remove`;
        hit.appendChild(title);
        const remove = editing.onRemoveEdge;
        hit.addEventListener('click', () => remove(p, s.name));
        svg.appendChild(hit);
      }
    }
  }
  for (const s of stages) {
    const { x, y } = place.get(s.name)!;
    const g = document.createElementNS(NS, 'g');
    g.setAttribute('class', 'ch-node');
    g.dataset.stage = s.name;
    g.dataset.cycle = String(cycle.has(s.name));
    const state = status.get(s.name);
    if (state) {
      g.dataset.status = state;
    }
    g.innerHTML = `<rect x="${x}" y="${y}" width="${W}" height="${H}" rx="4"/>`;
    const name = document.createElementNS(NS, 'text');
    name.setAttribute('x', String(x + 8));
    name.setAttribute('y', String(y + 16));
    name.textContent = s.name;
    const sub = document.createElementNS(NS, 'text');
    sub.setAttribute('x', String(x + 8));
    sub.setAttribute('y', String(y + 32));
    sub.textContent = state ? `${s.agent} · ${state}` : s.agent;
    g.append(name, sub);
    if (editing.onConnect) {
      // The output handle: where an edge starts (a drag from anywhere on the stage works too).
      const handle = document.createElementNS(NS, 'circle');
      handle.setAttribute('class', 'ch-handle');
      handle.setAttribute('cx', String(x + W));
      handle.setAttribute('cy', String(y + H / 2));
      handle.setAttribute('r', '5');
      handle.setAttribute('fill', 'currentColor');
      const title = document.createElementNS(NS, 'title');
      title.textContent = `Drag onto another stage to make "${s.name}" its parent`;
      handle.appendChild(title);
      g.appendChild(handle);
      g.style.cursor = 'crosshair';
      const connect = editing.onConnect;
      g.addEventListener('pointerdown', e => {
        if (e.button !== 0) {
          return;
        }
        e.preventDefault();
        dragEdge(svg, s.name, { x: x + W, y: y + H / 2 }, e, connect);
      });
    }
    svg.appendChild(g);
  }
}
