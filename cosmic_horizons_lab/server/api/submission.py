"""What a client may send: the submission, checked completely before anything is written.

Rules that are the API's contract (documented in the README):
400 when the body is not a JSON object or names a field we do not know;
422 when a field is known but its value is not acceptable (type, range,
unknown agent or dataset, a ``max_runtime`` we cannot read). The error names
the field, dotted for parameters (``params.gpu_count``).

What is accepted is written down once, as JSON Schema: the fields of a submission below
(:data:`SUBMISSION`, whose bounds the validator reads) and each agent's parameters
(``cls.schema()``, which the validator applies). :func:`submission_schema` joins them into the
schema the OpenAPI document serves.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from cosmic_horizons_lab.server.datasets import Dataset, DatasetRegistry
from cosmic_horizons_lab.protocol.durations import DURATION_SCHEMA, parse_duration
from cosmic_horizons_lab.server.api.requests import (
    MAX_NAME,
    MAX_PATH,
    PIPELINE_STAGE_REF,
    STAGE_NAME,
    SUBMISSION_REF,
    path_problem,
    reject_unknown,
)
from cosmic_horizons_lab.server.errors import BadRequest, ValidationFailed
from cosmic_horizons_lab.executor.registry import agents, get_agent

#: ``priority`` of a submission: higher runs first.
PRIORITY: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 10, "default": 5,
                            "description": "Higher runs first; FIFO within a priority"}
#: ``webhook_url``: an http(s) URL with a host (the scheme in any case), signed POSTs go there.
WEBHOOK_URL: dict[str, Any] = {
    "type": ["string", "null"],
    "maxLength": 2048,
    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+",
    "examples": ["https://portal.example.org/hooks/jobs"],
    "description": "http(s) URL that receives a signed POST when the job ends (GET webhooks/secret)",
}
#: ``notes``: free text kept with the job.
NOTES: dict[str, Any] = {"type": ["string", "null"], "maxLength": 10_000}

#: A submission's fields (POST jobs/submit, jobs/optimize; each job of a batch, each pipeline
#: stage). ``agent`` gets its ``enum`` and ``params`` each agent's schema in :func:`submission_schema`.
SUBMISSION: dict[str, Any] = {
    "type": "object",
    "required": ["agent"],
    "additionalProperties": False,
    "properties": {
        "agent": {"type": "string", "minLength": 1, "examples": ["AlphaCal", "Script"],
                  "description": "An agent this server can run (GET agents lists them all, with their parameters)"},
        "dataset_id": {"type": ["string", "null"], "minLength": 1,
                       "description": "A registered dataset (GET datasets); an unknown one is refused (422). "
                                      "Required by agents that read data, unless the job has parents"},
        "params": {"type": "object", "default": {},
                   "description": "The agent's parameters: components/schemas/<agent>Params. Beyond the "
                                  "schema, a gpu_count above what this server's backend offers, a max_runtime "
                                  "it cannot read and a Script path that is not a file under the server's root "
                                  "are refused (422)"},
        "priority": PRIORITY,
        "webhook_url": WEBHOOK_URL,
        "depends_on": {"type": "array", "default": [],
                       "items": {"type": "string", "minLength": 1},
                       "description": "Parent job ids (in a pipeline: stage names); unknown ones are refused (400)"},
        "notes": NOTES,
    },
}

SUBMISSION_FIELDS = set(SUBMISSION["properties"])
PRIORITY_RANGE = (PRIORITY["minimum"], PRIORITY["maximum"])
DEFAULT_PRIORITY = PRIORITY["default"]
MAX_NOTES = NOTES["maxLength"]


def params_component(agent: str) -> str:
    """The OpenAPI component that holds ``agent``'s parameter schema: ``<agent>Params``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", agent) + "Params"


