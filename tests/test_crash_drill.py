"""Exactly once through kill -9: a real server killed again and again while it runs 200 jobs.

On SQLite and on PostgreSQL, at least five SIGKILLs, half of them inside the launch window
(the job's process started, its start not yet recorded). Every job must end exactly once
(one terminal state, one terminal event), run exactly once (its id once in the file the jobs
append to, which nobody but the jobs writes), and a WebSocket client that reconnects after
each kill from its last event id must get every event once.
"""

from __future__ import annotations

import pytest

from .crash_drill import run_drill


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_no_job_is_lost_or_run_twice_through_kill_9(tmp_path, db_url):
    store = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    seed = 20261130 if store == "sqlite" else 20261201
    result = run_drill(tmp_path / "root", db_url=db_url, store=store, jobs=200, kills=5, seed=seed)
    assert result.jobs == 200 and result.kills >= 5 and result.kills_in_window >= 2
    assert result.statuses["COMPLETED"] == 200, result.statuses
    assert result.lost == 0
    twice = {j: n for j, n in result.runs_per_job.items() if n != 1}
    assert not twice, f"jobs that did not run exactly once: {twice}"
    assert set(result.terminal_events_per_job.values()) == {1}, result.terminal_events_per_job
    assert result.reconnects >= result.kills
    assert result.stream_duplicates == 0 and result.stream_missed == 0 and result.stream_out_of_order == 0
