"""The usage analytics (DuckDB over the Parquet export) against a real server, on a generated history.

Every figure the endpoints give is computed again here, in Python over the rows the store holds
(read through SQLAlchemy, not through the export or DuckDB): counts, success and failure rates,
charges, measured utilisation, and the runtime and queue-wait percentiles (linear interpolation,
as ``statistics.quantiles(method="inclusive")`` does it).
"""

from __future__ import annotations

import random
import statistics
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
import sqlalchemy as sa

from cosmic_horizons_lab.server.analytics.export import JOBS
from cosmic_horizons_lab.server.store.orm import JobRecord, JobSample, Run

USERS = ("astro", "bob", "carol")
AGENTS = ("AlphaCal", "ImageReconstruction", "Script")
STATUSES = ("COMPLETED",) * 6 + ("FAILED",) * 2 + ("CANCELLED", "RUNNING")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def lab_config():
    return {"analytics_freshness": 0, "operators": ["root"]}


async def make_history(lab, n_jobs: int = 400, seed: int = 7) -> None:
    """Jobs of three users over ~10 weeks (another server's, so this one's loop leaves them alone),
    charged by the server's own cost model, with runs and GPU/CPU samples."""
    rng = random.Random(seed)
    jobs, runs, samples = [], [], []
    for _ in range(n_jobs):
        created = NOW - timedelta(minutes=rng.randrange(0, 70 * 24 * 60))
        status = rng.choice(STATUSES)
        started = created + timedelta(seconds=rng.randrange(1, 3600)) if status != "CANCELLED" or rng.random() < .5 else None
        ended = started + timedelta(seconds=rng.randrange(10, 8 * 3600)) if started and status != "RUNNING" else None
        if status == "CANCELLED" and started and not ended:
            ended = started + timedelta(seconds=5)
        started, ended = (min(t, NOW) if t else None for t in (started, ended))  # the history is all past
        job = JobRecord(
            id=uuid.UUID(int=rng.getrandbits(128)).hex, user=rng.choice(USERS), agent=rng.choice(AGENTS),
            status=status, priority=5, params={}, metrics={}, correlation_id="c", backend="local",
            server_id="elsewhere", gpu_count=rng.choice((1, 1, 2, 4)), created_at=created,
            updated_at=ended or started or created, started_at=started, completed_at=ended, attempts=1,
        )
        if status in ("COMPLETED", "FAILED", "CANCELLED"):
            lab.costs.charge(job)
        jobs.append(job)
        runs.append(Run(job_id=job.id, attempt=1, backend="local", status=status, submitted_at=created,
                        started_at=started, ended_at=ended))
        if started:
            for k in range(rng.randrange(0, 4)):
                samples.append(JobSample(
                    job_id=job.id, user=job.user, host="node1", ts=started + timedelta(seconds=30 * k),
                    kind=rng.choice(("gpu", "gpu", "cpu")), gpu_uuid="GPU-1", gpu_index=0,
                    utilization=rng.uniform(0, 100), memory_bytes=rng.randrange(1, 2**34),
                    memory_total_bytes=2**35, power_watts=200.0, temperature_c=50.0))
    async with lab.store.write() as tx:
        tx.session.add_all(jobs)
        await tx.session.flush()
        tx.session.add_all(runs + samples)


async def rows(lab) -> tuple[list[JobRecord], list[JobSample]]:
    async with lab.store.read() as session:
        jobs = list((await session.scalars(sa.select(JobRecord))).all())
        samples = list((await session.scalars(sa.select(JobSample))).all())
    return jobs, samples


def period_of(when: datetime, period: str) -> str:
    if period == "day":
        return when.date().isoformat()
    if period == "week":
        return (when.date() - timedelta(days=when.weekday())).isoformat()
    return f"{when.year:04d}-{when.month:02d}"


def summary(jobs: list[JobRecord]) -> dict:
    done = sum(j.status == "COMPLETED" for j in jobs)
    failed = sum(j.status == "FAILED" for j in jobs)
    return {
        "jobs": len(jobs), "completed": done, "failed": failed, "cancelled": sum(j.status == "CANCELLED" for j in jobs),
        "success_rate": done / (done + failed) if done + failed else None,
        "gpu_hours": sum(j.gpu_hours or 0 for j in jobs), "su": sum(j.su_charged or 0 for j in jobs),
        "cost_usd": sum(j.cost_usd or 0 for j in jobs),
    }


