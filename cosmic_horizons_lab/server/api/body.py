"""A request body as JSON, refused (400 or 422, naming the field where there is one) when no
later step could take it without failing.

Every body goes through :func:`parse_json_body` before any schema sees it, so the rules below
hold for every field of every body, and no handler repeats them:

- nesting deeper than :data:`MAX_DEPTH` is refused before ``json.loads`` recurses into it
  (100,000 ``[`` would raise ``RecursionError``);
- an integer outside the 64-bit range the stores hold is refused (and never converted: Python
  refuses to read more than 4,300 digits, with a ``ValueError`` of its own), as are ``NaN``,
  ``Infinity`` and a number too large for a float (``1e400``);
- a string (a key or a value) holding a NUL byte or a lone surrogate is refused: neither
  PostgreSQL nor the file system nor UTF-8 takes them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cosmic_horizons_lab.server.api.requests import text_problem
from cosmic_horizons_lab.server.errors import BadRequest, ValidationFailed

#: The deepest nesting of arrays and objects a body may have (a pipeline with agent parameters
#: nests about six deep).
MAX_DEPTH = 64
#: The range of a JSON integer: what a 64-bit column (SQLite's INTEGER, PostgreSQL's BIGINT) holds.
INT64 = (-(2**63), 2**63 - 1)
#: More digits than any 64-bit integer has: such a number is refused without being converted.
_MAX_DIGITS = 20

# A string literal (skipped whole, so brackets inside it do not count) or one bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class _Refused:
    """Stands where the body held a number no field can take, until the walk finds its place."""

    def __init__(self, text: str, why: str) -> None:
        self.text, self.why = text, why


def parse_json_body(body: bytes) -> Any:
    """The body as JSON, or :class:`BadRequest` (not JSON, too deep) or :class:`ValidationFailed`
    (a value no field takes, named by its place: ``jobs[2].priority``)."""
    if not body:
        raise BadRequest("the request body is empty; send a JSON object", field=None)
    _check_depth(body)
    try:
        value = json.loads(body, parse_int=_integer, parse_float=_float, parse_constant=_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}", field=None) from None
    except RecursionError:  # the depth check makes this unreachable; kept as the last guard
        raise BadRequest(f"the request body nests deeper than {MAX_DEPTH} levels", field=None) from None
    _check_values(value, "")
    return value


def _check_depth(body: bytes) -> None:
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return  # cannot be too deep: no scan
    depth = 0
    for token in _TOKENS.finditer(body):
        char = token.group()
        if char in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise BadRequest(f"the request body nests deeper than {MAX_DEPTH} levels", field=None)
        elif char in (b"]", b"}"):
            depth -= 1


def _integer(text: str) -> int | _Refused:
    digits = text.lstrip("-")
    if len(digits) > _MAX_DIGITS or not INT64[0] <= int(text) <= INT64[1]:
        shown = text if len(text) <= 24 else f"{text[:12]}…({len(digits)} digits)"
        return _Refused(shown, "is outside the 64-bit integer range")
    return int(text)


def _float(text: str) -> float | _Refused:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        return _Refused(text[:24], "is too large for a number")
    return value


def _constant(text: str) -> Any:
    raise BadRequest(f"the request body is not valid JSON: {text} is not a JSON number", field=None)


def _check_values(value: Any, place: str) -> None:
    """Refuse the first number or string no field takes, naming its place in the body."""
    if isinstance(value, _Refused):
        raise ValidationFailed(f"{value.text} {value.why}", field=place or None)
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise ValidationFailed(f"'{place or 'the body'}' {problem}", field=place or None)
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = text_problem(key)
            if problem:
                raise BadRequest(f"a field name in '{place or 'the body'}' {problem}", field=place or None)
            _check_values(item, f"{place}.{key}" if place else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(item, f"{place}[{i}]")
