"""Where the science runs (CUDA when present, else the CPU) and how much it may hold at once.

Every science module takes a ``torch.device`` and sizes its chunks through
:func:`chunk_size`, so a visibility set larger than the card's memory streams
through it instead of failing with out-of-memory. On the CPU the same code runs
with the host's available memory as the budget; that is what CI exercises.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


#: Fraction of the free memory one chunk's working set may use; the rest is
#: headroom for the allocator, FFT plans and the tensors already resident.
MEMORY_FRACTION = 0.4

#: Hard cap per chunk. On the host, big temporaries cost more in page faults
#: (fresh pages from the OS on every allocation) than they save in loop overhead.
MAX_CHUNK_BYTES = {"cuda": 2 << 30, "cpu": 64 << 20}


def peak_host_memory_bytes() -> int:
    """Peak resident memory of this process (the CPU stand-in for peak VRAM)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def select_device(gpu_count: int | None = None) -> torch.device:
    """CUDA when a card is visible and the job asked for one; the CPU otherwise.

    ``gpu_count=0`` is the user's explicit request for the CPU. The backend
    restricts ``CUDA_VISIBLE_DEVICES`` to the job's slot, so ``cuda:0`` is
    always the job's own card.
    """
    forced = os.environ.get("COSMIC_HORIZONS_DEVICE")
    if forced:
        return torch.device(forced)
    if gpu_count != 0 and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def free_memory_bytes(device: torch.device) -> int:
    """Memory a new allocation can use now: the card's free memory, or the host's available."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # Memory cached by torch's allocator is free for torch even if not for the driver.
        reserved = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(reserved, 0))
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of the server
        return 4 << 30


def chunk_size(bytes_per_item: int, device: torch.device, *, minimum: int = 1,
               maximum: int | None = None) -> int:
    """How many items (rows, baselines, visibilities) one chunk may hold.

    ``bytes_per_item`` is the working set one item needs, temporaries
    included; callers over-estimate rather than under-estimate.
    """
    cap = MAX_CHUNK_BYTES.get(device.type, MAX_CHUNK_BYTES["cpu"])
    budget = min(int(free_memory_bytes(device) * MEMORY_FRACTION), cap)
    n = max(minimum, budget // max(1, bytes_per_item))
    if maximum is not None:
        n = min(n, maximum)
    return int(n)


@contextlib.contextmanager
def host_threads(device: torch.device, n: int) -> Iterator[int]:
    """Run torch's CPU operators on at most ``n`` intra-op threads inside the block.

    Yields the thread count there was before, for work that parallelises
    coarsely on its own (an FFT library's ``workers``). For loops of many small
    operators (a few hundred kilobytes each): every operator ends in an OpenMP
    barrier, and on a host shared with other jobs one descheduled thread stalls
    it for a scheduler time slice. Measured on the 2-core machine at load ~3, the
    gridding loop took 16-55 s on 2 threads and 4.5 s on one (4.0 s on 2 when idle).
    Does nothing on a GPU.
    """
    before = torch.get_num_threads()
    if device.type != "cpu" or before <= n:
        yield before
        return
    torch.set_num_threads(n)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory on CUDA; the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_host_memory_bytes()


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so timings and throughput figures are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


@dataclass
class Throughput:
    """Counts work done and time spent, for the ``*_per_s`` metrics agents report."""

    device: torch.device
    started: float = field(default_factory=time.perf_counter)
    items: int = 0

    def add(self, n: int) -> None:
        self.items += int(n)

    @property
    def elapsed(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)

    @property
    def rate(self) -> float:
        synchronize(self.device)
        return self.items / self.elapsed
