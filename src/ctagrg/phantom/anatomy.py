"""Normal chest anatomy for the phantoms: sample a patient's geometry, then draw it on a voxel grid.

Patient frame (see ``shapes``): x → left, y → posterior, z → superior, millimetres. All organs are analytic shapes
scaled by the patient's body size, so anatomy varies between patients while every organ stays where a
radiologist expects it: heart left-anterior, spine posterior, aorta arching over the left main bronchus.

HU values (before noise): air −1000, lung −860, fat −100, mediastinal fat −80, muscle 45, blood/heart 40,
liver 55, cancellous bone 250, cortical bone/ribs 600.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ctagrg.phantom.shapes import Grid, _soft, capsule, ellipsoid, lattice_field, paint

SIDES = ("right", "left")
SIGN = {"right": -1.0, "left": 1.0}  # x sign of each side in the patient frame
HU = {"air": -1000.0, "lung": -860.0, "fat": -100.0, "mediastinum": -80.0, "muscle": 45.0, "blood": 45.0, "fluid": 5.0,
      "liver": 55.0, "bone": 250.0, "cortex": 600.0, "wall": 20.0}
# Half-width of the mediastinum between the lungs, as a fraction of the thoracic cavity's half-width: 16-26 mm,
# so the mediastinum is 33-52 mm wide (on CT about 40-70 mm at the carina and the aortic arch).
MEDIASTINUM_HALF_WIDTH = 0.2
BACK_RADII = (38.0, 20.0)  # mm (x, y) of the paraspinal muscles' ellipse, centred at Anatomy.back_center_y


@dataclass
class Lung:
    """One lung: an elliptic cross-section (centre ``xc, yc``, semi-axes ``ax, ay`` mm) tapering to the apex,
    cut below by a diaphragm dome that rises from ``z_recess`` (costophrenic recess) to ``z_dome``, and medially
    by the mediastinum: no lung within ``medial_mm`` of the midline (x = 0; with 0 the lung still stops at the
    midline). Its side is the sign of ``xc``, which must not be 0."""

    xc: float
    yc: float
    ax: float
    ay: float
    z_apex: float
    z_recess: float
    z_dome: float
    medial_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.xc == 0 or self.medial_mm < 0:
            raise ValueError(f"Lung: xc must be off the midline (its sign is the side) and medial_mm >= 0, got "
                             f"{self.xc}, {self.medial_mm}")

    def height(self, z: np.ndarray) -> np.ndarray:
        """Fraction of lung height (0 at the recess, 1 at the apex)."""
        return (z - self.z_recess) / (self.z_apex - self.z_recess)

    def signed_mm(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance to the lung surface (mm, positive inside); broadcasts."""
        rho = np.sqrt(((x - self.xc) / self.ax) ** 2 + ((y - self.yc) / self.ay) ** 2)
        z_mid = self.z_recess + 0.55 * (self.z_apex - self.z_recess)
        t = np.clip((z - z_mid) / (self.z_apex - z_mid), 0.0, 1.0)
        taper = np.sqrt(np.clip(1.0 - t**2, 0.0, 1.0))
        radial = (taper - rho) * min(self.ax, self.ay)
        dome = self.z_recess + (self.z_dome - self.z_recess) * np.clip(1.0 - rho**2, 0.0, 1.0)
        medial = np.sign(self.xc) * x - self.medial_mm
        return np.minimum(np.minimum(radial, z - dome), medial)

    def lobe(self, side: str, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Lobe name per point: the oblique fissure runs from posterior-superior to anterior-inferior."""
        u, v = self.height(z), (y - self.yc) / self.ay
        lower = u < 0.42 + 0.3 * v
        upper = np.where(lower, "lower", "upper").astype(object)
        if side == "right":
            upper[(~lower) & (u < 0.52)] = "middle"
        return upper


@dataclass
class Anatomy:
    """A patient's normal geometry (mm, patient frame) plus the knobs that findings turn."""

    z_top: float
    z_bottom: float
    body_ax: float
    body_ay: float
    fat_mm: float
    muscle_mm: float
    lungs: dict[str, Lung]
    heart_center: np.ndarray
    heart_radii: np.ndarray
    carina: np.ndarray
    spine_y: float
    aorta: list[np.ndarray]  # centreline points, root → arch → descending
    aorta_radius: float
    esophagus_xy: tuple[float, float]
    rib_z: list[float]
    airway_targets: dict[str, list[np.ndarray]]
    stomach_bubble: bool
    # Knobs set by findings (defaults are normal).
    heart_scale: float = 1.0
    pericardial_mm: float = 0.0
    dome_raise: dict[str, float] = field(default_factory=lambda: {"right": 0.0, "left": 0.0})
    airway_wall_mm: float = 0.8
    ectatic: dict[str, tuple[str, ...]] = field(default_factory=dict)  # side → lobes with dilated bronchi

    @property
    def cavity_ax(self) -> float:
        return self.body_ax - self.fat_mm - self.muscle_mm

    @property
    def cavity_ay(self) -> float:
        return self.body_ay - self.fat_mm - self.muscle_mm

    @property
    def back_center_y(self) -> float:
        """y (mm) of the paraspinal muscles' centre: they bulge the back over the spine (see ``BACK_RADII``)."""
        return self.spine_y + 20.0

    @property
    def body_y_range(self) -> tuple[float, float]:
        """(anterior, posterior) skin y (mm), the paraspinal bulge and its fat included."""
        back = self.back_center_y + BACK_RADII[1] + self.fat_mm * BACK_RADII[1] / float(np.mean(BACK_RADII))
        return -self.body_ay, max(self.body_ay, back)

    def hilum(self, side: str) -> np.ndarray:
        return self.carina + np.array([SIGN[side] * 0.28 * self.cavity_ax, 8.0, -22.0], np.float32)

    def lung(self, side: str) -> Lung:
        """The lung as drawn: its dome and recess raised by ``dome_raise`` (volume loss from atelectasis)."""
        lung, up = self.lungs[side], self.dome_raise[side]
        return dataclasses.replace(lung, z_dome=lung.z_dome + up, z_recess=lung.z_recess + up)

    def heart(self) -> tuple[np.ndarray, np.ndarray]:
        """Heart centre and semi-axes (mm) after cardiomegaly scaling (the heart grows from its base)."""
        radii = self.heart_radii * self.heart_scale
        center = self.heart_center.copy()
        center[2] += (radii[2] - self.heart_radii[2]) * 0.8  # it still sits on the diaphragm
        center[0] += (radii[0] - self.heart_radii[0]) * 0.5  # and enlarges mostly to the left
        return center, radii


def sample_anatomy(rng: np.random.Generator, z_extent: float) -> Anatomy:
    """Draw one patient's geometry for a scan covering ``z_extent`` mm (z from −extent/2 to +extent/2)."""
    z_top, z_bottom = z_extent / 2, -z_extent / 2
    bax, bay = rng.uniform(120, 148), rng.uniform(88, 112)
    fat, muscle = rng.uniform(8, 22), rng.uniform(10, 16)
    cax, cay = bax - fat - muscle, bay - fat - muscle
    z_apex = z_top - rng.uniform(8, 22)
    z_recess = z_bottom + rng.uniform(0.06, 0.14) * z_extent
    height = z_apex - z_recess
    lungs = {}
    for side in SIDES:
        dome = z_recess + rng.uniform(0.2, 0.26) * height - (8.0 if side == "left" else 0.0)
        # The mediastinum (MEDIASTINUM_HALF_WIDTH x the cavity's half-width each side of the midline) is fat round
        # the trachea, esophagus, aorta and nodes, so that no central node lies in lung like a nodule.
        lungs[side] = Lung(xc=SIGN[side] * 0.5 * cax, yc=0.05 * cay, ax=rng.uniform(0.43, 0.47) * cax,
                           ay=0.9 * cay, z_apex=z_apex, z_recess=z_recess, z_dome=dome,
                           medial_mm=MEDIASTINUM_HALF_WIDTH * cax)
    hr = np.array([0.42 * cax, 0.55 * cay, rng.uniform(44, 54)], np.float32)
    heart_c = np.array([0.18 * cax, -0.33 * cay, lungs["left"].z_dome + 0.75 * hr[2]], np.float32)
    spine_y = cay - 4.0
    carina = np.array([0.0, spine_y - 52.0, z_apex - rng.uniform(0.3, 0.36) * height], np.float32)
    aorta = _aorta_path(heart_c, hr, carina, spine_y, cax, cay, z_bottom)
    rib_z = list(np.arange(z_apex - 10, z_recess - 40, -rng.uniform(22, 27)))
    anat = Anatomy(z_top=z_top, z_bottom=z_bottom, body_ax=bax, body_ay=bay, fat_mm=fat, muscle_mm=muscle,
                   lungs=lungs, heart_center=heart_c, heart_radii=hr, carina=carina, spine_y=spine_y,
                   aorta=aorta, aorta_radius=rng.uniform(11, 15), esophagus_xy=(8.0, spine_y - 28.0),
                   rib_z=rib_z, airway_targets={}, stomach_bubble=bool(rng.random() < 0.5))
    anat.airway_targets = {side: _airway_targets(rng, anat, side) for side in SIDES}
    return anat


def _aorta_path(heart_c: np.ndarray, hr: np.ndarray, carina: np.ndarray, spine_y: float, cax: float, cay: float,
                z_bottom: float) -> list[np.ndarray]:
    root = np.array([-0.05 * cax, heart_c[1] + 0.2 * hr[1], heart_c[2] + 0.55 * hr[2]])
    z_arch = carina[2] + 30.0
    asc = np.array([-0.12 * cax, -0.3 * cay, z_arch - 10.0])
    desc_top = np.array([0.17 * cax, spine_y - 20.0, z_arch - 10.0])
    arch = [asc + (desc_top - asc) * t + np.array([0.0, 0.0, 22.0 * np.sin(np.pi * t)]) for t in np.linspace(0, 1, 6)]
    bottom = np.array([0.12 * cax, spine_y - 22.0, z_bottom - 10.0])
    return [np.asarray(p, np.float32) for p in [root, *arch, bottom]]


AIRWAYS_PER_LOBE = {"upper": 5, "middle": 3, "lower": 6}
# The pulmonary artery of each bundle tapers as real ones do: lobar (9 mm wide) near the hilum, segmental (5 mm),
# then subsegmental (2.4 mm) in the outer third. (fraction of the hilum-to-end path where a piece ends, radius mm)
VESSEL_TAPER = ((0.35, 4.5), (0.65, 2.5), (1.0, 1.2))


def _airway_targets(rng: np.random.Generator, anat: Anatomy, side: str) -> list[np.ndarray]:
    """Peripheral end points of the bronchovascular bundles, a fixed number per lobe (so every lobe has airways
    that bronchiectasis can dilate)."""
    lung, out = anat.lungs[side], []
    for lobe, n in AIRWAYS_PER_LOBE.items():
        if lobe == "middle" and side == "left":
            continue
        found = 0
        while found < n:
            p = np.array([lung.xc + rng.uniform(-1, 1) * lung.ax, lung.yc + rng.uniform(-1, 1) * lung.ay,
                          rng.uniform(lung.z_recess, lung.z_apex)], np.float32)
            if lung.signed_mm(*p) > 12.0 and lung.lobe(side, *[np.array([v]) for v in p])[0] == lobe:
                out.append(p)
                found += 1
    return out


@dataclass
class Canvas:
    """The volume being drawn (HU, float32, (nx, ny, nz) = (left, posterior, superior)) and its lung masks."""

    grid: Grid
    hu: np.ndarray
    lungs: dict[str, np.ndarray]

    def organ(self, shape: tuple | None, value: float | np.ndarray) -> None:
        """Paint a solid (non-lung) structure and remove it from the lung masks."""
        if shape is None:
            return
        paint(self.hu, shape, value)
        box, m = shape
        for mask in self.lungs.values():
            mask[box] *= 1.0 - m

    def lung_union(self) -> np.ndarray:
        return np.maximum(self.lungs["right"], self.lungs["left"])


def render_body(anat: Anatomy, grid: Grid) -> Canvas:
    """Draw body wall, bones, abdomen, lungs and mediastinal organs; returns the canvas with final lung masks."""
    x, y, z = grid.coords(grid.full)
    neck = 1.0 - 0.3 * np.clip((z - anat.lungs["right"].z_apex + 10.0) / 40.0, 0.0, 1.0)
    rho = np.sqrt((x / anat.body_ax) ** 2 + (y / anat.body_ay) ** 2) / neck  # (nx, ny, nz)
    mean_r = 0.5 * (anat.body_ax + anat.body_ay)
    inside = (1.0 - rho) * mean_r  # ~ signed distance (mm) to the skin, positive inside
    # The paraspinal muscles bulge the back over the spine, so that even a slim patient's spinous process lies
    # under muscle and fat, not in air (where it would look like a solid blob surrounded by air, i.e. a nodule).
    rho_back = np.sqrt((x / BACK_RADII[0]) ** 2 + ((y - anat.back_center_y) / BACK_RADII[1]) ** 2)
    muscle_in = np.maximum(inside - anat.fat_mm, (1.0 - rho_back) * float(np.mean(BACK_RADII)))
    hu = np.full(grid.shape, HU["air"], np.float32)
    hu += _soft(np.maximum(inside, muscle_in + anat.fat_mm), grid.edge) * (HU["fat"] - HU["air"])
    hu += _soft(muscle_in, grid.edge) * (HU["muscle"] - HU["fat"])
    cavity = _soft((1.0 - rho) * mean_r - anat.fat_mm - anat.muscle_mm, grid.edge)
    hu += cavity * (HU["mediastinum"] - HU["muscle"])
    canvas = Canvas(grid=grid, hu=hu, lungs={})
    _draw_abdomen(canvas, anat, x, y, z, cavity)
    for side in SIDES:
        mask = np.minimum(_soft(anat.lung(side).signed_mm(x, y, z), grid.edge), cavity)
        canvas.hu += mask * (HU["lung"] - canvas.hu)
        canvas.lungs[side] = mask
    _draw_bones(canvas, anat)
    _draw_mediastinum(canvas, anat)
    return canvas


def _draw_abdomen(canvas: Canvas, anat: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                  cavity: np.ndarray) -> None:
    """Liver/spleen soft tissue below the domes (the lungs are drawn over it), and a gastric air bubble."""
    dome = np.maximum(anat.lungs["right"].z_dome, anat.lungs["left"].z_dome) + 15.0
    below = _soft(dome - z, canvas.grid.edge)
    canvas.hu += cavity * below * (HU["liver"] - canvas.hu)
    if anat.stomach_bubble:
        lung = anat.lungs["left"]
        c = np.array([lung.xc, -0.2 * anat.cavity_ay, lung.z_dome - 25.0], np.float32)
        paint(canvas.hu, ellipsoid(canvas.grid, c, np.array([22, 18, 12], np.float32)), HU["air"])


def _draw_bones(canvas: Canvas, anat: Anatomy) -> None:
    """Spine (body, canal, spinous process), sternum and ribs sloping down anteriorly."""
    g, zs = canvas.grid, (anat.z_bottom - 20, anat.z_top + 20)
    sy = anat.spine_y
    canvas.organ(capsule(g, np.array([0, sy, zs[0]]), np.array([0, sy, zs[1]]), 18.0), HU["cortex"])
    canvas.organ(capsule(g, np.array([0, sy, zs[0]]), np.array([0, sy, zs[1]]), 15.0), HU["bone"])
    canvas.organ(capsule(g, np.array([0, sy + 25, zs[0]]), np.array([0, sy + 25, zs[1]]), 7.0), 10.0)  # canal
    paint(canvas.hu, capsule(g, np.array([0, sy + 33, zs[0]]), np.array([0, sy + 33, zs[1]]), 4.5), HU["bone"])
    st_y = -anat.cavity_ay - 0.5 * anat.muscle_mm
    z_st = (anat.carina[2] + 40, anat.heart_center[2] - 30)
    paint(canvas.hu, capsule(g, np.array([0, st_y, z_st[0]]), np.array([0, st_y, z_st[1]]), 7.0), HU["bone"])
    _draw_ribs(canvas, anat)


def _draw_ribs(canvas: Canvas, anat: Anatomy) -> None:
    g = canvas.grid
    x, y, _ = g.coords(g.full)
    ax, ay = anat.cavity_ax, anat.cavity_ay
    rho = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)[:, :, 0]
    phi = np.arctan2(x / ax, y / ay)[:, :, 0]  # 0 = posterior, ±pi = anterior
    band = _soft(np.minimum(rho - 1.0, 1.0 + 8.0 / ax - rho) * ax, g.edge) * (np.abs(phi) < 0.8 * np.pi)
    drop = 45.0 * (1.0 - np.cos(phi)) / 2.0  # ribs run downward from back to front
    for zr in anat.rib_z:
        box = g.box(np.array([-1e4, -1e4, zr - 40.0]), np.array([1e4, 1e4, zr + 8.0]))
        if box is None:
            continue
        zz = g.axis(2)[box[2]][None, None, :]
        m = band[:, :, None] * _soft(3.5 - np.abs(zz - (zr - drop[:, :, None])), g.edge)
        paint(canvas.hu, (box, m), HU["cortex"])


