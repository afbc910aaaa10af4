"""Where the science runs (CUDA when present, else the CPU) and how much it may hold at once.

Every science module takes a ``torch.device`` and sizes its chunks through
:func:`chunk_size` (or plans them with :func:`plan_chunks`, which
:mod:`.streaming` uses), so a visibility set larger than the card's memory streams
through it instead of failing with out-of-memory. The budget is the memory free
now, capped by :func:`memory_limit_bytes` (a per-process fraction, or an
environment limit), so a 16 GB card's plan can be made, and tested, anywhere. On
the CPU the same code runs with the host's available memory as the budget; that is
what CI exercises.
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


#: Caps the memory this process may use on its device, in bytes, whatever the device
#: has: to plan a small card's chunks on a big one, or to force chunking on the CPU.
MEMORY_LIMIT_ENV = "COSMIC_HORIZONS_MEMORY_LIMIT_BYTES"


def memory_limit_bytes(device: torch.device) -> int | None:
    """The most this process may hold on ``device``, where something caps it below the card.

    Two things can: ``torch.cuda.set_per_process_memory_fraction`` (torch's allocator
    then refuses beyond ``fraction × total`` although the driver still reports the
    whole card free: that is how a 16 GB card is emulated on a bigger one), and
    :data:`MEMORY_LIMIT_ENV`. ``None`` when neither does.
    """
    limits = []
    env = os.environ.get(MEMORY_LIMIT_ENV)
    if env:
        limits.append(int(float(env)))
    if device.type == "cuda":
        get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        if get_fraction is not None:
            fraction = float(get_fraction(device))
            if fraction < 1.0:
                total = torch.cuda.get_device_properties(device).total_memory
                limits.append(int(fraction * total))
    return min(limits) if limits else None


def free_memory_bytes(device: torch.device) -> int:
    """Memory a new allocation can use now: the card's free memory, or the host's available,
    and never more than :func:`memory_limit_bytes` leaves."""
    limit = memory_limit_bytes(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # Memory cached by torch's allocator is free for torch even if not for the driver.
        allocated = torch.cuda.memory_allocated(device)
        reserved = torch.cuda.memory_reserved(device) - allocated
        free = int(free + max(reserved, 0))
        return free if limit is None else max(0, min(free, limit - allocated))
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of the server
        free = 4 << 30
    # on the host the limit is the budget itself: the process's other memory is not ours to count
    return free if limit is None else min(free, limit)


def chunk_budget_bytes(device: torch.device) -> int:
    """Bytes one chunk's working set may take: a share of the free memory, capped."""
    cap = MAX_CHUNK_BYTES.get(device.type, MAX_CHUNK_BYTES["cpu"])
    return min(int(free_memory_bytes(device) * MEMORY_FRACTION), cap)


def chunk_size(bytes_per_item: int, device: torch.device, *, minimum: int = 1,
               maximum: int | None = None) -> int:
    """How many items (rows, baselines, visibilities) one chunk may hold.

    ``bytes_per_item`` is the working set one item needs, temporaries
    included; callers over-estimate rather than under-estimate.
    """
    n = max(minimum, chunk_budget_bytes(device) // max(1, bytes_per_item))
    if maximum is not None:
        n = min(n, maximum)
    return int(n)


@dataclass(frozen=True)
class ChunkPlan:
    """How ``n_items`` are cut into chunks whose working set stays under ``budget_bytes``.

    The working set of a chunk is ``fixed_bytes`` (what stays resident whatever the
    chunk: a grid, an image, plans) plus ``bytes_per_item`` per item. A plan is pure
    arithmetic, so the same plan a 16 GB card gets can be made and checked on the CPU.
    """

    n_items: int
    items_per_chunk: int
    bytes_per_item: int
    fixed_bytes: int
    budget_bytes: int

    @property
    def n_chunks(self) -> int:
        return -(-self.n_items // self.items_per_chunk)

    @property
    def working_set_bytes(self) -> int:
        """Planned peak: the resident part plus the largest chunk."""
        return self.fixed_bytes + min(self.items_per_chunk, self.n_items) * self.bytes_per_item

    @property
    def fits(self) -> bool:
        return self.working_set_bytes <= self.budget_bytes

    def ranges(self) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of every chunk, in order."""
        for start in range(0, self.n_items, self.items_per_chunk):
            yield start, min(self.n_items, start + self.items_per_chunk)


def plan_chunks(n_items: int, bytes_per_item: int, device: torch.device, *, fixed_bytes: int = 0,
                budget_bytes: int | None = None, minimum: int = 1,
                maximum: int | None = None) -> ChunkPlan:
    """Chunks for ``n_items`` from the memory free on ``device`` now (see
    :func:`chunk_budget_bytes`) or from ``budget_bytes`` when given.

    Raises ``MemoryError`` when not even ``minimum`` items fit beside ``fixed_bytes``:
    failing before the first chunk says what was short, where an out-of-memory error
    half-way through a job says nothing.
    """
    budget = chunk_budget_bytes(device) if budget_bytes is None else int(budget_bytes)
    per_item = max(1, int(bytes_per_item))
    items = (budget - int(fixed_bytes)) // per_item
    if items < minimum:
        raise MemoryError(
            f"{minimum} item(s) of {per_item} B beside {fixed_bytes} B resident need "
            f"{fixed_bytes + minimum * per_item} B; the budget on {device} is {budget} B")
    if maximum is not None:
        items = min(items, max(minimum, int(maximum)))
    items = int(max(1, min(items, max(1, n_items))))
    return ChunkPlan(n_items=int(n_items), items_per_chunk=items, bytes_per_item=per_item,
                     fixed_bytes=int(fixed_bytes), budget_bytes=budget)


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
