"""The node channel: "a soft-tissue ball ringed by fat" (an enlarged lymph node). The sphere channel's finder with
soft tissue above ``hu[1]`` as solid and aerated lung below ``hu[0]``; a candidate of radius within ``radius_mm``
scores the fraction of its 98 shell points ``gap_mm`` outside it that are neither (fat, in the mediastinum) plus
``lung_weight`` x the fraction in lung (a hilar node borders the lung). A tube (the aorta, the esophagus) meets
itself along its axis, so it scores less than a ball (docs/demo-encoder.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctagrg.extras.cnn3d.channels.sphere import SPHERE_DIRECTIONS
from ctagrg.extras.nodule.measure import NoduleSizeConfig, solid_spheres


def _pair(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"CNN3DConfig.node.{name}: expected two numbers, got {value!r}")
    return float(value[0]), float(value[1])


@dataclass
class NodeConfig:
    """``hu``: aerated lung below the first, solid (soft tissue, not fat) above the second (HU); ``radius_mm``:
    (min, max) radius of a candidate."""

    enabled: bool = False
    hu: tuple[float, float] = (-400.0, -30.0)
    gap_mm: float = 3.0
    radius_mm: tuple[float, float] = (5.0, 13.0)
    lung_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.enabled:
            self._check()

    def _check(self) -> None:
        """Normalise the fields and raise ValueError naming the first one that is wrong."""
        self.hu = _pair("hu", self.hu)
        self.radius_mm = _pair("radius_mm", self.radius_mm)
        if not self.hu[0] < self.hu[1]:
            raise ValueError(f"CNN3DConfig.node.hu must increase (lung below the first, solid above the second), "
                             f"got {list(self.hu)}")
        if not self.gap_mm >= 0:  # NaN fails too
            raise ValueError(f"CNN3DConfig.node.gap_mm must be >= 0, got {self.gap_mm}")
        if not 0 < self.radius_mm[0] <= self.radius_mm[1]:
            raise ValueError(f"CNN3DConfig.node.radius_mm must be (min, max) with 0 < min <= max, got "
                             f"{list(self.radius_mm)}")
        if not 0 <= self.lung_weight <= 1:
            raise ValueError(f"CNN3DConfig.node.lung_weight must be in [0, 1], got {self.lung_weight}")


def node_candidates(hu: np.ndarray, voxel_mm: Sequence[float], config: NodeConfig) -> tuple[np.ndarray, np.ndarray]:
    """(D, H, W) HU -> (centres (N, 3) voxel indices, scores (N,)) of the candidate balls within ``radius_mm``."""
    finder = NoduleSizeConfig(solid_hu=config.hu[1], lung_hu=config.hu[0], gap_mm=config.gap_mm,
                              min_radius_mm=config.radius_mm[0])
    found = solid_spheres(hu, voxel_mm, finder, SPHERE_DIRECTIONS)
    keep = found.radii_mm <= config.radius_mm[1]
    score = found.between_fraction + config.lung_weight * found.lung_fraction
    return found.centres[keep], score[keep]
