"""The inverse FFT of one w plane, pruned to the cells that hold data and the pixels kept.

:func:`cosmic_horizons_lab.science.gridding.dirty_image` spreads the visibilities onto w
planes; this module turns each plane into its contribution to the image. A w plane of the
``nv × nu`` oversampled grid is zero outside the block of cells the data touch (about a
third to a half of each axis at a cell of ``1 / (4 u_max)``), and only ``npix`` of the
``σ npix`` outputs along each axis are kept, so the 2-D FFT is pruned as ducc0's is: along u
only the rows that hold data, along v only the image's columns. On the CPU both halves run
in blocks that stay in a core's cache (:meth:`PlaneTransform.add_into`): rows transformed
along u and their image columns moved out at once, then columns transformed along v and
added into the Horner sum of the planes at once. Measured at 1e6 visibilities on a 2048²
image (17 planes of 3072²), this took gridding + FFT from 0.51 to 0.76 of ducc0's speed
in process CPU time.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import TYPE_CHECKING

import numpy as np
import torch

from cosmic_horizons_lab.science import gridding_loops as loops

if TYPE_CHECKING:
    from cosmic_horizons_lab.science.gridding import ImageGeometry

#: Image columns per block of the fused v transform and Horner step on the CPU, and plane
#: rows per block of the u transform and transpose: a block (``16 × 3072`` complex64, 0.4
#: MB) stays in a core's L2.
COLUMN_BLOCK = 16
ROW_BLOCK = 16


def ifft_rows_unnormalised(x: torch.Tensor, out: torch.Tensor | None,
                            workers: int = 1) -> torch.Tensor:
    """``Σ_k x_k exp(+2πi k j / N)`` along the rows (last axis) of a 2-D complex64 tensor.

    On the CPU this runs in place in ``x`` (when its rows are contiguous in memory),
    through ``scipy.fft`` (pocketfft, multithreaded and in single precision), measured
    2-3x faster than torch's CPU FFT on the batched row transforms of a w plane; on a
    GPU it is cuFFT through ``torch.fft``, into ``out`` when given. Both are spelled
    with ``norm="forward"``, see :func:`.gridding.ifft2_unnormalised`.
    """
    if x.device.type == "cpu":
        try:
            import scipy.fft
        except ImportError:  # pragma: no cover - scipy is a dependency of the science extra
            pass
        else:
            # in place: a fresh output of this size would cost page faults every plane
            res = scipy.fft.ifft(x.numpy(), axis=1, norm="forward", workers=workers,
                                 overwrite_x=True)
            if not np.shares_memory(res, x.numpy()):
                x.copy_(torch.from_numpy(res))
            return x
    return torch.fft.ifft(x, dim=1, norm="forward", out=out)


def wrapped_segments(lo: int, count: int, n: int) -> list[tuple[int, int, int]]:
    """Cells ``lo .. lo + count - 1`` of a periodic axis of ``n`` as contiguous runs
    ``(source offset, wrapped start, length)``; more than one run when they wrap."""
    runs, src = [], 0
    while src < count:
        start = (lo + src) % n
        length = min(count - src, n - start)
        runs.append((src, start, length))
        src += length
    return runs


class PlaneTransform:
    """Image pixels of the unnormalised inverse FFT of one w plane, held on a compact grid.

    The plane is zero except on the block of cells the data touch, ``nrow`` rows
    from ``vlo`` and ``ncol`` columns from ``ulo`` of the periodic ``nv × nu``
    grid. The plane buffer holds that block from its corner, each row ``stride``
    cells long (``max(ncol, nu)``): a shift of the input by ``(vlo, ulo)`` cells
    is a phase ``exp(2πi (ulo jx / nu + vlo jy / nv))`` on the output, the same for
    every plane, which :func:`.gridding.dirty_image` applies once at the end (:meth:`phase`)
    instead of wrapping every plane onto the grid.

    Instead of one full 2-D FFT of the oversampled grid followed by a roll and a
    crop, the FFT runs along u, in place, only on the rows that hold data (about
    half of them), then along v only for the image's columns (half of them, from
    a transposed buffer whose rows past ``nrow`` stay zero). Data beyond the grid's
    band (``ncol > nu`` or ``nrow > nv``) are folded back first (aliasing).
    """

    def __init__(self, nrow: int, ncol: int, vlo: int, ulo: int, nv: int, nu: int,
                 geom: ImageGeometry, device: torch.device) -> None:
        self.nrow, self.ncol, self.nv, self.nu = nrow, ncol, nv, nu
        self.vlo, self.ulo = vlo, ulo
        self.stride = max(ncol, nu)
        self.rows_in = min(nrow, nv)  # rows of the v transform's input that can hold data
        oy, ox = geom.npix_y // 2, geom.npix_x // 2
        # image row i <- FFT row (i - oy) mod nv, and likewise for columns
        self.out_rows = wrapped_segments(-oy, geom.npix_y, nv)
        self.out_cols = wrapped_segments(-ox, geom.npix_x, nu)
        self.geom = geom
        self.device = device
        self.workers = torch.get_num_threads()  # FFT threads on the CPU (coarse-grained)
        #: whether :meth:`add_into` runs (the CPU, no rows beyond the band to fold back)
        self.fused = device.type == "cpu" and nrow <= nv
        self._tall: tuple[torch.Tensor, torch.Tensor] | None = None
        self._compact: np.ndarray | None = None  # add_into's (npix_x, nrow) buffer

    @property
    def tall(self) -> torch.Tensor:
        """The transposed (x, v) buffer of :meth:`__call__`'s v transform: along its contiguous
        rows a batched FFT is several times faster than along strided columns on the CPU.
        Allocated on first use (:meth:`add_into` needs none)."""
        if self._tall is None:
            shape = (self.geom.npix_x, self.nv)
            self._tall = (torch.zeros(shape, dtype=torch.complex64, device=self.device),
                          torch.empty(shape, dtype=torch.complex64, device=self.device))
        return self._tall[0]

    @property
    def tall_f(self) -> torch.Tensor:
        self.tall  # noqa: B018 - allocates both
        assert self._tall is not None
        return self._tall[1]

    @property
    def cells(self) -> int:
        """Size of one plane buffer."""
        return self.nrow * self.stride

    def _u_transform(self, grid: torch.Tensor) -> torch.Tensor:
        """The plane's rows transformed along u, in place: ``(nrow, nu)``."""
        g = grid.view(self.nrow, self.stride)
        for start in range(self.nu, self.ncol, self.nu):  # columns beyond the band alias
            length = min(self.nu, self.ncol - start)
            g[:, :length] += g[:, start:start + length]
        return ifft_rows_unnormalised(g[:, :self.nu], None, self.workers)

    def add_into(self, grid: torch.Tensor, acc: np.ndarray, step: np.ndarray,
                 use_step: bool) -> None:
        """``acc ← acc · step + transform`` (``use_step``; else ``acc += transform``), the
        transform as :meth:`__call__`'s, on the CPU (:attr:`fused`); ``grid`` is left zeroed.

        Both halves run in blocks that stay in a core's cache, shared out between
        :attr:`workers` threads (the compiled loops and scipy's FFT release the GIL): blocks
        of :data:`ROW_BLOCK` rows are transformed along u, their image columns transposed
        into a compact ``(npix_x, nrow)`` buffer and cleared; then blocks of
        :data:`COLUMN_BLOCK` image columns are zero-padded, transformed along v and added
        into ``acc`` at once. The plane and the image go through memory once each per plane,
        where whole-plane passes (transform, gather, transform, add, clear) went five times.
        """
        g = grid.view(self.nrow, self.stride)
        for start in range(self.nu, self.ncol, self.nu):  # columns beyond the band alias
            length = min(self.nu, self.ncol - start)
            g[:, :length] += g[:, start:start + length]
        g = g.numpy()
        nx, n = self.geom.npix_x, self.rows_in
        if self._compact is None or self._compact.shape != (nx, n):
            self._compact = np.empty((nx, n), np.complex64)
        tall = self._compact
        row_blocks = list(range(0, n, ROW_BLOCK))
        _share(_rows_into, row_blocks, self.workers, g, self.nu, -(nx // 2), tall)
        col_blocks = list(range(0, nx, COLUMN_BLOCK))
        _share(_columns_into, col_blocks, self.workers, tall, acc, step, use_step,
               -(self.geom.npix_y // 2), self.nv)

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        """The (npix_x, nv) transform, transposed: image pixel (i, j) is element
        ``(j, (i - oy) mod nv)`` of it (see ``out_rows``), times :meth:`phase`'s conjugate.
        ``grid`` is overwritten."""
        wide = self._u_transform(grid)
        n = self.rows_in
        if self.tall.device.type == "cpu":  # the CPU FFT below works in place
            self.tall[:, n:].zero_()
        for csrc, cdst, clen in self.out_cols:
            target = self.tall[csrc:csrc + clen, :n]
            target.copy_(wide[:n, cdst:cdst + clen].T)
            for start in range(self.nv, self.nrow, self.nv):  # rows beyond the band alias
                length = min(self.nv, self.nrow - start)
                self.tall[csrc:csrc + clen, :length] += wide[start:start + length,
                                                             cdst:cdst + clen].T
        return ifft_rows_unnormalised(self.tall, self.tall_f, self.workers)

    def phase_turns(self) -> tuple[float, float]:
        """``(ulo / nu, vlo / nv)``: the output's phase is ``2π (that · (jx, jy))`` turns."""
        return self.ulo / self.nu, self.vlo / self.nv


_local = threading.local()
_pools: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _column_pool(n_threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """A process-wide pool of ``n_threads`` threads for :meth:`PlaneTransform.add_into`
    (started once: a thread per plane would cost more than a block's work)."""
    with _pools_lock:
        pool = _pools.get(n_threads)
        if pool is None:
            pool = _pools[n_threads] = concurrent.futures.ThreadPoolExecutor(
                n_threads, thread_name_prefix="plane-columns")
        return pool


def _share(fn, blocks: list[int], workers: int, *args) -> None:
    """``fn(blocks[k::workers], *args)`` for every k, on the column pool's threads."""
    n_threads = max(1, min(workers, len(blocks)))
    if n_threads == 1:
        fn(blocks, *args)
        return
    pool = _column_pool(n_threads)
    futures = [pool.submit(fn, blocks[k::n_threads], *args) for k in range(n_threads)]
    for f in futures:
        f.result()


def _block_fft(src: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The unnormalised inverse FFT along the rows of ``src`` (at most ``shape``), into an
    output buffer of this thread's own (overwritten by the next call on the thread).

    Through ``torch.fft`` (MKL on x86), on the calling thread: on blocks of 16 rows of 3072
    it took 0.8× the CPU time of scipy's pocketfft (single-threaded both, as here).
    """
    bufs = getattr(_local, "fft", None)
    if bufs is None:
        bufs = _local.fft = {}
    full = bufs.get(shape)
    if full is None:
        full = bufs[shape] = torch.empty(shape, dtype=torch.complex64)
    out = full[:src.shape[0]]
    torch.fft.ifft(torch.from_numpy(src), dim=1, norm="forward", out=out)
    return out.numpy()


def _rows_into(blocks: list[int], g: np.ndarray, nu: int, first_col: int,
               tall: np.ndarray) -> None:
    """Transform the plane's rows of ``blocks`` (their first rows) along u, move their image
    columns into ``tall`` and clear them."""
    n = tall.shape[1]
    for r0 in blocks:
        r1 = min(n, r0 + ROW_BLOCK)
        res = _block_fft(g[r0:r1, :nu], (ROW_BLOCK, nu))
        loops.rows_to_columns(res, r0, first_col, tall, g[r0:r1])


def _columns_into(blocks: list[int], tall: np.ndarray, acc: np.ndarray, step: np.ndarray,
                  use_step: bool, first_row: int, nv: int) -> None:
    """Zero-pad, transform along v and add the image columns of ``blocks`` (their first
    columns) into ``acc``, in a buffer of this thread's own."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.shape != (COLUMN_BLOCK, nv):
        buf = _local.buf = np.empty((COLUMN_BLOCK, nv), np.complex64)
    nx = acc.shape[0]
    for x0 in blocks:
        x1 = min(nx, x0 + COLUMN_BLOCK)
        b = buf[:x1 - x0]
        loops.pad_columns(tall, x0, x1, b)
        res = _block_fft(b, (COLUMN_BLOCK, nv))
        loops.horner_block(acc, step, res, x0, x1, first_row, use_step)