def _draw_mediastinum(canvas: Canvas, anat: Anatomy) -> None:
    """Pericardial fluid (if any), heart, aorta, esophagus, trachea and main bronchi."""
    g = canvas.grid
    center, radii = anat.heart()
    # Pericardial fat outlines the pericardial sac, so fluid inside it reads as a distinct darker rim.
    canvas.organ(ellipsoid(g, center, radii + anat.pericardial_mm + 3.0), HU["mediastinum"])
    if anat.pericardial_mm > 0:
        canvas.organ(ellipsoid(g, center, radii + anat.pericardial_mm), HU["fluid"])
    canvas.organ(ellipsoid(g, center, radii), HU["blood"])
    for p0, p1 in zip(anat.aorta[:-1], anat.aorta[1:], strict=True):
        canvas.organ(capsule(g, p0, p1, anat.aorta_radius), HU["blood"])
    ex, ey = anat.esophagus_xy
    esoph = (np.array([ex, ey, anat.z_bottom]), np.array([ex, ey, anat.z_top]))
    canvas.organ(capsule(g, *esoph, 7.0), HU["muscle"])
    top = np.array([0.0, anat.carina[1], anat.z_top + 10], np.float32)
    canvas.organ(capsule(g, top, anat.carina, 11.0), HU["wall"])
    for side in SIDES:
        canvas.organ(capsule(g, anat.carina, anat.hilum(side), 7.5), HU["wall"])
    paint(canvas.hu, capsule(g, top, anat.carina, 9.0), HU["air"])
    for side in SIDES:
        paint(canvas.hu, capsule(g, anat.carina, anat.hilum(side), 5.5), HU["air"])


