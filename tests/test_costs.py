"""Costs and SU budgets: TACC's charging rule, and a budget that concurrent submissions cannot overspend."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from cosmic_horizons_lab.protocol.clock import utcnow
from cosmic_horizons_lab.server.accounting.costs import Budgets, CostModel
from cosmic_horizons_lab.server.store.orm import JobRecord


def test_tacc_rule_nodes_quarter_hour_minimum_and_queue_rates():
    model = CostModel(gpu_hourly_rate=0.35, su_rates={"gpu-a100": 3, "default": 1}, queue="gpu-a100",
                      gpus_per_node=3, single_node=False)
    short = model.estimate(gpu_count=4, wall_hours=0.1)  # 4 GPUs → 2 nodes; 6 min billed as 15
    assert short.nodes == 2 and short.su == pytest.approx(2 * 0.25 * 3)
    assert short.gpu_hours == pytest.approx(0.4) and short.cost_usd == pytest.approx(0.4 * 0.35)
    long = model.estimate(gpu_count=3, wall_hours=2.0)
    assert long.nodes == 1 and long.su == pytest.approx(6.0) and long.cost_usd == pytest.approx(6 * 0.35)
    assert CostModel(su_rates={"default": 1}, queue="other").su_rate == 1.0


def test_budgets_file_overrides_per_user_and_survives_a_bad_edit(tmp_path):
    path = tmp_path / "budgets.json"
    path.write_text(json.dumps({"default": 100, "users": {"alice": 2000, "carol": None}}))
    budgets = Budgets(50.0, path)
    assert budgets.budget_for("alice") == 2000 and budgets.budget_for("bob") == 100
    assert budgets.budget_for("carol") is None  # unlimited
    path.write_text("{not json")
    assert budgets.budget_for("alice") == 2000  # the last good file, never "unlimited by accident"
    assert Budgets(50.0).budget_for("anyone") == 50.0


@pytest.fixture
def lab_config():
    # local backend: 1 node; 1 SU per node-hour; a 1-hour job reserves 1 SU: ten fit in 10 SU.
    return {"su_budget": 10.0, "su_rates": {"local": 1.0}}


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_fifty_concurrent_submissions_against_a_budget_for_ten(api, lab, script):
    lab.orchestrator._backend_retry_at = float("inf")  # hold dispatch: nothing ends and frees budget
    path = script("pass\n")
    body = {"agent": "Script", "params": {"path": path, "max_runtime": "1h"}}
    results = await asyncio.gather(*[api.post("jobs/submit", body) for _ in range(50)])
    codes = sorted(code for code, _, _ in results)
    assert codes == [201] * 10 + [402] * 40
    refusal = next(doc for code, doc, _ in results if code == 402)
    assert refusal["error"] == "budget_exceeded" and refusal["estimated_su"] == 1.0
    assert refusal["remaining_su"] == 0.0 and refusal["budget_su"] == 10.0
    _, page, _ = await api.get("jobs/history/list", params={"page_size": 100})
    assert page["total"] == 10  # refused submissions queued nothing
    # A batch that does not fit is refused whole.
    code, err, _ = await api.post("jobs/submit-batch", {"jobs": [body]})
    assert code == 402
    _, metrics, _ = await api.get("jobs/metrics")
    assert metrics["budget"] == {"budget_su": 10.0, "used_su": 0.0, "reserved_su": 10.0, "remaining_su": 0.0}


async def test_jobs_are_charged_from_their_real_run(api, lab, script):
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script("import time; time.sleep(0.5)\n")}})
    done = await api.wait_for(job["id"])
    async with lab.store.read() as session:
        row = await session.get(JobRecord, job["id"])
    hours = (row.completed_at - row.started_at).total_seconds() / 3600
    assert done["status"] == "COMPLETED" and 0 < hours < 0.01
    assert row.gpu_hours == pytest.approx(hours * row.gpu_count)
    assert row.cost_usd == pytest.approx(row.gpu_hours * 0.35)
    assert row.su_charged == pytest.approx(0.25)  # the quarter-hour minimum, 1 node, 1 SU/node-hour
    _, metrics, _ = await api.get("jobs/metrics")
    assert metrics["budget"]["used_su"] == pytest.approx(0.25) and metrics["su_charged"] == pytest.approx(0.25)
    # A job cancelled before it ran costs nothing.
    lab.orchestrator._backend_retry_at = float("inf")
    _, queued, _ = await api.post("jobs/submit", {"agent": "Script", "params": {"path": script("pass\n", "q.py")}})
    await api.delete(f"jobs/{queued['id']}")
    async with lab.store.read() as session:
        row = await session.get(JobRecord, queued["id"])
    assert (row.gpu_hours, row.cost_usd, row.su_charged) == (0.0, 0.0, 0.0)
    assert utcnow() - row.completed_at < timedelta(minutes=1)
