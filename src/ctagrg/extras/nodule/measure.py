"""Nodule diameter measured on the preprocessed volume: the largest solid sphere with aerated lung around it.

Research software, not for diagnostic use. Not part of the published CT-AGRG, which leaves sizes to the decoder; the
demo turns it on (the ``nodule_size`` post-processor) because its decoder does not write sizes from the visual
embedding (docs/demo-encoder.md). When a lung nodule is detected, the Reporter measures it in the lateral half (or
halves) where step 1 found it and states that diameter in the nodule's sentence instead of the number the decoder
wrote.

The measurement, on a volume in HU with known voxel spacing (mm) and SLP axes (axis 1 runs right -> left):

1. solid tissue: voxels above ``solid_hu``; its Euclidean distance transform (in mm, anisotropic spacing) gives at
   each solid voxel the radius of the largest solid sphere centred there;
2. candidates: the distance transform's local maxima (3 x 3 x 3) of at least ``min_radius_mm``;
3. isolation: of the 26 points ``gap_mm`` beyond the candidate's sphere (one per 3 x 3 x 3 neighbour direction),
   the fraction in aerated lung (below ``lung_hu``) must reach ``min_lung_fraction``. Mediastinum, hila, chest wall,
   consolidations and vessels entering the hila fail it; a nodule with lung around it passes, with a vessel or two
   touching it;
4. the largest such sphere in the half: diameter = 2 x its radius + ``offset_mm``. The offset absorbs the voxel
   grid (the distance is to the nearest voxel centre outside the nodule, and the sphere's centre lies between voxel
   centres) and the partial volume at the threshold; step 1 calibrates it on validation nodules whose report
   sentence states a size (:func:`calibrate_offset`).

A diameter is a whole-lesion measure; the 5 mm agreement of docs/demo-encoder.md is against phantom truth, where a
nodule is a solid ellipsoid. Real nodules (part-solid, juxtapleural, vessel-attached) have not been validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ctagrg.config import ConfigError

SIDES = ("right", "left")  # lateral halves along SLP axis 1: low indices are the patient's right


@dataclass
class NoduleSizeConfig:
    """Settings of the nodule measurement (HU thresholds, mm distances): the ``nodule_size`` report
    post-processor's options (reporter.json's ``postprocess``), calibrated by step 1's ``nodule_size`` extension.
    Defaults chosen on the demo's training and validation phantoms (docs/demo-encoder.md)."""

    solid_hu: float = -400.0  # solid tissue: above this (a solid nodule is 0-60 HU, lung -850)
    lung_hu: float = -700.0  # aerated lung: below this
    gap_mm: float = 4.5  # the isolation shell lies this far outside the candidate sphere
    min_lung_fraction: float = 0.7  # of the shell's 26 points in aerated lung
    min_radius_mm: float = 2.0  # smaller spheres are not candidates
    offset_mm: float = 2.0  # diameter = 2 x radius + offset_mm (calibrated by step 1 when it can be)
    calibration: dict[str, Any] = field(default_factory=dict)  # how offset_mm was chosen (written by step 1)

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "enabled": "removed: the section's presence turns the measurement on (extras.nodule_size in step 1, "
                   "postprocess.nodule_size in reporter.json)"}

    def __post_init__(self) -> None:
        if not self.solid_hu > self.lung_hu:
            raise ValueError(f"NoduleSizeConfig: solid_hu ({self.solid_hu}) must be above lung_hu ({self.lung_hu})")
        if self.gap_mm < 0 or self.min_radius_mm <= 0 or not 0 < self.min_lung_fraction <= 1:
            raise ValueError(f"NoduleSizeConfig: gap_mm >= 0, min_radius_mm > 0 and min_lung_fraction in (0, 1] "
                             f"needed; got {self.gap_mm}, {self.min_radius_mm}, {self.min_lung_fraction}")


def shell_directions(reach: int = 1) -> np.ndarray:
    """Unit vectors toward the integer points (a, b, c), |a|, |b|, |c| <= ``reach``, one per direction: (26, 3) for
    reach 1 (the neighbours of a voxel), (98, 3) for reach 2. With 98 each lies 16-27 degrees from its nearest
    (35-45 with 26), so a vessel 2-5 mm wide crossing a shell ~10 mm out meets a point. Closed under flipping any
    axis, so a mirrored volume gives exactly the mirrored points."""
    r = range(-reach, reach + 1)
    d = np.array([(a, b, c) for a in r for b in r for c in r
                  if (a, b, c) != (0, 0, 0) and np.gcd.reduce([abs(a), abs(b), abs(c)]) == 1], np.float64)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


DIRECTIONS = shell_directions(1)


@dataclass
class Spheres:
    """Candidate spheres of one volume: ``centres`` (N, 3) voxel indices, ``radii_mm`` (N,), and of their
    isolation shell's points the fraction in aerated lung (``lung_fraction``, (N,)) and the fraction inside the
    volume that is neither lung nor solid (``between_fraction``, (N,): fat, for the usual thresholds)."""

    centres: np.ndarray
    radii_mm: np.ndarray
    lung_fraction: np.ndarray
    between_fraction: np.ndarray


