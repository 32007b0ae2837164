"""The demo encoder's config: sizes, the input it expects, and one section per optional stem channel.

Model configs and packaged models written before the channels had their own sections hold a flat ``cnn3d``
section (``blob: true``, ``blob_radii_mm``, ``sphere_hu``, ...): :func:`convert_legacy_cnn3d` maps it to this layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ctagrg.extras.cnn3d.channels.blob import BlobConfig
from ctagrg.extras.cnn3d.channels.context import ContextConfig
from ctagrg.extras.cnn3d.channels.node import NodeConfig
from ctagrg.extras.cnn3d.channels.sphere import SphereConfig

Triple = tuple[int, int, int]

# Bin edges (HU): air/emphysema | lung | dense lung | ground glass | reticulation | fat | fluid | soft tissue |
# bone | cortex | calcium | metal. Fluid (~5 HU) and soft tissue (~45 HU) get their own bins: effusions differ
# from muscle only there.
HU_EDGES: tuple[float, ...] = (-950.0, -800.0, -650.0, -350.0, -150.0, -40.0, 25.0, 80.0, 400.0, 900.0, 1400.0)

CHANNELS = ("context", "blob", "sphere", "node")
# flat key of the old layout -> (channel section, key in it)
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    "context": ("context", "enabled"), "context_patches": ("context", "patches"),
    "blob": ("blob", "enabled"), "blob_radii_mm": ("blob", "radii_mm"), "blob_erosion": ("blob", "erosion"),
    "blob_profile": ("blob", "profile"), "blob_whole_shell_erosion": ("blob", "whole_shell_erosion"),
    "sphere": ("sphere", "enabled"), "sphere_hu": ("sphere", "hu"), "sphere_gap_mm": ("sphere", "gap_mm"),
    "sphere_min_radius_mm": ("sphere", "min_radius_mm"), "sphere_radius_weight": ("sphere", "radius_weight"),
    "sphere_radius_cap_mm": ("sphere", "radius_cap_mm"),
    "node": ("node", "enabled"), "node_hu": ("node", "hu"), "node_gap_mm": ("node", "gap_mm"),
    "node_radius_mm": ("node", "radius_mm"), "node_lung_weight": ("node", "lung_weight"),
}


def convert_legacy_cnn3d(section: dict[str, Any]) -> dict[str, Any]:
    """A flat ``cnn3d`` section (``context: true``, ``blob_radii_mm: [...]``, ...) in this layout (``context:
    {enabled: true}``, ``blob: {radii_mm: [...]}``); keys that did not change, and sections already in this
    layout, are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in section.items():
        if key in LEGACY_KEYS and not (key in CHANNELS and isinstance(value, dict)):
            channel, name = LEGACY_KEYS[key]
            if not isinstance(out.setdefault(channel, {}), dict):
                raise ValueError(f"convert_legacy_cnn3d: {channel!r} is neither a flat switch nor a section")
            out[channel][name] = value
        elif key in CHANNELS:
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