def assert_close(got: dict, want: dict) -> None:
    for key, value in want.items():
        if value is None or isinstance(value, int):
            assert got[key] == value, (key, got[key], value)
        else:
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-5), (key, got[key], value)


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[int(q * 10) - 1] if q != .5 else statistics.median(values)


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("period", ["week", "month"])
async def test_an_account_matches_the_store(api, lab, period):
    await make_history(lab)
    jobs, samples = await rows(lab)
    start, end = NOW - timedelta(days=50), NOW - timedelta(days=3)
    code, body, _ = await api.get("usage/accounts/astro", params={
        "period": period, "from_date": start.isoformat(), "to_date": end.isoformat()})
    assert code == 200, body
    mine = [j for j in jobs if j.user == "astro" and start <= j.created_at <= end]
    assert mine and body["user"] == "astro" and body["period"] == period
    assert_close(body["totals"], summary(mine))
    gpu = [s.utilization for s in samples if s.user == "astro" and s.kind == "gpu" and start <= s.ts <= end]
    assert body["totals"]["gpu_utilization_samples"] == len(gpu)
    assert body["totals"]["gpu_utilization"] == pytest.approx(statistics.fmean(gpu), abs=1e-3)

    by_period = defaultdict(list)
    for j in mine:
        by_period[period_of(j.created_at, period)].append(j)
    assert [p["period"] for p in body["by_period"]] == sorted(by_period)
    for item in body["by_period"]:
        assert_close(item, summary(by_period[item["period"]]))
    by_agent = defaultdict(list)
    for j in mine:
        by_agent[j.agent].append(j)
    assert [a["agent"] for a in body["by_agent"]] == sorted(by_agent)
    for item in body["by_agent"]:
        assert_close(item, summary(by_agent[item["agent"]]))


async def test_agents_runtime_distribution_queue_wait_and_failure_rate(api, lab):
    await make_history(lab)
    jobs, _ = await rows(lab)
    for who, scope in (("astro", "own"), ("root", "all")):
        code, body, _ = await api.get("usage/agents", params={"period": "month"}, user=who)
        assert code == 200, body
        assert body["scope"] == scope
        seen = [j for j in jobs if scope == "all" or j.user == who]
        assert [a["agent"] for a in body["agents"]] == sorted({j.agent for j in seen})
        for item in body["agents"]:
            js = [j for j in seen if j.agent == item["agent"]]
            for figures, group in [(item, js)] + [(p, [j for j in js if period_of(j.created_at, "month") == p["period"]])
                                                  for p in item["by_period"]]:
                done = sum(j.status == "COMPLETED" for j in group)
                failed = sum(j.status == "FAILED" for j in group)
                assert (figures["jobs"], figures["completed"], figures["failed"]) == (len(group), done, failed)
                assert figures["failure_rate"] == (pytest.approx(failed / (done + failed), abs=1e-6) if done + failed else None)
                runtime = [(j.completed_at - j.started_at).total_seconds() for j in group if j.status == "COMPLETED"]
                wait = [(j.started_at - j.created_at).total_seconds() for j in group if j.started_at]
                for got, values in ((figures["runtime_seconds"], runtime), (figures["queue_wait_seconds"], wait)):
                    assert got["count"] == len(values)
                    assert got["max"] == (pytest.approx(max(values), abs=1e-5) if values else None)
                    assert got["p50"] == (pytest.approx(quantile(values, .5), abs=1e-3) if values else None)
                    assert got["p90"] == (pytest.approx(quantile(values, .9), abs=1e-3) if values else None)


