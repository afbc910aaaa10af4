/**
 * The API straight from the page, for the notebook widgets' views (no
 * JupyterLab import: each view is bundled on its own).
 */
import { API_PREFIX, jobPath } from './paths';

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
    const response = await fetch(`${base.replace(/\/?$/, '/')}${API_PREFIX.replace(/\/?$/, '/')}${path}`, {
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

/** Cancel a job from the page; false: ask the kernel instead. */
export function cancelJob(id: string): Promise<boolean> {
  return callApi('DELETE', jobPath(id));
}
