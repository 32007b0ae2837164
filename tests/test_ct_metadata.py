"""ctagrg.data.ct_metadata: a CT-RATE metadata row's spacing and rescale applied to a volume just read."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ctagrg.data.ct_metadata import CTMetadata, apply_metadata, metadata_affine, stored_values_are_hu
from ctagrg.data.ctvolume import CTVolume
from ctagrg.data.read_errors import CTReadWarning


def _chest(raw_offset: float, slope: float = 1.0, intercept: float = 0.0) -> CTVolume:
    """A 8x8x8 volume, half air (-1000 HU), half dense tissue (500 HU), stored as HU - raw_offset."""
    hu = np.full((8, 8, 8), 500.0, np.float32)
    hu[:4] = -1000.0
    return CTVolume(raw=(hu - raw_offset).astype(np.int16), slope=slope, intercept=intercept,
                    affine=np.diag([0.7, 0.7, 2.0, 1.0]), source="chest.nii.gz")


def test_stored_values_are_hu_picks_the_reading_with_air_and_lung() -> None:
    already, as_stored, rescaled = stored_values_are_hu(_chest(0.0), 1.0, -1024.0)
    assert already and as_stored == 0.5 and rescaled == 0.0
    already, as_stored, rescaled = stored_values_are_hu(_chest(-1024.0), 1.0, -1024.0)
    assert not already and as_stored == 0.0 and rescaled == 0.5


def test_apply_metadata_rescales_raw_values_once() -> None:
    raw = apply_metadata(_chest(-1024.0), CTMetadata(slope=1.0, intercept=-1024.0))
    assert (raw.slope, raw.intercept) == (1.0, -1024.0) and raw.hu_range() == (-1000.0, 500.0)
    with pytest.warns(CTReadWarning, match="already HU .*not rescaling again"):
        hu = apply_metadata(_chest(0.0), CTMetadata(slope=1.0, intercept=-1024.0))
    assert (hu.slope, hu.intercept) == (1.0, 0.0) and hu.hu_range() == (-1000.0, 500.0)


def test_metadata_affine_puts_z_spacing_on_the_slice_axis() -> None:
    vol = CTVolume(hu=np.zeros((4, 4, 4), np.float32), affine=np.diag([1.0, 1.0, 1.0, 1.0])[[2, 1, 0, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unit spacing in the header: no "differs" warning
        affine = metadata_affine(vol, CTMetadata(xy_spacing=(0.6, 0.8), z_spacing=3.0))
    # array axis 0 points superior: it gets ZSpacing; axes 1 and 2 get XYSpacing in array order
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), [3.0, 0.6, 0.8])
    assert np.allclose(affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0), vol.affine[:3, :3])
    assert metadata_affine(vol, CTMetadata()) is not vol.affine
    assert np.array_equal(metadata_affine(vol, CTMetadata()), vol.affine)
