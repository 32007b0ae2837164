"""CT-Net (2.5D): slice triplets through a 2D ResNet-18 trunk, a Conv3d reducer over the triplet axis, then 2048-d.

Shapes at the paper's input (B, 1, 240, 480, 480), default config::

    (B, 1, 240, 480, 480) -> view (B*80, 3, 480, 480)        80 triplets of consecutive slices (D axis)
    trunk                 -> (B*80, 512, 15, 15)             ResNet-18 without avgpool/fc
    feature_map           -> (B, 512, 80, 15, 15)            the trunk maps stacked along depth (saliency hooks it)
    view                  -> (B, 80, 512, 15, 15)            triplets are Conv3d channels, features are "depth"
    reducer               -> (B, 16, 18, 5, 5)               Conv3d 80->64->32->16, ReLU after each
    flatten, fc           -> (B, 7200) -> (B, 2048)          Linear, ReLU, dropout 0.5

Every size is configurable so small volumes work (see ``configs/demo``); :meth:`CTNetConfig.shapes` reports the
intermediate shapes for a config and raises a clear error when a layer would shrink to nothing.

Options for small CPU runs (defaults keep the published network): ``input_windows`` re-windows the preprocessed
input into a few HU-window channels per slice (the trunk then sees ``triplet * len(input_windows)`` channels), and
``trunk.stem: light`` (:mod:`ctagrg.models.resnet`) downsamples by 2 instead of 4 before the residual stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctagrg.data.preprocessed import hu_from_preprocessed
from ctagrg.models.resnet import ResNetConfig, ResNetTrunk

Triple = tuple[int, int, int]


def _conv_out(n: int, k: int, s: int, p: int = 0) -> int:
    return (n + 2 * p - k) // s + 1


@dataclass
class CTNetConfig:
    """CT-Net encoder. ``input_shape`` (D, H, W) sizes the reducer and the final Linear."""

    input_shape: Triple = (240, 480, 480)
    input_pool: Triple = (1, 1, 1)  # average-pool the volume by this factor per axis first (CPU demo: (1, 2, 2))
    triplet: int = 3  # slices per 2D trunk image (the trunk's input channels)
    trunk: ResNetConfig = field(default_factory=ResNetConfig)
    # conv3d: CT-Net's reducer (position-specific, as published). pool: global max + mean of the trunk maps over
    # triplets and positions (2 x trunk channels): position-invariant, learns from few volumes (the CPU demo).
    reducer: str = "conv3d"
    reducer_channels: Triple = (64, 32, 16)
    reducer_kernels: tuple[Triple, Triple, Triple] = ((3, 3, 3), (3, 3, 3), (3, 2, 2))
    reducer_strides: tuple[Triple, Triple, Triple] = ((3, 1, 1), (3, 1, 1), (3, 2, 2))
    embed_dim: int = 2048
    dropout: float = 0.5
    trunk_chunk: int = 0  # triplets per trunk call (0: all at once); with checkpointing bounds activation memory
    # HU windows (lo, hi) applied to every slice before the trunk, each clamp((HU - lo) / (hi - lo), 0, 1) - 0.5:
    # e.g. lung / soft tissue / dense, so 40 HU (fluid vs. muscle) or 150 HU (emphysema vs. lung) differences become
    # large input steps. Empty: the preprocessed input as is (the paper). Needs ``input_hu`` to invert the input.
    input_windows: tuple[tuple[float, float], ...] = ()
    # (hu_min, hu_max, offset) of the preprocessing: input = (HU - hu_min) / (hu_max - hu_min) - offset
    input_hu: tuple[float, float, float] = (-1000.0, 200.0, 0.449)

    @property
    def reads_hu(self) -> bool:
        """Whether the encoder inverts the preprocessing window (``input_hu``): with ``input_windows``."""
        return bool(self.input_windows)

    def __post_init__(self) -> None:
        if isinstance(self.trunk, dict):
            self.trunk = ResNetConfig(**self.trunk)
        for lo, hi in self.input_windows:
            if not hi > lo:
                raise ValueError(f"CTNetConfig.input_windows: window ({lo}, {hi}) needs hi > lo")
        self.trunk.in_channels = self.triplet * max(1, len(self.input_windows))

    @property
    def pooled_shape(self) -> Triple:
        if any(n % f for n, f in zip(self.input_shape, self.input_pool, strict=True)):
            raise ValueError(f"CTNetConfig: input_shape {tuple(self.input_shape)} is not divisible by input_pool "
                             f"{tuple(self.input_pool)}")
        return tuple(n // f for n, f in zip(self.input_shape, self.input_pool, strict=True))  # type: ignore[return-value]

    @property
    def n_triplets(self) -> int:
        return self.pooled_shape[0] // self.triplet

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes after each stage; ValueError naming the layer if a size drops below 1."""
        h, w = self.pooled_shape[1:]
        stem = ((3, 2, 1),) if self.trunk.stem == "light" else ((7, 2, 3), (3, 2, 1))  # conv1 (+ maxpool)
        for k, s, p in (*stem, (3, 2, 1), (3, 2, 1), (3, 2, 1)):  # then layer2..4
            h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        if self.n_triplets < 1:
            raise ValueError(f"CTNetConfig: input depth {self.input_shape[0]} has no slice triplet of {self.triplet}")
        out = {"trunk": (self.n_triplets, self.trunk.out_channels, h, w)}
        if self.reducer == "pool":
            return out | {"flat": (2 * self.trunk.out_channels,), "embedding": (self.embed_dim,)}
        if self.reducer != "conv3d":
            raise ValueError(f"CTNetConfig.reducer: expected conv3d or pool, got {self.reducer!r}")
        dims = (self.trunk.out_channels, h, w)
        for i, (ch, k, s) in enumerate(zip(self.reducer_channels, self.reducer_kernels, self.reducer_strides,
                                           strict=True)):
            dims = tuple(_conv_out(n, kk, ss) for n, kk, ss in zip(dims, k, s, strict=True))
            if min(dims) < 1:
                raise ValueError(f"CTNetConfig: reducer conv {i + 1} (kernel {k}, stride {s}) leaves no output for "
                                 f"input_shape {self.input_shape}; use smaller kernels/strides")
            out[f"reducer{i + 1}"] = (ch, *dims)
        out["flat"] = (self.reducer_channels[-1] * dims[0] * dims[1] * dims[2],)
        out["embedding"] = (self.embed_dim,)
        return out