#: What the server adds to a parameter of this name in any agent's schema: the rules of the
#: server's side of the value (a duration it can read; a path it can hand the file system).
PARAM_RULES: dict[str, dict[str, Any]] = {
    "max_runtime": {key: DURATION_SCHEMA[key] for key in ("type", "pattern", "description")},
    "path": {"description": f"Relative to the server's root directory and inside it; at most {MAX_PATH} "
                            f"characters, each component at most {MAX_NAME}"},
}


def params_schema(agent: str) -> dict[str, Any]:
    """``agent``'s parameter schema as the server applies and documents it: ``cls.schema()`` with
    :data:`PARAM_RULES` laid over the parameters they name."""
    schema = copy.deepcopy(get_agent(agent).schema())
    for name, rule in PARAM_RULES.items():
        if name in schema.get("properties", {}):
            schema["properties"][name].update(copy.deepcopy(rule))
    return schema


def params_schemas() -> dict[str, dict[str, Any]]:
    """Every agent's parameter schema (:func:`params_schema`, what the validator applies) by component name."""
    return {params_component(name): params_schema(name) for name in sorted(agents())}


def submission_schema(stage: bool = False, backend: str | None = None) -> dict[str, Any]:
    """The JSON Schema of a submission (or, with ``stage``, of a pipeline stage: a submission
    with a ``name``): :data:`SUBMISSION`, ``agent`` limited to the agents this server can run
    (those whose extra is installed), and per agent, ``params`` by that agent's schema and
    ``dataset_id`` required when it reads data and has no parents."""
    runnable = sorted(name for name, cls in agents().items() if cls.missing_extra() is None
                      and (backend is None or cls.backends is None or backend in cls.backends))
    properties = {**SUBMISSION["properties"], "agent": {**SUBMISSION["properties"]["agent"], "enum": runnable}}
    required = list(SUBMISSION["required"])
    if stage:
        properties["name"] = STAGE_NAME
        required.append("name")
    # One alternative per agent, told apart by ``agent``'s const (``agent`` is required and one of
    # the enum, so exactly one applies). A list of alternatives, not an ``allOf`` of if/then rules:
    # each rule doubles what a generator must reason about, and with six agents Schemathesis's
    # canonicaliser gave up on the if/then form (it could generate no submission at all).
    variants = []
    for name, cls in sorted(agents().items()):
        variant: dict[str, Any] = {"properties": {
            "agent": {"const": name}, "params": {"$ref": f"#/components/schemas/{params_component(name)}"}}}
        if cls.schema()["required"]:  # absent params are checked as {}: they need what the agent requires
            variant["required"] = ["params"]
        if cls.requires_dataset:
            variant["anyOf"] = [
                {"required": ["dataset_id"], "properties": {"dataset_id": {"type": "string"}}},
                {"required": ["depends_on"], "properties": {"depends_on": {"minItems": 1}}},
            ]
        variants.append(variant)
    return {**SUBMISSION, "required": required, "properties": properties, "anyOf": variants}


#: The OpenAPI components :func:`submission_schema` fills: name -> whether it is a pipeline stage.
SUBMISSION_COMPONENTS = {SUBMISSION_REF.rpartition("/")[2]: False, PIPELINE_STAGE_REF.rpartition("/")[2]: True}


@dataclass
class Submission:
    agent: str
    params: dict[str, Any]
    dataset: Dataset | None
    priority: int = DEFAULT_PRIORITY
    webhook_url: str | None = None
    depends_on: list[str] = field(default_factory=list)
    notes: str | None = None
    gpu_count: int = 1
    max_runtime_seconds: int | None = None
    retries: int = 0

    @property
    def dataset_id(self) -> str | None:
        return self.dataset.id if self.dataset else None


