/**
 * What the anywidget views share: the model interface and small DOM helpers.
 * (Job state and formatting: ../model; the API from the page: ../api/page.)
 */

export interface AnyModel {
  get(name: string): any;
  set(name: string, value: unknown): void;
  save_changes(): void;
  on(event: string, callback: (...args: any[]) => void): void;
  off(event?: string | null, callback?: ((...args: any[]) => void) | null): void;
  send(content: unknown, callbacks?: unknown, buffers?: ArrayBuffer[]): void;
}

export interface RenderProps {
  model: AnyModel;
  el: HTMLElement;
}

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (className) {
    el.className = className;
  }
  if (text) {
    el.textContent = text;
  }
  return el;
}

/** A bytes traitlet arrives as a DataView; read it as a typed array. */
export function floats(value: any, kind: 'f32' | 'f64'): ArrayLike<number> {
  if (!value) {
    return [];
  }
  const view: DataView = value instanceof DataView ? value : new DataView(value.buffer ?? value);
  const Ctor = kind === 'f32' ? Float32Array : Float64Array;
  const n = Math.floor(view.byteLength / Ctor.BYTES_PER_ELEMENT);
  // Copy when unaligned: typed arrays need an aligned offset.
  if (view.byteOffset % Ctor.BYTES_PER_ELEMENT === 0) {
    return new Ctor(view.buffer, view.byteOffset, n);
  }
  return new Ctor(view.buffer.slice(view.byteOffset, view.byteOffset + n * Ctor.BYTES_PER_ELEMENT));
}

/** Mark the DOM with when the view last applied a model change (for benchmarks). */
export function stamp(el: HTMLElement): void {
  el.dataset.updatedAt = String(performance.timeOrigin + performance.now());
}
