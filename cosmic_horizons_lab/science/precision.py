"""Mixed precision for visibilities: 16-bit storage and transfer, float32 arithmetic.

The agent stages are bound by moving bytes, not by arithmetic: a visibility is
read, compared and summed a few times, a handful of operations per 8 bytes of
complex64. Storing and moving visibilities in 16 bits halves those bytes, on the
host→device bus and in the card's memory, while every sum stays in float32 (on
a GPU, upcasting is free inside the kernel that reads the values). What it
costs is one rounding per visibility, a relative error of at most the storage
type's unit roundoff ``u``:

========== ============ ===================================================
storage    ``u``        range
========== ============ ===================================================
float16    2^-11 ≈ 4.9e-4  5 exponent bits: scaled per chunk by a power of two
bfloat16   2^-8 ≈ 3.9e-3   float32's range, no scaling needed
float32    2^-24 ≈ 6.0e-8  the default
========== ============ ===================================================

float16 is the better 16-bit choice once the values are scaled (eight times
float16's precision for the same bytes): :func:`to_storage` scales each chunk
by a power of two, which is exact, so its largest finite value lands at
:data:`FLOAT16_PEAK`. Values more than ~1e4 below that peak lose relative
precision (float16's subnormals start at 6.1e-5): visibilities of one chunk
rarely span more.

The policy is :func:`policy_for`: the cheapest storage whose per-sample
rounding is within the accuracy the caller asks for. What that rounding does
to a stage's result (grid accumulation, dirty image, flags) is measured, not
assumed: ``benchmarks/bench_gpu.py`` prints it against float64, and
``tests/science/test_gpu_paths.py`` checks the bounds on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: float16 value the largest finite magnitude of a chunk is scaled to: 2^14 leaves a
#: factor of 4 below float16's largest (65504) for values rounded up.
FLOAT16_PEAK = 2.0**14


def unit_roundoff(dtype: torch.dtype) -> float:
    """Largest relative error of rounding a (normal) number to ``dtype``."""
    return float(torch.finfo(dtype).eps) / 2


@dataclass(frozen=True)
class PrecisionPolicy:
    """How visibilities are stored and moved (``storage``) and computed on (``compute``)."""

    storage: torch.dtype = torch.float32
    compute: torch.dtype = torch.float32

    @property
    def bytes_per_visibility(self) -> int:
        """Bytes one complex visibility takes in storage (real and imaginary part)."""
        return 2 * torch.empty((), dtype=self.storage).element_size()

    @property
    def relative_error(self) -> float:
        """Bound of the per-sample relative rounding error that storage adds."""
        return unit_roundoff(self.storage) if self.storage != self.compute else 0.0


def policy_for(tolerance: float) -> PrecisionPolicy:
    """The cheapest storage whose rounding of each sample stays within ``tolerance``
    (relative): float16 from 4.9e-4 up, float32 below.

    bfloat16 is never chosen: at the same two bytes, scaled float16 is eight times
    more precise, and the scaling is exact.
    """
    if tolerance >= unit_roundoff(torch.float16):
        return PrecisionPolicy(storage=torch.float16)
    return PrecisionPolicy(storage=torch.float32)


def to_storage(vis: torch.Tensor, policy: PrecisionPolicy) -> tuple[torch.Tensor, float]:
    """Complex visibilities as a real ``(..., 2)`` tensor of ``policy.storage`` and the
    power-of-two scale applied (divide by it to get the values back).

    Non-finite values stay non-finite (a flagger must still see them); they do
    not set the scale.
    """
    real = torch.view_as_real(vis) if vis.is_complex() else vis
    if policy.storage in (torch.float32, torch.float64) or policy.storage == torch.bfloat16:
        return real.to(policy.storage), 1.0
    finite = torch.isfinite(real)
    peak = float(torch.where(finite, real.abs(), torch.zeros((), dtype=real.dtype,
                                                             device=real.device)).max()) \
        if real.numel() else 0.0
    scale = 2.0 ** math.floor(math.log2(FLOAT16_PEAK / peak)) if peak > 0 else 1.0
    return (real * scale).to(policy.storage), scale


def from_storage(stored: torch.Tensor, scale: float, policy: PrecisionPolicy) -> torch.Tensor:
    """Back to complex in ``policy.compute`` precision (complex64 for float32)."""
    real = stored.to(policy.compute)
    if scale != 1.0:
        real = real / scale
    return torch.view_as_complex(real.contiguous())
