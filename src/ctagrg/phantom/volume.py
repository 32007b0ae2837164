"""One phantom patient → one or more reconstructed volumes (HU arrays with a DICOM-like affine).

A *patient* (anatomy + findings) is drawn once from ``rng(seed, patient)``; each *reconstruction* samples its own
grid (pixel spacing, slice spacing, slice count, table position) and noise from ``rng(seed, patient, recon)``.
So all reconstructions of a patient show the same anatomy and findings, and any volume can be regenerated alone.

Orientation: the array is stored (x, y, z) = (toward left, toward posterior, toward superior), the voxel order
of a DICOM-derived NIfTI. Its nibabel RAS affine is ``diag(-sx, -sy, sz)`` plus an origin, i.e. axis codes
('L', 'P', 'S').
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctagrg.phantom import lesions
from ctagrg.phantom.anatomy import add_texture_and_noise, render_airways, render_body, sample_anatomy
from ctagrg.phantom.findings import Case, sample_case
from ctagrg.phantom.shapes import Grid

RESCALE_INTERCEPT = -1024.0  # raw = HU + 1024, as CT scanners store it
RESCALE_SLOPE = 1.0


@dataclass(frozen=True)
class SizePreset:
    """Grid ranges for one ``--size``: in-plane matrix, pixel spacing (mm) and slice spacing (mm) ranges."""

    matrix: int
    pixel_mm: tuple[float, float]
    slice_mm: tuple[float, ...]


SIZES: dict[str, SizePreset] = {
    # For unit tests: seconds for a handful of volumes; findings are coarse but present.
    "tiny": SizePreset(matrix=64, pixel_mm=(5.0, 5.6), slice_mm=(8.0, 10.0)),
    # The demo size: about 64 slices of 128 x 128 at ~4 x 2.5 x 2.5 mm.
    "small": SizePreset(matrix=128, pixel_mm=(2.3, 2.7), slice_mm=(4.0, 4.5)),
    # Like a CT-RATE scan (512 x 512 at ~0.7 mm, 1-1.5 mm slices): ~1 min per volume and 1.5 GB peak (measured).
    "paper": SizePreset(matrix=512, pixel_mm=(0.62, 0.78), slice_mm=(1.0, 1.25, 1.5)),
}


def patient_rng(seed: int, patient: int) -> np.random.Generator:
    return np.random.default_rng([seed, patient, 0])


def recon_rng(seed: int, patient: int, recon: int) -> np.random.Generator:
    return np.random.default_rng([seed, patient, recon + 1])


def make_case(seed: int, patient: int, min_prevalence: float = 0.0) -> Case:
    """Draw patient ``patient`` of dataset ``seed``: anatomy (scan range 240-300 mm) and findings."""
    rng = patient_rng(seed, patient)
    anatomy = sample_anatomy(rng, z_extent=float(rng.uniform(240, 300)))
    return sample_case(rng, anatomy, min_prevalence)


@dataclass
class Reconstruction:
    """A rendered volume: ``hu`` float32 (x, y, z) in HU, its grid, RAS affine and acquisition details."""

    hu: np.ndarray
    grid: Grid
    affine: np.ndarray
    table_lps: np.ndarray
    noise_hu: float

    def voxel_of(self, point_mm: np.ndarray) -> np.ndarray:
        """Fractional voxel index of a patient-frame point."""
        return (np.asarray(point_mm) - np.asarray(self.grid.origin)) / np.asarray(self.grid.spacing)

    def ras_of(self, point_mm: np.ndarray) -> np.ndarray:
        """RAS world mm of a patient-frame point (through the volume's affine)."""
        return (self.affine @ np.append(self.voxel_of(point_mm), 1.0))[:3]

    def raw(self) -> np.ndarray:
        """Stored values: int16 raw = (HU - intercept) / slope, HU clipped to the int16-safe CT range."""
        hu = np.clip(self.hu, -1024.0, 3071.0)
        return np.round((hu - RESCALE_INTERCEPT) / RESCALE_SLOPE).astype(np.int16)


def sample_grid(rng: np.random.Generator, case: Case, preset: SizePreset) -> Grid:
    """This reconstruction's grid: spacing from the preset, slices to cover the scan range, body near centre."""
    a = case.anatomy
    front, back = a.body_y_range
    # the body must fit the FOV: its width plus 2 x 10 mm, its depth plus the shifts below and 2 x 5 mm
    px = max(rng.uniform(*preset.pixel_mm), (2 * a.body_ax + 20.0) / preset.matrix,
             (back - front + 2 * (8.0 + 10.0) + 10.0) / (preset.matrix - 1))
    sz = float(rng.choice(preset.slice_mm))
    nz = int(round((a.z_top - a.z_bottom) / sz))
    shift = rng.uniform(-8, 8, 2)
    ox = -(preset.matrix - 1) / 2 * px + shift[0]
    # patients lie back on the table: the body sits 10 mm low (posterior) in the image
    oy = 0.5 * (front + back) - (preset.matrix - 1) / 2 * px + shift[1] - 10.0
    return Grid(shape=(preset.matrix, preset.matrix, nz), spacing=(px, px, sz), origin=(ox, oy, a.z_bottom))


def ras_affine(grid: Grid, table_lps: np.ndarray) -> np.ndarray:
    """RAS affine of an (L, P, S)-ordered array whose patient frame sits at ``table_lps`` in scanner LPS mm."""
    lps_origin = np.asarray(grid.origin) + table_lps
    affine = np.diag([-grid.spacing[0], -grid.spacing[1], grid.spacing[2], 1.0])
    affine[:3, 3] = [-lps_origin[0], -lps_origin[1], lps_origin[2]]
    return affine


def render(case: Case, grid: Grid, rng: np.random.Generator, texture_seed: int,
           noise_hu: float | None = None) -> Reconstruction:
    """Draw ``case`` on ``grid``: anatomy, findings, texture and noise (``noise_hu`` std; sampled when None)."""
    canvas = render_body(case.anatomy, grid)
    lesions.draw_mediastinal(canvas, case)
    render_airways(canvas, case.anatomy)
    lesions.draw_parenchymal(canvas, case)
    noise = float(rng.uniform(8.0, 18.0)) if noise_hu is None else noise_hu
    add_texture_and_noise(canvas, rng, noise, texture_seed)
    table = np.array([rng.uniform(-5, 5), rng.uniform(-40, 0), rng.uniform(-420, -150)])
    return Reconstruction(hu=canvas.hu, grid=grid, affine=ras_affine(grid, table), table_lps=table, noise_hu=noise)


def make_volume(seed: int, patient: int, recon: int, size: str = "small", case: Case | None = None,
                min_prevalence: float = 0.0) -> tuple[Case, Reconstruction]:
    """Patient ``patient``'s reconstruction ``recon`` (0-based) of dataset ``seed``, fully deterministic."""
    if size not in SIZES:
        raise ValueError(f"unknown phantom size {size!r}; valid sizes: {', '.join(SIZES)}")
    case = case if case is not None else make_case(seed, patient, min_prevalence)
    rng = recon_rng(seed, patient, recon)
    grid = sample_grid(rng, case, SIZES[size])
    texture_seed = int(np.random.default_rng([seed, patient, 2**20]).integers(2**31))
    return case, render(case, grid, rng, texture_seed)
