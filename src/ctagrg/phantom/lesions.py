"""Draw a patient's findings onto a canvas whose normal anatomy is already drawn.

Findings that change normal structures (cardiomegaly, pericardial effusion, atelectatic volume loss, airway walls,
dilated bronchi) are knobs on ``Anatomy`` and appear when the anatomy is drawn. The rest are drawn here in two
passes: ``draw_mediastinal`` before the airway tree (they carve the lungs), ``draw_parenchymal`` after it (they
paint inside the final lung masks).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ctagrg.phantom.anatomy import HU, SIDES, SIGN, Anatomy, Canvas
from ctagrg.phantom.findings import CORONARY_PATHS, Case, Finding
from ctagrg.phantom.shapes import _soft, capsule, ellipsoid, lattice_field, paint

METAL_HU = 2500.0
CALCIUM_HU = 1100.0  # dense calcified plaque; above cortical bone (600) as in heavily calcified vessels
FLUID_HU = HU["fluid"]
SOLID_HU = 40.0


def _sides(side: str | None) -> tuple[str, ...]:
    return SIDES if side == "bilateral" else (side,) if side else ()


def _nodule(c: Canvas, a: Anatomy, f: Finding) -> None:
    paint(c.hu, ellipsoid(c.grid, f.center, f.params["radii"]), SOLID_HU)


def _consolidation(c: Canvas, a: Anatomy, f: Finding) -> None:
    """Soft-tissue density filling the periphery of one lobe up to the pleura, with an irregular margin, and air
    bronchograms (air tubes kept inside the consolidated region)."""
    shape = ellipsoid(c.grid, f.center, f.params["radii"])
    if shape is None:
        return
    box, m = shape
    in_lobe = a.lung(f.side).lobe(f.side, *c.grid.coords(box)) == f.params["lobe"]
    lumpy = lattice_field(f.params["seed"], c.grid, corr_mm=12.0)[box]
    m = np.clip(m * (1.3 + 0.7 * lumpy), 0.0, 1.0) * in_lobe
    mask = c.lungs[f.side]
    paint(c.hu, (box, m), 35.0, within=mask)
    region = np.zeros(c.grid.shape, np.float32)
    region[box] = m * mask[box]
    # air bronchograms: six air-filled bronchi, 6 mm wide (two voxels of the small preset's grid), crossing the
    # consolidated region's core (the point in the lobe it grew from), the hallmark that tells it from a solid mass
    core, reach = f.params["core"], 0.9 * f.params["radii"].max()
    for d in f.params["bronchi"]:
        paint(c.hu, capsule(c.grid, core - reach * d, core + reach * d, 3.0), -950.0, within=region)


def _pleural_effusion(c: Canvas, a: Anatomy, f: Finding) -> None:
    """Dependent fluid: a posterior layer of the lung, thickest at the base, fading over ``height_mm``."""
    x, y, z = c.grid.coords(c.grid.full)
    for side in _sides(f.side):
        lung = a.lung(side)
        back = lung.yc + lung.ay * np.sqrt(np.clip(1.0 - ((x - lung.xc) / lung.ax) ** 2, 0.0, 1.0))
        depth = f.size_mm * np.sqrt(np.clip(1.0 - (z - lung.z_recess) / f.params["height_mm"], 0.0, 1.0))
        fluid = _soft(y - (back - depth), c.grid.edge) * (depth > 0) * c.lungs[side]
        c.hu += fluid * (FLUID_HU - c.hu)
        c.lungs[side] *= 1.0 - fluid


def _atelectasis(c: Canvas, a: Anatomy, f: Finding) -> None:
    """A plate-like dense band (linear atelectasis), tilted about the left-right axis."""
    for side, (center, tilt) in zip(_sides(f.side), f.params["plates"], strict=True):
        ct, st = np.cos(tilt), np.sin(tilt)
        rot = np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]], np.float32)
        paint(c.hu, ellipsoid(c.grid, center, np.array([38.0, 30.0, 5.5]), rot), 25.0, within=c.lungs[side])


def _opacity(c: Canvas, a: Anatomy, f: Finding) -> None:
    """Ground-glass patches (about −600 HU) with irregular, fading borders."""
    lumpy = lattice_field(f.params["seed"], c.grid, corr_mm=10.0)
    lung = c.lung_union()
    for center, r in f.params["patches"]:
        shape = ellipsoid(c.grid, center, np.array([r, r * 0.85, r]))
        if shape is None:
            continue
        box, m = shape
        m = np.clip(m * (1.2 + 0.8 * lumpy[box]), 0.0, 1.0)
        paint(c.hu, (box, m), -600.0, within=lung)


def _emphysema(c: Canvas, a: Anatomy, f: Finding) -> None:
    """Holes below −950 HU where a smooth random field is high, weighted toward the upper lobes."""
    holes = lattice_field(f.params["seed"], c.grid, corr_mm=7.0)
    z = c.grid.axis(2)[None, None, :]
    for side in SIDES:
        upper = np.clip((a.lung(side).height(z) - 0.35) / 0.25, 0.0, 1.0)
        m = np.clip((holes - f.params["threshold"]) / 0.15, 0.0, 1.0) * upper
        paint(c.hu, (c.grid.full, m), -985.0, within=c.lungs[side])


def _mosaic(c: Canvas, a: Anatomy, f: Finding) -> None:
    """Patchy alternation of denser and lucent lobular regions (± ~100 HU) throughout both lungs."""
    patches = np.tanh(3.0 * lattice_field(f.params["seed"], c.grid, corr_mm=16.0))
    c.hu += c.lung_union() * patches * f.params["amplitude"]


def _septal(c: Canvas, a: Anatomy, f: Finding) -> None:
    """A polygonal network of fine lines (zero crossings of a random field) in the outer 25 mm of the lung."""
    net = lattice_field(f.params["seed"], c.grid, corr_mm=9.0)
    lines = np.clip(1.0 - np.abs(net) / 0.12, 0.0, 1.0)
    x, y, z = c.grid.coords(c.grid.full)
    for side in _sides(f.side):
        inside = a.lung(side).signed_mm(x, y, z)
        peripheral = np.clip(1.0 - inside / 25.0, 0.0, 1.0)
        paint(c.hu, (c.grid.full, 0.9 * lines * peripheral), -200.0, within=c.lungs[side])


def _fibrosis(c: Canvas, a: Anatomy, f: Finding) -> None:
    """Linear scars in the upper lobes plus apical pleuroparenchymal thickening (a soft-tissue cap)."""
    lung = c.lung_union()
    for p0, p1 in f.params["lines"]:
        paint(c.hu, capsule(c.grid, p0, p1, 2.5), 0.0, within=lung)
    for side in _sides(f.side):
        geo = a.lung(side)
        z_cap = geo.z_recess + 0.8 * (geo.z_apex - geo.z_recess)
        box = c.grid.box(np.array([geo.xc - geo.ax, geo.yc - geo.ay, z_cap]),
                         np.array([geo.xc + geo.ax, geo.yc + geo.ay, geo.z_apex]))
        if box is None:
            continue
        depth = geo.signed_mm(*c.grid.coords(box))
        paint(c.hu, (box, _soft(7.0 - depth, c.grid.edge)), 10.0, within=c.lungs[side])


def _arterial(c: Canvas, a: Anatomy, f: Finding) -> None:
    for p in f.params["plaques"]:
        paint(c.hu, ellipsoid(c.grid, p, np.array([4.0, 4.0, 4.0])), CALCIUM_HU)


def _coronary(c: Canvas, a: Anatomy, f: Finding) -> None:
    center, radii = a.heart()
    for vessel in f.params["vessels"]:
        start, end = (np.array(d, np.float32) for d in CORONARY_PATHS[vessel])
        for t in np.linspace(0.0, 1.0, f.params["per_vessel"]):
            d = start + t * (end - start)
            p = center + radii * d / np.linalg.norm(d)
            c.organ(ellipsoid(c.grid, p, np.array([3.5, 3.5, 3.5])), CALCIUM_HU)


def _hernia(c: Canvas, a: Anatomy, f: Finding) -> None:
    """A retrocardiac sac above the diaphragm: soft-tissue wall, fluid below, an air cap on top."""
    r = f.size_mm / 2 * np.array([1.0, 0.8, 0.9], np.float32)
    c.organ(ellipsoid(c.grid, f.center, r), SOLID_HU)
    inner = ellipsoid(c.grid, f.center, r - 3.0)
    if inner is None:
        return
    paint(c.hu, inner, 15.0)
    box, m = inner
    z = c.grid.axis(2)[box[2]][None, None, :]
    paint(c.hu, (box, m * _soft(z - f.center[2], c.grid.spacing[2])), HU["air"])


def _lymph(c: Canvas, a: Anatomy, f: Finding) -> None:
    """Enlarged nodes in a 3 mm rim of mediastinal fat, as nodes sit in fat: without it a node drawn against the
    heart or aorta (both ~45 HU) would be invisible."""
    for center, short in f.params["nodes"]:
        radii = np.array([short / 2, short / 2, short * 0.65])
        c.organ(ellipsoid(c.grid, center, radii + 3.0), HU["fat"])
    for center, short in f.params["nodes"]:
        c.organ(ellipsoid(c.grid, center, np.array([short / 2, short / 2, short * 0.65])), SOLID_HU)


def _device(c: Canvas, a: Anatomy, f: Finding) -> None:
    """Port (reservoir + catheter), central line, pacemaker (generator + lead) or sternotomy wires, metal-dense."""
    device, side, g = f.params["device"], f.params["side"], c.grid
    if device == "sternotomy wires":
        y = -a.cavity_ay - 0.5 * a.muscle_mm
        for z in np.linspace(a.carina[2] + 30, a.heart_center[2] - 20, f.params["n_wires"]):
            paint(c.hu, ellipsoid(g, np.array([0.0, y, z]), np.array([9.0, 2.5, 2.0])), METAL_HU)
        return
    s, z_apex = SIGN[side], a.lungs[side].z_apex
    heart_c, heart_r = a.heart()
    entry = f.center  # reservoir / generator pocket (findings._device)
    vein = np.array([s * 0.2 * a.cavity_ax, -0.35 * a.cavity_ay, z_apex - 5.0], np.float32)
    svc = np.array([-0.1 * a.cavity_ax, -0.3 * a.cavity_ay, a.carina[2]], np.float32)
    atrium = np.array([-0.1 * a.cavity_ax, heart_c[1], heart_c[2] + 0.3 * heart_r[2]], np.float32)
    path = [entry, vein, svc, atrium]
    if device == "central venous catheter":
        path = [np.array([s * 0.15 * a.body_ax, -0.2 * a.cavity_ay, a.z_top + 5.0], np.float32), svc, atrium]
    elif device == "pacemaker":
        path = [*path[:-1], heart_c + heart_r * np.array([0.3, -0.5, -0.3], np.float32)]
        c.organ(ellipsoid(g, entry, np.array([22.0, 6.0, 18.0])), METAL_HU)
    elif device == "port catheter":
        c.organ(ellipsoid(g, entry, np.array([13.0, 5.0, 11.0])), METAL_HU)
    for p0, p1 in zip(path[:-1], path[1:], strict=True):
        c.organ(capsule(g, p0, p1, 1.8), METAL_HU)


MEDIASTINAL: dict[str, Callable[[Canvas, Anatomy, Finding], None]] = {
    "Medical material": _device, "Arterial wall calcification": _arterial,
    "Coronary artery wall calcification": _coronary, "Hiatal hernia": _hernia, "Lymphadenopathy": _lymph,
}
PARENCHYMAL: dict[str, Callable[[Canvas, Anatomy, Finding], None]] = {
    "Emphysema": _emphysema, "Mosaic attenuation pattern": _mosaic, "Interlobular septal thickening": _septal,
    "Pulmonary fibrotic sequela": _fibrosis, "Lung opacity": _opacity, "Atelectasis": _atelectasis,
    "Consolidation": _consolidation, "Lung nodule": _nodule, "Pleural effusion": _pleural_effusion,
}
# Drawn through Anatomy knobs instead: Cardiomegaly, Pericardial effusion, Peribronchial thickening, Bronchiectasis.


def draw_mediastinal(canvas: Canvas, case: Case) -> None:
    for f in case.findings:
        if f.label in MEDIASTINAL:
            MEDIASTINAL[f.label](canvas, case.anatomy, f)


def draw_parenchymal(canvas: Canvas, case: Case) -> None:
    """Lung findings, background patterns first so focal lesions and fluid end up on top."""
    by_label = {f.label: f for f in case.findings}
    for label, draw in PARENCHYMAL.items():
        if label in by_label:
            draw(canvas, case.anatomy, by_label[label])
