/** What the anywidget views share: the model interface and small DOM helpers. */

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

/**
 * Call the Cosmic Horizons REST API straight from the page, when the page is
 * JupyterLab (its config names the base URL; the login cookie and the _xsrf
 * cookie authenticate). This works while the kernel is busy — a cell blocked
 * in `job.wait()` — when a comm message would wait for the cell to end.
 * Resolves to false where there is no such page (another front end): the
 * caller then asks the kernel over the comm instead.
 */
export async function callApi(method: string, path: string): Promise<boolean> {
  const el = document.getElementById('jupyter-config-data');
  if (!el) {
    return false;
  }
  let base: string;
  try {
    base = JSON.parse(el.textContent ?? '{}').baseUrl ?? '/';
  } catch {
    return false;
  }
  const xsrf = document.cookie.match('\\b_xsrf=([^;]*)\\b')?.[1];
  const headers: Record<string, string> = {};
  if (xsrf) {
    headers['X-XSRFToken'] = decodeURIComponent(xsrf);
  }
  try {
    const response = await fetch(`${base.replace(/\/?$/, '/')}cosmic-horizons/api/${path}`, {
      method,
      headers,
      credentials: 'same-origin'
    });
    // 409: already ended, which is what cancel wanted.
    return response.ok || response.status === 409;
  } catch {
    return false;
  }
}
