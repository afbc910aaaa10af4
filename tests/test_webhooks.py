"""Webhooks against a real HTTP receiver on 127.0.0.1: signatures, retries after 500s, a receiver restart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .services import free_port


class Receiver:
    """A real HTTP server in a thread that records POSTs and answers the statuses it is told to."""

    def __init__(self, port: int | None = None, fail_first: int = 0) -> None:
        self.port = port or free_port()
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> "Receiver":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(500)
                else:
                    outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.allow_reuse_address = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest.fixture
def lab_config():
    return {"webhook_backoff_seconds": 0.2, "webhook_max_attempts": 30}


async def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_terminal_state_is_posted_signed_after_retries_and_logged(api, script):
    receiver = Receiver(fail_first=2).start()
    try:
        _, secret, _ = await api.get("webhooks/secret")
        _, job, _ = await api.post(
            "jobs/submit", {"agent": "Script", "params": {"path": script("print(1)\n")}, "webhook_url": receiver.url},
            headers={"X-Correlation-ID": "hook-1"},
        )
        await api.wait_for(job["id"])
        await _wait(lambda: receiver.received)
    finally:
        receiver.stop()
    headers, raw = receiver.received[0]
    expected = "sha256=" + hmac.new(secret["secret"].encode(), raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-cosmic-signature"], expected)
    body = json.loads(raw)
    assert body["event"] == "job.completed" and body["job_id"] == job["id"] and body["correlation_id"] == "hook-1"
    assert body["status"]["status"] == "COMPLETED" and body["status"]["id"] == job["id"]
    assert headers["x-correlation-id"] == "hook-1"
    assert len(receiver.received) == 1

    code, log, _ = await api.get(f"jobs/{job['id']}/webhooks")
    assert code == 200
    (delivery,) = log["deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    assert [a["status_code"] for a in delivery["log"]] == [500, 500, 200]
    code, _, _ = await api.get(f"jobs/{job['id']}/webhooks", user="bob")
    assert code == 404


async def test_no_delivery_is_lost_while_the_receiver_is_down(api, script):
    port = free_port()
    paths = [script(f"print({i})\n", f"j{i}.py") for i in range(3)]
    jobs = []
    for path in paths:  # the receiver is not listening yet: connections are refused
        _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path},
                                                   "webhook_url": f"http://127.0.0.1:{port}/hook"})
        jobs.append(job["id"])
    for job_id in jobs:
        await api.wait_for(job_id)
    await asyncio.sleep(0.5)
    _, log, _ = await api.get(f"jobs/{jobs[0]}/webhooks")
    assert log["deliveries"][0]["status"] == "pending" and log["deliveries"][0]["attempts"] >= 1
    receiver = Receiver(port=port).start()
    try:
        await _wait(lambda: len(receiver.received) >= 3)
    finally:
        receiver.stop()
    assert sorted(json.loads(raw)["job_id"] for _, raw in receiver.received) == sorted(jobs)


async def test_rotating_the_secret_changes_the_signature_key(api):
    _, first, _ = await api.get("webhooks/secret")
    _, same, _ = await api.get("webhooks/secret")
    _, rotated, _ = await api.post("webhooks/secret")
    _, other, _ = await api.get("webhooks/secret", user="bob")
    assert first["secret"] == same["secret"] != rotated["secret"] and len(first["secret"]) == 64
    assert other["secret"] != rotated["secret"]


async def test_only_http_urls_are_accepted(api, script):
    for url in ("ftp://example.org/x", "file:///etc/passwd", "javascript:alert(1)", "not a url"):
        code, err, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script("pass\n")},
                                                      "webhook_url": url})
        assert code == 422 and err["field"] == "webhook_url", url


def test_a_delivery_cut_by_kill_9_is_sent_again_with_the_same_delivery_id(tmp_path):
    """At least once: the receiver took the POST, the server died before recording the 2xx.

    The next server sends the same delivery again: same bytes, same signature, same
    ``X-Cosmic-Delivery-Id``, so a receiver can drop the repeat (docs/operators.md, Webhooks).
    """
    from .services import LabServer, kill_job_groups, write_script

    root = tmp_path / "root"
    root.mkdir()
    write_script(root, "quick.py", "print('hi')\n")
    got: list[tuple[dict[str, str], bytes]] = []
    first_arrived, release = threading.Event(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            if len(got) == 1:
                first_arrived.set()
                release.wait(30)  # hold the answer until the server is dead
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    config = {"webhook_backoff_seconds": 0.2, "webhook_timeout": 60}
    server = LabServer(root, config=config).start()
    try:
        job = server.client().submit("Script", params={"path": "quick.py"}, webhook_url=url)
        assert first_arrived.wait(60), "no delivery arrived"
        server.kill()
        release.set()
        again = LabServer(root, config=config)
        again.port = server.port
        server = again.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (log,) = server.client().request("GET", f"jobs/{job['id']}/webhooks")["deliveries"]
            if log["status"] != "pending":
                break
            time.sleep(0.1)
    finally:
        server.stop()
        receiver.shutdown()
        receiver.server_close()
        kill_job_groups(root / "jobs")
    assert len(got) == 2, f"{len(got)} deliveries"
    (h1, b1), (h2, b2) = got
    assert h1["x-cosmic-delivery-id"] == h2["x-cosmic-delivery-id"] == str(log["id"])
    assert b1 == b2 and h1["x-cosmic-signature"] == h2["x-cosmic-signature"]
    assert json.loads(b1)["job_id"] == job["id"] and log["status"] == "delivered"
