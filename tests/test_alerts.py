"""Alerts against a real server: each rule fires once per episode, as an ``alert.<rule>`` event on
the user's WebSocket stream and a signed webhook to a real HTTP receiver on 127.0.0.1, and clears
when its condition no longer holds (then it can fire again)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from cosmic_horizons_lab.protocol.clock import utcnow
from cosmic_horizons_lab.server.store.orm import Alert, JobRecord, JobSample
from cosmic_horizons_lab.server.webhooks import sign

from .test_event_stream import _read_events
from .test_webhooks import Receiver

OFF = {"failure_rate": None, "queue_wait": None, "budget": None, "gpu_idle": None}


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def lab_config(receiver, request):
    rules = getattr(request, "param", {})
    return {"alert_rules": {**OFF, **rules}, "alert_webhook_url": receiver.url, "alert_interval": 60,
            "webhook_backoff_seconds": 0.2, "su_budget": 10.0}


async def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _alerts(lab, rule: str) -> list[Alert]:
    async with lab.store.read() as session:
        return list((await session.scalars(sa.select(Alert).where(Alert.rule == rule).order_by(Alert.id))).all())


async def _assert_signed(api, receiver, user: str, event: str) -> dict:
    """The receiver's one delivery of ``event``, its signature checked with ``user``'s secret."""
    hits = [(h, raw) for h, raw in receiver.received if h["x-cosmic-event"] == event]
    assert len(hits) == 1, [h["x-cosmic-event"] for h, _ in receiver.received]
    headers, raw = hits[0]
    _, secret, _ = await api.get("webhooks/secret", user=user)
    assert headers["x-cosmic-signature"] == sign(secret["secret"], raw)
    return json.loads(raw)


def _job(user: str, status: str, **kw) -> JobRecord:
    now = utcnow()
    fields = {"id": uuid.uuid4().hex, "user": user, "agent": "Script", "status": status, "priority": 5, "params": {},
              "metrics": {}, "correlation_id": "c", "backend": "local", "server_id": "elsewhere", "gpu_count": 1,
              "created_at": now, "updated_at": now, "attempts": 1}
    return JobRecord(**{**fields, **kw})


@pytest.mark.parametrize("lab_config", [{"failure_rate": {"min_jobs": 3, "threshold": 0.5}}], indirect=True)
async def test_failure_rate_fires_on_the_transitions_once_per_episode(api, lab, jp_ws_fetch, script, receiver):
    ws = await jp_ws_fetch("cosmic-horizons", "api", "events", params={"after": 0})
    path = script("raise SystemExit(3)\n", "fail.py")
    for _ in range(3):  # real jobs that fail: their transitions trigger the evaluation (no tick for 60 s)
        code, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}})
        assert code == 201
        await api.wait_for(job["id"])
    events = await _read_events(ws, lambda ev: any(e["type"] == "alert.failure_rate" for e in ev))
    alert = next(e for e in events if e["type"] == "alert.failure_rate")
    assert alert["user"] == "astro" and alert["payload"]["failed"] == 3 and alert["payload"]["failure_rate"] == 1.0
    await _wait(lambda: receiver.received)
    body = await _assert_signed(api, receiver, "astro", "alert.failure_rate")
    assert body["alert"]["alert_id"] == alert["payload"]["alert_id"]

    # still failing: the episode goes on, nothing fires again
    assert await lab.alerts.evaluate() == []
    assert len(await _alerts(lab, "failure_rate")) == 1
    # two hours on, the window holds no job: the episode ends ...
    now = utcnow()
    lab.alerts.clock = lambda: now + timedelta(hours=2)
    await lab.alerts.evaluate()
    [row] = await _alerts(lab, "failure_rate")
    assert row.resolved_at is not None
    events = await _read_events(ws, lambda ev: any(e["type"] == "alert.resolved" for e in ev))
    # ... and back in it, a new episode fires once more
    lab.alerts.clock = utcnow
    opened = await lab.alerts.evaluate()
    assert [a["rule"] for a in opened] == ["failure_rate"]
    assert [r.resolved_at is None for r in await _alerts(lab, "failure_rate")] == [False, True]
    await _wait(lambda: len(receiver.received) == 2)


@pytest.mark.parametrize("lab_config", [{"queue_wait": {"minutes": 30}}], indirect=True)
async def test_a_job_queued_too_long_fires_and_clears_when_it_leaves_the_queue(api, lab, script, receiver):
    lab.orchestrator._backend_retry_at = float("inf")  # hold dispatch: the job stays QUEUED
    code, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script("print(1)\n")}})
    assert code == 201
    assert await lab.alerts.evaluate() == []  # not waited long yet
    now = utcnow()
    lab.alerts.clock = lambda: now + timedelta(minutes=31)
    [opened] = await lab.alerts.evaluate()
    assert opened["job_id"] == job["id"] and opened["waited_minutes"] > 30
    assert await lab.alerts.evaluate() == []
    code, replay, _ = await api.get(f"jobs/{job['id']}/events")
    assert [e["type"] for e in replay["events"]].count("alert.queue_wait") == 1
    await _wait(lambda: receiver.received)
    assert (await _assert_signed(api, receiver, "astro", "alert.queue_wait"))["alert"]["job_id"] == job["id"]

    await api.delete(f"jobs/{job['id']}")
    await lab.alerts.evaluate()
    [row] = await _alerts(lab, "queue_wait")
    assert row.resolved_at is not None


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("lab_config", [{"budget": {}}], indirect=True)
async def test_budget_fires_at_80_and_at_100_percent(api, lab, jp_ws_fetch, receiver):
    ws = await jp_ws_fetch("cosmic-horizons", "api", "events", params={"after": 0}, headers={"X-Test-User": "bob"})
    async with lab.store.write() as tx:  # bob's budget is 10 SU (su_budget): 8.5 charged
        tx.session.add_all([_job("bob", "COMPLETED", su_charged=4.25) for _ in range(2)] + [_job("astro", "COMPLETED", su_charged=1.0)])
    opened = await lab.alerts.evaluate()
    assert [(a["rule"], a["user"]) for a in opened] == [("budget_80", "bob")]
    assert opened[0]["used_su"] == pytest.approx(8.5) and opened[0]["budget_su"] == 10.0
    async with lab.store.write() as tx:
        tx.session.add(_job("bob", "FAILED", su_charged=1.5))
    opened = await lab.alerts.evaluate()
    assert [(a["rule"], a["user"]) for a in opened] == [("budget_100", "bob")]  # budget_80 stays open, once
    assert await lab.alerts.evaluate() == []
    events = await _read_events(ws, lambda ev: sum(e["type"].startswith("alert.budget") for e in ev) >= 2)
    assert [e["type"] for e in events if e["type"].startswith("alert.")] == ["alert.budget_80", "alert.budget_100"]
    await _wait(lambda: len(receiver.received) >= 2)
    await _assert_signed(api, receiver, "bob", "alert.budget_80")
    await _assert_signed(api, receiver, "bob", "alert.budget_100")

    lab.accounting.budgets.default = 100.0  # the operator raises the budget: both clear
    await lab.alerts.evaluate()
    assert all(r.resolved_at is not None for r in await _alerts(lab, "budget_80") + await _alerts(lab, "budget_100"))


@pytest.mark.parametrize("lab_config", [{"gpu_idle": {"minutes": 1, "utilization": 5.0}}], indirect=True)
async def test_a_running_job_whose_gpus_sit_idle_fires(api, lab, script, receiver):
    path = script("import time\ntime.sleep(60)\n", "sleep.py")
    code, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": path}})
    assert code == 201
    await api.wait_for(job["id"], {"RUNNING"})
    later = utcnow() + timedelta(minutes=2)  # the job has run 2 minutes by this clock
    lab.alerts.clock = lambda: later

    async def sample(utilization: float, seconds_before: float) -> None:
        async with lab.store.write() as tx:
            tx.session.add(JobSample(job_id=job["id"], user="astro", host="node1", ts=later - timedelta(seconds=seconds_before),
                                     kind="gpu", gpu_uuid="GPU-0", gpu_index=0, utilization=utilization,
                                     memory_bytes=1 << 30, memory_total_bytes=1 << 34))

    await sample(80.0, 90)  # busy, but before the window
    await sample(1.0, 50)
    await sample(2.0, 10)
    [opened] = await lab.alerts.evaluate()
    assert opened["rule"] == "gpu_idle" and opened["job_id"] == job["id"] and opened["max_utilization"] == 2.0
    assert await lab.alerts.evaluate() == []
    code, replay, _ = await api.get(f"jobs/{job['id']}/events")
    assert [e["type"] for e in replay["events"]].count("alert.gpu_idle") == 1
    await _wait(lambda: receiver.received)
    await _assert_signed(api, receiver, "astro", "alert.gpu_idle")

    await sample(60.0, 5)  # busy again: the episode ends
    await lab.alerts.evaluate()
    [row] = await _alerts(lab, "gpu_idle")
    assert row.resolved_at is not None
    await api.delete(f"jobs/{job['id']}")


def test_rules_are_merged_over_the_defaults_and_unknown_ones_refused():
    from cosmic_horizons_lab.server.alerts import DEFAULT_RULES, rules_from_settings

    rules = rules_from_settings({"queue_wait": {"minutes": 5}, "gpu_idle": None})
    assert rules["queue_wait"] == {"minutes": 5} and "gpu_idle" not in rules
    assert rules["failure_rate"] == DEFAULT_RULES["failure_rate"]
    with pytest.raises(ValueError, match="unknown alert rules"):
        rules_from_settings({"disk_full": {}})
