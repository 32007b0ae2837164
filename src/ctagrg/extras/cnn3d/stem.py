"""The cnn3d stem: fixed (weightless) statistics per patch of the volume, from which the CNN starts.

Per patch, the square root of the fraction of voxels in each HU bin, mean and max HU / 1000, then the optional
channels (:mod:`ctagrg.extras.cnn3d.channels`): blob, sphere, node, and last the two context channels. It turns HU
into tissue fractions (what a radiologist reads first), so the CNN need not learn HU windows from a few hundred
volumes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctagrg.extras.cnn3d.channels.blob import blob_score
from ctagrg.extras.cnn3d.channels.context import context_channels
from ctagrg.extras.cnn3d.channels.node import node_candidates
from ctagrg.extras.cnn3d.channels.sphere import max_per_patch, sphere_candidates
from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.utils.array_memo import ArrayMemo


class HUBinStem(nn.Module):
    """(B, 1, D, H, W) preprocessed -> (B, stem_channels, D/pd, H/ph, W/pw) float32. No weights, no gradient.

    ``memo``: where the sphere and node channels (a numpy/scipy pass, ~0.15 CPU-s per channel and demo volume) keep
    what they computed, by the volume's contents and the channels' settings; None: recompute every time.
    """

    def __init__(self, config: CNN3DConfig, memo: ArrayMemo | None = None) -> None:
        super().__init__()
        self.config = config
        self.memo = memo
        self.register_buffer("edges", torch.tensor(config.hu_edges, dtype=torch.float32), persistent=False)

    @torch.no_grad()
    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.assemble(self.measure(volume))

    @property
    def measure_channels(self) -> int:
        """Channels of :meth:`measure`: one fraction per HU bin, mean HU / 1000, max HU / 1000, + the blob channels,
        + the sphere and node channels."""
        return len(self.config.hu_edges) + 3 + self.config.blob_channels + self.config.sphere_channels

    @torch.no_grad()
    def measure(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) preprocessed -> (B, measure_channels, D/pd, H/ph, W/pw) float32: per patch, the fraction
        of voxels in each HU bin, mean HU / 1000 and max HU / 1000 (clipped to [-1, 3]), each blob channel's
        maximum, then the sphere and node channels.

        Everything the stem reads from the voxels. The patch grid commutes with flips and whole-patch shifts, so
        a caller may compute this once per volume and augment it (:meth:`assemble` then gives what the stem of
        the augmented volume gives): the ``stem_cache`` training extension."""
        cfg = self.config
        hu_min, hu_max, offset = cfg.input_hu
        scale = hu_max - hu_min
        x = volume[:, 0].float()
        b, d, h, w = x.shape
        pd, ph, pw = cfg.patch
        gd, gh, gw = d // pd, h // ph, w // pw
        nb, n_patch = len(cfg.hu_edges) + 1, gd * gh * gw
        # bins straight from the preprocessed values (edges mapped into its units), then one int32 bincount over
        # (bin, sample, patch): ~10x cheaper than a one-hot (B, bins, D, H, W) tensor and average pooling.
        bins = torch.bucketize(x, (self.edges - hu_min) / scale - offset, out_int32=True)
        flat = (bins * (b * n_patch)).add_(self._base(b, d, h, w, x.device)).flatten()
        counts = torch.bincount(flat, minlength=nb * b * n_patch).view(nb, b, gd, gh, gw).transpose(0, 1)
        frac = counts.to(x.dtype) / float(pd * ph * pw)
        # summed in float64: exact for these values, so the mean does not depend on the order of the voxels, and a
        # flipped or rotated volume's patch means are exactly the flipped or rotated means (stem_cache relies on it)
        mean = ((F.avg_pool3d(x[:, None].double(), cfg.patch).float() + offset) * scale + hu_min) / 1000.0
        peak = ((F.max_pool3d(x[:, None], cfg.patch) + offset) * scale + hu_min).clamp(-1000.0, 3000.0)
        out = [frac, mean, peak / 1000.0]
        if cfg.blob.enabled:
            score = blob_score(bins, cfg.blob, cfg.voxel_mm, len(cfg.lung_bins), cfg.solid_bins)
            out.append(F.max_pool3d(score, cfg.patch))
        if cfg.sphere_channels:
            out.append(self._spheres(((x + offset) * scale + hu_min).cpu().numpy()).to(x.device))
        return torch.cat(out, dim=1)

    def _spheres(self, hu: np.ndarray) -> torch.Tensor:
        """(B, D, H, W) HU -> (B, sphere_channels, d, h, w) float32 on the patch grid: the sphere, then the node
        channel. Numpy and scipy on the CPU, the batch's volumes on up to ``torch.get_num_threads()`` threads
        (scipy's distance transform releases the GIL); a flipped volume gives exactly the flipped channels
        (symmetric shell points). Served from and kept in ``memo`` when there is one."""
        cfg = self.config
        salt = repr((cfg.sphere, cfg.node, cfg.voxel_mm, cfg.patch)).encode()
        out = np.zeros((hu.shape[0], cfg.sphere_channels, *cfg.grid), np.float32)
        keys = [self.memo.digest(salt, volume) for volume in hu] if self.memo is not None else []
        todo = []
        for i in range(len(hu)):
            hit = self.memo.get(keys[i]) if self.memo is not None else None
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
            if self.memo is not None:
                self.memo.put(keys[i], channels)
        return torch.from_numpy(out)

    def _spheres_one(self, volume: np.ndarray) -> np.ndarray:
        """(D, H, W) HU -> (sphere_channels, d, h, w) float32: :meth:`_spheres` of one volume, without the memo."""
        cfg = self.config
        out = np.zeros((cfg.sphere_channels, *cfg.grid), np.float32)
        finders = [(c, f) for c, f in ((cfg.sphere, sphere_candidates), (cfg.node, node_candidates)) if c.enabled]
        for channel, (channel_cfg, candidates) in enumerate(finders):
            centres, score = candidates(volume, cfg.voxel_mm, channel_cfg)
            max_per_patch(out[channel], centres, score, cfg.patch)
        return out

    @torch.no_grad()
    def measure_padding(self, pad_value: float, device: torch.device | str = "cpu") -> torch.Tensor:
        """(measure_channels, 1, 1, 1): :meth:`measure` of a patch filled with ``pad_value`` (what a shift brings
        in). Measured on a whole input-shaped volume, so that the pooling rounds as it does inside a volume."""
        full = torch.full((1, 1, *self.config.input_shape), float(pad_value), device=device)
        return self.measure(full)[0, :, :1, :1, :1].clone()

    def assemble(self, measured: torch.Tensor) -> torch.Tensor:
        """(B, measure_channels, d, h, w) from :meth:`measure` -> (B, stem_channels, d, h, w): the square root of each
        fraction (a few calcium or metal voxels in a patch, fraction ~0.01, become a visible 0.1), the other
        measurements as they are, and with ``context`` the two context channels."""
        cfg = self.config
        nb = len(cfg.hu_edges) + 1
        frac = measured[:, :nb]
        out = [frac.sqrt(), measured[:, nb:]]
        if cfg.context.enabled:
            out += context_channels(frac, cfg.lung_bins, cfg.solid_bins, cfg.context.patches)
        return torch.cat(out, dim=1)

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
