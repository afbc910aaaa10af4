"""Cross-matching positions against a reference catalogue with a KD-tree on the unit sphere.

Every position becomes a unit vector; two positions ``θ`` apart are a chord
``2 sin(θ/2)`` apart, so the nearest neighbour in 3-D is the nearest on the sky, with no
seam at RA 0/360 and no trouble at the poles. An image covers a small cap of the sky
while an NVSS-sized reference holds 1.8 million sources over the whole of it: the
reference is first cut to the cap around the image's sources (one vectorised dot
product), and only that cut goes into the tree. The cost is then linear in the
reference with a small constant, and memory a few arrays of its length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """(n, 3) Cartesian unit vectors of RA/Dec in degrees."""
    ra = np.radians(np.asarray(ra_deg, float))
    dec = np.radians(np.asarray(dec_deg, float))
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)


def chord(angle_deg: float | np.ndarray) -> float | np.ndarray:
    """The straight-line distance between unit vectors ``angle_deg`` apart."""
    return 2 * np.sin(np.radians(np.minimum(angle_deg, 180.0)) / 2)


def chord_to_deg(d: np.ndarray) -> np.ndarray:
    """The angle (deg) between unit vectors a chord ``d`` apart."""
    return np.degrees(2 * np.arcsin(np.clip(np.asarray(d, float) / 2, 0.0, 1.0)))


@dataclass
class Cap:
    """A spherical cap: the unit vector of its centre and its radius in degrees."""

    centre: np.ndarray
    radius_deg: float

    @classmethod
    def around(cls, vectors: np.ndarray, margin_deg: float) -> Cap:
        """The cap about the mean direction of ``vectors`` that holds them all, plus a margin."""
        if len(vectors) == 0:
            return cls(np.array([0.0, 0.0, 1.0]), 0.0)
        mean = vectors.sum(axis=0)
        norm = float(np.linalg.norm(mean))
        if norm < 1e-9:  # positions all round the sphere: the whole sky
            return cls(np.array([0.0, 0.0, 1.0]), 180.0)
        centre = mean / norm
        widest = float(np.degrees(np.arccos(np.clip((vectors @ centre).min(), -1.0, 1.0))))
        return cls(centre, min(180.0, widest + margin_deg))

    def contains(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
        """Which of the positions lie inside the cap.

        A declination band first (two comparisons per row: a small cap keeps a sliver of
        an all-sky catalogue), then the exact test, with its trigonometry, on that sliver.
        """
        ra_deg = np.asarray(ra_deg, float)
        dec_deg = np.asarray(dec_deg, float)
        inside = np.zeros(ra_deg.shape, bool)
        cx, cy, cz = self.centre
        dec_c = float(np.degrees(np.arcsin(np.clip(cz, -1.0, 1.0))))
        lo, hi = dec_c - self.radius_deg - 1e-9, dec_c + self.radius_deg + 1e-9
        band = np.flatnonzero((dec_deg >= lo) & (dec_deg <= hi)) if (lo > -90 or hi < 90) \
            else np.arange(ra_deg.size)
        ra = np.radians(ra_deg[band])
        dec = np.radians(dec_deg[band])
        cos_dec = np.cos(dec)
        dot = cos_dec * (cx * np.cos(ra) + cy * np.sin(ra)) + cz * np.sin(dec)
        inside[band] = dot >= np.cos(np.radians(self.radius_deg))
        return inside


@dataclass
class Match:
    """For each query position: the nearest reference row (``index``, -1 when none lies
    within the radius) and its separation in degrees (inf when none)."""

    index: np.ndarray
    separation_deg: np.ndarray

    @property
    def matched(self) -> np.ndarray:
        return self.index >= 0


def nearest(ra_deg: np.ndarray, dec_deg: np.ndarray, ref_ra_deg: np.ndarray, ref_dec_deg: np.ndarray,
            radius_deg: float) -> Match:
    """The nearest reference source within ``radius_deg`` of each query position."""
    from scipy.spatial import cKDTree

    q = unit_vectors(ra_deg, dec_deg).reshape(-1, 3)
    n = len(q)
    index = np.full(n, -1, dtype=np.int64)
    sep = np.full(n, np.inf)
    if n == 0 or len(ref_ra_deg) == 0:
        return Match(index, sep)
    cap = Cap.around(q, radius_deg)
    rows = np.flatnonzero(cap.contains(ref_ra_deg, ref_dec_deg))
    if rows.size == 0:
        return Match(index, sep)
    tree = cKDTree(unit_vectors(np.asarray(ref_ra_deg)[rows], np.asarray(ref_dec_deg)[rows]))
    d, j = tree.query(q, k=1, distance_upper_bound=float(chord(radius_deg)) * (1 + 1e-12))
    ok = np.isfinite(d)
    index[ok] = rows[j[ok]]
    sep[ok] = chord_to_deg(d[ok])
    return Match(index, sep)
