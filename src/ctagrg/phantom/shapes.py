"""Geometry primitives for the phantoms: a voxel grid in patient millimetres and soft-edged analytic shapes.

Everything is drawn in the *patient frame*: ``x`` increases toward the patient's **left**, ``y`` toward
**posterior**, ``z`` toward **superior** (millimetres, origin near the centre of the chest). The volume array is
stored in the same axis order (x, y, z), which is what a DICOM-derived NIfTI with an LPS-like affine holds.

Shapes return *soft* masks in [0, 1] with a linear edge about one voxel wide. The soft edge is a cheap stand-in
for the partial-volume effect: a 4 mm nodule on a 2.5 mm grid still shows up as a few voxels of raised density
instead of vanishing or aliasing. Each shape is evaluated only inside its bounding box, so cost scales with the
shape's size, not with the volume's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in the patient frame.

    Args:
        shape: (nx, ny, nz) voxels along (left, posterior, superior).
        spacing: (sx, sy, sz) mm per voxel.
        origin: patient-frame mm of voxel (0, 0, 0).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, i: int) -> np.ndarray:
        """Coordinates (mm, float32) of the voxel centres along axis ``i``."""
        return (self.origin[i] + self.spacing[i] * np.arange(self.shape[i])).astype(np.float32)

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """Voxel slices covering the mm box [lo, hi] (clipped to the grid); None when it misses the grid."""
        out = []
        for i in range(3):
            a = int(np.floor((lo[i] - self.origin[i]) / self.spacing[i]))
            b = int(np.ceil((hi[i] - self.origin[i]) / self.spacing[i])) + 1
            a, b = max(a, 0), min(b, self.shape[i])
            if a >= b:
                return None
            out.append(slice(a, b))
        return out[0], out[1], out[2]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable mm coordinates (x: (n,1,1), y: (1,n,1), z: (1,1,n)) of the voxels in ``box``."""
        x = self.axis(0)[box[0]][:, None, None]
        y = self.axis(1)[box[1]][None, :, None]
        z = self.axis(2)[box[2]][None, None, :]
        return x, y, z

    @property
    def full(self) -> Box:
        return slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2])

    @property
    def edge(self) -> float:
        """Width (mm) of the soft edge: about one in-plane voxel."""
        return float(min(self.spacing[0], self.spacing[1]))


def _soft(signed_mm: np.ndarray, edge: float) -> np.ndarray:
    """Map a signed distance (mm, positive inside) to a [0, 1] coverage with a linear ramp ``edge`` mm wide."""
    return np.clip(signed_mm / edge + 0.5, 0.0, 1.0).astype(np.float32)


def ellipsoid(grid: Grid, center: np.ndarray, radii: np.ndarray,
              rotation: np.ndarray | None = None) -> tuple[Box, np.ndarray] | None:
    """Soft mask of an ellipsoid, optionally rotated.

    Args:
        center: (3,) mm. radii: (3,) semi-axes in mm along the ellipsoid's own axes.
        rotation: (3, 3) matrix whose columns are the ellipsoid's axes in the patient frame (None = aligned).

    Returns:
        (box, mask) with ``mask`` float32 of the box's shape, or None when the shape misses the grid.
    """
    center = np.asarray(center, np.float32)
    radii = np.asarray(radii, np.float32)
    reach = float(radii.max()) + grid.edge if rotation is not None else radii + grid.edge
    box = grid.box(center - reach, center + reach)
    if box is None:
        return None
    x, y, z = grid.coords(box)
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    if rotation is not None:
        r = np.asarray(rotation, np.float32)
        dx, dy, dz = (dx * r[0, i] + dy * r[1, i] + dz * r[2, i] for i in range(3))
    rho = np.sqrt((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2)
    # (1 - rho) * mean radius approximates the distance to the surface near it.
    return box, _soft((1.0 - rho) * float(radii.mean()), grid.edge)


def capsule(grid: Grid, p0: np.ndarray, p1: np.ndarray, radius: float) -> tuple[Box, np.ndarray] | None:
    """Soft mask of a tube of ``radius`` mm around the segment p0-p1 (mm), with rounded ends."""
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    reach = radius + grid.edge
    box = grid.box(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
    if box is None:
        return None
    x, y, z = grid.coords(box)
    d = p1 - p0
    length2 = float(d @ d) or 1e-6
    t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / length2, 0.0, 1.0)
    dist = np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)
    return box, _soft(radius - dist, grid.edge)


def paint(volume: np.ndarray, shape: tuple[Box, np.ndarray] | None, value: float | np.ndarray,
          within: np.ndarray | None = None) -> None:
    """Blend ``value`` (HU) into ``volume`` in place with the shape's coverage as weight.

    ``within`` (full-volume mask in [0, 1]) restricts the paint, e.g. to the lungs.
    ``value`` may be an array of the box's shape.
    """
    if shape is None:
        return
    box, m = shape
    if within is not None:
        m = m * within[box]
    sub = volume[box]
    sub += m * (value - sub)


# Random fields live on a lattice fixed in the patient frame, so every reconstruction of a patient (different
# spacing, slice count, field of view) samples the *same* texture, emphysema holes or septal network.
LATTICE_HALF_MM = 260.0


def _interp_matrix(coords: np.ndarray, step: float, n: int) -> np.ndarray:
    """(len(coords), n) linear-interpolation weights from lattice nodes at −LATTICE_HALF_MM + i·step."""
    pos = np.clip((coords + LATTICE_HALF_MM) / step, 0.0, n - 1.000001)
    i0 = np.floor(pos).astype(int)
    w = (pos - i0).astype(np.float32)
    out = np.zeros((len(coords), n), np.float32)
    rows = np.arange(len(coords))
    out[rows, i0] = 1.0 - w
    out[rows, i0 + 1] = w
    return out


def lattice_field(seed: int, grid: Grid, corr_mm: float) -> np.ndarray:
    """Smooth random field (float32, grid.shape; roughly zero-mean, std ≈ 0.6) with correlation ``corr_mm``.

    Gaussian values on a lattice of spacing ``corr_mm`` are interpolated trilinearly onto the grid. The lattice
    depends only on ``seed`` and ``corr_mm``; the interpolation is separable, so it costs three small matrix
    products instead of a full-volume filter.
    """
    n = int(np.ceil(2 * LATTICE_HALF_MM / corr_mm)) + 1
    lattice = np.random.default_rng(seed).standard_normal((n, n, n)).astype(np.float32)
    weights = []
    for i in range(3):
        w = _interp_matrix(grid.axis(i), corr_mm, n)
        used = np.flatnonzero(w.any(axis=0))  # only the lattice nodes this grid touches
        lattice = np.take(lattice, used, axis=i)
        weights.append(w[:, used])
    out = np.tensordot(weights[0], lattice, axes=(1, 0))  # (nx, b, c)
    out = np.tensordot(out, weights[1], axes=(1, 1))  # (nx, c, ny)
    out = np.tensordot(out, weights[2], axes=(1, 1))  # (nx, ny, nz)
    return np.ascontiguousarray(out, dtype=np.float32)
