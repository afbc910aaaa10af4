"""Metrics and optimisation tips against a seeded history whose answers are known."""

from __future__ import annotations

import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cosmic_horizons_lab.server.store.orm import GpuSample, JobRecord

DEMO = Path(__file__).resolve().parent.parent / "cosmic_horizons_lab" / "data" / "day2_TDEM0003_10s_norx_1src_1spw.uvfits"
DEMO_ID = "VLA.TDEM0003.1src"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)  # a Monday


def _job(status: str, day: int, start_min: float | None, minutes: float | None, agent: str = "AlphaCal") -> JobRecord:
    created = T0 + timedelta(days=day)
    started = created + timedelta(minutes=start_min) if start_min is not None else None
    ended = started + timedelta(minutes=minutes) if started is not None and minutes is not None else created + timedelta(minutes=1)
    return JobRecord(
        id=uuid.uuid4().hex, user="astro", agent=agent, dataset_id=DEMO_ID, status=status, progress=1.0, priority=5,
        params={"rfi_strategy": "medium"}, metrics={}, correlation_id="seed", depends_on=[], backend="local",
        server_id="seed", gpu_count=1, retries=0, attempts=1, created_at=created, updated_at=ended,
        started_at=started, completed_at=ended,
    )


@pytest.fixture
def history(lab, datasets_dir, jp_asyncio_loop):
    shutil.copy(DEMO, datasets_dir / f"{DEMO_ID}.uvfits")
    jobs = [
        _job("COMPLETED", 0, 1, 10),
        _job("COMPLETED", 0, 30, 20),
        _job("COMPLETED", 1, 1, 30),
        _job("FAILED", 1, 40, 5),
        _job("CANCELLED", 1, None, None),
    ]
    a, b = jobs[0], jobs[1]
    samples = [(a.started_at + timedelta(minutes=2), 40.0), (a.started_at + timedelta(minutes=8), 60.0),
               (b.started_at + timedelta(minutes=5), 80.0), (T0 + timedelta(days=5), 0.0)]  # the last: no job ran

    async def seed() -> None:
        async with lab.store.write() as tx:
            tx.session.add_all(jobs)
            tx.session.add_all(GpuSample(ts=ts, gpu_index=0, gpu_uuid="GPU-0", utilization=u, memory_used_mb=1,
                                         memory_total_mb=80_000) for ts, u in samples)

    jp_asyncio_loop.run_until_complete(seed())
    return jobs


async def test_metrics_from_a_seeded_history(api, history):
    code, m, _ = await api.get("jobs/metrics")
    assert code == 200
    assert (m["total_jobs"], m["completed"], m["failed"], m["cancelled"]) == (5, 3, 1, 1)
    assert m["success_rate"] == pytest.approx(0.75)  # cancellations are not failures
    assert m["average_runtime_minutes"] == pytest.approx(20.0)
    assert m["gpu_hours"] == pytest.approx(65 / 60)  # the failed job used its GPU too
    assert m["cost_usd"] == pytest.approx(65 / 60 * 0.35)
    assert m["su_charged"] == pytest.approx(0.25 + 20 / 60 + 0.5 + 0.25)  # quarter-hour minimum
    assert m["gpu_utilization"] == pytest.approx(60.0) and m["gpu_utilization_samples"] == 3
    day0, day1 = m["by_period"]
    assert (day0["period"], day0["completed"], day0["gpu_utilization"]) == ("2026-03-02", 2, pytest.approx(60.0))
    assert (day1["period"], day1["success_rate"], day1["gpu_utilization"]) == ("2026-03-03", 0.5, None)
    assert set(m["by_agent"]) == {"AlphaCal"}
    _, weekly, _ = await api.get("jobs/metrics", params={"period": "week"})
    assert [p["period"] for p in weekly["by_period"]] == ["2026-03-02"]
    _, ranged, _ = await api.get("jobs/metrics", params={"from_date": "2026-03-03T00:00:00Z"})
    assert ranged["total_jobs"] == 3
    code, err, _ = await api.get("jobs/metrics", params={"period": "year"})
    assert code == 400 and err["field"] == "period"
    _, bob, _ = await api.get("jobs/metrics", user="bob")
    assert bob["total_jobs"] == 0 and bob["success_rate"] is None and bob["gpu_utilization"] is None


async def test_tips_from_history_validation_and_rates(api, history):
    body = {"agent": "AlphaCal", "dataset_id": DEMO_ID,
            "params": {"rfi_strategy": "high_sensitivity", "gpu_count": 2, "max_runtime": "5m"}}
    code, t, _ = await api.post("jobs/optimize", body)
    assert code == 200
    assert t["estimated_runtime_minutes"] == pytest.approx(20.0) and t["runtime_range_minutes"] == [10.0, 30.0]
    assert t["estimated_cost_usd"] == pytest.approx(2 * 20 / 60 * 0.35, abs=1e-4)
    assert t["estimated_su"] == pytest.approx(20 / 60, abs=1e-4)
    by_field = {}
    for tip in t["tips"]:
        assert tip["reasoning"] and tip["severity"] in ("info", "warning", "error")
        by_field.setdefault(tip["field"], []).append(tip)
    warnings = [tip["message"] for tip in by_field["params.max_runtime"] if tip["severity"] == "warning"]
    assert warnings and "5 min" in warnings[0]
    assert any("visibilities" in tip["message"] and tip["severity"] == "warning" for tip in by_field["params.gpu_count"])
    # Nothing about rfi_strategy unless the data say so, and nothing claimed without history.
    _, fresh, _ = await api.post("jobs/optimize", {"agent": "AlphaCal", "dataset_id": DEMO_ID}, user="bob")
    assert fresh["estimated_runtime_minutes"] is None and fresh["estimated_cost_usd"] is None
    assert not [tip for tip in fresh["tips"] if tip["field"] == "params.max_runtime"]
    code, err, _ = await api.post("jobs/optimize", {"agent": "AlphaCal", "dataset_id": DEMO_ID, "turbo": True})
    assert code == 400 and err["field"] == "turbo"
