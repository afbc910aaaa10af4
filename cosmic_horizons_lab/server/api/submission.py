"""What a client may send: the submission, checked completely before anything is written.

Rules that are the API's contract (documented in the README):
400 when the body is not a JSON object or names a field we do not know;
422 when a field is known but its value is not acceptable (type, range,
unknown agent or dataset, a ``max_runtime`` we cannot read). The error names
the field, dotted for parameters (``params.gpu_count``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from cosmic_horizons_lab.server.datasets import Dataset, DatasetRegistry
from cosmic_horizons_lab.protocol.durations import parse_duration
from cosmic_horizons_lab.server.api.requests import reject_unknown
from cosmic_horizons_lab.server.errors import BadRequest, ValidationFailed
from cosmic_horizons_lab.executor.registry import agents, get_agent

SUBMISSION_FIELDS = {"agent", "dataset_id", "params", "priority", "webhook_url", "depends_on", "notes"}
PRIORITY_RANGE = (0, 10)
DEFAULT_PRIORITY = 5
MAX_NOTES = 10_000


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


def parse_json_body(body: bytes) -> Any:
    if not body:
        raise BadRequest("the request body is empty; send a JSON object", field=None)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}", field=None) from None


class SubmissionValidator:
    """Checks submissions against the agents' schemas and the server's limits."""

    def __init__(self, datasets: DatasetRegistry, server_root: Path, max_gpus: int | None) -> None:
        self.datasets = datasets
        self.server_root = Path(server_root).resolve()
        self.max_gpus = max_gpus
        self._validators: dict[str, Draft202012Validator] = {}

    def _validator(self, agent: str) -> Draft202012Validator:
        if agent not in self._validators:
            self._validators[agent] = Draft202012Validator(get_agent(agent).schema())
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
        if not isinstance(agent, str) or not agent:
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

        if agent == "Script":
            self._check_script(params["path"], prefix)

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

    def _check_params(self, agent: str, params: dict[str, Any], prefix: str) -> None:
        errors = sorted(self._validator(agent).iter_errors(params), key=lambda e: list(e.path))
        if not errors:
            return
        err: ValidationError = errors[0]
        if err.validator == "additionalProperties":
            extra = sorted(set(params) - set(err.schema.get("properties", {})))
            name = extra[0] if extra else "?"
            raise BadRequest(
                f"unknown parameter {name!r} for agent {agent}; GET agents lists its parameters",
                field=f"{prefix}params.{name}",
            )
        path = ".".join(str(p) for p in err.path)
        if err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else ""
            path = missing or path
        raise ValidationFailed(
            f"params.{path}: {err.message}" if path else err.message,
            field=f"{prefix}params.{path}" if path else f"{prefix}params",
        )

    def _dataset(self, dataset_id: Any, required: bool, prefix: str) -> Dataset | None:
        if dataset_id is None:
            if required:
                raise ValidationFailed("'dataset_id' is required for this agent (GET datasets lists them)", field=prefix + "dataset_id")
            return None
        if not isinstance(dataset_id, str) or not dataset_id:
            raise ValidationFailed("'dataset_id' must be a non-empty string", field=prefix + "dataset_id")
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            raise ValidationFailed(f"unknown dataset {dataset_id!r} (GET datasets lists them)", field=prefix + "dataset_id")
        return dataset

    def _check_script(self, path: str, prefix: str) -> None:
        candidate = Path(path)
        target = (self.server_root / candidate).resolve()
        if candidate.is_absolute() or not target.is_relative_to(self.server_root):
            raise ValidationFailed(
                "'params.path' must be relative to the server's root directory and stay inside it",
                field=prefix + "params.path",
            )
        if not target.is_file():
            raise ValidationFailed(f"no script at {path!r} under the server's root directory", field=prefix + "params.path")

    @staticmethod
    def _webhook(url: Any, prefix: str) -> str | None:
        if url is None:
            return None
        parsed = urlparse(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or len(url) > 2048:
            raise ValidationFailed("'webhook_url' must be an http(s) URL", field=prefix + "webhook_url")
        return url

    @staticmethod
    def _depends_on(value: Any, prefix: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValidationFailed("'depends_on' must be a list of job ids", field=prefix + "depends_on")
        return list(dict.fromkeys(value))

    @staticmethod
    def _text(value: Any, name: str, limit: int, prefix: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > limit:
            raise ValidationFailed(f"'{name}' must be a string of at most {limit} characters", field=prefix + name)
        return value
