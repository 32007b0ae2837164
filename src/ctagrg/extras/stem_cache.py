"""The ``stem_cache`` training extension (pretraining with the ``cnn3d`` encoder): its HU-bin stem has no
weights, so each volume's patch measurements are computed once, kept in memory (float32, measure_channels x the
patch grid: about 2 MB per demo volume; not for CT-RATE-sized sets) and augmented instead of the volume. The same
losses and weights as computing the stem every step, except that a shift changes the blob, sphere and node
channels near the border. Needs whole-patch shifts (``data.augment.shift_step`` a multiple of the patch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ctagrg.config import ConfigError
from ctagrg.data.augment import AugmentDraw, apply_augmentation
from ctagrg.models.checkpoint import unwrap
from ctagrg.training.extensions import Extension
from ctagrg.training.volume_cache import PerVolumeCache


class StemCacheExtension(Extension):
    stages = ("pretrain",)

    def __init__(self, task: Any, config: None) -> None:
        super().__init__(task, config)
        self._stems = PerVolumeCache("stem: {n} volumes measured once in {s:.1f} s; epochs augment the measurements")
        self._stem: Any = None  # the encoder's HUBinStem, set by on_train_start
        self._pad: torch.Tensor | None = None  # measurements of a patch of data.augment.pad_value
        cfg = task.cfg
        if cfg.model.encoder != "cnn3d":
            raise ConfigError(f"extras.stem_cache: only for the cnn3d encoder (its stem has no weights), not "
                              f"{cfg.model.encoder!r}")
        self.patch = tuple(cfg.model.encoder_config().patch)
        aug, patch = cfg.data.augment, self.patch
        if aug.enabled:
            bad = [a for a in range(3) if aug.max_shift[a] >= aug.shift_step[a] and aug.shift_step[a] % patch[a]]
            if bad:
                raise ConfigError(f"extras.stem_cache: data.augment.shift_step {list(aug.shift_step)} must be a "
                                  f"multiple of the cnn3d patch {list(patch)} along each shifted axis (whole-patch "
                                  f"shifts), or a max_shift below shift_step there (no shift)")
            if aug.rot90_p > 0 and patch[1] != patch[2]:
                raise ConfigError(f"extras.stem_cache: data.augment.rot90_p > 0 needs square patches in-plane, got "
                                  f"the cnn3d patch {list(patch)}")

    def wrap_dataset(self, dataset: Any, split: str) -> Any:
        return self._stems.register(dataset)

    def on_train_start(self, model: nn.Module) -> None:
        encoder = unwrap(model).encoder
        self._stem = stem = encoder.stem
        self._pad = stem.measure_padding(self.task.cfg.data.augment.pad_value)
        tc = self.task.cfg.train
        self._stems.start(lambda batch: stem.measure(encoder.check_input(self.task._volumes(batch))).cpu(),
                          batch_size=tc.eval_batch_size or tc.batch_size, num_workers=tc.num_workers)

    def _stem_batch(self, names: Sequence[str], draws: Sequence[AugmentDraw] | None) -> torch.Tensor:
        """(B, stem_channels, d, h, w): the stem of each volume from its cached measurements, augmented per volume
        by ``draws`` (the same random draws as the volume path makes, so the run equals the uncached one)."""
        m = self._stems.gather(names, "cpu")
        if draws is not None:
            m = torch.stack([apply_augmentation(v, d, self._pad, scale=self.patch)
                             for v, d in zip(m, draws, strict=True)])
        return self._stem.assemble(m.to(self.task.device, non_blocking=True))

    def inputs(self, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        return {"encoder_inputs": {"stem": self._stem_batch(batch["name"], self.task._draws(batch, train))}}
