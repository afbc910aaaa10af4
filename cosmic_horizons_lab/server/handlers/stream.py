"""The live event stream (a WebSocket) and where it stands (``events/latest``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web, websocket
from tornado.iostream import IOStream, StreamClosedError

from cosmic_horizons_lab.server.api.requests import STREAM_QUERY, query_int
from cosmic_horizons_lab.server.errors import UpgradeRequired
from cosmic_horizons_lab.server.events import Wire, encode, message

if TYPE_CHECKING:
    from cosmic_horizons_lab.server.app import CosmicHorizons


from cosmic_horizons_lab.server.handlers.base import (
    AUTH_RESOURCE,
    EXTENSION,
    APIBase,
    JSONErrors,
    request_owner,
)


class LatestEventHandler(APIBase):
    """The caller's newest event id: where a client that wants only new events starts."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply({"last_event_id": await self.app.store.last_event_id(self.owner)})


class EventStreamHandler(JSONErrors, ExtensionHandlerMixin, JupyterHandler, websocket.WebSocketHandler):
    """``WS events?after=<id>``: the caller's events, replayed from ``after`` then live.

    It subscribes before replaying, then drops live events it already
    replayed, so a reconnecting client misses nothing and gets nothing twice.
    Messages carry one event, or a list of events when several are pending. A request that is
    not an upgrade is answered 426 in the API's error shape (Tornado would answer 400 in text).
    """

    auth_resource = AUTH_RESOURCE

    def initialize(self, name: str = EXTENSION, *args: Any, **kwargs: Any) -> None:
        super().initialize(name, *args, **kwargs)

    @property
    def owner(self) -> str:
        return request_owner(self)

    async def pre_get(self) -> None:
        await self.extensionapp.ensure_started()
        user = self.current_user
        allowed = await ensure_async(self.authorizer.is_authorized(self, user, "read", AUTH_RESOURCE))
        if not allowed:
            raise web.HTTPError(403)
        self.after = query_int({k: self.get_query_argument(k) for k in self.request.query_arguments},
                               "after", STREAM_QUERY["after"])
        headers = self.request.headers
        connection = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
        if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection:
            raise UpgradeRequired("this route is a WebSocket: send an upgrade request "
                                  "(Upgrade: websocket, Connection: Upgrade)", field=None)

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        res = super().get(*args, **kwargs)
        if res is not None:
            await res

    def check_origin(self, origin: str) -> bool:
        return JupyterHandler.check_origin(self, origin)

    def open(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # An event is sent the moment it commits, in a small frame, often right behind the
        # last one. With Nagle's algorithm on, such a frame waits until the client has ACKed
        # the previous one, and clients delay their ACKs (40 ms on Linux, up to 200 ms
        # elsewhere): that wait was the tail of the delivery latency under a burst.
        self.set_nodelay(True)
        app = self.extensionapp
        self.subscription = app.bus.subscribe(self.owner)
        self.sender = asyncio.get_running_loop().create_task(self._send(app))

    async def _send(self, app: "CosmicHorizons") -> None:
        sub = self.subscription
        sub.last = self.after
        try:
            await app.bus.warm(app.store)
            recent = app.bus.recent.replay(self.owner, sub.last)
            if recent is not None:  # all it missed is still in memory (a reconnect's usual case)
                if recent:
                    sub.last = recent[-1][0]
                for i in range(0, len(recent), 2000):
                    await self.write_message(message(recent[i:i + 2000]))
            while recent is None:  # replay what the store has after `last`, page by page
                page = await app.store.events_after(self.owner, sub.last, limit=2000)
                if not page:
                    break
                await self.write_message(message([encode(ev) for ev in page]))
                sub.last = page[-1]["id"]
            sub.direct = self._write_now  # caught up: the bus writes to this socket itself
            while True:
                batch = await sub.next_batch()
                if sub.overflowed:
                    self.close(1013, "too far behind; reconnect with after=<last id>")
                    return
                fresh = [item for item in batch if item[0] > sub.last]
                if fresh:
                    sub.last = fresh[-1][0]
                    await self.write_message(message(fresh))
        except (websocket.WebSocketClosedError, asyncio.CancelledError):
            pass

    def _write_now(self, wire: Wire) -> bool:
        """Send one message at once; False (the caller buffers it) while the socket is busy."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return True  # closing: nothing more is owed to this connection
        stream = conn.stream
        if stream.writing():  # a slow reader: its writer sends once the socket drains
            return False
        try:
            if getattr(conn, "_compressor", None) is None and type(stream) is IOStream and stream.socket is not None:
                # the frame built once for every connection (Tornado would build it per socket),
                # handed to the socket itself: its buffer is empty (not writing), so nothing
                # queued can be overtaken, and a send that fits (the usual case) needs none of
                # Tornado's buffer, future and callbacks, hundreds of times per commit
                frame = wire.frame
                try:
                    sent = stream.socket.send(frame)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return True  # a broken connection: Tornado's reading side closes it
                if sent < len(frame):
                    stream.write(frame[sent:]).add_done_callback(_retrieve)
            elif getattr(conn, "_compressor", None) is None:  # TLS: through Tornado's stream
                stream.write(wire.frame).add_done_callback(_retrieve)
            else:  # permessage-deflate: each connection compresses with its own context
                self.write_message(wire.data).add_done_callback(_retrieve)
        except (websocket.WebSocketClosedError, StreamClosedError):
            pass
        return True

    def on_message(self, message: str | bytes) -> None:
        pass  # the stream is one-way; nothing a client sends means anything

    def on_close(self) -> None:
        if getattr(self, "subscription", None) is not None:
            self.subscription.close()
        if getattr(self, "sender", None) is not None:
            self.sender.cancel()


def _retrieve(future: asyncio.Future[None]) -> None:
    # a write to a connection that closed meanwhile: nothing to do, but not "never retrieved"
    if not future.cancelled():
        future.exception()


# -- issue 5: staging, validation, tips, metrics, webhooks -------------------------------------
