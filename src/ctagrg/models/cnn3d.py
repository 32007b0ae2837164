"""A small 3D CNN for CPU-sized volumes (the demo): a fixed HU-bin stem, three 3D conv stages, region pooling.

Not part of the published CT-AGRG. It exists because CT-Net's 2D ResNet trunk, run on every slice triplet, does
not learn the phantom findings in a few CPU minutes (measured in docs/training.md), while this network, at about a
tenth of the work per volume, does. At CT-RATE scale use ``ctnet`` or ``ctvit``.

Shapes for the demo input (B, 1, 64, 128, 128) at (4, 2, 2) mm, default config::

    input -> HU                     (B, 1, 64, 128, 128)   undo the preprocessing window (``input_hu``)
    HU-bin stem (fixed)             (B, 14, 32, 32, 32)    per 2x4x4 patch (8 mm): square root of the fraction of
                                                           voxels in each of 12 HU bins (air, lung, ground glass,
                                                           fat, fluid, soft tissue, bone, calcium, metal, ...),
                                                           mean and max HU; with ``context`` + lung fraction
                                                           16 mm around, and solid fraction x that ("solid
                                                           surrounded by lung"); with ``blob``, ``sphere`` and
                                                           ``node`` the isolated-blob, -sphere and fat-ringed
                                                           ball channels (the demo: 20)
    1x1 conv + conv3 at 32^3        (B, 2w, 32, 32, 32)
    stride-2 stages                 (B, 4w, 16, 16, 16) -> (B, 8w, 8, 8, 8)
    region pooling                  per octant (superior/inferior x right/left x anterior/posterior) max + mean of
                                    the CNN features, their global max, and the stem's own max + mean on a
                                    ``region_grid``^3 grid of regions: position is kept, so the side of a finding
                                    can be read from the embedding (grounding); with ``context`` also the stem's
                                    global max
    BatchNorm1d, Linear, ReLU, dropout  (B, embed_dim); with embed_dim 0: BatchNorm1d, dropout (B, pooled_dim)

    with ``lateral_halves`` (the demo): the same pooling on the right half and on the mirrored left half (4 regions
    of the CNN maps, 4 x 2 x 4 stem regions each), one shared BatchNorm1d (and Linear): h = [right, left],
    (B, 2 x part_dim), for heads that read each half with the same weights (``heads.lateral_halves``)

The stem has no weights: it turns HU into tissue fractions (what a radiologist reads first), so the CNN need not
learn HU windows from a few hundred volumes. It needs the full HU range, so pair the encoder with a preprocessing
whose window keeps calcium and metal (``configs/demo/preprocess.yaml``: [-1000, 1500] HU), and set ``input_hu``
to that window.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctagrg.measurement.nodule_size import NoduleSizeConfig, shell_directions, solid_spheres
from ctagrg.utils.array_memo import ArrayMemo

Triple = tuple[int, int, int]

# Bin edges (HU): air/emphysema | lung | dense lung | ground glass | reticulation | fat | fluid | soft tissue |
# bone | cortex | calcium | metal. Fluid (~5 HU) and soft tissue (~45 HU) get their own bins: effusions differ
# from muscle only there.
# A standardised pooled feature this many training standard deviations from its training mean is an outlier. On the
# demo's phantoms 0.02% of the features of a test volume are (at most 0.34% in one volume); on the real CTs in
# ../shared 2-6% are (BENCHMARKS.md, "Out-of-distribution inputs"): ``last_outlier_fraction``.
OUTLIER_SD = 8.0

SPHERE_DIRECTIONS = shell_directions(2)  # the sphere channel's 98 shell directions
# The sphere and node channels already computed, by volume contents and settings (ctagrg.utils.array_memo): 128 KiB
# per channel and demo volume, so 256 MiB keeps ~1,000 volumes with both (the demo has 600).
SPHERE_MEMO = ArrayMemo(256 * 2**20)

HU_EDGES: tuple[float, ...] = (-950.0, -800.0, -650.0, -350.0, -150.0, -40.0, 25.0, 80.0, 400.0, 900.0, 1400.0)


@dataclass
class CNN3DConfig:
    """Small 3D CNN encoder. ``input_shape`` (D, H, W) must be divisible by ``patch`` x 4 (two stride-2 stages)."""

    input_shape: Triple = (64, 128, 128)
    # (hu_min, hu_max, offset) of the preprocessing: input = (HU - hu_min) / (hu_max - hu_min) - offset
    input_hu: tuple[float, float, float] = (-1000.0, 1500.0, 0.0)
    hu_edges: tuple[float, ...] = HU_EDGES
    patch: Triple = (2, 4, 4)  # stem patch in voxels (D, H, W)
    width: int = 8  # channels: 2w at the stem grid, 4w, then 8w
    region_grid: int = 4  # the stem's statistics are pooled on this many regions per axis
    # 0: no projection, the standardised pooled features are the embedding (``pooled_dim`` wide; the CPU demo, where
    # a 2048-d Linear + ReLU in front of the heads overfit ~300 volumes, docs/training.md); else Linear + ReLU to it
    embed_dim: int = 2048
    dropout: float = 0.2
    # Two fixed context channels on the stem grid, plus the stem's global max in the pooled features: the lung
    # fraction around each patch (mean over the 6 patches ``context_patches`` away along the axes) and the solid
    # fraction times it, "solid tissue surrounded by aerated lung" (a nodule, a lung mass). The CNN did not learn
    # this from ~300 phantoms on its own (lung nodule AUROC at chance); with it, the learnability benchmark's macro
    # AUROC rose from 0.897 to 0.914 (10 min each; nodules still ~0.56; BENCHMARKS.md). Off by default so that
    # checkpoints saved without it still load.
    context: bool = False
    context_patches: int = 2
    lung_hu_max: float = -650.0  # "aerated lung": the bins below this edge
    solid_hu: tuple[float, float] = (-40.0, 400.0)  # "solid": the bins between these edges (fluid to soft tissue)
    # Pool the right and the left half of the chest separately, the left one mirrored, and return both: h is
    # (B, 2 x half_dim), [right half, left half]. Heads built with ``heads.lateral_halves`` read each half with the
    # same weights and take a soft maximum over the two, so a finding is learned once for both sides (twice the
    # examples) and its side is where it fires. Not in the published method (docs/training.md, "Lateral halves").
    lateral_halves: bool = False
    # One more stem channel, measured at full resolution: "an isolated solid blob" (a nodule). Solid voxels
    # (``solid_hu``) eroded by ``blob_erosion`` voxels (thin vessels vanish), times the aerated-lung fraction on a
    # shell around the voxel (26 directions, the best of ``blob_radii_mm``), at most per patch. Alone, its maximum
    # per half gave the demo's test phantoms nodule AUROC 0.81 (0.94 for nodules of 20-30 mm; the higher half on the
    # nodule's side for 0.78) where the CNN on the patch statistics reached 0.60-0.68 (docs/training.md, "Blob
    # channel"). ``voxel_mm`` must be the input's spacing (D, H, W) in mm (configs/demo/preprocess.yaml's
    # ``spacing``): another spacing puts the shell at other radii, so training (the cache's preprocess.json) and
    # the Reporter refuse a mismatch (ctagrg.models.preprocess_match). Off by default so that checkpoints saved
    # without it load.
    blob: bool = False
    voxel_mm: tuple[float, float, float] = (4.0, 2.0, 2.0)
    blob_radii_mm: tuple[float, ...] = (8.0, 12.0, 16.0, 22.0)
    blob_erosion: Triple = (3, 3, 3)
    # With ``blob``: one channel per radius of ``blob_radii_mm`` instead of their best. A nodule of radius R scores
    # on the shells wider than R only, so the per-radius maxima carry its size, which the best over radii does not:
    # on the demo's 600 phantoms a ridge regression from the per-half maxima and counts of 9 radii put 0.78 of the
    # test nodules within 5 mm of their size (a constant: 0.48). End to end it did not carry through (the demo's
    # step-1 embeddings overfit the 235 training nodules' sizes; generated sizes within 5 mm 0.41 with it, 0.36-0.38
    # without), so the demo leaves it off (docs/training.md, "Session of 2026-11-29 (fifth)"). Off by default so that
    # checkpoints saved without it load.
    blob_profile: bool = False
    # With ``blob``: one more 0/1 channel, solid eroded by this (smaller) kernel with aerated lung at all 26 points
    # of at least one shell. The (3, 3, 3) erosion removes nodules under ~12 mm at 4 mm slices; with (1, 3, 3) they
    # survive but so do vessels, which lung surrounds on all points but one or two (docs/training.md, "Session of
    # 2026-11-29 (fifth)"). Empty: off.
    blob_whole_shell_erosion: tuple[int, ...] = ()
    # One more stem channel: "an isolated solid sphere", per patch the best candidate of the nodule measurement's
    # sphere finder (ctagrg.measurement.nodule_size: local maxima of the solid tissue's distance transform) scored
    # as the fraction of 98 points ``sphere_gap_mm`` outside its sphere that lie in aerated lung, plus
    # ``sphere_radius_weight`` x min(radius, ``sphere_radius_cap_mm``) / cap; 0 where no candidate of at least
    # ``sphere_min_radius_mm`` is centred. The blob channels test 26 shell points, between which a vessel 2-5 mm wide
    # slips, so vessels pass as often as nodules under 12 mm; 98 points 16-27 degrees apart meet them. Alone, its
    # maximum gave the learnability benchmark's test phantoms nodule AUROC 0.87 (the blob channel's: 0.71; the
    # parameters chosen on its training phantoms; docs/training.md, "Models"). Needs ``voxel_mm``, like
    # ``blob``. Off by default so that checkpoints saved without it load.
    sphere: bool = False
    sphere_hu: tuple[float, float] = (-700.0, -400.0)  # aerated lung below the first, solid tissue above the second
    sphere_gap_mm: float = 4.5
    sphere_min_radius_mm: float = 2.7
    sphere_radius_weight: float = 0.5
    sphere_radius_cap_mm: float = 10.0
    # One more stem channel: "a soft-tissue ball ringed by fat" (an enlarged lymph node). The same sphere finder
    # with solid tissue above ``node_hu[1]`` (soft tissue, not fat) and aerated lung below ``node_hu[0]``; a
    # candidate of radius within ``node_radius_mm`` scores the fraction of its 98 shell points ``node_gap_mm``
    # outside it that are neither (fat, in the mediastinum) plus ``node_lung_weight`` x the fraction in lung (a
    # hilar node borders the lung). A tube (the aorta, the esophagus) meets itself along its axis, so it scores
    # less than a ball. Alone, its maximum gave the learnability benchmark's phantoms lymphadenopathy AUROC 0.995
    # (training) and 0.98 (test), the trained model without it 0.73 (docs/training.md, "Models"). Needs
    # ``voxel_mm``. Off by default so that checkpoints saved without it load.
    node: bool = False
    node_hu: tuple[float, float] = (-400.0, -30.0)
    node_gap_mm: float = 3.0
    node_radius_mm: tuple[float, float] = (5.0, 13.0)
    node_lung_weight: float = 0.5

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)  # type: ignore[assignment]
        self.patch = tuple(int(v) for v in self.patch)  # type: ignore[assignment]
        self.input_hu = tuple(float(v) for v in self.input_hu)  # type: ignore[assignment]
        self.hu_edges = tuple(float(v) for v in self.hu_edges)
        if list(self.hu_edges) != sorted(self.hu_edges):
            raise ValueError(f"CNN3DConfig.hu_edges must increase, got {list(self.hu_edges)}")
        for n, p, axis in zip(self.input_shape, self.patch, "DHW", strict=True):
            if n % (4 * p):
                raise ValueError(f"CNN3DConfig: input_shape {axis}={n} is not divisible by 4 x patch ({4 * p})")
        if self.input_hu[1] <= self.input_hu[0]:
            raise ValueError(f"CNN3DConfig.input_hu: hu_max must exceed hu_min, got {list(self.input_hu)}")
        self.solid_hu = tuple(float(v) for v in self.solid_hu)  # type: ignore[assignment]
        self.voxel_mm = tuple(float(v) for v in self.voxel_mm)  # type: ignore[assignment]
        self.blob_radii_mm = tuple(float(v) for v in self.blob_radii_mm)
        self.blob_erosion = tuple(int(v) for v in self.blob_erosion)  # type: ignore[assignment]
        self.blob_whole_shell_erosion = tuple(int(v) for v in self.blob_whole_shell_erosion)
        if self.blob_whole_shell_erosion and (len(self.blob_whole_shell_erosion) != 3 or any(
                k < 1 or k % 2 == 0 for k in self.blob_whole_shell_erosion)):
            raise ValueError(f"CNN3DConfig.blob_whole_shell_erosion: three odd sizes >= 1 or empty, got "
                             f"{list(self.blob_whole_shell_erosion)}")
        if self.blob and (any(k < 1 or k % 2 == 0 for k in self.blob_erosion) or not self.blob_radii_mm
                          or min(self.blob_radii_mm) <= 0 or min(self.voxel_mm) <= 0):
            raise ValueError(f"CNN3DConfig.blob: blob_erosion must be odd and >= 1 per axis, blob_radii_mm and "
                             f"voxel_mm positive; got {list(self.blob_erosion)}, {list(self.blob_radii_mm)}, "
                             f"{list(self.voxel_mm)}")
        self.sphere_hu = tuple(float(v) for v in self.sphere_hu)  # type: ignore[assignment]
        if self.sphere and (not self.sphere_hu[0] < self.sphere_hu[1] or self.sphere_gap_mm < 0
                            or self.sphere_min_radius_mm <= 0 or self.sphere_radius_cap_mm <= 0
                            or self.sphere_radius_weight < 0 or min(self.voxel_mm) <= 0):
            raise ValueError(f"CNN3DConfig.sphere: sphere_hu must increase (lung, solid), sphere_gap_mm and "
                             f"sphere_radius_weight >= 0, sphere_min_radius_mm, sphere_radius_cap_mm and voxel_mm "
                             f"positive; got {list(self.sphere_hu)}, {self.sphere_gap_mm}, "
                             f"{self.sphere_radius_weight}, {self.sphere_min_radius_mm}, {self.sphere_radius_cap_mm}, "
                             f"{list(self.voxel_mm)}")
        if self.node:
            self._check_node()
        if self.blob_profile and not self.blob:
            raise ValueError("CNN3DConfig.blob_profile needs blob: true")
        if self.context or self.blob:
            for name, v in (("lung_hu_max", self.lung_hu_max), ("solid_hu", self.solid_hu[0]),
                            ("solid_hu", self.solid_hu[1])):
                if v not in self.hu_edges:
                    raise ValueError(f"CNN3DConfig.{name}: {v:g} HU is not one of hu_edges {list(self.hu_edges)}")
            if self.context_patches < 1:
                raise ValueError(f"CNN3DConfig.context_patches must be >= 1, got {self.context_patches}")
        if self.lateral_halves and self.region_grid % 2:
            raise ValueError(f"CNN3DConfig.lateral_halves: region_grid must be even (its regions split at the "
                             f"midline), got {self.region_grid}")
        if self.lateral_halves and self.input_shape[1] % (8 * self.patch[1]):
            raise ValueError(f"CNN3DConfig.lateral_halves: input_shape H={self.input_shape[1]} must be divisible by "
                             f"8 x patch ({8 * self.patch[1]}), so that the stem and the CNN maps split into equal "
                             f"halves")

    def _check_node(self) -> None:
        """Normalise the ``node`` fields and raise ValueError naming the first one that is wrong."""
        def pair(name: str) -> tuple[float, float]:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
                raise ValueError(f"CNN3DConfig.{name}: expected two numbers, got {value!r}")
            return float(value[0]), float(value[1])

        self.node_hu = pair("node_hu")
        self.node_radius_mm = pair("node_radius_mm")
        if not self.node_hu[0] < self.node_hu[1]:
            raise ValueError(f"CNN3DConfig.node_hu must increase (lung below the first, solid above the second), got "
                             f"{list(self.node_hu)}")
        if not (self.input_hu[0] <= self.node_hu[0] and self.node_hu[1] <= self.input_hu[1]):
            raise ValueError(f"CNN3DConfig.node_hu {list(self.node_hu)} must lie inside the input's HU window "
                             f"{list(self.input_hu[:2])}")
        if not self.node_gap_mm >= 0:  # NaN fails too
            raise ValueError(f"CNN3DConfig.node_gap_mm must be >= 0, got {self.node_gap_mm}")
        if not 0 < self.node_radius_mm[0] <= self.node_radius_mm[1]:
            raise ValueError(f"CNN3DConfig.node_radius_mm must be (min, max) with 0 < min <= max, got "
                             f"{list(self.node_radius_mm)}")
        if not 0 <= self.node_lung_weight <= 1:
            raise ValueError(f"CNN3DConfig.node_lung_weight must be in [0, 1], got {self.node_lung_weight}")
        if not min(self.voxel_mm) > 0:
            raise ValueError(f"CNN3DConfig.node needs a positive voxel_mm, got {list(self.voxel_mm)}")

    @property
    def lung_bins(self) -> list[int]:
        """Indices of the HU bins below ``lung_hu_max`` (bin i spans [edges[i-1], edges[i]))."""
        return [i for i, e in enumerate(self.hu_edges) if e <= self.lung_hu_max]

    @property
    def solid_bins(self) -> list[int]:
        lo, hi = self.solid_hu
        return [i for i in range(1, len(self.hu_edges)) if self.hu_edges[i - 1] >= lo and self.hu_edges[i] <= hi]

    @property
    def stem_channels(self) -> int:
        return len(self.hu_edges) + 1 + 2 + self.blob_channels + self.sphere_channels + (2 if self.context else 0)

    @property
    def sphere_channels(self) -> int:
        """Stem channels from the sphere finder: ``sphere`` and ``node``, one each."""
        return int(self.sphere) + int(self.node)

    @property
    def blob_channels(self) -> int:
        """Stem channels of the blob score: 0 without ``blob``, 1 (the best radius), or one per radius with
        ``blob_profile``."""
        if not self.blob:
            return 0
        return (len(self.blob_radii_mm) if self.blob_profile else 1) + (1 if self.blob_whole_shell_erosion else 0)

    def blob_offsets(self) -> list[list[Triple]]:
        """Per radius of ``blob_radii_mm``, the 26 voxel offsets (D, H, W) of the shell's sample points: the
        directions to the neighbours of a 3 x 3 x 3 cube, normalised, times the radius, in voxels (rounded half to
        even, so that a direction and its mirror image give mirrored offsets)."""
        dirs = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)]
        return [[tuple(int(round(r * v / (a * a + b * b + c * c) ** 0.5 / mm))  # type: ignore[misc]
                       for v, mm in zip((a, b, c), self.voxel_mm, strict=True)) for a, b, c in dirs]
                for r in self.blob_radii_mm]

    @property
    def grid(self) -> Triple:
        return tuple(n // p for n, p in zip(self.input_shape, self.patch, strict=True))  # type: ignore[return-value]

    @property
    def out_dim(self) -> int:
        """Width of the embedding ``h``: ``embed_dim``, or ``pooled_dim`` when ``embed_dim`` is 0 (twice either
        with ``lateral_halves``: one per half)."""
        return self.halves * (self.embed_dim or self.part_dim)

    @property
    def halves(self) -> int:
        return 2 if self.lateral_halves else 1

    @property
    def part_dim(self) -> int:
        """Pooled features per part: the whole volume, or with ``lateral_halves`` one half."""
        c, s = 8 * self.width, self.stem_channels
        regions, grid = 8 // self.halves, self.region_grid**3 // self.halves
        return 2 * c * regions + c + (s if self.context else 0) + 2 * s * grid

    @property
    def pooled_dim(self) -> int:
        return self.halves * self.part_dim

    def shapes(self) -> dict[str, tuple[int, ...]]:
        d, h, w = self.grid
        return {"input": (1, *self.input_shape), "stem": (self.stem_channels, d, h, w),
                "stage1": (2 * self.width, d, h, w), "stage2": (4 * self.width, d // 2, h // 2, w // 2),
                "stage3": (8 * self.width, d // 4, h // 4, w // 4), "pooled": (self.pooled_dim,),
                "embedding": (self.out_dim,)}


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True))


class HUBinStem(nn.Module):
    """(B, 1, D, H, W) preprocessed → (B, len(edges) + 3, D/pd, H/ph, W/pw): per patch, the square root of the
    fraction of voxels in each HU bin, then mean HU / 1000 and max HU / 1000 (clipped to
    [-1, 3]). No weights, no gradient."""

    def __init__(self, config: CNN3DConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("edges", torch.tensor(config.hu_edges, dtype=torch.float32), persistent=False)

    @torch.no_grad()
    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.assemble(self.measure(volume))

    @property
    def measure_channels(self) -> int:
        """Channels of :meth:`measure`: one fraction per HU bin, mean HU / 1000, max HU / 1000 (+ the blob channels,
        + the sphere and node channels)."""
        return len(self.config.hu_edges) + 3 + self.config.blob_channels + self.config.sphere_channels

    @torch.no_grad()
    def measure(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) preprocessed → (B, measure_channels, D/pd, H/ph, W/pw) float32: per patch, the fraction
        of voxels in each HU bin, mean HU / 1000 and max HU / 1000 (clipped to [-1, 3]), with ``blob`` each blob
        channel's maximum (``blob_channels``: the score, or one per radius, and the whole-shell indicator), then with
        ``sphere`` and ``node`` their channels (:meth:`_spheres`).

        Everything the stem reads from the voxels. The patch grid commutes with flips and whole-patch shifts, so
        a caller may compute this once per volume and augment it (:meth:`assemble` then gives what the stem of
        the augmented volume gives): ``cache_stem`` in pretraining."""
        hu_min, hu_max, offset = self.config.input_hu
        scale = hu_max - hu_min
        x = volume[:, 0].float()
        b, d, h, w = x.shape
        pd, ph, pw = self.config.patch
        gd, gh, gw = d // pd, h // ph, w // pw
        nb, n_patch = len(self.config.hu_edges) + 1, gd * gh * gw
        # bins straight from the preprocessed values (edges mapped into its units), then one int32 bincount over
        # (bin, sample, patch): ~10x cheaper than a one-hot (B, bins, D, H, W) tensor and average pooling.
        bins = torch.bucketize(x, (self.edges - hu_min) / scale - offset, out_int32=True)
        flat = (bins * (b * n_patch)).add_(self._base(b, d, h, w, x.device)).flatten()
        counts = torch.bincount(flat, minlength=nb * b * n_patch).view(nb, b, gd, gh, gw).transpose(0, 1)
        frac = counts.to(x.dtype) / float(pd * ph * pw)
        # summed in float64: exact for these values, so the mean does not depend on the order of the voxels, and a
        # flipped or rotated volume's patch means are exactly the flipped or rotated means (cache_stem relies on it)
        mean = ((F.avg_pool3d(x[:, None].double(), self.config.patch).float() + offset) * scale + hu_min) / 1000.0
        peak = ((F.max_pool3d(x[:, None], self.config.patch) + offset) * scale + hu_min).clamp(-1000.0, 3000.0)
        out = [frac, mean, peak / 1000.0]
        if self.config.blob:
            out.append(F.max_pool3d(self._blob(bins), self.config.patch))
        if self.config.sphere_channels:
            out.append(self._spheres(((x + offset) * scale + hu_min).cpu().numpy()).to(x.device))
        return torch.cat(out, dim=1)

    def _spheres(self, hu: np.ndarray) -> torch.Tensor:
        """(B, D, H, W) HU -> (B, sphere_channels, d, h, w) float32 on the patch grid: per patch, the best score of
        the candidate spheres centred in it (``CNN3DConfig.sphere``, then ``node``), 0 where none. Numpy and scipy
        on the CPU, ~0.15 CPU-s per channel for a 64 x 128 x 128 volume, the batch's volumes on up to
        ``torch.get_num_threads()`` threads (scipy's distance transform releases the GIL); a flipped volume gives
        exactly the flipped channels (symmetric shell points). Results are memoised by the volume's contents
        (``SPHERE_MEMO``): the demo's later stages measure the same volumes again."""
        cfg = self.config
        salt = repr(("sphere", cfg.sphere, cfg.sphere_hu, cfg.sphere_gap_mm, cfg.sphere_min_radius_mm,
                     cfg.sphere_radius_weight, cfg.sphere_radius_cap_mm, "node", cfg.node, cfg.node_hu,
                     cfg.node_gap_mm, cfg.node_radius_mm, cfg.node_lung_weight, cfg.voxel_mm, cfg.patch)).encode()
        out = np.zeros((hu.shape[0], cfg.sphere_channels, *cfg.grid), np.float32)
        keys = [SPHERE_MEMO.digest(salt, volume) for volume in hu]
        todo = []
        for i, key in enumerate(keys):
            hit = SPHERE_MEMO.get(key)
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
        workers = min(len(todo), max(1, torch.get_num_threads()))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                found = list(pool.map(lambda i: self._spheres_one(hu[i]), todo))
        else:
            found = [self._spheres_one(hu[i]) for i in todo]
        for i, channels in zip(todo, found, strict=True):
            out[i] = channels
            SPHERE_MEMO.put(keys[i], channels)
        return torch.from_numpy(out)

    def _spheres_one(self, volume: np.ndarray) -> np.ndarray:
        """(D, H, W) HU -> (sphere_channels, d, h, w) float32: :meth:`_spheres` of one volume, without the memo."""
        cfg = self.config
        out = np.zeros((cfg.sphere_channels, *cfg.grid), np.float32)
        channel = 0
        if cfg.sphere:
            finder = NoduleSizeConfig(solid_hu=cfg.sphere_hu[1], lung_hu=cfg.sphere_hu[0], gap_mm=cfg.sphere_gap_mm,
                                      min_radius_mm=cfg.sphere_min_radius_mm)
            found = solid_spheres(volume, cfg.voxel_mm, finder, SPHERE_DIRECTIONS)
            score = found.lung_fraction + cfg.sphere_radius_weight * (
                np.minimum(found.radii_mm, cfg.sphere_radius_cap_mm) / cfg.sphere_radius_cap_mm)
            self._max_per_patch(out[channel], found.centres, score)
            channel += 1
        if cfg.node:
            finder = NoduleSizeConfig(solid_hu=cfg.node_hu[1], lung_hu=cfg.node_hu[0], gap_mm=cfg.node_gap_mm,
                                      min_radius_mm=cfg.node_radius_mm[0])
            found = solid_spheres(volume, cfg.voxel_mm, finder, SPHERE_DIRECTIONS)
            keep = found.radii_mm <= cfg.node_radius_mm[1]
            score = found.between_fraction + cfg.node_lung_weight * found.lung_fraction
            self._max_per_patch(out[channel], found.centres[keep], score[keep])
        return out

    def _max_per_patch(self, out: np.ndarray, centres: np.ndarray, score: np.ndarray) -> None:
        """``out`` (d, h, w) = max(out, the best ``score`` of the ``centres`` (N, 3 voxel indices) in each patch)."""
        if len(centres):
            cell = centres // np.asarray(self.config.patch)
            np.maximum.at(out, (cell[:, 0], cell[:, 1], cell[:, 2]), score.astype(np.float32))

    def _blob(self, bins: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) HU-bin indices -> (B, blob_channels, D, H, W) blob score in [0, 1]: eroded solid x the best
        shell's aerated-lung fraction, or with ``blob_profile`` x each shell's. Outside the volume counts as neither
        solid nor lung. Every step is exact (0/1 masks, integer counts of at most 26, one division), so a flipped
        volume gives exactly the flipped score."""
        cfg = self.config
        # uint8 masks and counts (a shell has 26 points): a quarter of float32's memory traffic, and the erosion as
        # a separable AND instead of max_pool3d (BENCHMARKS.md, "Training speed of the demo encoder")
        lung = (bins < len(cfg.lung_bins)).to(torch.uint8)[:, None]  # bins 0 .. lung_bins-1 lie below lung_hu_max
        lo, hi = cfg.solid_bins[0], cfg.solid_bins[-1]
        solid = ((bins >= lo) & (bins <= hi)).to(torch.uint8)[:, None]
        eroded = _erode(solid, cfg.blob_erosion)
        offsets = cfg.blob_offsets()
        p = max(abs(v) for shell in offsets for o in shell for v in o)
        padded = F.pad(lung, (p,) * 6)
        d, h, w = lung.shape[2:]
        best = torch.zeros_like(lung)
        whole = torch.zeros_like(lung) if cfg.blob_whole_shell_erosion else None
        profile = []
        for shell in offsets:
            around = torch.zeros_like(lung)
            for a, b, c in shell:
                around += padded[:, :, p + a:p + a + d, p + b:p + b + h, p + c:p + c + w]
            if whole is not None:
                whole |= around == len(shell)
            if cfg.blob_profile:
                profile.append(around * eroded)
            else:
                torch.maximum(best, around, out=best)
        count = torch.cat(profile, dim=1) if cfg.blob_profile else best * eroded
        score = count.float() / len(offsets[0])
        if whole is None:
            return score
        return torch.cat([score, (whole & _erode(solid, cfg.blob_whole_shell_erosion)).float()], dim=1)

    @torch.no_grad()
    def measure_padding(self, pad_value: float, device: torch.device | str = "cpu") -> torch.Tensor:
        """(measure_channels, 1, 1, 1): :meth:`measure` of a patch filled with ``pad_value`` (what a shift brings
        in).
        Measured on a whole input-shaped volume, so that the pooling rounds as it does inside a volume."""
        full = torch.full((1, 1, *self.config.input_shape), float(pad_value), device=device)
        return self.measure(full)[0, :, :1, :1, :1].clone()

    def assemble(self, measured: torch.Tensor) -> torch.Tensor:
        """(B, measure_channels, d, h, w) from :meth:`measure` → (B, stem_channels, d, h, w): the square root of each
        fraction (a few calcium or metal voxels in a patch, fraction ~0.01, become a visible 0.1), mean and max
        HU / 1000, and with ``context`` the two context channels."""
        nb = len(self.config.hu_edges) + 1
        frac = measured[:, :nb]
        out = [frac.sqrt(), measured[:, nb:]]
        if self.config.context:
            out += self._context(frac)
        return torch.cat(out, dim=1)

    def _context(self, frac: torch.Tensor) -> list[torch.Tensor]:
        """(B, bins, d, h, w) fractions -> [surrounding lung fraction, solid x surrounding lung], (B, 1, d, h, w)
        each. Edges are replicated, so the body wall does not read as lung beyond the volume."""
        cfg, k = self.config, self.config.context_patches
        lung = frac[:, cfg.lung_bins].sum(1, keepdim=True)
        solid = frac[:, cfg.solid_bins].sum(1, keepdim=True)
        padded = F.pad(lung, (k,) * 6, mode="replicate")
        d, h, w = lung.shape[2:]
        around = torch.stack([padded[:, :, k + a:k + a + d, k + b:k + b + h, k + c:k + c + w]
                              for a, b, c in ((-k, 0, 0), (k, 0, 0), (0, -k, 0), (0, k, 0), (0, 0, -k), (0, 0, k))]
                             ).mean(0)
        return [around, solid * around]

    def _base(self, b: int, d: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(B, D, H, W) int32: sample * n_patch + the voxel's patch index (cached per shape)."""
        key = (b, d, h, w, str(device))
        if getattr(self, "_base_key", None) != key:
            pd, ph, pw = self.config.patch
            gh, gw = h // ph, w // pw
            i32 = torch.int32
            patch = (torch.arange(d, device=device, dtype=i32) // pd)[:, None, None] * (gh * gw) \
                + (torch.arange(h, device=device, dtype=i32) // ph)[None, :, None] * gw \
                + (torch.arange(w, device=device, dtype=i32) // pw)[None, None, :]
            n_patch = (d // pd) * gh * gw
            self._base_cache = (torch.arange(b, device=device, dtype=i32)[:, None, None, None] * n_patch
                                + patch[None]).contiguous()
            self._base_key = key
        return self._base_cache


def _erode(mask: torch.Tensor, kernel: Triple) -> torch.Tensor:
    """(B, 1, D, H, W) uint8 0/1 -> the same, 1 where the whole ``kernel`` (odd sizes, centred) lies in the mask;
    outside the volume counts as 0. A separable AND along each axis (max_pool3d of the negation gives the same)."""
    x = F.pad(mask, [v // 2 for v in reversed(kernel) for _ in range(2)], value=0)
    for axis, k in zip((2, 3, 4), kernel, strict=True):
        n = x.shape[axis] - (k - 1)
        out = x.narrow(axis, 0, n).clone()
        for i in range(1, k):
            out &= x.narrow(axis, i, n)
        x = out
    return x


class CNN3DEncoder(nn.Module):
    """(B, 1, D, H, W) float32 preprocessed CT (SLP) -> (B, out_dim) embedding ``h`` (``CNN3DConfig.out_dim``)."""

    def __init__(self, config: CNN3DConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CNN3DConfig()
        self.shapes = config.shapes()
        w, c = config.width, config.stem_channels
        self.stem = HUBinStem(config)
        self.features = nn.Sequential(
            nn.Conv3d(c, 2 * w, 1), nn.ReLU(inplace=True),  # mixes the bins into tissue features
            _block(2 * w, 2 * w, 1), _block(2 * w, 4 * w, 2), _block(4 * w, 8 * w, 2), _block(8 * w, 8 * w, 1))
        # channels-last (N, D, H, W, C) weights and inputs: oneDNN's 3D convolutions on the CPU run a training step
        # ~1.6x faster so (0.38 -> 0.24 s for a batch of 8 at the demo shape, BENCHMARKS.md); values equal up to
        # float rounding, and checkpoints are written contiguous
        self.features.to(memory_format=torch.channels_last_3d)
        self.feature_map = nn.Identity()  # the stem's maps, read by the CNN and the pooling alike; saliency hooks it
        # standardise the pooled features: rare-bin statistics (calcium, metal) are ~100x smaller than lung ones
        # and would otherwise be learned last
        self.norm = nn.BatchNorm1d(config.part_dim)  # with lateral_halves shared by both halves, as the heads are
        self.fc = nn.Linear(config.part_dim, config.embed_dim) if config.embed_dim else None
        self.dropout = nn.Dropout(config.dropout)
        self.gradient_checkpointing = False
        # (B,) fraction of the last eval batch's standardised features beyond OUTLIER_SD: how far a volume lies
        # outside the training data (a phantom-trained model shown a real scan); None before an eval forward
        self.last_outlier_fraction: torch.Tensor | None = None

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the conv stages in backward instead of storing their activations."""
        self.gradient_checkpointing = True

    def forward_features(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, pooled_dim) region-pooled features."""
        return self.features_from_stem(self.stem(self.check_input(volume)))[0]

    def check_input(self, volume: torch.Tensor) -> torch.Tensor:
        """``volume`` itself, or ValueError when it is not (B, 1, *input_shape)."""
        if tuple(volume.shape[1:]) != (1, *self.config.input_shape):
            raise ValueError(f"CNN3DEncoder: expected (B, 1, {', '.join(map(str, self.config.input_shape))}) "
                             f"(input_shape), got {tuple(volume.shape)}")
        return volume

    def features_from_stem(self, stem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stem output (B, stem_channels, d, h, w) -> (pooled (B, pooled_dim), CNN maps (B, 8w, d/4, h/4, w/4)).

        Separate from :meth:`forward_features` so that callers who computed the (weightless) stem once, e.g.
        benchmarks/phantom_learnability.py, run the same network on it.
        """
        stem = self.feature_map(stem)
        x = stem.contiguous(memory_format=torch.channels_last_3d)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            maps = checkpoint(self.features, x, use_reentrant=False)
        else:
            maps = self.features(x)
        if self.config.lateral_halves:
            # axis 3 (L) grows toward the left: [:h/2] is the right half; the left half is mirrored so that both
            # run from the lateral chest wall (index 0) to the midline
            mid_m, mid_s = maps.shape[3] // 2, stem.shape[3] // 2
            pooled = torch.cat([self._pool(maps[:, :, :, :mid_m], stem[:, :, :, :mid_s], (2, 1, 2)),
                                self._pool(maps[:, :, :, mid_m:].flip(3), stem[:, :, :, mid_s:].flip(3), (2, 1, 2))],
                               dim=1)
            return pooled, maps
        return self._pool(maps, stem, (2, 2, 2)), maps

    def _pool(self, maps: torch.Tensor, stem: torch.Tensor, regions: Triple) -> torch.Tensor:
        """(B, part_dim): max + mean of the CNN maps on ``regions`` (the volume's octants: axis 2 = inferior half
        first, axis 3 = right half first), their global max, with ``context`` the stem's global max, and the stem's
        max + mean on the ``region_grid`` regions (half as many along L for a half)."""
        g = self.config.region_grid
        grid = (g, g * regions[1] // 2, g)
        parts = [F.adaptive_max_pool3d(maps, regions).flatten(1), F.adaptive_avg_pool3d(maps, regions).flatten(1),
                 maps.amax(dim=(2, 3, 4))]
        if self.config.context:  # e.g. the most isolated solid patch anywhere (a nodule in any lobe)
            parts.append(stem.amax(dim=(2, 3, 4)))
        parts += [F.adaptive_max_pool3d(stem, grid).flatten(1), F.adaptive_avg_pool3d(stem, grid).flatten(1)]
        return torch.cat(parts, dim=1)

    def _standardise(self, features: torch.Tensor, batch: int) -> torch.Tensor:
        """BatchNorm1d, except that a training batch of one volume has no batch statistics: it is normalised with
        the running ones, which it does not update (the demo's pretraining meets one each epoch: 281 volumes in
        batches of 8). ``train.drop_last`` avoids such batches altogether."""
        if self.training and batch == 1:
            n = self.norm
            return F.batch_norm(features, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)
        return self.norm(features)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.forward_from_stem(self.stem(self.check_input(volume)))

    def forward_from_stem(self, stem: torch.Tensor) -> torch.Tensor:
        """(B, stem_channels, d, h, w) stem output (e.g. :meth:`HUBinStem.assemble` of measurements computed
        once) -> (B, out_dim) ``h``, as :meth:`forward` of the volume. With ``lateral_halves`` each half is
        standardised and projected by the same weights, and ``h`` is [right half, left half]."""
        pooled = self.features_from_stem(stem)[0]
        b, n = pooled.shape[0], self.config.halves
        h = self._standardise(pooled.view(b * n, -1), b)
        if not self.training:
            self.last_outlier_fraction = (h.detach().abs() > OUTLIER_SD).float().view(b, -1).mean(1)
            # At inference a feature is clipped to OUTLIER_SD: beyond it the heads and the decoder never saw a value,
            # and a real scan shown to the phantom-trained demo model (2-4% of its features beyond, some at hundreds
            # of SDs) made the decoder's pseudo self-attention slot swamp the text ("SternotomySternotomy...");
            # clipped, the sentences stay well formed (the OOD warning still says not to trust them). The encoder's
            # own training (pretraining) is not clipped; a frozen encoder's outputs (step 1's cache, the step-2
            # embedding cache) are, as at inference. The demo's phantoms have 0.02% of their features beyond.
            h = h.clamp(-OUTLIER_SD, OUTLIER_SD)
        h = self.dropout(h if self.fc is None else torch.relu(self.fc(h)))
        return h.view(b, -1)
