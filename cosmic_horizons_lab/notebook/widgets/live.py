"""Live updates for the notebook widgets: one event feed, coalesced flushes.

The server's events reach the kernel on one WebSocket per :class:`~cosmic_horizons_lab.notebook.lab.Lab`
(:class:`EventFeed`, a daemon thread of ``Client.subscribe``) and are fanned out
to its listeners: the Lab's job registry, which applies each ``job.*`` event
once to the one :class:`~cosmic_horizons_lab.notebook.jobs.Job` of that id, and
widgets that follow other events (staging). A widget never writes its
traitlets from the event thread: it *stages* new values, or *invalidates*
itself when the jobs it shows changed, and the :class:`UpdatePump` applies
every dirty widget at a bounded rate (an invalidated one renders from its jobs
then, so it always shows their latest state). The first change after a
quiet spell is sent at once (low latency); changes within the next
``interval`` are merged and sent together (a burst of 1,000 events costs a
handful of comm messages, latest state wins).

The pump sends from its own thread. Under ipykernel 7 a comm message sent from a
thread other than the shell's is published with the shell's current parent
header (``Kernel.get_parent`` falls back to the shell context) through the
thread-safe IOPub socket, which JupyterLab routes by comm id: tested in
``tests/ui/test_kernel_threads.py`` against a real kernel.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Protocol

import anywidget
import traitlets

# The job state machine lives in notebook/state.py (no anywidget needed); re-exported here.
from cosmic_horizons_lab.notebook.state import TERMINAL, Event, apply_event, merge_snapshot
from cosmic_horizons_lab.notebook.widgets.summary import with_panel

log = logging.getLogger(__name__)

__all__ = ["TERMINAL", "Event", "EventFeed", "LiveWidget", "Listener", "UpdatePump", "apply_event", "merge_snapshot"]


class Listener(Protocol):
    def on_event(self, event: Event) -> None: ...


class UpdatePump:
    """Applies widgets' staged state at most once per ``interval`` each round.

    Leading edge: a change after a quiet spell is flushed at once. Trailing
    edge: changes arriving within ``interval`` of a flush wait for the next
    one, merged. ``flushes`` and ``applied`` count rounds and widget updates.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.flushes = 0
        self.applied = 0
        self._dirty: dict[int, LiveWidget] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_flush = 0.0
        self._closed = False

    def mark(self, widget: "LiveWidget") -> None:
        with self._lock:
            self._dirty[id(widget)] = widget
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="cosmic-horizons-pump", daemon=True)
                self._thread.start()
        self._wake.set()

    def flush(self) -> int:
        """Apply every staged state now, on the calling thread. Returns how many."""
        with self._lock:
            dirty, self._dirty = list(self._dirty.values()), {}
            self._wake.clear()
        for widget in dirty:
            try:
                widget._apply_staged()
            except Exception:  # one broken view must not stop the others' updates
                log.exception("widget update failed")
        self._last_flush = time.monotonic()
        if dirty:
            self.flushes += 1
            self.applied += len(dirty)
        return len(dirty)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            if self._closed:
                return
            wait = self._last_flush + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.flush()

    def close(self) -> None:
        self._closed = True
        self._wake.set()


