"""The OpenAPI document against a running server: every constraint the document states on a
request is the one the server enforces, at the very boundary the document draws.

The test walks the served document. For each constraint on a request field (``enum``,
``minimum``/``maximum`` and their exclusive forms, ``minLength``/``maxLength``, ``pattern``,
``minItems``/``maxItems``, ``type``, ``required``, ``additionalProperties: false``) it builds,
from the constraint itself, one value just inside and one just outside, puts each into an
otherwise valid request (the operation's base, below) and sends it:

- inside, the server must answer 2xx, or a 4xx that names another field (an unknown dataset);
- outside, it must answer a 4xx whose ``field`` names that field (or the list holding it, or a
  part of it: ``stages[1].depends_on`` for ``stages[1].depends_on[0]``).

A candidate counts only when the document agrees: the inside value passes the field's schema,
the outside one fails it and passes it once that one keyword is removed, so each outside
request is wrong in exactly one way. Jobs and transfers stay queued (dispatch and staging are
held), so nothing runs.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from jsonschema import Draft202012Validator


@pytest.fixture
def lab_config():
    """The caller is an operator, so the operators' routes (usage/leaderboard) reach their checks."""
    return {"operators": ["astro"]}


DATASET = "A"
SCRIPT = "job.py"
NOTEBOOK = "job.ipynb"
UNKNOWN = "zz_unknown"
MISSING = object()

#: What each operation's request is, before one field is changed; absent optional fields are
#: filled from the document (their default, example or the least value their schema allows).
SUBMISSION = {"agent": "Script", "dataset_id": DATASET, "params": {"path": SCRIPT}}
BODIES: dict[tuple[str, str], Any] = {
    ("post", "/jobs/submit"): SUBMISSION,
    ("post", "/jobs/optimize"): SUBMISSION,
    ("post", "/jobs/submit-batch"): {"jobs": [SUBMISSION]},
    ("post", "/pipelines"): {"stages": [{**SUBMISSION, "name": "a"}, {**SUBMISSION, "name": "b", "depends_on": ["a"]}]},
    ("post", "/jobs/dataset/stage"): {"dataset_id": DATASET},
    ("post", "/jobs/dataset/estimate-transfer"): {"dataset_id": DATASET},
    ("post", "/sky/annotations"): {"job_id": "JOB", "shape": {"type": "circle", "ra": 10.0, "dec": 10.0, "radius": 0.1},
                                   "note": "n"},
    ("post", "/sky/snapshots"): {"name": "snap", "view": {"ra": 10.0, "dec": 10.0, "fov": 1.0}},
}
#: Parts of a conditional (``if agent is X then …``) branch's base the document cannot give:
#: the script the Script agent runs must exist.
BRANCH_SEEDS: dict[Any, dict[str, Any]] = {"Script": {"params": {"path": SCRIPT}},
                                           "Notebook": {"params": {"path": NOTEBOOK}}}

