"""What the staging API accepts (requests, validated) and what it answers (JSON shapes).

The request bodies are written as JSON Schema (:data:`STAGE_BODY`, :data:`ESTIMATE_BODY`); the
parsers read their choices and defaults from them and the OpenAPI document serves them.

Paths never come from the request: dataset ids and target names are looked
up in the registry and the configured targets, and a destination that
resolves outside its target's root (a symlink planted in scratch, a user name
with ``..``) is refused. Each check names the field at fault, so a client
can point at it, and runs in a fixed order: a request with several faults
is told about the same one every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmic_horizons_lab.protocol.clock import isoformat
from cosmic_horizons_lab.server.api.requests import reject_unknown
from cosmic_horizons_lab.server.datasets import Dataset, DatasetRegistry
from cosmic_horizons_lab.server.errors import BadRequest, Forbidden, NotFound, ValidationFailed
from cosmic_horizons_lab.server.staging.copy import LiveCopy
from cosmic_horizons_lab.server.staging.targets import Target
from cosmic_horizons_lab.server.store.orm import Transfer

#: Conversions a transfer may ask for, and the suffix of what they write.
CONVERSIONS = {"uvh5": ".uvh5"}
DEFAULT_TARGET = "tacc_scratch"

_DATASET_ID = {"type": "string", "minLength": 1,
               "description": "A registered dataset (GET datasets); unknown: 404, no data yet: 422"}
_TARGET = {"type": "string", "default": DEFAULT_TARGET,
           "description": "A configured staging target (c.CosmicHorizons.staging_targets); unknown: 422"}

#: POST jobs/dataset/stage. Checked in this order: dataset, target, priority, convert, force.
STAGE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["dataset_id"],
    "additionalProperties": False,
    "properties": {
        "dataset_id": _DATASET_ID,
        "target_resource": _TARGET,
        "priority": {"enum": ["high", "normal"], "default": "normal", "description": "high is started first"},
        "convert": {"enum": [*CONVERSIONS, None], "default": None,
                    "description": "Convert to a GPU-friendly layout while staging"},
        "force": {"type": "boolean", "default": False, "description": "Stage again even if a fresh copy exists"},
    },
}

#: POST jobs/dataset/estimate-transfer.
ESTIMATE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["dataset_id"],
    "additionalProperties": False,
    "properties": {"dataset_id": _DATASET_ID, "target_resource": _TARGET},
}

#: GET and DELETE jobs/dataset/{dataset_id}/staging-status: the newest staging to this target (any, if absent).
STAGING_QUERY: dict[str, dict[str, Any]] = {
    "target_resource": {"type": "string", "description": "A configured staging target; unknown: 422"},
}

PRIORITIES = tuple(STAGE_BODY["properties"]["priority"]["enum"])
STAGE_FIELDS = set(STAGE_BODY["properties"])
ESTIMATE_FIELDS = tuple(ESTIMATE_BODY["properties"])


@dataclass(frozen=True)
class StageRequest:
    """A validated ``POST`` staging request."""

    dataset: Dataset
    target: Target
    priority: str
    convert: str | None
    force: bool


def lookup_target(targets: dict[str, Target], name: Any) -> Target:
    if not isinstance(name, str) or name not in targets:
        raise ValidationFailed(
            f"unknown target {name!r}; configured targets: {', '.join(sorted(targets))}",
            field="target_resource",
        )
    return targets[name]


def lookup_dataset(datasets: DatasetRegistry, dataset_id: Any) -> Dataset:
    shortest = _DATASET_ID["minLength"]
    dataset = datasets.get(dataset_id) if isinstance(dataset_id, str) and len(dataset_id) >= shortest else None
    if dataset is None:
        raise NotFound(f"unknown dataset {dataset_id!r} (GET datasets lists them)", field="dataset_id")
    # The demo and the synthetic presets live beside the archive, each in its own folder.
    if not dataset.path.resolve().is_relative_to(datasets.home(dataset)):
        raise Forbidden("the dataset resolves outside the archive", field="dataset_id")
    if not dataset.path.exists() and dataset.source != "simulated":  # a preset is generated when staged
        raise ValidationFailed(f"dataset {dataset.id!r} has no data yet", field="dataset_id")
    return dataset


def destination(user: str, dataset: Dataset, target: Target, convert: str | None) -> Path:
    """``<target>/<user>/<file>``, refused if anything on the way leads out of the target's root."""
    root = target.root.resolve()
    name = dataset.path.name if convert is None else dataset.id + CONVERSIONS[convert]
    if "/" in user or user in ("", ".", "..") or "\x00" in user:
        raise Forbidden("this user name cannot name a staging folder", field=None)
    dest = root / user / name
    for step in (dest.parent, dest, Path(str(dest) + ".part")):
        if step.is_symlink() or not step.resolve().is_relative_to(root):
            raise Forbidden(
                f"the staging destination leads outside target {target.name!r}; refused", field="target_resource"
            )
    return dest