async def test_users_see_only_their_own_and_operators_everything(api, lab):
    await make_history(lab, n_jobs=120)
    jobs, _ = await rows(lab)
    code, body, _ = await api.get("usage/accounts/astro", user="bob")
    assert code == 403 and body["error"] == "forbidden", body
    code, body, _ = await api.get("usage/accounts/astro", user="root")
    assert code == 200 and body["totals"]["jobs"] == sum(j.user == "astro" for j in jobs)
    code, body, _ = await api.get("usage/accounts/bob", user="bob")
    assert code == 200 and body["totals"]["jobs"] == sum(j.user == "bob" for j in jobs)

    code, body, _ = await api.get("usage/leaderboard", user="astro")
    assert code == 403, body
    start = NOW - timedelta(days=40)
    for by, column in (("gpu_hours", "gpu_hours"), ("su", "su_charged")):
        code, body, _ = await api.get("usage/leaderboard", user="root", params={
            "by": by, "limit": "2", "from_date": start.isoformat(), "to_date": NOW.isoformat()})
        assert code == 200, body
        totals = defaultdict(float)
        for j in jobs:
            if start <= j.created_at <= NOW:
                totals[j.user] += getattr(j, column) or 0
        want = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
        assert [(i["rank"], i["user"]) for i in body["items"]] == [(1, want[0][0]), (2, want[1][0])]
        assert [i["gpu_hours" if by == "gpu_hours" else "su"] for i in body["items"]] == pytest.approx([v for _, v in want])


@pytest.mark.parametrize("lab_config", [{"analytics_freshness": 0, "operators_by_authorizer": True}])
async def test_an_authorizer_can_name_the_operators(api, lab, jp_serverapp):
    """With ``operators_by_authorizer``, whoever the authorizer allows ``admin`` on the usage resource
    is an operator (here carol); the authorizer still decides every other request as before."""
    from cosmic_horizons_lab.server.handlers.usage import OPERATOR_RESOURCE

    authorizer = jp_serverapp.web_app.settings["authorizer"]
    allow = authorizer.is_authorized

    def is_authorized(handler, user, action, resource):
        if (action, resource) == ("admin", OPERATOR_RESOURCE):
            return user.username == "carol"
        return allow(handler, user, action, resource)

    authorizer.is_authorized = is_authorized
    await make_history(lab, n_jobs=60)
    assert (await api.get("usage/accounts/astro", user="carol"))[0] == 200
    assert (await api.get("usage/leaderboard", user="carol"))[0] == 200
    assert (await api.get("usage/accounts/astro", user="bob"))[0] == 403
    code, body, _ = await api.get("usage/agents", user="bob")
    assert code == 200 and body["scope"] == "own" and body["operator"] is False


@pytest.mark.parametrize("lab_config", [{"analytics_freshness": 0, "leaderboard_public": True}])
async def test_a_public_leaderboard_is_open_to_every_user(api, lab):
    await make_history(lab, n_jobs=50)
    code, body, _ = await api.get("usage/leaderboard", user="bob", params={"period": "month"})
    assert code == 200 and body["by"] == "gpu_hours" and body["items"], body


