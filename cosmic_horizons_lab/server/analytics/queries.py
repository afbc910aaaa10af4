"""The analytics' questions, asked of the Parquet parts with DuckDB (in a worker thread).

Each call opens an in-memory DuckDB, defines ``jobs``, ``runs`` and ``samples`` as views over the
parts, asks, and closes. ``jobs`` keeps each job's newest row: the first part (an export or a
compaction: one row per job) minus the jobs that later parts carry, plus those later parts'
newest rows, so the de-duplication costs a hash probe over the history and a sort of the news.

Definitions the answers share (the tests compute them again from the store):

- a job belongs to the period (and the ``from_date``/``to_date`` range) of its ``created_at``;
- success rate: completed / (completed + failed), null without either (a cancellation is the
  user's choice, not a failure);
- GPU-hours, SUs and USD: the charges on the jobs (``accounting/costs.py``);
- GPU utilisation: the mean of the job samples (``kind = 'gpu'``) taken in the range;
- runtime: ``completed_at - started_at`` of completed jobs; queue wait: ``started_at -
  created_at`` of jobs that started; failure rate: failed / (completed + failed).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.server.analytics.export import JOBS, RUNS, SAMPLES, Table

#: strftime of a period's first day, as ``jobs/metrics`` names its periods.
PERIOD_FORMAT = {"day": "%Y-%m-%d", "week": "%Y-%m-%d", "month": "%Y-%m"}
#: DuckDB's working memory: the server shares its machine with jobs.
MEMORY_LIMIT = "1GB"


def _files(paths: Sequence[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _empty(table: Table) -> str:
    cols = ", ".join(f"NULL::{t} AS \"{c}\"" for c, t in table.columns)
    return f"SELECT {cols}, NULL::INTEGER AS _seq WHERE false"


def source(table: Table, parts: Sequence[Path]) -> str:
    """A SELECT of the table's current rows over its parts (each id once for jobs and runs)."""
    if not parts:
        return _empty(table)
    if table is SAMPLES or len(parts) == 1:
        return f"SELECT * FROM read_parquet({_files(parts)})"
    base, delta = _files(parts[:1]), _files(parts[1:])
    return (f"SELECT * FROM read_parquet({delta}) QUALIFY row_number() OVER (PARTITION BY id ORDER BY _seq DESC) = 1 "
            f"UNION ALL SELECT * FROM read_parquet({base}) WHERE id NOT IN (SELECT id FROM read_parquet({delta}))")


