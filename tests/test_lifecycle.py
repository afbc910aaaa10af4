"""The state machine and the small parsers the API relies on."""

from __future__ import annotations

import pytest

from cosmic_horizons_lab.protocol.durations import format_slurm_time, parse_duration
from cosmic_horizons_lab.protocol.states import Status, can_transition, is_terminal


@pytest.mark.parametrize("src,dst,ok", [
    ("QUEUED", "QUEUING", True), ("QUEUING", "RUNNING", True), ("RUNNING", "COMPLETED", True),
    ("QUEUED", "CANCELLED", True), ("QUEUING", "COMPLETED", True), ("RUNNING", "QUEUED", True),
    ("RUNNING", "QUEUING", True),  # requeued by the backend
    ("QUEUED", "COMPLETED", False), ("COMPLETED", "RUNNING", False), ("FAILED", "QUEUED", False),
    ("CANCELLED", "COMPLETED", False), ("COMPLETED", "FAILED", False),
])
def test_transitions(src, dst, ok):
    assert can_transition(src, dst) is ok


def test_terminal_states_never_change():
    for terminal in ("COMPLETED", "FAILED", "CANCELLED"):
        assert is_terminal(terminal)
        assert not any(can_transition(terminal, s) for s in Status)


@pytest.mark.parametrize("text,seconds", [
    ("04:00:00", 14400), ("1-02:00:00", 93600), ("48h", 172800), ("90m", 5400), ("30s", 30), ("1.5h", 5400), ("2d", 172800),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["4 hours", "25:99:00", "", "0s", "-1h", "12", "h"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_slurm_time_rounds_up_to_minutes():
    assert format_slurm_time(61) == "00:02:00"
    assert format_slurm_time(14400) == "04:00:00"
    assert format_slurm_time(93600) == "1-02:00:00"
