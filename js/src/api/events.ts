/**
 * The caller's live events over one WebSocket, through JupyterLab's
 * ServerConnection settings (base URL, token, WebSocket class).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IEvent } from '../model/jobs';
import { API_PREFIX, EVENTS } from './paths';

export type ConnectionState = 'connecting' | 'open' | 'closed';

/**
 * The caller's live events over one WebSocket. Reconnects (with back-off)
 * with `after=<last id>`, so nothing is missed; drops duplicates by id.
 */
export class EventStream {
  lastId: number;
  private socket: WebSocket | null = null;
  private retry = 0;
  private timer: number | undefined;
  private disposed = false;
  private readonly listeners = new Set<(events: IEvent[]) => void>();

  constructor(
    private readonly onEvents: (events: IEvent[]) => void,
    private readonly onState: (state: ConnectionState) => void = () => undefined,
    after = 0,
    private readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {
    this.lastId = after;
  }

  connect(): void {
    if (this.disposed) {
      return;
    }
    let url = URLExt.join(this.settings.wsUrl, API_PREFIX, EVENTS);
    const query: Record<string, string> = {};
    if (this.lastId > 0) {
      query.after = String(this.lastId);
    }
    // Browsers send cookies with WebSockets but no headers: a token goes in the query.
    if (this.settings.token && this.settings.appendToken) {
      query.token = this.settings.token;
    }
    url += URLExt.objectToQueryString(query);
    this.onState('connecting');
    const socket = new this.settings.WebSocket(url);
    this.socket = socket;
    socket.onopen = () => {
      this.retry = 0;
      this.onState('open');
    };
    socket.onmessage = message => {
      let data: any;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      const events: IEvent[] = (Array.isArray(data) ? data : [data]).filter(
        (e: IEvent) => e && typeof e.id === 'number' && e.id > this.lastId
      );
      if (events.length) {
        events.sort((a, b) => a.id - b.id);
        this.lastId = events[events.length - 1].id;
        this.onEvents(events);
        this.listeners.forEach(listener => listener(events));
      }
    };
    socket.onclose = () => {
      if (this.socket !== socket) {
        return;
      }
      this.socket = null;
      this.onState('closed');
      this.schedule();
    };
  }

  /**
   * Hand every later batch to `listener` too (the pipeline composer follows its stages' jobs on
   * the sidebar's one stream, replayed with `after=` on reconnect like the sidebar's own events).
   * Returns the function that stops it.
   */
  listen(listener: (events: IEvent[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private schedule(): void {
    if (this.disposed) {
      return;
    }
    const delay = Math.min(10000, 250 * 2 ** this.retry++);
    this.timer = window.setTimeout(() => this.connect(), delay);
  }

  /** Close the socket and stay closed until connect() (tests use it to drop the stream). */
  disconnect(): void {
    window.clearTimeout(this.timer);
    const socket = this.socket;
    this.socket = null;
    socket?.close();
    this.onState('closed');
  }

  /** Drop the socket now and reconnect (used by tests, and after sleep). */
  reconnect(): void {
    const socket = this.socket;
    this.socket = null;
    socket?.close();
    window.clearTimeout(this.timer);
    this.connect();
  }

  dispose(): void {
    this.disposed = true;
    window.clearTimeout(this.timer);
    const socket = this.socket;
    this.socket = null;
    socket?.close();
  }
}