@dataclass
class CNN3DConfig:
    """Small 3D CNN encoder (docs/demo-encoder.md). ``input_shape`` (D, H, W) must be divisible by ``patch`` x 4
    (two stride-2 stages)."""

    input_shape: Triple = (64, 128, 128)
    # (hu_min, hu_max, offset) of the preprocessing: input = (HU - hu_min) / (hu_max - hu_min) - offset
    input_hu: tuple[float, float, float] = (-1000.0, 1500.0, 0.0)
    hu_edges: tuple[float, ...] = HU_EDGES
    patch: Triple = (2, 4, 4)  # stem patch in voxels (D, H, W)
    width: int = 8  # channels: 2w at the stem grid, 4w, then 8w
    region_grid: int = 4  # the stem's statistics are pooled on this many regions per axis
    # 0: no projection, the standardised pooled features are the embedding (``pooled_dim`` wide); else Linear + ReLU
    embed_dim: int = 2048
    dropout: float = 0.2
    # pool the right and the (mirrored) left half of the chest apart: h is [right half, left half], read by heads
    # that share their weights over the halves (the ``halves`` head variant)
    lateral_halves: bool = False
    # the input's spacing (D, H, W) in mm: the blob, sphere and node channels place their shells by it
    voxel_mm: tuple[float, float, float] = (4.0, 2.0, 2.0)
    # tissue classes of the HU bins, read by the context and blob channels; both must be edges of ``hu_edges``
    lung_hu_max: float = -650.0  # "aerated lung": the bins below this edge
    solid_hu: tuple[float, float] = (-40.0, 400.0)  # "solid": the bins between these edges (fluid to soft tissue)
    context: ContextConfig = field(default_factory=ContextConfig)
    blob: BlobConfig = field(default_factory=BlobConfig)
    sphere: SphereConfig = field(default_factory=SphereConfig)
    node: NodeConfig = field(default_factory=NodeConfig)

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        key: f"moved to {channel}.{name} (each stem channel has its own section); convert an old section with "
             f"ctagrg.extras.cnn3d.config.convert_legacy_cnn3d"
        for key, (channel, name) in LEGACY_KEYS.items() if key not in CHANNELS}

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)  # type: ignore[assignment]
        self.patch = tuple(int(v) for v in self.patch)  # type: ignore[assignment]
        self.input_hu = tuple(float(v) for v in self.input_hu)  # type: ignore[assignment]
        self.hu_edges = tuple(float(v) for v in self.hu_edges)
        self.solid_hu = tuple(float(v) for v in self.solid_hu)  # type: ignore[assignment]
        self.voxel_mm = tuple(float(v) for v in self.voxel_mm)  # type: ignore[assignment]
        self._check_input()
        self._check_channels()
        self._check_halves()

    def _check_input(self) -> None:
        if list(self.hu_edges) != sorted(self.hu_edges):
            raise ValueError(f"CNN3DConfig.hu_edges must increase, got {list(self.hu_edges)}")
        for n, p, axis in zip(self.input_shape, self.patch, "DHW", strict=True):
            if n % (4 * p):
                raise ValueError(f"CNN3DConfig: input_shape {axis}={n} is not divisible by 4 x patch ({4 * p})")
        if self.input_hu[1] <= self.input_hu[0]:
            raise ValueError(f"CNN3DConfig.input_hu: hu_max must exceed hu_min, got {list(self.input_hu)}")

    def _check_channels(self) -> None:
        """What a channel needs from the rest of the config."""
        if self.uses_voxel_mm and not min(self.voxel_mm) > 0:
            raise ValueError(f"CNN3DConfig.voxel_mm must be positive with the blob, sphere or node channel, got "
                             f"{list(self.voxel_mm)}")
        if self.node.enabled and not (self.input_hu[0] <= self.node.hu[0] and self.node.hu[1] <= self.input_hu[1]):
            raise ValueError(f"CNN3DConfig.node.hu {list(self.node.hu)} must lie inside the input's HU window "
                             f"{list(self.input_hu[:2])}")
        if self.context.enabled or self.blob.enabled:
            for name, v in (("lung_hu_max", self.lung_hu_max), ("solid_hu", self.solid_hu[0]),
                            ("solid_hu", self.solid_hu[1])):
                if v not in self.hu_edges:
                    raise ValueError(f"CNN3DConfig.{name}: {v:g} HU is not one of hu_edges {list(self.hu_edges)}")

    def _check_halves(self) -> None:
        if self.lateral_halves and self.region_grid % 2:
            raise ValueError(f"CNN3DConfig.lateral_halves: region_grid must be even (its regions split at the "
                             f"midline), got {self.region_grid}")
        if self.lateral_halves and self.input_shape[1] % (8 * self.patch[1]):
            raise ValueError(f"CNN3DConfig.lateral_halves: input_shape H={self.input_shape[1]} must be divisible by "
                             f"8 x patch ({8 * self.patch[1]}), so that the stem and the CNN maps split into equal "
                             f"halves")

    @property
    def uses_voxel_mm(self) -> bool:
        """Whether a channel places shells in mm by ``voxel_mm`` (blob, sphere, node), so that it must be the input's
        spacing (``ctagrg.models.preprocess_match`` checks it)."""
        return self.blob.enabled or self.sphere.enabled or self.node.enabled

    @property
    def lung_bins(self) -> list[int]:
        """Indices of the HU bins below ``lung_hu_max`` (bin i spans [edges[i-1], edges[i]))."""
        return [i for i, e in enumerate(self.hu_edges) if e <= self.lung_hu_max]

    @property
    def solid_bins(self) -> list[int]:
        """Indices of the HU bins between the two ``solid_hu`` edges."""
        lo, hi = self.solid_hu
        return [i for i in range(1, len(self.hu_edges)) if self.hu_edges[i - 1] >= lo and self.hu_edges[i] <= hi]

    @property
    def blob_channels(self) -> int:
        return self.blob.channels

    @property
    def sphere_channels(self) -> int:
        """Stem channels from the sphere finder: ``sphere`` and ``node``, one each."""
        return int(self.sphere.enabled) + int(self.node.enabled)

    @property
    def stem_channels(self) -> int:
        """Per HU bin a fraction, mean and max HU, the blob, sphere and node channels, then the context ones."""
        return len(self.hu_edges) + 1 + 2 + self.blob_channels + self.sphere_channels + self.context.channels

    @property
    def grid(self) -> Triple:
        return tuple(n // p for n, p in zip(self.input_shape, self.patch, strict=True))  # type: ignore[return-value]

    @property
    def halves(self) -> int:
        return 2 if self.lateral_halves else 1

    @property
    def reads_hu(self) -> bool:
        """The stem inverts the preprocessing window (``input_hu``, checked against preprocess.json)."""
        return True

    @property
    def reads_mm(self) -> bool:
        """A channel measures in mm (``voxel_mm``, checked against the preprocessing's spacing)."""
        return self.uses_voxel_mm

    @property
    def parts(self) -> int:
        """Equal blocks of the embedding side by side (``EncoderOutput.parts``): the halves."""
        return self.halves

    @property
    def part_dim(self) -> int:
        """Pooled features per part: the whole volume, or with ``lateral_halves`` one half."""
        c, s = 8 * self.width, self.stem_channels
        regions, grid = 8 // self.halves, self.region_grid**3 // self.halves
        return 2 * c * regions + c + (s if self.context.enabled else 0) + 2 * s * grid

    @property
    def pooled_dim(self) -> int:
        return self.halves * self.part_dim

    @property
    def out_dim(self) -> int:
        """Width of the embedding ``h``: ``embed_dim``, or ``pooled_dim`` when ``embed_dim`` is 0 (twice either
        with ``lateral_halves``: one per half)."""
        return self.halves * (self.embed_dim or self.part_dim)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        d, h, w = self.grid
        return {"input": (1, *self.input_shape), "stem": (self.stem_channels, d, h, w),
                "stage1": (2 * self.width, d, h, w), "stage2": (4 * self.width, d // 2, h // 2, w // 2),
                "stage3": (8 * self.width, d // 4, h // 4, w // 4), "pooled": (self.pooled_dim,),
                "embedding": (self.out_dim,)}
