"""The demo encoder: the fixed HU-bin stem, three 3D conv stages, region pooling (docs/demo-encoder.md).

Shapes for the demo input (B, 1, 64, 128, 128) at (4, 2, 2) mm, default config::

    HU-bin stem (fixed)             (B, 14, 32, 32, 32)    per 2x4x4 patch (8 mm); the demo's channels: 20
    1x1 conv + conv3 at 32^3        (B, 2w, 32, 32, 32)
    stride-2 stages                 (B, 4w, 16, 16, 16) -> (B, 8w, 8, 8, 8)
    region pooling                  per octant max + mean of the CNN maps, their global max, (with ``context`` the
                                    stem's global max,) the stem's max + mean on a ``region_grid``^3 grid
    BatchNorm1d, Linear, ReLU, dropout  (B, embed_dim); with embed_dim 0: BatchNorm1d, dropout (B, pooled_dim)

With ``lateral_halves`` the same pooling runs on the right half and on the mirrored left half, with one shared
BatchNorm1d (and Linear): h = [right, left], (B, 2 x part_dim).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.extras.cnn3d.stem import HUBinStem
from ctagrg.models.encoder_output import EncoderOutput
from ctagrg.utils.array_memo import ArrayMemo

# A standardised pooled feature this many training standard deviations from its training mean is an outlier
# (how often on the phantoms and on real CTs: BENCHMARKS.md, "Out-of-distribution inputs").
OUTLIER_SD = 8.0


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout),
                         nn.ReLU(inplace=True))


class CNN3DEncoder(nn.Module):
    """(B, 1, D, H, W) float32 preprocessed CT (SLP) -> (B, out_dim) embedding ``h`` (``CNN3DConfig.out_dim``).

    ``memo``: the stem's memo of its sphere and node channels (:class:`HUBinStem`); None: none (:meth:`set_memo`
    injects one later, e.g. the demo's into every model it builds)."""

    def __init__(self, config: CNN3DConfig | None = None, memo: ArrayMemo | None = None) -> None:
        super().__init__()
        self.config = config = config or CNN3DConfig()
        self.shapes = config.shapes()
        w, c = config.width, config.stem_channels
        self.stem = HUBinStem(config, memo)
        self.features = nn.Sequential(
            nn.Conv3d(c, 2 * w, 1), nn.ReLU(inplace=True),  # mixes the bins into tissue features
            _block(2 * w, 2 * w, 1), _block(2 * w, 4 * w, 2), _block(4 * w, 8 * w, 2), _block(8 * w, 8 * w, 1))
        # channels-last weights and inputs: oneDNN's 3D convolutions on the CPU run a training step ~1.6x faster so
        # (BENCHMARKS.md); values equal up to float rounding, and checkpoints are written contiguous
        self.features.to(memory_format=torch.channels_last_3d)
        # the stem's maps (B, stem_channels, d, h, w), read by the CNN and the region pooling alike, pass here: the
        # saliency hook point (a later CNN map would miss the stem features the pooling reads directly)
        self.feature_map = nn.Identity()
        # standardise the pooled features: rare-bin statistics (calcium, metal) are ~100x smaller than lung ones
        # and would otherwise be learned last
        self.norm = nn.BatchNorm1d(config.part_dim)  # with lateral_halves shared by both halves, as the heads are
        self.fc = nn.Linear(config.part_dim, config.embed_dim) if config.embed_dim else None
        self.dropout = nn.Dropout(config.dropout)
        self.gradient_checkpointing = False
        # (B,) fraction of the last eval batch's standardised features beyond OUTLIER_SD; None before an eval forward
        self.last_outlier_fraction: torch.Tensor | None = None

    def set_memo(self, memo: ArrayMemo | None) -> None:
        """Keep the stem's sphere and node channels in ``memo`` from now on (None: no memo)."""
        self.stem.memo = memo

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the conv stages in backward instead of storing their activations."""
        self.gradient_checkpointing = True

    def check_input(self, volume: torch.Tensor) -> torch.Tensor:
        """``volume`` itself, or ValueError when it is not (B, 1, *input_shape)."""
        if tuple(volume.shape[1:]) != (1, *self.config.input_shape):
            raise ValueError(f"CNN3DEncoder: expected (B, 1, {', '.join(map(str, self.config.input_shape))}) "
                             f"(input_shape), got {tuple(volume.shape)}")
        return volume

    def forward_features(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, pooled_dim) region-pooled features."""
        return self.features_from_stem(self.stem(self.check_input(volume)))[0]

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

    def _pool(self, maps: torch.Tensor, stem: torch.Tensor, regions: tuple[int, int, int]) -> torch.Tensor:
        """(B, part_dim): max + mean of the CNN maps on ``regions`` (the volume's octants: axis 2 = inferior half
        first, axis 3 = right half first), their global max, with ``context`` the stem's global max, and the stem's
        max + mean on the ``region_grid`` regions (half as many along L for a half)."""
        g = self.config.region_grid
        grid = (g, g * regions[1] // 2, g)
        parts = [F.adaptive_max_pool3d(maps, regions).flatten(1), F.adaptive_avg_pool3d(maps, regions).flatten(1),
                 maps.amax(dim=(2, 3, 4))]
        if self.config.context.enabled:  # e.g. the most isolated solid patch anywhere (a nodule in any lobe)
            parts.append(stem.amax(dim=(2, 3, 4)))
        parts += [F.adaptive_max_pool3d(stem, grid).flatten(1), F.adaptive_avg_pool3d(stem, grid).flatten(1)]
        return torch.cat(parts, dim=1)

    def _standardise(self, features: torch.Tensor, batch: int) -> torch.Tensor:
        """BatchNorm1d, except that a training batch of one volume has no batch statistics: it is normalised with
        the running ones, which it does not update. ``train.drop_last`` avoids such batches altogether."""
        if self.training and batch == 1:
            n = self.norm
            return F.batch_norm(features, n.running_mean, n.running_var, n.weight, n.bias, False, 0.0, n.eps)
        return self.norm(features)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.encode(volume).features

    def forward_from_stem(self, stem: torch.Tensor) -> torch.Tensor:
        """(B, stem_channels, d, h, w) stem output (e.g. :meth:`HUBinStem.assemble` of measurements computed
        once) -> (B, out_dim) ``h``, as :meth:`forward` of the volume."""
        return self.encode(stem=stem).features

    def encode(self, volume: torch.Tensor | None = None, *, stem: torch.Tensor | None = None) -> EncoderOutput:
        """``volume`` (B, 1, D, H, W), or its ``stem`` output -> ``EncoderOutput``: ``features`` h (B, out_dim),
        ``parts`` the halves (with ``lateral_halves`` each half is standardised and projected by the same weights,
        h = [right half, left half]), and in eval mode ``diagnostics["outlier_fraction"]`` (B,): the fraction of
        the standardised features beyond OUTLIER_SD (how far a volume lies outside the training data)."""
        if (volume is None) == (stem is None):
            raise ValueError("CNN3DEncoder.encode: give exactly one of volume and stem")
        if stem is None:
            stem = self.stem(self.check_input(volume))
        pooled = self.features_from_stem(stem)[0]
        b, n = pooled.shape[0], self.config.halves
        h = self._standardise(pooled.view(b * n, -1), b)
        diagnostics = {}
        if not self.training:
            self.last_outlier_fraction = (h.detach().abs() > OUTLIER_SD).float().view(b, -1).mean(1)
            diagnostics["outlier_fraction"] = self.last_outlier_fraction
            # At inference a feature is clipped to OUTLIER_SD: beyond it the heads and the decoder never saw a value,
            # and unclipped outliers of a real scan shown to a phantom-trained model swamped the decoder's text. The
            # encoder's own training is not clipped; a frozen encoder's outputs are, as at inference.
            h = h.clamp(-OUTLIER_SD, OUTLIER_SD)
        h = self.dropout(h if self.fc is None else torch.relu(self.fc(h)))
        return EncoderOutput(h.view(b, -1), parts=n, diagnostics=diagnostics)
