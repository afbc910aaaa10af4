/**
 * A pipeline's stages as a DAG: the checks made before submission (unknown
 * parents, cycles, names used twice; the server makes them again) and a
 * layered SVG drawing (a stage one column right of its deepest parent).
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

/** Draw the DAG into `svg`; `status` colours a stage by its job's state. */
export function drawDag(svg: SVGSVGElement, stages: IStage[], status: Map<string, string> = new Map()): void {
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
    svg.appendChild(g);
  }
}
