"""A job process made ready before its job arrives: the science imported, the compiled loops loaded.

Why: a science job's first second or two is not science. Importing torch and numba takes
1.2-2.5 s on a 2-core host and loading numba's cached loops another 0.6 s, while WSClean
images a whole 2.6e6-visibility Measurement Set in 1.3 s. The fork server
(``executor/forkserver.py``) keeps one *spare* process that has done this work in advance
and hands it the next science job; the job then starts where the science starts.

The spare warms itself *after* it is forked: loading numba's parallel loops starts its
threading layer (GNU OpenMP here), and a process that did that must not fork again. The fork
server itself stays lean and thread-free, so its forks stay safe and cheap.

A spare is only handed a job whose environment agrees with the one it warmed up in on
everything read at import time (:data:`IMPORT_TIME_ENV`), so warming never changes what a
job computes or how many threads it uses.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping

#: The science the built-in agents run, imported by the spare (with torch and numba).
SCIENCE_MODULES: tuple[str, ...] = (
    "cosmic_horizons_lab.science.visibilities",
    "cosmic_horizons_lab.science.flagging",
    "cosmic_horizons_lab.science.calibration",
    "cosmic_horizons_lab.science.imaging",
    "cosmic_horizons_lab.science.detection",
)

#: What the science imports on first use (readers of Measurement Sets and UVFITS, FITS and
#: WCS writers, image filters): imported too when installed, skipped when not.
LAZY_IMPORTS: tuple[str, ...] = (
    "casacore.tables", "pyuvdata", "astropy.io.fits", "astropy.wcs", "astropy.table",
    "scipy.ndimage", "scipy.optimize", "cosmic_horizons_lab.science.background",
    "cosmic_horizons_lab.science.sourcefit", "cosmic_horizons_lab.science.crossmatch",
)

#: Environment variables that torch, numba or the science read when imported or when their
#: thread pools start: a job whose values differ from the spare's starts fresh instead.
IMPORT_TIME_ENV: tuple[str, ...] = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER", "NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT", "NUMBA_OPT",
    "PYTHONPATH", "PYTHONHASHSEED", "LD_LIBRARY_PATH", "LD_PRELOAD",
)


def compatible(env: Mapping[str, str], warmed_in: Mapping[str, str] | None = None) -> bool:
    """Whether a job with environment ``env`` may run in a process warmed in ``warmed_in``
    (this process's environment by default): equal on every :data:`IMPORT_TIME_ENV` name."""
    warmed_in = os.environ if warmed_in is None else warmed_in
    return all(env.get(name) == warmed_in.get(name) for name in IMPORT_TIME_ENV)


def load_cached_loops(package: str = "cosmic_horizons_lab") -> int:
    """Load every compiled loop of ``package``'s imported modules that numba has cached for
    this CPU; the number loaded.

    Only signatures already in numba's on-disk cache index are loaded, so this never
    compiles (a fresh install compiles on its first real job, as before). Reading the index
    goes through numba's cache object, which is not public API: on any surprise the loop is
    left for the job to load, as without a spare.
    """
    try:
        from numba.core.registry import CPUDispatcher
    except ImportError:
        return 0
    loaded = 0
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for obj in list(vars(module).values()):
            if not isinstance(obj, CPUDispatcher) or getattr(obj, "_cache", None) is None:
                continue
            try:
                magic = obj.targetctx.codegen().magic_tuple()
                index = obj._cache._cache_file._load_index()  # {} when the source changed
                signatures = [key[0] for key in index if key[1] == magic]
            except Exception:
                continue
            for sig in signatures:
                if sig in obj.overloads:
                    continue
                try:
                    obj.compile(sig)  # found in the cache: a load, not a compilation
                    loaded += 1
                except Exception:
                    pass
    return loaded


def warm(modules: tuple[str, ...] = SCIENCE_MODULES, optional: tuple[str, ...] = LAZY_IMPORTS) -> int:
    """Import ``modules`` (and so torch and numba) and whichever of ``optional`` are installed,
    then load their cached loops; the number of loops loaded. Nothing here touches a GPU: CUDA
    starts in the job, with its own devices."""
    for name in modules:
        importlib.import_module(name)
    for name in optional:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # not installed: the job that needs it says so itself
    return load_cached_loops()