class SubmissionValidator:
    """Checks submissions against the agents' schemas and the server's limits."""

    def __init__(self, datasets: DatasetRegistry, server_root: Path, max_gpus: int | None,
                 backend: str = "local", gpus_present: bool = True) -> None:
        self.datasets = datasets
        self.server_root = Path(server_root).resolve()
        self.max_gpus = max_gpus
        self.backend = backend
        self.gpus_present = gpus_present
        self._validators: dict[str, Draft202012Validator] = {}

    def _validator(self, agent: str) -> Draft202012Validator:
        if agent not in self._validators:
            self._validators[agent] = Draft202012Validator(params_schema(agent))
        return self._validators[agent]

    def validate(self, body: Any, prefix: str = "", extra_fields: frozenset[str] = frozenset()) -> Submission:
        """A :class:`Submission`, or a domain error naming the offending field.

        ``extra_fields`` are keys a caller handles itself (a pipeline stage's
        ``name``); a job with parents may omit its dataset: it reads theirs.
        """
        if not isinstance(body, dict):
            raise BadRequest("a submission is a JSON object", field=prefix.rstrip(".") or None)
        reject_unknown(body, sorted(SUBMISSION_FIELDS), also=extra_fields, prefix=prefix)
        agent = body.get("agent")
        if not isinstance(agent, str) or len(agent) < SUBMISSION["properties"]["agent"]["minLength"]:
            raise ValidationFailed("'agent' is required: the name of an agent (GET agents lists them)", field=prefix + "agent")
        agent_cls = get_agent(agent)
        if agent_cls is None:
            raise ValidationFailed(
                f"unknown agent {agent!r}; available: {', '.join(sorted(agents()))}", field=prefix + "agent"
            )
        missing = agent_cls.missing_extra()
        if missing:
            raise ValidationFailed(
                f"{agent} needs the {missing!r} extra: pip install 'cosmic-horizons-lab[{missing}]'",
                field=prefix + "agent",
            )
        if agent_cls.backends is not None and self.backend not in agent_cls.backends:
            raise ValidationFailed(
                f"{agent} runs only on the {' or '.join(agent_cls.backends)} backend; this server runs {self.backend!r}",
                field=prefix + "agent",
            )

        params = body.get("params", {})
        if not isinstance(params, dict):
            raise ValidationFailed("'params' must be an object", field=prefix + "params")
        self._check_params(agent, params, prefix)

        depends_on = self._depends_on(body.get("depends_on", []), prefix)
        dataset = self._dataset(body.get("dataset_id"), agent_cls.requires_dataset and not depends_on, prefix)
        priority = body.get("priority", DEFAULT_PRIORITY)
        if isinstance(priority, bool) or not isinstance(priority, int) or not (
            PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]
        ):
            raise ValidationFailed(
                f"'priority' must be an integer from {PRIORITY_RANGE[0]} to {PRIORITY_RANGE[1]} (higher runs first)",
                field=prefix + "priority",
            )

        max_runtime = None
        if "max_runtime" in params:
            try:
                max_runtime = parse_duration(params["max_runtime"])
            except ValueError as exc:
                raise ValidationFailed(str(exc), field=prefix + "params.max_runtime") from None

        gpu_count = params.get("gpu_count", 1)
        if self.max_gpus is not None and gpu_count > self.max_gpus:
            raise ValidationFailed(
                f"gpu_count {gpu_count} is more than this server's backend offers ({self.max_gpus})",
                field=prefix + "params.gpu_count",
            )

        root_file = get_agent(agent).root_file_param
        if root_file and root_file in params:
            self._check_script(params[root_file], prefix)

        return Submission(
            agent=agent,
            params=params,
            dataset=dataset,
            priority=priority,
            webhook_url=self._webhook(body.get("webhook_url"), prefix),
            depends_on=depends_on,
            notes=self._text(body.get("notes"), "notes", MAX_NOTES, prefix),
            gpu_count=gpu_count,
            max_runtime_seconds=max_runtime,
            retries=params.get("retries", 0),
        )

    def warnings(self, params: dict[str, Any]) -> list[dict[str, str]]:
        """What a valid submission should hear before it runs: GPUs asked of a server without one.

        Not a refusal: the agents run on the CPU too, only slower. The submit answer carries
        these (``warnings``) and ``jobs/optimize`` lists them among its tips.
        """
        asked = params.get("gpu_count")
        if not self.gpus_present and isinstance(asked, int) and not isinstance(asked, bool) and asked > 0:
            return [{"field": "params.gpu_count",
                     "message": f"{asked} GPU{'s' if asked != 1 else ''} requested, but this server has no GPU: "
                                "the job runs on the CPU"}]
        return []

    def _check_params(self, agent: str, params: dict[str, Any], prefix: str) -> None:
        errors = sorted(self._validator(agent).iter_errors(params), key=lambda e: list(e.path))
        if not errors:
            return
        err: ValidationError = errors[0]
        where = list(err.path)
        if err.validator == "additionalProperties":
            known = set(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - known) if isinstance(err.instance, dict) else []
            path = _dotted([*where, extra[0] if extra else "?"])
            raise BadRequest(
                f"unknown parameter {path!r} for agent {agent}; GET agents lists its parameters",
                field=f"{prefix}params.{path}",
            )
        if err.validator == "required" and isinstance(err.instance, dict):
            missing = [name for name in err.validator_value if name not in err.instance]
            where += missing[:1]
        path = _dotted(where)
        message = err.message
        if err.validator == "pattern":  # the pattern itself says little to a person: its description does
            shown = repr(err.instance) if len(repr(err.instance)) <= 40 else repr(err.instance)[:40] + "…"
            message = f"{shown} does not fit: {err.schema.get('description') or err.validator_value}"
        raise ValidationFailed(
            f"params.{path}: {message}" if path else message,
            field=f"{prefix}params.{path}" if path else f"{prefix}params",
        )

    def _dataset(self, dataset_id: Any, required: bool, prefix: str) -> Dataset | None:
        if dataset_id is None:
            if required:
                raise ValidationFailed("'dataset_id' is required for this agent (GET datasets lists them)", field=prefix + "dataset_id")
            return None
        if not isinstance(dataset_id, str) or len(dataset_id) < SUBMISSION["properties"]["dataset_id"]["minLength"]:
            raise ValidationFailed("'dataset_id' must be a non-empty string", field=prefix + "dataset_id")
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            raise ValidationFailed(f"unknown dataset {dataset_id!r} (GET datasets lists them)", field=prefix + "dataset_id")
        return dataset

    def _check_script(self, path: str, prefix: str) -> None:
        problem = path_problem(path)
        if problem:
            raise ValidationFailed(f"'params.path' {problem}", field=prefix + "params.path")
        candidate = Path(path)
        target = (self.server_root / candidate).resolve()
        if candidate.is_absolute() or not target.is_relative_to(self.server_root):
            raise ValidationFailed(
                "'params.path' must be relative to the server's root directory and stay inside it",
                field=prefix + "params.path",
            )
        if not target.is_file():
            raise ValidationFailed(f"no file at {path!r} under the server's root directory", field=prefix + "params.path")

    @staticmethod
    def _webhook(url: Any, prefix: str) -> str | None:
        if url is None:
            return None
        if not isinstance(url, str) or len(url) > WEBHOOK_URL["maxLength"] or not re.match(WEBHOOK_URL["pattern"], url):
            raise ValidationFailed("'webhook_url' must be an http(s) URL", field=prefix + "webhook_url")
        return url

    @staticmethod
    def _depends_on(value: Any, prefix: str) -> list[str]:
        shortest = SUBMISSION["properties"]["depends_on"]["items"]["minLength"]
        if not isinstance(value, list) or not all(isinstance(v, str) and len(v) >= shortest for v in value):
            raise ValidationFailed("'depends_on' must be a list of job ids", field=prefix + "depends_on")
        return list(dict.fromkeys(value))

    @staticmethod
    def _text(value: Any, name: str, limit: int, prefix: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > limit:
            raise ValidationFailed(f"'{name}' must be a string of at most {limit} characters", field=prefix + name)
        return value


def _dotted(path: list[Any]) -> str:
    """A parameter's place as the API names it: ``sky_model.0.flux_jy``."""
    return ".".join(str(p) for p in path)
