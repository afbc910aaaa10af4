"""Streaming host arrays through the device in chunks that fit its memory.

A job of 1e9 visibilities is 8 GB of complex64 before any temporaries: more
than a 16 GB card holds once a stage's working set is counted. The arrays stay
on the host, and the stage runs chunk by chunk, each chunk sized by
:func:`.device.plan_chunks` from the memory free on the device (or the limit a
process was given, :func:`.device.memory_limit_bytes`).

On CUDA the next chunk's copy overlaps the current chunk's kernels: one host
thread copies it into a page-locked staging buffer (pageable memory cannot be
copied asynchronously) and queues the host→device copy on a copy stream; the
compute stream waits on that copy's event only when it gets there. Two staging
buffers alternate, so the copy of chunk i+1 never overwrites what chunk i's
copy is still reading. On the CPU the same loop hands out views of the arrays:
no copy at all. Both run the same planning and the same order of chunks, which
is what the CPU tests check.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from cosmic_horizons_lab.science.device import ChunkPlan, host_threads, plan_chunks

if TYPE_CHECKING:  # flagging imports nothing of this module, but stays lazy for the other stages
    from cosmic_horizons_lab.science.flagging import FlagStrategy

#: Peak over flag_visibilities' own working-set estimate of one flagging chunk.
FLAGGING_TEMPORARIES = 2
#: Chunks held on the device at once by :func:`stream_chunks`: the one computed on
#: and the next one arriving.
CHUNKS_IN_FLIGHT = 2
#: Largest chunk of input streamed at once, bytes: enough for the copy engine to run at
#: full rate, small enough that the pinned staging buffers stay modest.
MAX_STREAM_CHUNK_BYTES = 256 << 20


def streaming_plan(arrays: Sequence[np.ndarray], work_bytes_per_item: int, device: torch.device,
                   *, fixed_bytes: int = 0, budget_bytes: int | None = None) -> ChunkPlan:
    """A plan for streaming ``arrays`` (cut along their first axis) through a stage that
    needs ``work_bytes_per_item`` of temporaries per item, with both chunks in flight
    counted."""
    input_bytes = sum(a[:1].nbytes for a in arrays)
    per_item = CHUNKS_IN_FLIGHT * input_bytes + int(work_bytes_per_item)
    return plan_chunks(len(arrays[0]), per_item, device, fixed_bytes=fixed_bytes,
                       budget_bytes=budget_bytes,
                       maximum=MAX_STREAM_CHUNK_BYTES // max(1, input_bytes))


def stream_chunks(arrays: Sequence[np.ndarray], plan: ChunkPlan, device: torch.device
                  ) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """Yield ``(start, stop, tensors)``: each array's rows ``start:stop`` on ``device``,
    ready to use on the current stream. A tensor is valid until the next chunk is asked
    for; keep a copy of anything needed longer."""
    if any(len(a) != plan.n_items for a in arrays):
        raise ValueError("every array must have plan.n_items rows")
    if device.type != "cuda":
        for start, stop in plan.ranges():
            yield start, stop, [torch.from_numpy(np.ascontiguousarray(a[start:stop]))
                                for a in arrays]
        return
    yield from _stream_cuda(arrays, plan, device)


def _stream_cuda(arrays: Sequence[np.ndarray], plan: ChunkPlan, device: torch.device
                 ) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    rows = plan.items_per_chunk
    staging = [[torch.empty((rows, *a.shape[1:]), dtype=torch.from_numpy(a[:1]).dtype,
                            pin_memory=True) for a in arrays] for _ in range(CHUNKS_IN_FLIGHT)]
    copied: list[torch.cuda.Event | None] = [None] * CHUNKS_IN_FLIGHT
    copy_stream = torch.cuda.Stream(device)

    def arrive(slot: int, start: int, stop: int) -> tuple[list[torch.Tensor], torch.cuda.Event]:
        if copied[slot] is not None:
            copied[slot].synchronize()  # the staging buffer's previous copy has been read
        n = stop - start
        out = []
        with torch.cuda.stream(copy_stream):
            for a, buf in zip(arrays, staging[slot]):
                np.copyto(buf[:n].numpy(), a[start:stop])  # releases the GIL
                out.append(buf[:n].to(device, non_blocking=True))
            event = torch.cuda.Event()
            event.record(copy_stream)
        copied[slot] = event
        return out, event

    ranges = list(plan.ranges())
    if not ranges:
        return
    compute = torch.cuda.current_stream(device)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(arrive, 0, *ranges[0])
        for i, (start, stop) in enumerate(ranges):
            tensors, event = pending.result()
            compute.wait_event(event)
            for t in tensors:
                # made on the copy stream, used on this one: the allocator must not reuse
                # the memory before this stream is done with it
                t.record_stream(compute)
            if i + 1 < len(ranges):
                pending = pool.submit(arrive, (i + 1) % CHUNKS_IN_FLIGHT, *ranges[i + 1])
            yield start, stop, tensors
            del tensors


def map_chunks(stage: Callable[..., torch.Tensor], arrays: Sequence[np.ndarray], out: np.ndarray,
               plan: ChunkPlan, device: torch.device,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``out[start:stop] = stage(*chunk tensors)`` for every chunk of ``plan``: a per-row
    stage (flagging a baseline, calibrating a cell) over arrays larger than the device."""
    for start, stop, tensors in stream_chunks(arrays, plan, device):
        result, dst = stage(*tensors), out[start:stop]
        if device.type == "cuda" and tuple(result.shape) == dst.shape and dst.flags.c_contiguous \
                and dst.flags.writeable:
            torch.from_numpy(dst).copy_(result)  # one copy from the card, no host temporary
        else:
            dst[...] = result.cpu().numpy()
        if progress is not None:
            progress(stop, plan.n_items)
    return out


