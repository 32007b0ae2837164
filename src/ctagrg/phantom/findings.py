"""Which abnormalities a phantom patient has, and their attributes (side, lobe, region, size, extent, position).

Everything here is decided once per *patient* from the patient's RNG, so all reconstructions of one patient
show the same findings in the same place. Drawing them is ``lesions.py``'s job.

Prevalence and co-occurrence follow the CT-RATE development reports roughly (see ``BASE_PREVALENCE``): nodules
and arterial calcification are common, pericardial effusion is rare, about 12% of patients are normal,
calcifications cluster with age, effusions with cardiomegaly and consolidation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctagrg.labels import LABELS
from ctagrg.phantom.anatomy import SIDES, SIGN, Anatomy

# Label prevalence among non-normal patients, tuned so that overall rates match CT-RATE's development set.
BASE_PREVALENCE: dict[str, float] = {
    "Medical material": 0.17, "Arterial wall calcification": 0.36, "Cardiomegaly": 0.17,
    "Pericardial effusion": 0.08, "Coronary artery wall calcification": 0.22, "Hiatal hernia": 0.18,
    "Lymphadenopathy": 0.38, "Emphysema": 0.31, "Atelectasis": 0.28, "Lung nodule": 0.52, "Lung opacity": 0.30,
    "Pulmonary fibrotic sequela": 0.30, "Pleural effusion": 0.13, "Mosaic attenuation pattern": 0.09,
    "Peribronchial thickening": 0.10, "Consolidation": 0.17, "Bronchiectasis": 0.11,
    "Interlobular septal thickening": 0.09,
}
NORMAL_FRACTION = 0.12


@dataclass
class Finding:
    """One abnormality of a patient. ``center`` is in patient-frame mm; ``params`` holds drawing details."""

    label: str
    side: str | None = None
    lobe: str | None = None
    region: str | None = None
    size_mm: float | None = None
    extent: str | None = None
    center: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def attributes(self) -> dict[str, Any]:
        """The ground-truth attributes (docs/architecture.md, "Phantom ground truth")."""
        size = None if self.size_mm is None else round(float(self.size_mm), 1)
        return {"label": self.label, "side": self.side, "lobe": self.lobe, "region": self.region,
                "size_mm": size, "extent": self.extent}


@dataclass
class Case:
    """A phantom patient: anatomy, demographics and findings (in LABELS order)."""

    anatomy: Anatomy
    age: int
    sex: str
    findings: list[Finding]

    def labels(self) -> np.ndarray:
        """(18,) int 0/1 in LABELS order."""
        present = {f.label for f in self.findings}
        return np.array([int(name in present) for name in LABELS], np.int64)


def sample_labels(rng: np.random.Generator, age: int, min_prevalence: float = 0.0) -> set[str]:
    """Draw the set of present labels with CT-RATE-like prevalence and a few clinical correlations."""
    if rng.random() < NORMAL_FRACTION * (1.0 - min_prevalence):
        return set()
    p = {k: max(v, min_prevalence) for k, v in BASE_PREVALENCE.items()}
    age_factor = float(np.clip((age - 25) / 40.0, 0.2, 1.6))
    present: set[str] = set()

    def draw(name: str, prob: float) -> None:
        if rng.random() < min(max(prob, min_prevalence), 0.95):
            present.add(name)

    draw("Arterial wall calcification", p["Arterial wall calcification"] * age_factor)
    draw("Coronary artery wall calcification", 0.55 if "Arterial wall calcification" in present else 0.07)
    draw("Cardiomegaly", p["Cardiomegaly"] * age_factor)
    draw("Pericardial effusion", 0.25 if "Cardiomegaly" in present else p["Pericardial effusion"] * 0.7)
    draw("Consolidation", p["Consolidation"])
    draw("Lung opacity", 0.55 if "Consolidation" in present else p["Lung opacity"])
    wet = "Cardiomegaly" in present or "Consolidation" in present
    draw("Pleural effusion", 0.35 if wet else p["Pleural effusion"] * 0.7)
    draw("Atelectasis", 0.6 if "Pleural effusion" in present else p["Atelectasis"])
    draw("Emphysema", p["Emphysema"] * age_factor)
    draw("Bronchiectasis", p["Bronchiectasis"])
    draw("Peribronchial thickening", 0.35 if "Bronchiectasis" in present else p["Peribronchial thickening"])
    for name in ("Medical material", "Hiatal hernia", "Lymphadenopathy", "Lung nodule",
                 "Pulmonary fibrotic sequela", "Mosaic attenuation pattern", "Interlobular septal thickening"):
        draw(name, p[name])
    return present


def sample_case(rng: np.random.Generator, anatomy: Anatomy, min_prevalence: float = 0.0) -> Case:
    """Draw demographics and findings for ``anatomy``, set the anatomy knobs findings turn, place the lesions."""
    age = int(rng.integers(25, 90))
    sex = "M" if rng.random() < 0.55 else "F"
    present = sample_labels(rng, age, min_prevalence)
    findings = [SAMPLERS[name](rng, anatomy) for name in LABELS if name in present]
    return Case(anatomy=anatomy, age=age, sex=sex, findings=findings)


# ---- per-label attribute samplers. Each returns a Finding and may change anatomy knobs (cardiomegaly etc.). ----

def _side(rng: np.random.Generator, p_bilateral: float) -> str:
    return "bilateral" if rng.random() < p_bilateral else str(rng.choice(SIDES))


def _sides(side: str) -> tuple[str, ...]:
    return SIDES if side == "bilateral" else (side,)


def point_in_lobe(rng: np.random.Generator, anat: Anatomy, side: str, lobe: str | None, margin: float,
                  z_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """A point (mm) at least ``margin`` mm inside one lung, in ``lobe`` (any lobe when None), clear of the heart.

    ``z_range`` limits the height as a fraction of the lung (0 = recess, 1 = apex).
    """
    lung = anat.lung(side)
    heart_c, heart_r = anat.heart()
    heart_r = heart_r + anat.pericardial_mm
    for tries in range(6000):
        m = margin * (1.0 - tries // 2000 / 2.0)  # relax the margin if a small lobe keeps rejecting
        u = rng.uniform(*z_range)
        p = np.array([lung.xc + rng.uniform(-1, 1) * lung.ax, lung.yc + rng.uniform(-1, 1) * lung.ay,
                      lung.z_recess + u * (lung.z_apex - lung.z_recess)], np.float32)
        if lung.signed_mm(*p) < m or np.sum(((p - heart_c) / (heart_r + m)) ** 2) < 1.0:
            continue
        if lobe is None or lung.lobe(side, *[np.array([v]) for v in p])[0] == lobe:
            return p
    raise RuntimeError(f"could not place a point {margin:.1f} mm inside the {side} {lobe or ''} lung")


def _mid_lung(anat: Anatomy, side: str = "right") -> np.ndarray:
    """A representative point half-way up one lung (for findings that have no single location)."""
    lung = anat.lung(side)
    return np.array([lung.xc, lung.yc, lung.z_recess + 0.6 * (lung.z_apex - lung.z_recess)], np.float32)


def _lobe_name(side: str, lobe: str) -> str:
    return f"{side} {lobe} lobe"


def _nodule(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = str(rng.choice(SIDES))
    lobe = str(rng.choice(("upper", "middle", "lower") if side == "right" else ("upper", "lower")))
    # Uniform, not log-uniform, over 4-30 mm: below ~8 mm a nodule is as wide as a vessel cross-section on the
    # small (2.5 mm) grid, and a third of log-uniform nodules would be that small, i.e. nearly invisible there.
    size = float(np.round(rng.uniform(4.0, 30.0)))
    center = point_in_lobe(rng, anat, side, lobe, margin=size / 2 + 4.0)
    return Finding("Lung nodule", side=side, lobe=_lobe_name(side, lobe), size_mm=size, extent="solid",
                   center=center, params={"radii": size / 2 * rng.uniform(0.9, 1.1, 3)})


# Consolidation: an ellipsoid this many mm across (uniform), its centre this many in-plane radii inside the pleura.
CONSOLIDATION_MM = (50.0, 90.0)
CONSOLIDATION_DEPTH = 0.5


def _consolidation(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = str(rng.choice(SIDES))
    lobe = str(rng.choice(("upper", "middle", "lower") if side == "right" else ("upper", "lower"), p=None))
    size = float(np.round(rng.uniform(*CONSOLIDATION_MM)))
    # Airspace disease fills a lobe from the pleura inwards (lesions._consolidation keeps it inside the lobe and the
    # lung): an ellipsoid of ``size`` mm across whose centre lies half a radius inside the pleura, radially outward
    # of a point in the lobe, so that most of it lies in the lung, pleural-based and cut flat at the fissures: with
    # lung all around it would be a nodule or a mass, centred on the pleura a thin lens like atelectasis.
    lung, radii = anat.lung(side), size / 2 * np.array([1.0, 0.9, 0.9], np.float32)
    # at least a third of the ellipsoid must lie in the lobe (near the apex or a fissure it may not): else another
    # point, and after 50 tries the point itself (not pushed out to the pleura)
    u = np.linspace(-1.0, 1.0, 7, dtype=np.float32)
    unit = np.stack(np.meshgrid(u, u, u, indexing="ij"), -1).reshape(-1, 3)
    unit = unit[(unit**2).sum(1) <= 1.0]
    for tries in range(51):
        inside = point_in_lobe(rng, anat, side, lobe, margin=size / 4)
        radial = np.array([inside[0] - lung.xc, inside[1] - lung.yc, 0.0], np.float32)
        radial /= max(float(np.linalg.norm(radial)), 1e-3)
        # radially outward until CONSOLIDATION_DEPTH radii inside the pleura (a point nearer it stays)
        depth = float(lung.signed_mm(*inside)) - CONSOLIDATION_DEPTH * float(radii[1])
        center = inside + radial * max(depth, 0.0) * (tries < 50)
        pts = center + unit * radii
        in_lobe = (lung.signed_mm(pts[:, 0], pts[:, 1], pts[:, 2]) > 0) & (
            lung.lobe(side, pts[:, 0], pts[:, 1], pts[:, 2]) == lobe)
        if in_lobe.mean() >= 1 / 3:
            break
    dirs = rng.normal(size=(6, 3))
    return Finding("Consolidation", side=side, lobe=_lobe_name(side, lobe), size_mm=size, extent="focal",
                   center=center, params={"radii": radii, "lobe": lobe, "core": inside,
                                          "bronchi": dirs / np.linalg.norm(dirs, axis=1, keepdims=True),
                                          "seed": int(rng.integers(2**31))})


def _pleural_effusion(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = _side(rng, 0.45)
    depth = float(np.round(rng.uniform(15, 45)))
    extent = "small" if depth < 22 else "moderate" if depth < 35 else "large"
    lung = anat.lung(_sides(side)[0])
    center = np.array([lung.xc, lung.yc + 0.75 * lung.ay, lung.z_recess + 15.0], np.float32)
    return Finding("Pleural effusion", side=side, size_mm=depth, extent=extent, region="dependent posterior",
                   center=center, params={"height_mm": depth * 2.5})


def _atelectasis(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = _side(rng, 0.3)
    plates = []
    for s in _sides(side):
        anat.dome_raise[s] = float(rng.uniform(10, 16))  # volume loss: the hemidiaphragm rises
        c = point_in_lobe(rng, anat, s, "lower", margin=12.0, z_range=(0.2, 0.45))
        tilt = rng.uniform(-0.5, 0.5)
        plates.append((c, tilt))
    lobe = "lower lobes" if side == "bilateral" else _lobe_name(side, "lower")
    return Finding("Atelectasis", side=side, lobe=lobe, extent="linear", center=plates[0][0],
                   params={"plates": plates})


def _opacity(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = _side(rng, 0.4)
    patches = []
    for s in _sides(side):
        for _ in range(int(rng.integers(1, 3))):
            r = rng.uniform(15, 28)
            patches.append((point_in_lobe(rng, anat, s, None, margin=r * 0.6), r))
    extent = "patchy" if len(patches) <= 2 else "multifocal"
    lobe = None if side == "bilateral" else f"{side} lung"
    return Finding("Lung opacity", side=side, lobe=lobe, extent=extent, center=patches[0][0],
                   params={"patches": patches, "seed": int(rng.integers(2**31))})


def _emphysema(rng: np.random.Generator, anat: Anatomy) -> Finding:
    extent = str(rng.choice(("mild", "moderate", "severe")))
    lung = anat.lung("right")
    center = np.array([lung.xc, lung.yc, lung.z_recess + 0.8 * (lung.z_apex - lung.z_recess)], np.float32)
    return Finding("Emphysema", side="bilateral", lobe="upper lobes", extent=extent, region="centrilobular",
                   center=center,
                   params={"threshold": {"mild": 0.35, "moderate": 0.15, "severe": -0.05}[extent],
                           "seed": int(rng.integers(2**31))})


def _fibrosis(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = _side(rng, 0.5)
    lines = []
    for s in _sides(side):
        for _ in range(int(rng.integers(4, 7))):
            p0 = point_in_lobe(rng, anat, s, "upper", margin=3.0, z_range=(0.65, 0.95))
            d = rng.normal(size=3)
            lines.append((p0, p0 + 35.0 * d / np.linalg.norm(d)))
    lobe = "upper lobes" if side == "bilateral" else _lobe_name(side, "upper")
    return Finding("Pulmonary fibrotic sequela", side=side, lobe=lobe, extent="linear", region="apical",
                   center=lines[0][0], params={"lines": lines})


def _mosaic(rng: np.random.Generator, anat: Anatomy) -> Finding:
    return Finding("Mosaic attenuation pattern", side="bilateral", extent="diffuse", center=_mid_lung(anat),
                   params={"amplitude": rng.uniform(85, 110), "seed": int(rng.integers(2**31))})


def _septal(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = _side(rng, 0.75)
    return Finding("Interlobular septal thickening", side=side, region="peripheral", extent="smooth",
                   center=_mid_lung(anat, _sides(side)[0]),
                   params={"seed": int(rng.integers(2**31))})


def _peribronchial(rng: np.random.Generator, anat: Anatomy) -> Finding:
    anat.airway_wall_mm = float(rng.uniform(3.5, 4.5))
    return Finding("Peribronchial thickening", side="bilateral", extent="diffuse", size_mm=anat.airway_wall_mm,
                   center=_mid_lung(anat))


def _bronchiectasis(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = _side(rng, 0.5)
    for s in _sides(side):
        anat.ectatic[s] = ("lower", "middle") if s == "right" else ("lower",)
    lobe = "lower lobes" if side == "bilateral" else _lobe_name(side, "lower")
    first = _sides(side)[0]
    lung = anat.lungs[first]
    lower = [t for t in anat.airway_targets[first] if lung.lobe(first, *[np.array([v]) for v in t])[0] == "lower"]
    center = anat.hilum(first) + 0.6 * (lower[0] - anat.hilum(first)) + np.array([0.0, 0.0, 6.0], np.float32)
    return Finding("Bronchiectasis", side=side, lobe=lobe, extent="cylindrical", center=center)


def _cardiomegaly(rng: np.random.Generator, anat: Anatomy) -> Finding:
    extent = str(rng.choice(("mild", "moderate", "marked")))
    anat.heart_scale = {"mild": 1.28, "moderate": 1.36, "marked": 1.45}[extent] * rng.uniform(0.98, 1.02)
    return Finding("Cardiomegaly", extent=extent, region="heart", center=anat.heart()[0])


def _pericardial(rng: np.random.Generator, anat: Anatomy) -> Finding:
    anat.pericardial_mm = float(np.round(rng.uniform(7, 18)))
    extent = "small" if anat.pericardial_mm < 11 else "moderate"
    return Finding("Pericardial effusion", size_mm=anat.pericardial_mm, extent=extent, region="pericardium",
                   center=anat.heart()[0])


def _arterial(rng: np.random.Generator, anat: Anatomy) -> Finding:
    region = str(rng.choice(("aortic arch", "descending aorta", "thoracic aorta")))
    extent = str(rng.choice(("few", "scattered", "extensive")))
    segments = {"aortic arch": range(1, 6), "descending aorta": range(5, 7), "thoracic aorta": range(0, 7)}[region]
    n = {"few": 8, "scattered": 14, "extensive": 22}[extent]
    plaques = []
    for _ in range(n):
        k = int(rng.choice(list(segments)))
        t = rng.uniform()
        c = anat.aorta[k] + t * (anat.aorta[k + 1] - anat.aorta[k])
        d = rng.normal(size=3)
        plaques.append(c + (anat.aorta_radius - 1.0) * d / np.linalg.norm(d))
    return Finding("Arterial wall calcification", region=region, extent=extent, center=plaques[0],
                   params={"plaques": plaques})


# Directions (patient frame, before scaling by the heart radii) of the coronary courses on the heart surface.
CORONARY_PATHS = {"left anterior descending": ((0.35, -0.9, 0.5), (0.55, -0.8, -0.4)),
                  "right coronary": ((-0.6, -0.7, 0.5), (-0.95, -0.2, -0.2)),
                  "circumflex": ((0.55, -0.2, 0.6), (0.9, 0.3, 0.1))}


def _coronary(rng: np.random.Generator, anat: Anatomy) -> Finding:
    names = list(CORONARY_PATHS)
    chosen = sorted(rng.choice(names, size=int(rng.integers(1, 4)), replace=False), key=names.index)
    extent = str(rng.choice(("focal", "multifocal")))
    heart_c, heart_r = anat.heart()
    d = np.array(CORONARY_PATHS[chosen[0]][0], np.float32)
    return Finding("Coronary artery wall calcification", region=", ".join(chosen), extent=extent,
                   center=heart_c + heart_r * d / np.linalg.norm(d),
                   params={"vessels": chosen, "per_vessel": 4 if extent == "focal" else 6})


def _hernia(rng: np.random.Generator, anat: Anatomy) -> Finding:
    size = float(np.round(rng.uniform(40, 65)))
    ex, ey = anat.esophagus_xy
    c = np.array([ex + 5.0, ey - 8.0, anat.lungs["left"].z_dome + 0.3 * size], np.float32)
    return Finding("Hiatal hernia", size_mm=size, extent="small" if size < 50 else "large",
                   region="retrocardiac", center=c)


LN_STATIONS = ("right paratracheal", "subcarinal", "prevascular", "right hilar", "left hilar", "left paratracheal")


def _nodes_station_center(anat: Anatomy, station: str) -> np.ndarray:
    c, cax = anat.carina, anat.cavity_ax
    offsets = {"right paratracheal": (-20.0, 0.0, 28.0), "subcarinal": (0.0, 14.0, -24.0),
               "prevascular": (0.0, -45.0, 40.0), "left paratracheal": (22.0, -8.0, 12.0),
               "right hilar": (-0.3 * cax, -8.0, -30.0), "left hilar": (0.3 * cax, -8.0, -30.0)}
    return c + np.array(offsets[station], np.float32)


def _lymph(rng: np.random.Generator, anat: Anatomy) -> Finding:
    stations = list(rng.choice(LN_STATIONS, size=int(rng.integers(1, 4)), replace=False))
    sizes = rng.uniform(13, 24, len(stations))
    nodes = [(_nodes_station_center(anat, s), float(r)) for s, r in zip(stations, sizes, strict=True)]
    return Finding("Lymphadenopathy", region=", ".join(stations), size_mm=float(np.round(sizes.max())),
                   extent="mediastinal" if all("hilar" not in s for s in stations) else "mediastinal-hilar",
                   center=_nodes_station_center(anat, stations[0]),
                   params={"nodes": nodes})


DEVICES = ("port catheter", "central venous catheter", "pacemaker", "sternotomy wires")


def _device(rng: np.random.Generator, anat: Anatomy) -> Finding:
    device = str(rng.choice(DEVICES))
    side = None if device == "sternotomy wires" else ("left" if device == "pacemaker" and rng.random() < 0.8
                                                      else str(rng.choice(SIDES)))
    if device == "sternotomy wires":
        z = 0.5 * (anat.carina[2] + 30.0 + anat.heart_center[2] - 20.0)
        center = np.array([0.0, -anat.cavity_ay - 0.5 * anat.muscle_mm, z], np.float32)
    elif device == "central venous catheter":
        center = np.array([-0.1 * anat.cavity_ax, -0.3 * anat.cavity_ay, anat.carina[2]], np.float32)
    else:  # the port reservoir or pacemaker generator in the anterior chest wall
        center = np.array([SIGN[side] * 0.45 * anat.body_ax, -anat.body_ay + 0.5 * anat.fat_mm + 2.0,
                           anat.lungs[side].z_apex - 35.0], np.float32)
    return Finding("Medical material", side=side, region=device, center=center,
                   params={"device": device, "side": side, "n_wires": int(rng.integers(4, 7))})


SAMPLERS = {
    "Medical material": _device, "Arterial wall calcification": _arterial, "Cardiomegaly": _cardiomegaly,
    "Pericardial effusion": _pericardial, "Coronary artery wall calcification": _coronary,
    "Hiatal hernia": _hernia, "Lymphadenopathy": _lymph, "Emphysema": _emphysema, "Atelectasis": _atelectasis,
    "Lung nodule": _nodule, "Lung opacity": _opacity, "Pulmonary fibrotic sequela": _fibrosis,
    "Pleural effusion": _pleural_effusion, "Mosaic attenuation pattern": _mosaic,
    "Peribronchial thickening": _peribronchial, "Consolidation": _consolidation, "Bronchiectasis": _bronchiectasis,
    "Interlobular septal thickening": _septal,
}
assert set(SAMPLERS) == set(LABELS)
