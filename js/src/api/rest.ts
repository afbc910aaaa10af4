/**
 * The REST API through JupyterLab's ServerConnection, so that the token,
 * cookies and XSRF are handled as for Lab's own requests.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { API_PREFIX } from './paths';

/** An error answered by the API: `{"error", "message", "field"}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
    readonly field: string | null = null
  ) {
    super(message);
  }
}

/** Random bytes as lowercase hex, never all zero (W3C's invalid id). */
function randomHex(bytes: number): string {
  const values = crypto.getRandomValues(new Uint8Array(bytes));
  if (values.every(v => v === 0)) {
    values[bytes - 1] = 1;
  }
  return Array.from(values, v => v.toString(16).padStart(2, '0')).join('');
}

/**
 * A fresh W3C `traceparent` (sampled): a submission from the sidebar starts its job's trace
 * here, as one from the notebook client does (protocol/tracecontext.py is the format's home).
 */
export function newTraceparent(): string {
  return `00-${randomHex(16)}-${randomHex(8)}-01`;
}

export async function requestAPI<T = any>(
  path: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, API_PREFIX, path);
  const method = (init.method ?? 'GET').toUpperCase();
  if (method !== 'GET') {
    // what changes something (a submission, a cancel) starts a trace the server continues
    const headers = new Headers(init.headers);
    if (!headers.has('traceparent')) {
      headers.set('traceparent', newTraceparent());
    }
    init = { ...init, headers };
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(0, 'network', String(error));
  }
  const text = await response.text();
  let body: any = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  if (!response.ok) {
    throw new ApiError(
      response.status,
      body?.error ?? 'http_error',
      body?.message ?? response.statusText,
      body?.field ?? null
    );
  }
  return body as T;
}