def flagging_bytes_per_baseline(n_times: int, n_channels: int, n_pols: int) -> int:
    """Working set of flagging one baseline on the device, temporaries included.

    The same estimate :func:`.flagging.flag_visibilities` sizes its chunks with
    (its planes, model, filled planes and residual, 4 B per real part each, plus
    flags and SumThreshold temporaries), times :data:`FLAGGING_TEMPORARIES` for
    what a pass holds beyond that (the masked mean's concatenation, the cumulative
    sums). A margin, not a measurement: ``benchmarks/gpu_check.sh`` measures the
    allocator's peak on a card and reports it against the plan.
    """
    return n_times * n_channels * (4 * 2 * n_pols * 4 + 4 * 12) * FLAGGING_TEMPORARIES


def flag_streamed(vis: np.ndarray, flags: np.ndarray, strategy: str | FlagStrategy,
                  device: torch.device, *,
                  budget_bytes: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """:func:`.flagging.flag_visibilities`' result (same per-baseline flags), with the
    baselines streamed to the device in chunks planned from its free memory (or
    ``budget_bytes``), the next chunk's copy overlapping this chunk's flagging."""
    from cosmic_horizons_lab.science.flagging import STRATEGIES, flag_planes

    strat = STRATEGIES[strategy] if isinstance(strategy, str) else strategy
    _nb, nt, nf, npol = vis.shape
    plan = streaming_plan([vis, flags], flagging_bytes_per_baseline(nt, nf, npol), device,
                          budget_bytes=budget_bytes)

    def stage(v: torch.Tensor, fl: torch.Tensor) -> torch.Tensor:
        # the body of flag_visibilities' chunk, on tensors already on the device
        x = torch.view_as_real(v).permute(0, 3, 4, 1, 2).reshape(v.shape[0], 2 * npol, nt, nf)
        finite = torch.isfinite(x)
        initial = fl.any(dim=-1) | ~finite.all(dim=1) | (x == 0).all(dim=1)
        x = torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return flag_planes(x, initial, strat)[..., None] | fl

    out = np.empty(vis.shape, bool)
    # one intra-op thread on the host, as flag_visibilities (see device.host_threads)
    with host_threads(device, 1):
        return map_chunks(stage, [vis, flags], out, plan, device, progress)