class EventFeed:
    """One subscription to the server's event stream, fanned out to listeners.

    Started by the first listener. Listeners are held weakly: a widget nobody
    references any more stops receiving events without being told.
    """

    def __init__(self, subscribe: Callable[..., Any], latest: Callable[[], int] | None = None) -> None:
        self._subscribe = subscribe
        self._latest = latest
        self._listeners: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._subscription: Any = None
        self.last_id: int | None = None
        self.received = 0

    def add(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.add(listener)
            if self._subscription is None:
                # The starting point is read here, before the caller reads any snapshot:
                # nothing that happens after the snapshot can fall before the stream.
                after = self._latest() if self._latest is not None else None
                self._subscription = self._subscribe(self.dispatch, after=after)

    def remove(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.discard(listener)

    @property
    def started(self) -> bool:
        return self._subscription is not None

    def dispatch(self, events: Event | Iterable[Event]) -> None:
        """Deliver one event or a list of them (the stream sends both)."""
        batch = [events] if isinstance(events, dict) else list(events)
        with self._lock:
            listeners = list(self._listeners)
        for event in batch:
            if not isinstance(event, dict):
                continue
            self.received += 1
            if isinstance(event.get("id"), int):
                self.last_id = max(self.last_id or 0, event["id"])
            for listener in listeners:
                try:
                    listener.on_event(event)
                except Exception:
                    log.exception("event listener failed")

    def close(self) -> None:
        with self._lock:
            subscription, self._subscription = self._subscription, None
        if subscription is not None:
            subscription.close()


class LiveWidget(anywidget.AnyWidget):
    """An anywidget whose traitlets are written only through the pump.

    Subclasses call :meth:`stage` from any thread; the pump applies the latest
    staged values together (one comm message per widget per flush).
    ``comm_messages`` counts the messages this widget sent to its views.
    """

    def __init__(self, *, pump: UpdatePump | None = None, **kwargs: Any) -> None:
        self._pump = pump or UpdatePump()
        self._staged: dict[str, Any] = {}
        self._stale = False
        self._staged_lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self.comm_messages = 0
        super().__init__(**kwargs)
        self.on_msg(self._on_view_message)

    def stage(self, **values: Any) -> None:
        with self._staged_lock:
            self._staged.update(values)
        self._pump.mark(self)

    def invalidate(self) -> None:
        """What this widget shows changed: :meth:`render` it at the next flush.

        Cheap, from any thread (a job's listener calls it once per event): the
        rendering is done by the pump, at most once per flush.
        """
        with self._staged_lock:
            self._stale = True
        self._pump.mark(self)

    def render(self) -> dict[str, Any]:
        """The trait values computed from what the widget shows (its jobs), read now."""
        return {}

    def _apply_staged(self) -> None:
        # One applier at a time (the pump's thread, or a blocking wait() flushing on the
        # main thread): values taken later are never sent before values taken earlier,
        # and a render reads its jobs after every change that invalidated it.
        with self._apply_lock:
            with self._staged_lock:
                values, self._staged = self._staged, {}
                stale, self._stale = self._stale, False
            if self._closed_once:
                return
            if stale:
                values.update(self.render())
            if not values:
                return
            with self.hold_sync():
                for name, value in values.items():
                    setattr(self, name, value)
                self._refresh_summary()

    _closed_once = False

    panel_summary = traitlets.List(
        traitlets.Unicode(), help="The panel in words (summary()), kept current: the renderer saves it in the output."
    ).tag(sync=True)

    def summary(self) -> list[str]:
        """The panel's state in a few lines of text, the first one its title: what a reopened
        notebook shows in place of the panel once its kernel is gone. Subclasses say more."""
        return [repr(self)]

    def _refresh_summary(self) -> None:
        try:
            lines = [str(line) for line in self.summary()]
        except Exception:  # a summary must never break the live updates
            log.exception("widget summary failed")
            return
        if lines != self.panel_summary:
            self.panel_summary = lines

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The widget view, with the panel's static form (``summary.with_panel``) beside it."""
        bundle = super()._repr_mimebundle_(**kwargs)
        with self._apply_lock:  # not beside the pump's own refresh
            self._refresh_summary()
        return with_panel(self, bundle, list(self.panel_summary))

    def close(self) -> None:
        self._closed_once = True
        super().close()

    def _send(self, msg: dict, buffers: Any = None) -> None:  # noqa: D401 - ipywidgets hook
        self.comm_messages += 1
        super()._send(msg, buffers=buffers)

    def _on_view_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and "action" in content:
            handler = getattr(self, f"action_{content['action']}", None)
            if handler is None:
                return
            try:
                handler(content)
            except Exception as exc:  # the API's message is what the user needs to see
                self.report_error(exc)

    def report_error(self, exc: BaseException) -> None:
        message = getattr(exc, "message", None) or str(exc)
        self.stage(error=message)

    error = traitlets.Unicode("", help="The last error to show in the view.").tag(sync=True)