def parse_stage(body: Any, datasets: DatasetRegistry, targets: dict[str, Target]) -> StageRequest:
    """Validate a staging request's body (the dataset's files and destination are checked after)."""
    if not isinstance(body, dict):
        raise BadRequest("a staging request is a JSON object", field=None)
    reject_unknown(body, sorted(STAGE_FIELDS))
    dataset = lookup_dataset(datasets, body.get("dataset_id"))
    spec = STAGE_BODY["properties"]
    target = lookup_target(targets, body.get("target_resource", spec["target_resource"]["default"]))
    priority = body.get("priority", spec["priority"]["default"])
    if priority not in spec["priority"]["enum"]:
        raise ValidationFailed(f"'priority' must be {' or '.join(map(repr, PRIORITIES))}", field="priority")
    convert = body.get("convert", spec["convert"]["default"])
    if convert not in spec["convert"]["enum"]:
        raise ValidationFailed(f"'convert' must be one of {sorted(CONVERSIONS)} or null", field="convert")
    force = body.get("force", spec["force"]["default"])
    if not isinstance(force, bool):
        raise ValidationFailed("'force' must be a boolean", field="force")
    return StageRequest(dataset, target, priority, convert, force)


def parse_estimate(body: Any, datasets: DatasetRegistry, targets: dict[str, Target]) -> tuple[Dataset, Target]:
    """Validate a transfer-estimate request's body: (dataset, target)."""
    if not isinstance(body, dict):
        raise BadRequest("an estimate request is a JSON object", field=None)
    reject_unknown(body, ESTIMATE_FIELDS)
    dataset = lookup_dataset(datasets, body.get("dataset_id"))
    default = ESTIMATE_BODY["properties"]["target_resource"]["default"]
    return dataset, lookup_target(targets, body.get("target_resource", default))


# -- answers -----------------------------------------------------------------------------
def transfer_payload(row: Transfer) -> dict[str, Any]:
    """What every ``staging.*`` event says of a transfer, and the base of its status document."""
    total = row.total_bytes or 0
    return {
        "transfer_id": row.id, "dataset_id": row.dataset_id, "target_resource": row.target,
        "priority": row.priority, "status": row.status, "bytes_transferred": row.bytes_done or 0,
        "total_bytes": total, "progress": round((row.bytes_done or 0) / total, 6) if total else 0.0,
    }


def transfer_json(row: Transfer, live: LiveCopy | None, target: Target | None) -> dict[str, Any]:
    """A transfer's status document: the stored row, with a running copy's live counters over it."""
    doc = transfer_payload(row)
    if live is not None:
        eta = live.eta()
        doc.update(bytes_transferred=live.done, progress=round(live.done / live.total, 6) if live.total else 0.0,
                   rate_bytes_per_second=round(live.rate(), 1), eta_seconds=None if eta is None else round(eta, 3),
                   phase=live.phase)
    elif row.status == "completed" and row.copy_seconds:
        doc["rate_bytes_per_second"] = round((row.total_bytes - row.resumed_from) / row.copy_seconds, 1)
    if row.status == "completed":
        doc["progress"] = 1.0
    dest = Path(row.dest_path)
    doc.update(
        convert=row.convert, sha256=row.sha256, error=row.error, resumed_from=row.resumed_from,
        staged_path=str(dest) if row.status == "completed" else None,
        stale=bool(row.status == "completed" and target is not None and target.is_stale(dest)),
        created_at=isoformat(row.created_at), started_at=isoformat(row.started_at),
        completed_at=isoformat(row.completed_at),
    )
    return doc


def not_staged(dataset: Dataset, target_name: str | None) -> dict[str, Any]:
    """The status document of a dataset this user never staged (to that target)."""
    return {"dataset_id": dataset.id, "target_resource": target_name,
            "status": "not_staged", "progress": 0.0, "bytes_transferred": 0, "total_bytes": dataset.size_bytes,
            "stale": False, "transfer_id": None}
