"""Wall-clock limits as users write them: ``HH:MM:SS`` (Slurm's form) or ``48h``/``90m``."""

from __future__ import annotations

import re
from typing import Any

#: The longest limit a job may ask for: a year, far beyond any queue's, and small enough for
#: every store's 32-bit integer column and for float arithmetic on it.
MAX_SECONDS = 366 * 86400
# ASCII only (``[0-9]``, spaces and tabs, not ``\d`` or ``\s``): "١h" or "10\u00a0h" would read
# as durations in Unicode's sense but as nothing in Slurm's or a user's. Every count is bounded,
# so no text of more than a few dozen characters is a duration.
_CLOCK_FORM = r"[ \t]{0,8}(?:([0-9]{1,3})-)?([0-9]{1,3}):([0-5][0-9]):([0-5][0-9])[ \t]{0,8}"
_UNIT_FORM = r"[ \t]{0,8}([0-9]{1,9}(?:\.[0-9]{1,9})?)[ \t]{0,8}([dhmsDHMS])[ \t]{0,8}"
_CLOCK = re.compile(_CLOCK_FORM, re.ASCII)
_UNIT = re.compile(_UNIT_FORM, re.ASCII)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}

#: What a duration looks like, as JSON Schema: the request schemas state it, and it is the very
#: pattern the parser matches (its groups dropped).
DURATION_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": "^(?:" + re.sub(r"\((?!\?)", "(?:", _CLOCK_FORM) + "|" + re.sub(r"\((?!\?)", "(?:", _UNIT_FORM) + ")$",
    "description": "Wall-clock limit: HH:MM:SS, D-HH:MM:SS, or a number with a unit (48h, 90m, 30s); "
                   f"ASCII digits, more than zero and at most {MAX_SECONDS // 86400} days.",
    "examples": ["04:00:00", "48h", "90m"],
}


def parse_duration(text: str) -> int:
    """Seconds in ``text``; raises ValueError naming the accepted forms.

    Accepted: ``HH:MM:SS``, ``D-HH:MM:SS`` (as sbatch takes them) and a number
    with one unit, ``d``, ``h``, ``m`` or ``s`` (``48h``, ``90m``, ``1.5h``), in ASCII digits,
    from one second to :data:`MAX_SECONDS`.
    """
    if not isinstance(text, str):
        raise TypeError(f"a duration is a string such as \"04:00:00\" or \"48h\", not {type(text).__name__}")
    shown = repr(text) if len(text) <= 40 else repr(text[:40]) + "…"
    match = _CLOCK.fullmatch(text)
    if match:
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    else:
        match = _UNIT.fullmatch(text)
        if not match:
            raise ValueError(f"{shown} is not a duration: use HH:MM:SS or a number with h, m, s or d (48h, 90m)")
        total = round(float(match.group(1)) * _SECONDS[match.group(2).lower()])
    if total <= 0:
        raise ValueError(f"{shown} must be longer than zero")
    if total > MAX_SECONDS:
        raise ValueError(f"{shown} is longer than {MAX_SECONDS // 86400} days")
    return total


def format_slurm_time(seconds: int) -> str:
    """Seconds as sbatch's ``--time`` wants them (``[D-]HH:MM:SS``).

    Slurm counts whole minutes, so a limit is rounded up (never cut short), and it is
    one minute at least: ``--time=0`` would mean no limit at all.
    """
    minutes = max(1, -(-int(seconds) // 60))
    days, minutes = divmod(minutes, 1440)
    hours, minutes = divmod(minutes, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:00" if days else f"{hours:02d}:{minutes:02d}:00"
