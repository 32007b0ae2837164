"""The sphere channel: "an isolated solid sphere" (a nodule). Per patch, the best candidate of the nodule
measurement's sphere finder (:func:`ctagrg.extras.nodule.measure.solid_spheres`: local maxima of the solid tissue's
distance transform), scored by the fraction of 98 shell points ``gap_mm`` outside it that lie in aerated lung, plus
``radius_weight`` x min(radius, ``radius_cap_mm``) / cap; 0 where no candidate of at least ``min_radius_mm`` is
centred. 98 points 16-27 degrees apart meet a vessel that slips between the blob channel's 26
(docs/demo-encoder.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctagrg.extras.nodule.measure import NoduleSizeConfig, shell_directions, solid_spheres

SPHERE_DIRECTIONS = shell_directions(2)  # the 98 shell directions of the sphere and node channels


@dataclass
class SphereConfig:
    """``hu``: aerated lung below the first, solid tissue above the second (HU)."""

    enabled: bool = False
    hu: tuple[float, float] = (-700.0, -400.0)
    gap_mm: float = 4.5
    min_radius_mm: float = 2.7
    radius_weight: float = 0.5
    radius_cap_mm: float = 10.0

    def __post_init__(self) -> None:
        self.hu = tuple(float(v) for v in self.hu)  # type: ignore[assignment]
        if self.enabled and (not self.hu[0] < self.hu[1] or self.gap_mm < 0 or self.min_radius_mm <= 0
                             or self.radius_cap_mm <= 0 or self.radius_weight < 0):
            raise ValueError(f"CNN3DConfig.sphere: hu must increase (lung, solid), gap_mm and radius_weight >= 0, "
                             f"min_radius_mm and radius_cap_mm positive; got {list(self.hu)}, {self.gap_mm}, "
                             f"{self.radius_weight}, {self.min_radius_mm}, {self.radius_cap_mm}")


def sphere_candidates(hu: np.ndarray, voxel_mm: Sequence[float],
                      config: SphereConfig) -> tuple[np.ndarray, np.ndarray]:
    """(D, H, W) HU -> (centres (N, 3) voxel indices, scores (N,)) of the candidate spheres."""
    finder = NoduleSizeConfig(solid_hu=config.hu[1], lung_hu=config.hu[0], gap_mm=config.gap_mm,
                              min_radius_mm=config.min_radius_mm)
    found = solid_spheres(hu, voxel_mm, finder, SPHERE_DIRECTIONS)
    score = found.lung_fraction + config.radius_weight * (
        np.minimum(found.radii_mm, config.radius_cap_mm) / config.radius_cap_mm)
    return found.centres, score


def max_per_patch(out: np.ndarray, centres: np.ndarray, score: np.ndarray, patch: Sequence[int]) -> None:
    """``out`` (d, h, w) = max(out, the best ``score`` of the ``centres`` (N, 3 voxel indices) in each patch)."""
    if len(centres):
        cell = centres // np.asarray(patch)
        np.maximum.at(out, (cell[:, 0], cell[:, 1], cell[:, 2]), score.astype(np.float32))