class CTNetEncoder(nn.Module):
    """(B, 1, D, H, W) float32 preprocessed CT (SLP) -> (B, embed_dim) embedding ``h``."""

    def __init__(self, config: CTNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CTNetConfig()
        self.shapes = config.shapes()
        self.trunk = ResNetTrunk(config.trunk)
        layers: list[nn.Module] = []
        in_ch = config.n_triplets
        specs = zip(config.reducer_channels, config.reducer_kernels, config.reducer_strides, strict=True)
        for ch, k, s in [] if config.reducer == "pool" else specs:
            layers += [nn.Conv3d(in_ch, ch, tuple(k), stride=tuple(s)), nn.ReLU(inplace=True)]
            in_ch = ch
        self.reducer = nn.Sequential(*layers)
        # the trunk maps stacked along depth, (B, C, triplets, h, w): the last 3-D map spanning the input (SLP),
        # hooked by saliency (ctagrg.generation.saliency)
        self.feature_map = nn.Identity()
        self.fc = nn.Linear(self.shapes["flat"][0], config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.gradient_checkpointing = False

    def gradient_checkpointing_enable(self) -> None:
        """Recompute trunk activations in backward (per ``trunk_chunk`` triplets) instead of storing them."""
        self.gradient_checkpointing = True

    def _run_trunk(self, images: torch.Tensor) -> torch.Tensor:
        chunk = self.config.trunk_chunk or images.shape[0]
        outs = []
        for part in images.split(chunk):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                outs.append(checkpoint(self.trunk, part, use_reentrant=False))
            else:
                outs.append(self.trunk(part))
        return torch.cat(outs)

    def _windows(self, images: torch.Tensor) -> torch.Tensor:
        """(N, t, h, w) preprocessed slices -> (N, t * len(input_windows), h, w), channels slice-major."""
        hu_min, hu_max, offset = self.config.input_hu
        hu = hu_from_preprocessed(images, (hu_min, hu_max), offset)
        chans = [((hu - lo) / (hi - lo)).clamp(0.0, 1.0) - 0.5 for lo, hi in self.config.input_windows]
        return torch.stack(chans, dim=2).flatten(1, 2)

    def forward_features(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, flat) reducer output; trailing ``D % triplet`` slices are ignored."""
        if tuple(volume.shape[1:]) != (1, *self.config.input_shape):
            raise ValueError(f"CTNetEncoder: expected (B, 1, {', '.join(map(str, self.config.input_shape))}) "
                             f"(input_shape), got {tuple(volume.shape)}")
        if any(f > 1 for f in self.config.input_pool):
            volume = F.avg_pool3d(volume, tuple(self.config.input_pool))
        b, _, d, h, w = volume.shape
        n, t = self.config.n_triplets, self.config.triplet
        images = volume[:, 0, : n * t].reshape(b * n, t, h, w)
        if self.config.input_windows:
            images = self._windows(images)
        maps = self._run_trunk(images)
        maps = self.feature_map(maps.view(b, n, *maps.shape[1:]).transpose(1, 2))  # (B, C, triplets, h, w)
        if self.config.reducer == "pool":
            maps = maps.flatten(2)  # (B, C, triplets * h * w)
            return torch.cat([maps.amax(-1), maps.mean(-1)], dim=1)
        return self.reducer(maps.transpose(1, 2)).flatten(1)  # triplets become Conv3d channels

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.fc(self.forward_features(volume))))