@pytest.mark.parametrize("query, field", [
    ({"period": "year"}, "period"), ({"from_date": "yesterday"}, "from_date"), ({"to_date": "2026-13-01"}, "to_date"),
    ({"from_date": "2026-02-01", "to_date": "2026-01-01"}, "from_date"),
])
async def test_a_bad_query_is_refused_naming_its_field(api, query, field):
    for path in ("usage/accounts/astro", "usage/agents"):
        code, body, _ = await api.get(path, params=query)
        assert code == 400 and body["field"] == field, body
    for bad, name in (({"by": "cost"}, "by"), ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit")):
        code, body, _ = await api.get("usage/leaderboard", params=bad, user="root")
        assert code == 400 and body["field"] == name, body


def _part_rows(path) -> list[tuple]:
    con = duckdb.connect()
    try:
        return con.execute(f"SELECT id FROM read_parquet('{path}') ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
async def test_the_export_writes_only_what_is_new_or_changed(api, lab):
    await lab.analytics.stop()  # no background export: this test counts what each export writes
    await make_history(lab, n_jobs=200)
    export = lab.analytics.export
    first = await export.export()
    jobs, samples = await rows(lab)
    assert (first["jobs"], first["samples"]) == (len(jobs), len(samples))
    assert (await export.export())["jobs"] == 0 and len(export.parts("jobs")) == 1  # nothing new: no part

    # three new jobs with two samples, and one old job that ends now
    base = NOW + timedelta(hours=1)
    async with lab.store.write() as tx:
        for k in range(3):
            tx.session.add(JobRecord(
                id=f"new{k}", user="astro", agent="Script", status="COMPLETED", priority=5, params={}, metrics={},
                correlation_id="c", backend="local", server_id="elsewhere", gpu_count=1, created_at=base,
                updated_at=base, started_at=base, completed_at=base + timedelta(hours=1), attempts=1,
                gpu_hours=1.0, cost_usd=0.35, su_charged=1.0))
        for k in range(2):
            tx.session.add(JobSample(job_id="new0", user="astro", host="h", ts=base, kind="gpu", utilization=50.0,
                                     memory_bytes=1))
        running = (await tx.session.scalars(sa.select(JobRecord).where(JobRecord.status == "RUNNING",
                                                                       JobRecord.user == "astro"))).first()
        running.status, running.completed_at, running.updated_at = "FAILED", base, base
    second = await export.export()
    assert (second["jobs"], second["samples"]) == (4, 2)
    newest = export.parts("jobs")[-1]
    assert sorted(r[0] for r in _part_rows(newest)) == sorted(["new0", "new1", "new2", running.id])
    assert len(_part_rows(export.parts("samples")[-1])) == 2

    # the readers keep the changed job's newest row: the failure counts once
    jobs, _ = await rows(lab)
    code, body, _ = await api.get("usage/accounts/astro")
    assert code == 200
    assert_close(body["totals"], summary([j for j in jobs if j.user == "astro"]))

    # compaction folds the parts and changes no answer: first the news (two parts into one, the
    # base kept), then everything
    async with lab.store.write() as tx:
        job = await tx.session.get(JobRecord, "new1")
        job.status, job.updated_at = "FAILED", base + timedelta(hours=2)
    assert (await export.export())["jobs"] == 1 and len(export.parts("jobs")) == 3
    jobs, _ = await rows(lab)
    code, body, _ = await api.get("usage/accounts/astro")
    assert_close(body["totals"], summary([j for j in jobs if j.user == "astro"]))
    assert await export.compact(JOBS, whole=False) == 4 and len(export.parts("jobs")) == 2
    code, again, _ = await api.get("usage/accounts/astro")
    assert again["totals"] == body["totals"]
    assert await export.compact(JOBS, whole=True) == len(jobs) and len(export.parts("jobs")) == 1
    code, again, _ = await api.get("usage/accounts/astro")
    assert again["totals"] == body["totals"]


def test_the_usage_widget_charts_what_a_real_server_answers(tmp_path):
    """``lab.usage()`` against a real server process: two real jobs, one that fails; the widget's
    traitlets (what its view draws) hold the account's and the agents' figures, and a period switch
    from the view asks again."""
    from cosmic_horizons_lab.notebook.lab import Lab

    from .services import LabServer, kill_job_groups, write_script

    root = tmp_path / "root"
    root.mkdir()
    write_script(root, "ok.py", "print('ok')\n")
    write_script(root, "bad.py", "raise SystemExit(2)\n")
    server = LabServer(root, config={"analytics_freshness": 0}).start()
    try:
        lab = Lab(url=server.url, token=server.token)
        jobs = [lab.submit("Script", params={"path": path}) for path in ("ok.py", "bad.py")]
        assert sorted(j.wait(60, progress=False, check=False).status for j in jobs) == ["COMPLETED", "FAILED"]
        widget = lab.usage("day")
        assert widget.error == "", widget.error
        totals = widget.account["totals"]
        assert (totals["jobs"], totals["completed"], totals["failed"], totals["success_rate"]) == (2, 1, 1, 0.5)
        assert [p["jobs"] for p in widget.account["by_period"]] == [2]
        [script] = widget.agents["agents"]
        assert script["agent"] == "Script" and script["failure_rate"] == 0.5
        assert script["runtime_seconds"]["count"] == 1 and script["runtime_seconds"]["p50"] > 0
        assert widget.leaderboard == {}  # not an operator
        widget._on_msg(widget, {"action": "period", "period": "month"}, [])
        assert widget.period == "month" and widget.account["period"] == "month"
        assert "2 jobs" in repr(widget)
        # a reopened notebook shows the charts in words where the kernel is gone (panels/restore.ts)
        data, _ = widget._repr_mimebundle_()
        panel = data["application/vnd.cosmic-horizons.panel+json"]
        assert panel["model_id"] == widget.model_id and "2 jobs" in panel["lines"][0]
        assert "50 % succeeded" in panel["lines"][0] and "2 jobs" in data["text/html"]
    finally:
        server.stop()
        kill_job_groups(root / "jobs")
