"""The bridge from the store's committed events to NATS JetStream.

Services outside Jupyter (the portal, an audit log, alerting) subscribe to the stream instead of
holding a WebSocket to each user's server. The store is the outbox and :class:`Cursor` the
bridge's durable position in it, so an outage of NATS or a restart of the server loses nothing.

How one pass goes:

1. read the next events after the cursor, in id order (a batch);
2. validate each against the envelope schema (``protocol/events.py``);
3. publish the valid ones to ``cosmic.events.<user>.<job>`` with ``Nats-Msg-Id`` = the event
   id (the stream drops a message id it has seen within its duplicate window) and wait for
   JetStream's PubAck, pipelined in waves (:class:`AckInbox`): a wave holds at most one event
   per subject, so an event is never sent before the previous event of its job is
   acknowledged, and a lost message cannot be overtaken by the next one of its job (per-job
   order survives reconnects and retries);
4. send what the stream refuses for good (schema-invalid, or a JetStream error that is not
   transient) to ``cosmic.deadletter.<user>.<job>`` with the reason, and count it as done;
5. advance the cursor over the acknowledged prefix; on the first event that failed in a way
   that may pass (a timeout, a lost connection, JetStream unavailable), back off (doubling,
   capped) and start again from the cursor; what was already stored is deduplicated.

The store wakes the bridge after each commit (:meth:`NatsBridge.wake`); a slow poll covers
events another server committed to a shared database, and a reconnection cuts a back-off short.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import fastjsonschema
import nats
import nats.errors
import nats.js.errors
from jsonschema import Draft202012Validator, FormatChecker
from nats.js.api import StorageType, StreamConfig

from cosmic_horizons_lab.protocol import events as envelope
from cosmic_horizons_lab.server.background import stop_task
from cosmic_horizons_lab.server.bridge.cursor import Cursor
from cosmic_horizons_lab.server.store.database import Store

log = logging.getLogger(__name__)

# Every event is checked by the compiled validator (~20 µs, where jsonschema takes ~20 times as
# long: the difference between 1,000 and 5,000 events/s on two cores); the envelope uses no keyword
# whose meaning differs between its draft and fastjsonschema's. jsonschema, the reference, words
# the reason of a refusal.
_CHECK = fastjsonschema.compile({k: v for k, v in envelope.ENVELOPE_SCHEMA.items() if k not in ("$schema", "$id")})
_VALIDATOR = Draft202012Validator(envelope.ENVELOPE_SCHEMA, format_checker=FormatChecker())
_MAX_REASON = 500


class Retryable(Exception):
    """A publish that may pass later: the pass stops here and starts again after a back-off."""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, nats.js.errors.APIError):
        # 503: JetStream unavailable (no leader yet, restarting); 5xx: the server's own trouble
        return exc.code is None or exc.code >= 500
    return isinstance(exc, (nats.errors.Error, OSError, asyncio.TimeoutError))


def _reason_text(text: str) -> str:
    # a header value is one line
    return " ".join(text.split())[:_MAX_REASON]


class AckInbox:
    """Pipelined JetStream publishes: each message names a reply subject of ours, and its PubAck
    (or JetStream's error) settles its future.

    This is what ``JetStreamContext.publish`` does one message at a time, without a task and a
    timer per message (a wave shares one timeout), and unlike nats-py 2.16's ``publish_async``,
    whose reply handler raises JetStream's error instead of failing the future (the publish
    would then wait out its timeout and be retried for ever instead of going to the dead-letter
    subject).
    """

    def __init__(self, nc: Any, prefix: str) -> None:
        self.nc = nc
        self.prefix = prefix
        self.futures: dict[str, asyncio.Future] = {}
        self._next = 0

    @classmethod
    async def open(cls, nc: Any) -> AckInbox:
        inbox = cls(nc, nc.new_inbox())
        await nc.subscribe(inbox.prefix + ".*", cb=inbox._on_reply)
        return inbox

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> asyncio.Future:
        self._next += 1
        token = str(self._next)
        fut = asyncio.get_running_loop().create_future()
        self.futures[token] = fut
        fut.add_done_callback(lambda _f: self.futures.pop(token, None))
        await self.nc.publish(subject, body, reply=f"{self.prefix}.{token}", headers=headers)
        return fut

    async def _on_reply(self, msg: Any) -> None:
        fut = self.futures.get(msg.subject.rsplit(".", 1)[-1])
        if fut is None or fut.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":  # no responders: no stream takes the subject
            fut.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            resp = json.loads(msg.data)
        except ValueError:
            fut.set_exception(nats.js.errors.APIError(description=f"not a PubAck: {msg.data[:200]!r}"))
            return
        if "error" in resp:
            err = resp["error"]
            fut.set_exception(nats.js.errors.APIError(
                code=err.get("code"), err_code=err.get("err_code"), description=err.get("description")))
        else:
            fut.set_result(resp)


class NatsBridge:
    """Publishes every committed event to a JetStream stream, in order, exactly once per message id."""

    def __init__(
        self,
        store: Store,
        *,
        url: str,
        stream: str,
        batch_size: int = 500,
        retry_base: float = 0.1,
        retry_max: float = 2.0,
        poll_interval: float = 5.0,
        publish_timeout: float = 5.0,
        duplicate_window: float = 600.0,
        msg_id_prefix: str = "",
    ) -> None:
        self.store = store
        self.url = url
        self.stream = stream
        self.batch_size = max(1, batch_size)
        self.retry_base = retry_base
        self.retry_max = max(retry_base, retry_max)
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self.duplicate_window = duplicate_window
        self.msg_id_prefix = msg_id_prefix
        self.cursor = Cursor(store, f"nats:{stream}")
        self.published = 0
        self.duplicates = 0
        self.dead_letters = 0
        self.last_error: str | None = None
        self._nc: Any = None
        self._js: Any = None
        self._acks: AckInbox | None = None
        self._wake = asyncio.Event()
        self._reconnected = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- life ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.cursor.load()
        self._task = asyncio.create_task(self._run(), name="nats-bridge")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        try:
            await self.cursor.save()
        finally:
            if self._nc is not None:
                try:
                    await self._nc.close()
                except Exception:  # closing a connection that is already gone
                    log.debug("closing the NATS connection", exc_info=True)
                self._nc = self._js = self._acks = None

    def wake(self) -> None:
        """New events were committed: publish them now rather than at the next poll."""
        self._wake.set()

    @property
    def connected(self) -> bool:
        return bool(self._nc is not None and self._nc.is_connected)

    async def status(self) -> dict[str, Any]:
        """For ``GET health``: whether the bus is reachable and how far behind the store it is."""
        return {
            "stream": self.stream, "connected": self.connected, "cursor": self.cursor.position,
            "lag": await self.cursor.lag(), "published": self.published, "dead_letters": self.dead_letters,
            "last_error": self.last_error,
        }

    # -- the loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self._js is None:
                    await self._connect()
                busy = await self._pump()
                failures = 0
                self.last_error = None
                if not busy:
                    await self._idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # publishing failed in a way that may pass: back off, go again
                failures += 1
                delay = min(self.retry_max, self.retry_base * 2 ** (failures - 1))
                if self.last_error is None or failures in (1, 10) or failures % 100 == 0:
                    log.warning("event bus: %s (attempt %d, next in %.1fs)", exc, failures, delay)
                self.last_error = str(exc) or type(exc).__name__
                await self._backoff(delay)
                if isinstance(exc, nats.js.errors.NoStreamResponseError) and self._js is not None:
                    try:  # the stream is gone (a NATS that lost its store): make it again
                        await self._ensure_stream(self._js)
                    except Exception as again:
                        log.debug("event bus: the stream is still missing: %s", again)

    async def _idle(self) -> None:
        # wait for a commit, the slow poll, or the moment the cursor is due to be saved
        timeout = min(self.poll_interval, self.cursor.save_due(), self.cursor.gap_due() + 0.01)
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()
        if self.cursor.save_due() == 0:
            await self.cursor.save()

    async def _backoff(self, delay: float) -> None:
        self._reconnected.clear()
        try:
            await asyncio.wait_for(self._reconnected.wait(), delay)
        except TimeoutError:
            pass
        if self.cursor.save_due() == 0:
            await self.cursor.save()  # progress made before the failure survives a crash

    async def _connect(self) -> None:
        async def reconnected() -> None:
            log.info("event bus: reconnected to %s", self._nc.connected_url.netloc if self._nc else "NATS")
            self._reconnected.set()
            self._wake.set()

        async def error(exc: Exception) -> None:
            self.last_error = f"NATS: {exc!r}"  # e.g. refused connections while it is away (health shows it)
            log.debug("event bus: %s", exc)

        nc = await nats.connect(
            self.url, name="cosmic-horizons-lab event bridge", allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
            reconnected_cb=reconnected, error_cb=error,
        )
        try:
            js = nc.jetstream(timeout=self.publish_timeout)
            await self._ensure_stream(js)
            acks = await AckInbox.open(nc)
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js, self._acks = nc, js, acks
        log.info("event bus: publishing to stream %s from event %d", self.stream, self.cursor.position)

    async def _ensure_stream(self, js: Any) -> None:
        subjects = [f"{envelope.SUBJECT_PREFIX}.>", f"{envelope.DEADLETTER_PREFIX}.>"]
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(
                name=self.stream, subjects=subjects, storage=StorageType.FILE,
                duplicate_window=self.duplicate_window,
            ))
            return
        missing = [s for s in subjects if s not in (info.config.subjects or [])]
        if missing:  # an operator's stream: add our subjects, keep the rest of its settings
            await js.update_stream(info.config.evolve(subjects=[*(info.config.subjects or []), *missing]))

    # -- one pass ------------------------------------------------------------------------------
    async def _pump(self) -> bool:
        """Publish the next batch after the cursor; False when there was nothing to publish."""
        events = await self.cursor.read(self.batch_size)
        if not events:
            return False
        failure = await self._publish_batch(events)
        if self.cursor.save_due() == 0:
            await self.cursor.save()
        if failure is not None:
            raise failure
        return True

    async def _publish_batch(self, events: list[dict[str, Any]]) -> BaseException | None:
        """Publish in waves (one event per subject in flight); advance the cursor over the done prefix."""
        done: dict[int, bool] = {}
        blocked: set[str] = set()  # subjects whose event failed: their later events wait for the retry
        first_failure: BaseException | None = None
        failed_id = 0
        subjects = {ev["id"]: envelope.event_subject(ev) for ev in events}
        remaining = events
        while remaining:
            if not self.connected:
                first_failure = first_failure or Retryable("not connected to NATS")
                break
            wave, later, in_wave = [], [], set()
            for ev in remaining:
                subject = subjects[ev["id"]]
                if subject in blocked:
                    continue
                (later if subject in in_wave else wave).append(ev)
                in_wave.add(subject)
            for ev, result in zip(wave, await self._send_wave(wave, subjects)):
                if result is not None:
                    blocked.add(subjects[ev["id"]])
                    if first_failure is None or ev["id"] < failed_id:
                        first_failure, failed_id = result, ev["id"]
                else:
                    done[ev["id"]] = True
            remaining = later
        for ev in events:  # the acknowledged prefix, in id order
            if not done.get(ev["id"]):
                break
            self.cursor.advance(ev["id"])
        return first_failure

    async def _send_wave(self, wave: list[dict[str, Any]], subjects: dict[int, str]) -> list[BaseException | None]:
        """Publish a wave pipelined (all sent, then the acks awaited together), dead-lettering what
        the stream refuses for good; per event, None when done or what a retry may fix."""
        assert self._acks is not None, "connected first"
        outcomes: list[BaseException | None] = [None] * len(wave)
        sent: list[tuple[int, asyncio.Future]] = []
        refused: list[tuple[int, str]] = []
        for i, ev in enumerate(wave):
            reason = schema_error(ev)
            if reason is not None:
                refused.append((i, f"schema {envelope.ENVELOPE_ID}: {reason}"))
                continue
            headers = {
                envelope.MSG_ID_HEADER: envelope.message_id(ev, self.msg_id_prefix),
                envelope.SCHEMA_HEADER: envelope.ENVELOPE_ID,
                envelope.TYPE_HEADER: ev["type"],
            }
            body = json.dumps(ev, separators=(",", ":"), default=str).encode()
            try:
                sent.append((i, await self._acks.publish(subjects[ev["id"]], body, headers)))
            except nats.errors.MaxPayloadError as exc:
                refused.append((i, f"rejected by the stream: {exc}"))
            except Exception as exc:
                outcomes[i] = exc
        if sent:
            _, pending = await asyncio.wait([f for _, f in sent], timeout=self.publish_timeout)
            for fut in pending:
                fut.cancel()
        for i, fut in sent:
            if fut.cancelled():
                outcomes[i] = Retryable(f"no acknowledgement within {self.publish_timeout:g}s")
            elif (exc := fut.exception()) is not None:
                if _is_transient(exc):
                    outcomes[i] = exc
                else:
                    refused.append((i, f"rejected by the stream: {exc}"))
            else:
                self.published += 1
                self.duplicates += bool(fut.result().get("duplicate"))
        for i, reason in sorted(refused):
            try:
                await self._dead_letter(wave[i], reason)
            except Exception as exc:
                outcomes[i] = exc
        return outcomes

    async def _dead_letter(self, ev: dict[str, Any], reason: str) -> None:
        reason = _reason_text(reason)
        headers = {
            envelope.MSG_ID_HEADER: "deadletter:" + envelope.message_id(ev, self.msg_id_prefix),
            envelope.REASON_HEADER: reason,
        }
        letter = {"reason": reason, "subject": envelope.event_subject(ev), "event": ev}
        for attempt in ("whole", "without payload"):
            body = json.dumps(letter, separators=(",", ":"), default=str).encode()
            try:
                await self._js.publish(envelope.deadletter_subject(ev), body, timeout=self.publish_timeout,
                                       headers=headers)
                break
            except Exception as exc:
                if _is_transient(exc) and not isinstance(exc, nats.errors.MaxPayloadError):
                    raise
                if attempt == "whole":  # too large for the stream: keep the envelope, drop the payload
                    payload = ev.get("payload")
                    letter = {**letter, "event": {**ev, "payload": None},
                              "payload_bytes": len(json.dumps(payload, default=str))}
                    continue
                log.error("event bus: event %s refused, and its dead letter too (%s): %s", ev.get("id"), exc, reason)
        self.dead_letters += 1
        log.warning("event bus: event %s dead-lettered: %s", ev.get("id"), reason)


def schema_error(ev: dict[str, Any]) -> str | None:
    """Why ``ev`` is not a valid envelope (``path: message``), or None when it is."""
    try:
        _CHECK(ev)
        return None
    except fastjsonschema.JsonSchemaException as fast:
        errors = sorted(_VALIDATOR.iter_errors(ev), key=lambda e: list(map(str, e.absolute_path)))
        if not errors:
            return fast.message
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(the event)"
        return f"{where}: {errors[0].message}"


def redact(url: str) -> str:
    """The URL without credentials, for logs and health."""
    parts = []
    for one in url.split(","):
        if "@" in one and "://" in one:
            scheme, rest = one.split("://", 1)
            one = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        parts.append(one)
    return ",".join(parts)