class Analytics:
    """The three questions; ``parts`` names each table's part files when asked (the export's listing)."""

    def __init__(self, parts: Any, threads: int | None = None) -> None:
        self.parts = parts
        self.threads = threads

    def _connect(self) -> Any:
        import duckdb

        con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, **({"threads": self.threads} if self.threads else {})})
        for table in (JOBS, RUNS, SAMPLES):
            con.execute(f"CREATE VIEW {table.name} AS {source(table, self.parts(table))}")
        return con

    # -- usage/accounts/{user} ------------------------------------------------------------------
    def account(self, user: str, period: str, start: datetime | None, end: datetime | None) -> dict[str, Any]:
        where, params = _range("created_at", start, end)
        con = self._connect()
        try:
            rows = con.execute(
                f"""SELECT strftime(date_trunc('{period}', created_at), '{PERIOD_FORMAT[period]}') AS p, agent,
                           grouping(p) AS gp, grouping(agent) AS ga, {_SUMMARY}
                    FROM jobs WHERE "user" = ? {where}
                    GROUP BY GROUPING SETS ((), (p), (agent)) ORDER BY gp, ga, p, agent""",
                [user, *params],
            ).fetchall()
            swhere, sparams = _range("ts", start, end)
            util = con.execute(
                f"""SELECT strftime(date_trunc('{period}', ts), '{PERIOD_FORMAT[period]}') AS p, grouping(p) AS gp,
                           avg(utilization), count(*)
                    FROM samples WHERE "user" = ? AND kind = 'gpu' {swhere} GROUP BY GROUPING SETS ((), (p))""",
                [user, *sparams],
            ).fetchall()
        finally:
            con.close()
        measured = {(p if not gp else None): (mean, n) for p, gp, mean, n in util}
        totals: dict[str, Any] = _summary(None)
        by_period, by_agent = [], []
        for p, agent, gp, ga, *figures in rows:
            summary = _summary(figures)
            if gp and ga:
                totals = summary
                totals["gpu_utilization"], totals["gpu_utilization_samples"] = _util(measured.get(None))
            elif not gp:
                by_period.append({"period": p, **summary, **dict(zip(
                    ("gpu_utilization", "gpu_utilization_samples"), _util(measured.get(p))))})
            else:
                by_agent.append({"agent": agent, **summary})
        if not rows:
            totals["gpu_utilization"], totals["gpu_utilization_samples"] = _util(measured.get(None))
        return {"totals": totals, "by_period": by_period, "by_agent": by_agent}

    # -- usage/leaderboard ------------------------------------------------------------------------
    def leaderboard(self, by: str, limit: int, start: datetime | None, end: datetime | None) -> list[dict[str, Any]]:
        where, params = _range("created_at", start, end)
        order = {"gpu_hours": "gpu_hours", "su": "su"}[by]
        con = self._connect()
        try:
            rows = con.execute(
                f"""SELECT "user", count(*) AS jobs, coalesce(sum(gpu_hours), 0) AS gpu_hours,
                           coalesce(sum(su_charged), 0) AS su, coalesce(sum(cost_usd), 0) AS cost_usd
                    FROM jobs WHERE true {where} GROUP BY "user" ORDER BY {order} DESC, "user" LIMIT ?""",
                [*params, limit],
            ).fetchall()
        finally:
            con.close()
        return [{"rank": i + 1, "user": u, "jobs": int(n), "gpu_hours": _r(g), "su": _r(s), "cost_usd": _r(c)}
                for i, (u, n, g, s, c) in enumerate(rows)]

    # -- usage/agents ----------------------------------------------------------------------------
    def agents(self, user: str | None, period: str, start: datetime | None, end: datetime | None) -> list[dict[str, Any]]:
        where, params = _range("created_at", start, end)
        if user is not None:
            where += ' AND "user" = ?'
            params.append(user)
        con = self._connect()
        try:
            rows = con.execute(
                f"""WITH j AS (
                        SELECT agent, strftime(date_trunc('{period}', created_at), '{PERIOD_FORMAT[period]}') AS p, status,
                               CASE WHEN status = 'COMPLETED' THEN epoch(completed_at - started_at) END AS runtime,
                               epoch(started_at - created_at) AS wait
                        FROM jobs WHERE true {where})
                    SELECT agent, p, grouping(p) AS gp, count(*),
                           count(*) FILTER (WHERE status = 'COMPLETED'), count(*) FILTER (WHERE status = 'FAILED'),
                           quantile_cont(runtime, [0.5, 0.9]), max(runtime), count(runtime),
                           quantile_cont(wait, [0.5, 0.9]), max(wait), count(wait)
                    FROM j GROUP BY GROUPING SETS ((agent), (agent, p)) ORDER BY agent, gp DESC, p""",
                params,
            ).fetchall()
        finally:
            con.close()
        out: dict[str, dict[str, Any]] = {}
        for agent, p, gp, n, done, failed, rq, rmax, rn, wq, wmax, wn in rows:
            (r50, r90), (w50, w90) = rq or (None, None), wq or (None, None)
            figures = {
                "jobs": int(n), "completed": int(done), "failed": int(failed),
                "failure_rate": _r(failed / (done + failed)) if done + failed else None,
                "runtime_seconds": {"p50": _r(r50), "p90": _r(r90), "max": _r(rmax), "count": int(rn)},
                "queue_wait_seconds": {"p50": _r(w50), "p90": _r(w90), "max": _r(wmax), "count": int(wn)},
            }
            if gp:
                out[agent] = {"agent": agent, **figures, "by_period": []}
            else:
                out[agent]["by_period"].append({"period": p, **figures})
        return list(out.values())


_SUMMARY = """count(*), count(*) FILTER (WHERE status = 'COMPLETED'), count(*) FILTER (WHERE status = 'FAILED'),
              count(*) FILTER (WHERE status = 'CANCELLED'), coalesce(sum(gpu_hours), 0), coalesce(sum(su_charged), 0),
              coalesce(sum(cost_usd), 0)"""


def _summary(figures: Sequence[Any] | None) -> dict[str, Any]:
    n, done, failed, cancelled, gpu_hours, su, cost = figures or (0, 0, 0, 0, 0.0, 0.0, 0.0)
    return {
        "jobs": int(n), "completed": int(done), "failed": int(failed), "cancelled": int(cancelled),
        "success_rate": _r(done / (done + failed)) if done + failed else None,
        "gpu_hours": _r(gpu_hours), "su": _r(su), "cost_usd": _r(cost),
    }


def _util(measured: tuple[float, int] | None) -> tuple[float | None, int]:
    if not measured or not measured[1]:
        return None, 0
    return round(float(measured[0]), 3), int(measured[1])


def _range(column: str, start: datetime | None, end: datetime | None) -> tuple[str, list[Any]]:
    """``AND column >= ? AND column <= ?`` for the bounds given (naive UTC, as the parts hold times)."""
    sql, params = "", []
    if start is not None:
        sql += f" AND {column} >= ?"
        params.append(start.replace(tzinfo=None))
    if end is not None:
        sql += f" AND {column} <= ?"
        params.append(end.replace(tzinfo=None))
    return sql, params


def _r(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)