def solid_spheres(hu: np.ndarray, spacing_mm: Sequence[float], config: NoduleSizeConfig,
                  directions: np.ndarray = DIRECTIONS) -> Spheres:
    """The candidate spheres of a (D, H, W) volume in HU with voxel size ``spacing_mm`` (steps 1-3 above, before
    the isolation threshold; the shell's points lie along ``directions``, (N, 3) unit vectors, 26 by default).
    About 0.1-0.2 s for 64 x 128 x 128 voxels on one CPU core with 26 directions, 0.25 s with 98."""
    from scipy import ndimage

    if hu.ndim != 3:
        raise ValueError(f"solid_spheres: expected a (D, H, W) volume, got shape {hu.shape}")
    sp = np.asarray(spacing_mm, np.float64)
    solid = hu > config.solid_hu
    lung = hu < config.lung_hu
    radius = ndimage.distance_transform_edt(solid, sampling=sp)
    peaks = (radius >= config.min_radius_mm) & (radius == ndimage.maximum_filter(radius, size=3))
    centres = np.argwhere(peaks)
    radii = radius[peaks]
    # the shell points of each candidate, in voxels; points outside the volume count as not lung. The offsets are
    # rounded on their own (half to even), so that a mirrored volume gives exactly the mirrored points.
    offsets = np.rint((radii[:, None, None] + config.gap_mm) * directions[None] / sp).astype(np.int64)
    points = centres[:, None, :] + offsets
    shape = np.array(hu.shape)
    inside = np.all((points >= 0) & (points < shape), axis=2)
    p = np.clip(points, 0, shape - 1)
    if not len(centres):
        return Spheres(centres, radii, np.zeros(0), np.zeros(0))
    at = hu[p[..., 0], p[..., 1], p[..., 2]]
    in_lung = lung[p[..., 0], p[..., 1], p[..., 2]] & inside
    between = (at >= config.lung_hu) & (at <= config.solid_hu) & inside
    return Spheres(centres, radii, in_lung.mean(axis=1), between.mean(axis=1))


def largest_isolated_radius(spheres: Spheres, width: int, config: NoduleSizeConfig,
                            side: str | None = None) -> float | None:
    """Radius (mm) of the largest candidate that passes the isolation test, in the ``side`` half ("right": axis-1
    index below ``width / 2``, "left": at or above it; None: anywhere); None when there is none."""
    keep = spheres.lung_fraction >= config.min_lung_fraction
    if side is not None:
        if side not in SIDES:
            raise ValueError(f"largest_isolated_radius: side must be one of {SIDES} or None, got {side!r}")
        on_right = spheres.centres[:, 1] < width / 2 if len(spheres.centres) else np.zeros(0, bool)
        keep &= on_right if side == "right" else ~on_right
    return float(spheres.radii_mm[keep].max()) if keep.any() else None


def nodule_diameter_mm(hu: np.ndarray, spacing_mm: Sequence[float], config: NoduleSizeConfig,
                       sides: Sequence[str | None] = (None,)) -> float | None:
    """Diameter (mm) of the largest isolated solid sphere over ``sides`` (halves, or None for the whole volume):
    2 x radius + ``offset_mm``; None when no candidate passes."""
    spheres = solid_spheres(hu, spacing_mm, config)
    radii = [r for s in sides if (r := largest_isolated_radius(spheres, hu.shape[1], config, s)) is not None]
    return 2.0 * max(radii) + config.offset_mm if radii else None


def calibrate_offset(radii_mm: Sequence[float], stated_mm: Sequence[float]) -> float:
    """``offset_mm`` that centres 2 x radius + offset on the stated diameters: the median of the differences
    (robust to the few nodules whose measurement picked another structure)."""
    r, s = np.asarray(radii_mm, np.float64), np.asarray(stated_mm, np.float64)
    if r.shape != s.shape or r.size == 0:
        raise ValueError(f"calibrate_offset: need equally many radii and stated sizes, got {r.size} and {s.size}")
    return float(np.median(s - 2.0 * r))


def check_window(config: NoduleSizeConfig, hu_min: float, hu_max: float, where: str) -> None:
    """Raise ConfigError (a ValueError, naming ``where``) when the preprocessing's HU window [hu_min, hu_max]
    clips away the distinction the measurement needs: aerated lung below ``lung_hu``, solid tissue above
    ``solid_hu``."""
    if not (hu_min < config.lung_hu and hu_max > config.solid_hu):
        raise ConfigError(f"{where}: nodule_size needs an HU window that keeps lung (< {config.lung_hu:g} HU) and "
                         f"solid tissue (> {config.solid_hu:g} HU) apart; the preprocessing's is "
                         f"[{hu_min:g}, {hu_max:g}]")