#: Keywords on one value, in the order they are tried.
VALUE_KEYWORDS = ("enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                  "minLength", "maxLength", "pattern", "minItems", "maxItems", "type")


@dataclass
class Case:
    op: str
    method: str
    url: str
    where: str  # body, query or header
    path: tuple
    keyword: str
    inside: bool
    request: dict[str, Any] = field(default_factory=dict)  # body, query, header
    #: whether the document accepts the whole of ``request[where]`` (must equal ``inside``)
    documented: bool = True

    @property
    def field(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out

    def __str__(self) -> str:
        value = _get(self.request[self.where], self.path)
        shown = "<absent>" if value is MISSING else json.dumps(value)[:60]
        return f"{self.op} {self.where} {self.field} {self.keyword} {'inside' if self.inside else 'outside'}: {shown}"


# -- values from constraints ----------------------------------------------------------------------
def _types(node: dict[str, Any]) -> list[str]:
    t = node.get("type", [])
    return t if isinstance(t, list) else [t]


def _step(node: dict[str, Any], bound: float) -> float:
    """The smallest step that leaves ``bound``: 1 for integers, about 1/1000 of it for numbers."""
    if "integer" in _types(node) and "number" not in _types(node):
        return 1
    return 10 ** (math.floor(math.log10(abs(bound))) - 3) if bound else 1e-6


def _resize(seed: Any, n: int) -> list[str]:
    """Strings of length ``n`` made from ``seed`` (cut or padded at either end, or in the middle)."""
    seed = seed if isinstance(seed, str) else "x"
    if n < 0:
        return []
    pad = "x" * max(n - len(seed), 0)
    out = [seed[:n], seed[len(seed) - n:] if n else "", seed + pad, pad + seed, seed[:1] + pad + seed[1:]]
    return [s for s in dict.fromkeys(out) if len(s) == n]


def _distinct(item: Any, i: int) -> Any:
    """A copy of a list item that differs where items must differ (a pipeline stage's name)."""
    item = copy.deepcopy(item)
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        item["name"] = f"{item['name']}{i}"
    return item


def _resize_list(seed: Any, n: int) -> list[list[Any]]:
    seed = seed if isinstance(seed, list) else []
    if n < 0 or (n > len(seed) and not seed):
        return []
    return [seed[:n] + [_distinct(seed[i % len(seed)], i) for i in range(len(seed), n)]]


def candidates(keyword: str, node: dict[str, Any], seed: Any, where: str) -> tuple[bool, list[Any], list[Any]]:
    """(every inside candidate is a case, inside candidates, outside candidates) for one keyword."""
    v = node[keyword]
    wrong = ["zz-not-listed", 987654321, {"zz": 1}] if where == "body" else ["zz-not-listed"]
    if keyword == "enum":
        return True, list(v), wrong
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        step = _step(node, v)
        inward = step if keyword in ("minimum", "exclusiveMinimum") else -step
        at, past = (v, v - inward) if keyword in ("minimum", "maximum") else (v + inward, v)
        return False, [at], [past]
    if keyword in ("minLength", "maxLength"):
        return False, _resize(seed, v), _resize(seed, v - 1 if keyword == "minLength" else v + 1)
    if keyword == "pattern":
        s = seed if isinstance(seed, str) else ""
        return False, [s], ["", "x", "~" + s, s + "~", s[1:], s[:-1]]
    if keyword in ("minItems", "maxItems"):
        return False, _resize_list(seed, v), _resize_list(seed, v - 1 if keyword == "minItems" else v + 1)
    if keyword == "type":
        if where != "body" and not {"integer", "number", "boolean"} & set(_types(node)):
            return False, [], []  # a query string or header is always a string
        return False, [seed], wrong + ([["zz"], True, None] if where == "body" else [])
    raise AssertionError(keyword)


# -- paths in a request ---------------------------------------------------------------------------
def _get(root: Any, path: tuple) -> Any:
    for part in path:
        try:
            root = root[part]
        except (KeyError, IndexError, TypeError):
            return MISSING
    return root


def _set(root: Any, path: tuple, value: Any) -> Any:
    """A copy of ``root`` with ``value`` at ``path`` (removed there when it is MISSING)."""
    root = copy.deepcopy(root)
    if not path:
        return value
    parent = _get(root, path[:-1])
    if value is MISSING:
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value
    return root


def _norm(name: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", name)


def related(got: str | None, want: str) -> bool:
    """Whether an error's ``field`` names ``want``: itself, a part of it, or the list that holds it."""
    if not want:  # the request as a whole: the error names no field
        return got is None
    if got is None:
        return False
    g, w = _norm(got), _norm(want)
    return g == w or g.startswith(w + ".") or re.sub(r"\.\d+$", "", w) == g


# -- the walk -------------------------------------------------------------------------------------
class Walker:
    """Builds every case of one operation from the document."""

    def __init__(self, doc: dict[str, Any], op: str, method: str, url: str, request: dict[str, Any],
                 schemas: dict[str, dict[str, Any]]) -> None:
        self.components = doc["components"]
        self.op, self.method, self.url = op, method, url
        self.base = request
        self.schemas = schemas  # where -> the schema of that part of the request
        self.seen: set[tuple[int, str]] = set()
        self.problems: list[str] = []

    def resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            node = _get(self.components, tuple(node["$ref"].split("/")[2:]))
        return node

    def valid(self, node: dict[str, Any], value: Any) -> bool:
        return Draft202012Validator({**node, "components": self.components}).is_valid(value)

    def case(self, where: str, root: Any, path: tuple, keyword: str, inside: bool) -> Case:
        return Case(self.op, self.method, self.url, where, path, keyword, inside, {**self.base, where: root},
                    self.valid(self.schemas[where], root))

    def example(self, node: Any) -> Any:
        node = self.resolve(node)
        for key in ("default", "const"):
            if key in node:
                return copy.deepcopy(node[key])
        if node.get("examples"):
            return copy.deepcopy(node["examples"][0])
        if node.get("enum"):
            return node["enum"][0]
        kind = (_types(node) or [None])[0]
        if kind == "object":
            props = node.get("properties", {})
            return {name: self.example(props[name]) for name in node.get("required", []) if name in props}
        if kind == "array":
            if "items" not in node:
                return []
            return [self.example(node["items"]) for _ in range(max(node.get("minItems", 1), 1))]
        if kind == "string":
            return "x" * max(node.get("minLength", 1), 1)
        if kind in ("integer", "number"):
            low = node.get("minimum", node["exclusiveMinimum"] + 1 if "exclusiveMinimum" in node else 0)
            return int(low) if kind == "integer" else low
        return {"boolean": False, "null": None}.get(kind, MISSING)

    def cases(self) -> list[Case]:
        out: list[Case] = []
        for where, schema in self.schemas.items():
            root = self.base[where]
            if not self.valid(schema, root):
                self.problems.append(f"{self.op}: the base {where} is not valid by the document: {root!r}")
                continue
            out += self.walk(where, schema, root, (), root, {})
        return out

    def walk(self, where: str, node: Any, value: Any, path: tuple, root: Any, variants: dict[Any, Any]) -> list[Case]:
        node = self.resolve(node)
        out: list[Case] = []
        for keyword in VALUE_KEYWORDS:
            if keyword in node and (id(node), keyword) not in self.seen:
                self.seen.add((id(node), keyword))
                out += self.value_cases(where, node, keyword, value, path, root, variants)
        if isinstance(value, dict):
            out += self.object_cases(where, node, value, path, root)
        if isinstance(value, list) and "items" in node:
            for i, item in enumerate(value):
                out += self.walk(where, node["items"], item, path + (i,), root, {})
        return out

    def value_cases(self, where, node, keyword, seed, path, root, variants) -> list[Case]:
        every, inside, outside = candidates(keyword, node, seed, where)
        stripped = {k: v for k, v in node.items() if k != keyword}
        good = [v for v in inside if self.valid(node, v)]
        out = [self.case(where, variants.get(v) if _hashable(v) and v in variants else _set(root, path, v),
                         path, keyword, True) for v in (good if every else good[:1])]
        bad = [v for v in outside if not self.valid(node, v) and self.valid(stripped, v)]
        out += [self.case(where, _set(root, path, v), path, keyword, False) for v in bad[:1]]
        return out

    def object_cases(self, where, node, value, path, root) -> list[Case]:
        out: list[Case] = []
        branches = [self.resolve(b) for b in node.get("allOf", [])]
        # alternatives told apart by a const (a submission's one per agent): each is a branch
        # "if that property is the const, then the rest of the alternative"
        branches += [_as_branch(self.resolve(alt)) for alt in node.get("anyOf", []) if _discriminator(self.resolve(alt))]
        variants: dict[str, dict[Any, Any]] = {}
        for branch in branches:
            if "if" in branch:
                (prop, cond), = branch["if"]["properties"].items()
                prop_node = self.resolve(node.get("properties", {}).get(prop, {}))
                if self.valid(prop_node, cond["const"]):  # a value the document accepts
                    base = self.branch_base(value, prop, cond["const"], branch["then"])
                    variants.setdefault(prop, {})[cond["const"]] = (base, _set(root, path, base))
        for name, sub in node.get("properties", {}).items():
            child, child_root = value.get(name, MISSING), root
            if child is MISSING:
                child = self.example(sub)
                child_root = _set(root, path + (name,), child)
                if child is MISSING or not self.valid(self.schemas[where], child_root):
                    continue
            chosen = {k: r for k, (_, r) in variants.get(name, {}).items()}
            out += self.walk(where, sub, child, path + (name,), child_root, chosen)
        out += self.shape_cases(where, node, value, path, root)
        for branch in branches:
            if "if" not in branch:
                out += self.walk(where, branch, value, path, root, {})
                continue
            (prop, cond), = branch["if"]["properties"].items()
            if cond["const"] in variants.get(prop, {}):
                base, branch_root = variants[prop][cond["const"]]
                if not self.valid(self.schemas[where], branch_root):
                    self.problems.append(f"{self.op}: the base for {prop}={cond['const']} is not valid: {base!r}")
                    continue
                out += self.walk(where, branch["then"], base, path, branch_root, {})
        return out

    def shape_cases(self, where, node, value, path, root) -> list[Case]:
        """``required`` (drop each present required key) and ``additionalProperties: false``."""
        out: list[Case] = []
        checks = [("required", name, MISSING) for name in node.get("required", []) if name in value]
        if node.get("additionalProperties") is False:
            checks.append(("additionalProperties", UNKNOWN, 1))
        for keyword, name, new in checks:
            if (id(node), keyword, name) in self.seen:
                continue
            self.seen.add((id(node), keyword, name))
            changed = _set(value, (name,), new)
            stripped = {k: v for k, v in node.items() if k != keyword}
            if not self.valid(node, changed) and self.valid(stripped, changed):
                out.append(self.case(where, root, path + (name,), keyword, True))
                out.append(self.case(where, _set(root, path, changed), path + (name,), keyword, False))
        return out

    def branch_base(self, value: dict[str, Any], prop: str, const: Any, then: dict[str, Any]) -> dict[str, Any]:
        base = {**copy.deepcopy(value), prop: const}
        for name, sub in then.get("properties", {}).items():
            seeded = BRANCH_SEEDS.get(const, {}).get(name, MISSING)
            base[name] = copy.deepcopy(seeded) if seeded is not MISSING else self.example(sub)
        return base


def _discriminator(alternative: dict[str, Any]) -> str | None:
    """The property whose ``const`` selects this alternative of an ``anyOf``, if it has one."""
    consts = [name for name, sub in alternative.get("properties", {}).items() if isinstance(sub, dict) and "const" in sub]
    return consts[0] if len(consts) == 1 else None


def _as_branch(alternative: dict[str, Any]) -> dict[str, Any]:
    """An ``anyOf`` alternative as the if/then branch it means: if the discriminator has its const,
    then the rest of the alternative holds."""
    prop = _discriminator(alternative)
    rest = copy.deepcopy(alternative)
    cond = rest["properties"].pop(prop)
    return {"if": {"properties": {prop: cond}}, "then": rest}


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def build_cases(doc: dict[str, Any], job_id: str) -> tuple[list[Case], list[str], list[str]]:
    """Every case of every operation; the operations left out and why; problems of the walk."""
    cases: list[Case] = []
    skipped: list[str] = []
    problems: list[str] = []
    for template, item in doc["paths"].items():
        for method, op in item.items():
            name = f"{method.upper()} {template}"
            params = op.get("parameters", [])
            schemas: dict[str, Any] = {}
            for where in ("query", "header"):
                mine = {p["name"]: p["schema"] for p in params if p["in"] == where}
                if mine:
                    schemas[where] = {"type": "object", "properties": mine}
            if "requestBody" in op:
                if (method, template) not in BODIES:
                    problems.append(f"{name} takes a body but this test has no base for it: add one to BODIES")
                    continue
                schemas["body"] = op["requestBody"]["content"]["application/json"]["schema"]
            if not schemas:
                continue
            if "101" in op["responses"]:
                skipped.append(f"{name}: a WebSocket upgrade (its query is checked by the stream's own tests)")
                continue
            if any(p["in"] == "path" and p["name"] not in ("job_id", "dataset_id", "user") for p in params):
                skipped.append(f"{name}: a path parameter this test cannot fill")
                continue
            url = template.replace("{job_id}", job_id).replace("{dataset_id}", DATASET).replace("{user}", "astro").lstrip("/")
            request = {"body": copy.deepcopy(BODIES.get((method, template))), "query": {}, "header": {}}
            walker = Walker(doc, name, method.upper(), url, request, schemas)
            cases += walker.cases()
            problems += walker.problems
    return cases, skipped, problems


# -- sending --------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


async def send(api, case: Case) -> tuple[int, Any]:
    req = case.request
    kwargs: dict[str, Any] = {
        "params": {k: _text(v) for k, v in req["query"].items()} or None,
        "headers": {k: _text(v) for k, v in req["header"].items()},
    }
    if case.method == "POST":
        kwargs["raw_body"] = json.dumps(req["body"]).encode()
    code, body, _ = await api.call(case.method, case.url, **kwargs)
    return code, body


def verdict(case: Case, code: int, body: Any) -> str | None:
    """Why the server's answer breaks the contract, or None."""
    got = body.get("field") if isinstance(body, dict) else None
    if case.inside:
        if code < 300 or (400 <= code < 500 and got is not None and not related(got, case.field)):
            return None
        return f"the document accepts it, the server answered {code} field={got!r}: {_message(body)}"
    if 400 <= code < 500 and related(got, case.field):
        return None
    return f"the document refuses it, the server answered {code} field={got!r}: {_message(body)}"


def _message(body: Any) -> str:
    return (body.get("message") or "")[:120] if isinstance(body, dict) else ""


#: Constraints the hand-written document used to miss or get wrong: the walk must reach them.
MUST_COVER = [
    ("POST /jobs/submit", "notes", "maxLength"),
    ("POST /jobs/submit", "webhook_url", "pattern"),
    ("POST /jobs/submit", "params.retries", "maximum"),
    ("POST /jobs/submit", "params.rfi_strategy", "enum"),
    ("POST /jobs/submit", "params.npix", "minimum"),
    ("POST /jobs/submit", "params.sky_model[0].ra_deg", "required"),
    ("POST /jobs/submit", "Idempotency-Key", "maxLength"),
    ("POST /jobs/submit-batch", "jobs", "maxItems"),
    ("POST /pipelines", "stages", "minItems"),
    ("POST /pipelines", "stages[1].depends_on[0]", "minLength"),
    ("GET /jobs/search", "status[0]", "enum"),
    ("GET /jobs/history/list", "page_size", "maximum"),
    ("GET /gpus/history", "seconds", "maximum"),
    ("GET /jobs/{job_id}/events", "limit", "maximum"),
    ("GET /jobs/{job_id}/logs", "offset", "minimum"),
    ("GET /jobs/metrics", "period", "enum"),
    ("POST /jobs/dataset/stage", "convert", "enum"),
    ("POST /jobs/dataset/estimate-transfer", UNKNOWN, "additionalProperties"),
]


async def test_the_server_enforces_exactly_what_the_openapi_document_states(api, lab, script, datasets_dir):
    from openapi_spec_validator import validate

    lab.orchestrator._backend_retry_at = float("inf")  # hold dispatch: submitted jobs stay QUEUED
    lab.staging.concurrency = 0  # and transfers stay queued
    # A GPU backend caps gpu_count at what it has (the document says so in words): that cap is
    # this machine's, not a bound of the schema, so the contract is checked without it.
    lab.validator.max_gpus = None
    script("print('contract')\n", SCRIPT)
    script('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', NOTEBOOK)
    (datasets_dir / f"{DATASET}.uvfits").write_bytes(b"\0" * 2880)

    code, doc, _ = await api.get("openapi.json")
    assert code == 200
    validate(doc)
    code, job, _ = await api.post("jobs/submit", SUBMISSION)
    assert code == 201, job

    BODIES[("post", "/sky/annotations")]["job_id"] = job["id"]
    cases, skipped, problems = build_cases(doc, job["id"])
    assert not problems, "\n".join(problems)
    assert skipped == ["GET /events: a WebSocket upgrade (its query is checked by the stream's own tests)"], skipped
    covered = {(c.op, c.field, c.keyword) for c in cases}
    missing = [want for want in MUST_COVER if want not in covered]
    assert not missing, f"the walk no longer reaches {missing}"
    kinds = Counter(c.keyword for c in cases)
    assert {"enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "type",
            "required", "additionalProperties"} <= set(kinds), kinds
    assert all(any(c.inside for c in cases if c.keyword == k) and any(not c.inside for c in cases if c.keyword == k)
               for k in kinds), kinds

    answers: dict[str, tuple[int, Any]] = {}
    failures = []
    for case in cases:
        if case.documented != case.inside:
            failures.append(f"{case}\n    the test built a request the document judges the other way")
            continue
        key = json.dumps([case.method, case.url, case.request], sort_keys=True, default=str)
        if key not in answers:
            answers[key] = await send(api, case)
        why = verdict(case, *answers[key])
        if why:
            failures.append(f"{case}\n    {why}")
    summary = f"{len(failures)} of {len(cases)} cases ({len(answers)} requests) disagree"
    assert not failures, summary + ":\n" + "\n".join(failures)

