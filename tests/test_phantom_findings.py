"""Each phantom finding changes the image where, and how, it should.

For every label we draw the same patient twice on the same noise-free grid, without and with that one finding,
and check the difference: its HU, its place (side, lobe, height, front/back) and its size.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from ctagrg.labels import LABELS
from ctagrg.phantom.anatomy import Anatomy, render_body, sample_anatomy
from ctagrg.phantom.findings import SAMPLERS, Case, Finding, _nodes_station_center
from ctagrg.phantom.shapes import Grid
from ctagrg.phantom.volume import render

SPACING = (2.5, 2.5, 4.0)


def _grid(anat: Anatomy) -> Grid:
    nz = int(round((anat.z_top - anat.z_bottom) / SPACING[2]))
    return Grid(shape=(128, 128, nz), spacing=SPACING, origin=(-63.5 * 2.5, -63.5 * 2.5 - 10.0, anat.z_bottom))


def _draw(anat: Anatomy, findings: list[Finding]) -> np.ndarray:
    case = Case(anatomy=anat, age=60, sex="F", findings=findings)
    return render(case, _grid(anat), np.random.default_rng(0), texture_seed=1, noise_hu=0.0).hu


@pytest.fixture(scope="module")
def base() -> tuple[Anatomy, np.ndarray]:
    anat = sample_anatomy(np.random.default_rng(42), z_extent=270.0)
    return anat, _draw(anat, [])


def _with(base: tuple[Anatomy, np.ndarray], label: str, seed: int = 3,
          **want: object) -> tuple[Anatomy, Finding, np.ndarray, np.ndarray]:
    """Sample ``label`` on a copy of the anatomy (until its attributes match ``want``) and draw it."""
    anat0, hu0 = base
    for s in range(seed, seed + 200):
        anat = copy.deepcopy(anat0)
        finding = SAMPLERS[label](np.random.default_rng(s), anat)
        if all(getattr(finding, k) == v for k, v in want.items()):
            return anat, finding, hu0, _draw(anat, [finding])
    raise AssertionError(f"no {label} sample with {want}")


def _coords(anat: Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = _grid(anat)
    return g.coords(g.full)


def _changed(hu0: np.ndarray, hu1: np.ndarray, thr: float = 30.0) -> np.ndarray:
    return np.abs(hu1 - hu0) > thr


def _centroid(mask: np.ndarray, anat: Anatomy) -> np.ndarray:
    x, y, z = _coords(anat)
    w = mask.astype(np.float64)
    return np.array([(w * x).sum(), (w * y).sum(), (w * z).sum()]) / w.sum()


def test_every_label_has_a_sampler_and_is_drawn(base):
    assert set(SAMPLERS) == set(LABELS)
    for label in LABELS:
        _, f, hu0, hu1 = _with(base, label)
        assert f.label == label
        assert _changed(hu0, hu1).sum() > 5, f"{label} left the image unchanged"


@pytest.mark.parametrize("side", ["right", "left"])
def test_nodule_has_its_size_place_and_density(base, side):
    anat, f, hu0, hu1 = _with(base, "Lung nodule", side=side)
    x, y, z = _coords(anat)
    i, j, k = ((c - o) / s for c, o, s in zip(f.center, _grid(anat).origin, SPACING, strict=True))
    at_center = hu1[round(i), round(j), round(k)]
    # big nodules are solid (40 HU) at the centre; smaller ones are partial-volumed across the 4 mm slices and the
    # soft edge (a 13 mm one reads about -10 HU there) but still far above lung (-860 HU)
    assert abs(at_center - 40.0) < 25.0 if f.size_mm >= 16 else at_center > -600.0
    dist = np.sqrt((x - f.center[0]) ** 2 + (y - f.center[1]) ** 2 + (z - f.center[2]) ** 2)
    changed = _changed(hu0, hu1, 100.0)
    assert dist[changed].max() <= f.size_mm / 2 * 1.1 + 4.0
    assert np.sign(f.center[0]) == (1 if side == "left" else -1)
    assert f.lobe.startswith(side) and 4 <= f.size_mm <= 30


def test_nodule_volume_matches_its_diameter(base):
    for seed in range(3, 60):
        anat, f, hu0, hu1 = _with(base, "Lung nodule", seed=seed)
        if f.size_mm >= 14:
            break
    # HU excess over lung, integrated, divided by the nodule's contrast = its volume (partial volume included)
    excess = np.clip(hu1 - hu0, 0, None).sum() * np.prod(SPACING) / (40.0 + 860.0)
    sphere = np.pi / 6 * f.size_mm**3
    assert 0.6 * sphere < excess < 1.5 * sphere


@pytest.mark.parametrize("side", ["right", "left", "bilateral"])
def test_pleural_effusion_is_dependent_fluid_on_its_side(base, side):
    anat, f, hu0, hu1 = _with(base, "Pleural effusion", side=side)
    x, y, z = _coords(anat)
    fluid = _changed(hu0, hu1, 200.0) & (np.abs(hu1 - 5.0) < 20.0)
    assert fluid.sum() * np.prod(SPACING) > 5000.0  # > 5 ml
    for s, sign in (("right", -1), ("left", 1)):
        on_side = fluid & (np.sign(x) == sign)
        if side in (s, "bilateral"):
            lung = anat.lung(s)
            assert on_side.sum() > 0.3 * fluid.sum() / (2 if side == "bilateral" else 1)
            c = _centroid(on_side, anat)
            assert c[1] > lung.yc + 0.3 * lung.ay  # posterior (dependent)
            assert c[2] < lung.z_recess + 0.35 * (lung.z_apex - lung.z_recess)  # basal
        else:
            assert on_side.sum() == 0


@pytest.mark.parametrize("seed", [3, 11])
def test_consolidation_is_pleural_based_dense_in_its_lobe_with_air_bronchograms(base, seed):
    anat, f, hu0, hu1 = _with(base, "Consolidation", seed=seed)
    x, y, z = _coords(anat)
    lung = anat.lung(f.side)
    depth = lung.signed_mm(*np.broadcast_arrays(x, y, z))  # mm inside its lung's surface (pleura, mediastinum)
    side_lung = (np.sign(x) == (1 if f.side == "left" else -1)) & (depth > -2.0)
    dense = _changed(hu0, hu1, 200.0) & (np.abs(hu1 - 35.0) < 40.0)
    assert dense.sum() * np.prod(SPACING) > 0.1 * np.pi / 6 * f.size_mm**3  # a sizeable region
    # in its own lung (within the soft edge's partial volume); it may engulf vessels near the hilum, whose
    # partial-volume voxels were not below -700 HU before
    assert np.mean(side_lung[dense]) > 0.99 and np.mean(hu0[dense] < -150.0) > 0.99
    lobes = lung.lobe(f.side, *np.broadcast_arrays(x, y, z))
    assert np.mean(lobes[dense] == f.params["lobe"]) > 0.98  # ... and lobe (the soft edge aside)
    assert f.lobe == f"{f.side} {f.params['lobe']} lobe"
    # pleural-based: it reaches the lung surface, unlike a nodule
    assert depth[dense].min() < 5.0
    assert np.sum(dense & (depth > 10.0)) > 0  # and fills lung behind the pleura
    # air bronchograms: voxels the finding changed that are air (lung is -860 HU here; without the tubes this is 0)
    assert np.sum(_changed(hu0, hu1, 30.0) & (hu1 < -900)) > 3


def test_atelectasis_is_a_dense_band_with_volume_loss(base):
    anat, f, hu0, hu1 = _with(base, "Atelectasis", side="right")
    assert anat.dome_raise["right"] >= 10.0 and anat.dome_raise["left"] == 0.0
    x, y, z = _coords(anat)
    dense = (hu1 - hu0 > 300.0) & (np.abs(hu1 - 25.0) < 40.0)
    c = _centroid(dense, anat)
    lung = anat.lung("right")
    assert c[0] < 0 and c[2] < lung.z_recess + 0.55 * (lung.z_apex - lung.z_recess)
    left = x > 0
    assert np.abs(hu1 - hu0)[np.broadcast_to(left, hu0.shape)].max() < 1.0  # the other lung is untouched


def test_opacity_is_ground_glass(base):
    anat, f, hu0, hu1 = _with(base, "Lung opacity", side="left")
    changed = _changed(hu0, hu1, 100.0)
    assert -750.0 < np.median(hu1[changed]) < -450.0
    assert _centroid(changed, anat)[0] > 0


def test_emphysema_is_below_950_and_upper_lobe_predominant(base):
    anat, f, hu0, hu1 = _with(base, "Emphysema")
    holes = _changed(hu0, hu1, 30.0) & (hu1 < -950.0)
    assert holes.sum() * np.prod(SPACING) > 20000.0
    lung = anat.lung("right")
    z = _coords(anat)[2]
    upper = np.broadcast_to(lung.height(z) > 0.55, hu0.shape)
    assert (holes & upper).sum() > 0.8 * holes.sum()


def test_mosaic_alternates_density_in_both_lungs(base):
    anat, f, hu0, hu1 = _with(base, "Mosaic attenuation pattern")
    diff = hu1 - hu0
    lung = (hu0 < -700) & (hu0 > -950)
    assert (diff[lung] > 50).mean() > 0.15 and (diff[lung] < -50).mean() > 0.15
    x = np.broadcast_to(_coords(anat)[0], hu0.shape)
    assert np.abs(diff[lung & (x > 0)]).mean() > 40 and np.abs(diff[lung & (x < 0)]).mean() > 40


def test_septal_lines_are_peripheral(base):
    anat, f, hu0, hu1 = _with(base, "Interlobular septal thickening", side="bilateral")
    changed = hu1 - hu0 > 100.0
    x, y, z = _coords(anat)
    depth = np.maximum(anat.lung("right").signed_mm(x, y, z), anat.lung("left").signed_mm(x, y, z))
    assert changed.sum() > 200
    assert np.median(depth[changed]) < 15.0


def test_fibrotic_sequela_is_linear_and_apical(base):
    anat, f, hu0, hu1 = _with(base, "Pulmonary fibrotic sequela", side="left")
    changed = hu1 - hu0 > 200.0
    lung = anat.lung("left")
    assert changed.sum() > 10
    c = _centroid(changed, anat)
    assert c[0] > 0 and lung.height(c[2]) > 0.5


def test_peribronchial_thickening_thickens_airway_walls(base):
    anat, f, hu0, hu1 = _with(base, "Peribronchial thickening")
    assert anat.airway_wall_mm >= 3.0
    thicker = (hu1 - hu0 > 200.0)
    assert thicker.sum() * np.prod(SPACING) > 2000.0
    assert (hu1 - hu0).min() > -30.0  # walls (20 HU) grow over lung and vessels; no new air
    assert np.sum((hu1 < -950) & (hu0 > -900)) == 0


def test_bronchiectasis_dilates_lower_lobe_airways(base):
    anat, f, hu0, hu1 = _with(base, "Bronchiectasis", side="left")
    air = (hu0 - hu1 > 100.0) & (hu1 < -950.0)
    assert air.sum() * np.prod(SPACING) > 1000.0
    c = _centroid(air, anat)
    assert c[0] > 0 and anat.lung("left").height(c[2]) < 0.6


def _heart_width(hu: np.ndarray, anat: Anatomy) -> float:
    g = _grid(anat)
    k = int(round((anat.heart()[0][2] - g.origin[2]) / SPACING[2]))
    j = int(round((anat.heart()[0][1] - g.origin[1]) / SPACING[1]))
    row = (hu[:, j, k] > 30) & (hu[:, j, k] < 60)
    idx = np.flatnonzero(row)
    # the widest run of blood-density voxels through the heart centre
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    return max(len(r) for r in runs) * SPACING[0]


def test_cardiomegaly_enlarges_the_heart(base):
    anat, f, hu0, hu1 = _with(base, "Cardiomegaly")
    assert _heart_width(hu1, anat) > 1.2 * _heart_width(hu0, base[0])


def test_pericardial_effusion_is_a_fluid_rim(base):
    anat, f, hu0, hu1 = _with(base, "Pericardial effusion")
    x, y, z = _coords(anat)
    c, r = anat.heart()
    rho = np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
    rim = (rho > 1.05) & (rho < 1.0 + 0.8 * f.size_mm / r.max())
    assert np.mean(np.abs(hu1[rim] - 5.0) < 15.0) > 0.6
    inside = rho < 0.9
    assert np.abs(hu1[inside] - 45.0).max() < 1.0  # the heart itself is unchanged


def test_calcifications_sit_on_aorta_and_heart(base):
    anat, f, hu0, hu1 = _with(base, "Arterial wall calcification")
    bright = (hu1 > 500) & (hu0 < 300)
    assert bright.sum() > 5
    x, y, z = _coords(anat)
    pts = np.stack([np.broadcast_to(v, hu0.shape)[bright] for v in (x, y, z)], axis=1)
    line = np.stack(anat.aorta)
    dist = np.min(np.linalg.norm(pts[:, None, :] - line[None], axis=2), axis=1)
    assert np.median(dist) < anat.aorta_radius + 25.0  # near the aortic centreline (polyline vertices)
    anat, f, hu0, hu1 = _with(base, "Coronary artery wall calcification")
    bright = (hu1 > 500) & (hu0 < 300)
    c, r = anat.heart()
    rho = np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
    assert bright.sum() > 3 and np.all(np.abs(rho[bright] - 1.0) < 0.2)


def test_hiatal_hernia_holds_air_above_the_diaphragm_behind_the_heart(base):
    anat, f, hu0, hu1 = _with(base, "Hiatal hernia")
    air = (hu1 < -900) & (hu0 > -200)
    assert air.sum() > 10
    c = _centroid(air, anat)
    assert c[1] > anat.heart()[0][1] and c[2] > anat.lungs["left"].z_dome


def test_lymph_nodes_and_devices_appear(base):
    anat, f, hu0, hu1 = _with(base, "Lymphadenopathy")
    for center, short in f.params["nodes"]:
        assert abs(_value_at(hu1, anat, center) - 40.0) < 20.0
        assert short >= 13.0
    anat, f, hu0, hu1 = _with(base, "Medical material")
    assert np.sum((hu1 > 1000) & (hu0 < 1000)) > 5


def test_the_mediastinum_parts_the_lungs_and_holds_the_central_nodes(base):
    """The lungs stop 16-26 mm from the midline: the subcarinal and prevascular stations lie in mediastinal fat,
    and the paratracheal ones abut the lung on one side only (with the lungs meeting at the midline, before
    2026-11-30, lung made up 22-33% of the subcarinal shell below and 57-85% of the paratracheal ones)."""
    anat, hu0 = base
    x, y, z = np.broadcast_arrays(*_coords(anat))
    lung = (hu0 > -950.0) & (hu0 < -700.0)  # aerated lung; airway air is -1000
    w = anat.lungs["right"].medial_mm
    assert 16.0 <= w <= 26.0 and anat.lungs["left"].medial_mm == w
    canvas = render_body(anat, _grid(anat))  # the lung masks the volume was drawn with
    for side, sign in (("right", -1.0), ("left", 1.0)):
        drawn = canvas.lungs[side] > 0
        assert drawn.sum() > 10_000 and np.all(sign * x[drawn] > w - 2.0)  # within the soft edge (2.5 mm voxels)
        assert (sign * x[drawn] < w + 5.0).any()  # and it reaches the mediastinum
    for station, most in (("subcarinal", 0.05), ("prevascular", 0.05), ("right paratracheal", 0.5),
                          ("left paratracheal", 0.5)):
        c = _nodes_station_center(anat, station)
        d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + ((z - c[2]) / 1.3) ** 2)
        shell = (d > 12.0) & (d < 18.0)  # around the largest node (24 mm short axis, 1.3 x as tall)
        assert lung[shell].mean() < most, station


def _value_at(hu: np.ndarray, anat: Anatomy, p: np.ndarray) -> float:
    g = _grid(anat)
    idx = [int(round((p[i] - g.origin[i]) / SPACING[i])) for i in range(3)]
    return float(hu[idx[0], idx[1], idx[2]])
