"""Helpers for the cnn3d stem-channel tests: small HU volumes with balls and tubes, and their preprocessed form."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SHAPE = (16, 32, 32)  # (D, H, W) voxels
MM = (4.0, 2.0, 2.0)  # voxel size (mm)
HU = (-1000.0, 1500.0, 0.449)  # the demo's preprocessing window and offset


def preprocessed(hu: np.ndarray) -> torch.Tensor:
    """(D, H, W) HU -> (1, 1, D, H, W) float32 as the preprocessing writes it (window ``HU``)."""
    lo, hi, off = HU
    return torch.from_numpy(((hu - lo) / (hi - lo) - off).astype(np.float32))[None, None]


def points_mm(shape: Sequence[int] = SHAPE, mm: Sequence[float] = MM) -> np.ndarray:
    """(D, H, W, 3) the voxel positions in mm."""
    d, h, w = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return np.stack([d * mm[0], h * mm[1], w * mm[2]], -1)


def ball(hu: np.ndarray, centre_mm: Sequence[float], radius_mm: float, value: float = 40.0) -> None:
    """Paint a ball of ``value`` HU into ``hu`` (shape ``SHAPE``)."""
    hu[np.linalg.norm(points_mm() - np.asarray(centre_mm), axis=-1) <= radius_mm] = value
