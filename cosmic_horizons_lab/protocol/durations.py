"""Wall-clock limits as users write them: ``HH:MM:SS`` (Slurm's form) or ``48h``/``90m``."""

from __future__ import annotations

import re

_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(d|h|m|s)\s*$", re.IGNORECASE)
_CLOCK = re.compile(r"^\s*(?:(\d+)-)?(\d{1,3}):([0-5]\d):([0-5]\d)\s*$")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> int:
    """Seconds in ``text``; raises ValueError naming the accepted forms.

    Accepted: ``HH:MM:SS``, ``D-HH:MM:SS`` (as sbatch takes them) and a number
    with one unit, ``d``, ``h``, ``m`` or ``s`` (``48h``, ``90m``, ``1.5h``).
    """
    match = _CLOCK.match(text)
    if match:
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    else:
        match = _UNIT.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a duration: use HH:MM:SS or a number with h, m, s or d (48h, 90m)")
        total = round(float(match.group(1)) * _SECONDS[match.group(2).lower()])
    if total <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
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
