"""The contract every workload (agent) fulfils.

An agent class is cheap to import: the server imports every agent to serve its
parameter schema and to validate submissions, so heavy libraries (torch,
pyuvdata, astropy) are imported inside ``run`` or in the science modules it
calls, never at the top of an agent module.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from cosmic_horizons_lab.executor.context import JobContext

#: Parameters every agent accepts; an agent's own schema adds to these.
COMMON_PARAMS: dict[str, Any] = {
    "gpu_count": {
        "type": "integer",
        "minimum": 0,
        "maximum": 8,
        "default": 1,
        "description": "GPUs to allocate; 0 runs on the CPU.",
    },
    "max_runtime": {
        "type": "string",
        "description": "Wall-clock limit: HH:MM:SS, or a number with a unit (48h, 90m, 30s).",
        "examples": ["04:00:00", "48h", "90m"],
    },
    "retries": {
        "type": "integer",
        "minimum": 0,
        "maximum": 5,
        "default": 0,
        "description": "How often a job lost to a crash or restart is started again.",
    },
}


#: The package's optional extras (``pip install 'cosmic-horizons-lab[<extra>]'``) that an agent
#: may need, with the modules that show each is installed. The one place that knows them:
#: :meth:`Agent.missing_extra` looks here, the server names the extra in its refusal.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "science": ("torch", "numpy", "scipy", "astropy", "pyuvdata"),
    # The Notebook agent runs a kernel of its own with nbclient.
    "notebook": ("nbclient", "nbformat", "ipykernel"),
}


class Agent(ABC):
    """One kind of job: a name, a parameter schema and a ``run`` method.

    ``params_schema`` holds only the agent's own parameters (JSON Schema
    ``properties`` plus optional ``required``); ``schema()`` merges the common
    ones and closes the object, so an unknown parameter is refused at
    submission rather than ignored at run time.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    requires_dataset: ClassVar[bool] = True
    params_schema: ClassVar[dict[str, Any]] = {"properties": {}}
    #: The optional extra (a key of ``EXTRA_MODULES``) whose libraries ``run`` imports; ``None``
    #: when the core dependencies suffice. A submission is refused (422) while it is missing.
    extra: ClassVar[str | None] = None
    #: The parameter that names a file under the server's root which the agent runs (Script's and
    #: Notebook's ``path``): submission checks it lies inside the root, and the agent checks again
    #: when it opens the file.
    root_file_param: ClassVar[str | None] = None
    #: The backends that can run this agent (``SlurmScript``: only ``slurm``); ``None``: any. A
    #: server on another backend refuses the submission (422 naming ``agent``).
    backends: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def missing_extra(cls) -> str | None:
        """The name of this agent's extra when one of its modules is not installed, else ``None``.

        Looks the modules up (``importlib.util.find_spec``) without importing them, so asking
        costs the server neither the import time nor the memory of torch.
        """
        if cls.extra is None:
            return None
        for module in EXTRA_MODULES.get(cls.extra, ()):  # an extra not listed: nothing to check
            try:
                if importlib.util.find_spec(module) is None:
                    return cls.extra
            except (ImportError, ValueError):
                return cls.extra
        return None

    @classmethod
    def schema(cls) -> dict[str, Any]:
        own = cls.params_schema
        return {
            "type": "object",
            "title": f"{cls.name} parameters",
            "properties": {**COMMON_PARAMS, **own.get("properties", {})},
            "required": list(own.get("required", [])),
            "additionalProperties": False,
        }

    @abstractmethod
    def run(self, job: JobContext) -> dict[str, Any]:
        """Do the work; return the job's result (JSON-serialisable), or raise."""