def render_airways(canvas: Canvas, anat: Anatomy) -> None:
    """Bronchovascular bundles from each hilum: a tapering artery beside a bronchus (wall + air lumen).

    Must run after every structure that carves the lungs, because it paints only inside the lung masks.
    """
    g = canvas.grid
    for side in SIDES:
        mask, hilum, lung = canvas.lungs[side], anat.hilum(side), anat.lungs[side]
        for target in anat.airway_targets[side]:
            mid = hilum + 0.5 * (target - hilum)
            start = hilum
            for frac, r in VESSEL_TAPER:
                end = hilum + frac * (target - hilum)
                paint(canvas.hu, capsule(g, start, end, r), HU["blood"], within=mask)
                start = end
            offset = np.array([0.0, 0.0, 6.0], np.float32)
            lobe = str(lung.lobe(side, *[np.array([v]) for v in target])[0])
            ectatic = lobe in anat.ectatic.get(side, ())
            for (a, b), r in zip(((hilum, mid), (mid, target)), (3.0, 1.6), strict=True):
                lumen = 7.0 if ectatic else r
                wall = 1.2 if ectatic else anat.airway_wall_mm
                paint(canvas.hu, capsule(g, a + offset, b + offset, lumen + wall), HU["wall"], within=mask)
                paint(canvas.hu, capsule(g, a + offset, b + offset, lumen), HU["air"], within=mask)


def add_texture_and_noise(canvas: Canvas, rng: np.random.Generator, noise_hu: float, texture_seed: int) -> None:
    """Lung parenchymal texture (smooth, ~±20 HU, fixed per patient), a gravity gradient, and white noise."""
    g = canvas.grid
    lung = canvas.lung_union()
    texture = lattice_field(texture_seed, g, corr_mm=8.0) * 30.0
    y = g.axis(1)[None, :, None]
    canvas.hu += lung * (texture + 0.15 * np.clip(y, -100, 100))  # dependent lung is slightly denser
    canvas.hu += rng.standard_normal(g.shape, dtype=np.float32) * noise_hu
