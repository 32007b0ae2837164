"""The visual models: encoder + pretraining head, and encoder + step-1 abnormality heads.

Both save and load as a folder (``save_pretrained`` / ``from_pretrained``)::

    config.json        {"model_type": "ctagrg-step1", "labels": [...18...], "encoder": "ctnet", "ctnet": {...},
                        "heads": {...}}
    model.safetensors  state dict (keys "encoder.*", "heads.*")
    README.md          model card (intended use, input format)

The Reporter loads ``Step1Model.from_pretrained(dir)``; step 2's embedding cache calls it on volumes and keeps
``"embeddings"``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctagrg.config import from_dict, to_dict
from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.labels import LABELS
from ctagrg.models.checkpoint import CheckpointError, load_model_weights, save_model
from ctagrg.models.ctnet import CTNetConfig
from ctagrg.models.ctvit import CTViTConfig
from ctagrg.models.heads import AbnormalityHeads, HeadsConfig, PretrainHead, soft_max_over_halves
from ctagrg.models.registry import ENCODERS, create_encoder
from ctagrg.utils.atomic import write_text_atomic


@dataclass
class VisualModelConfig:
    """Encoder choice and sizes plus head sizes. Only the section named by ``encoder`` is used."""

    encoder: str = "ctnet"  # ctnet | ctvit | cnn3d (a small 3D CNN for CPU demos, not the published method)
    ctnet: CTNetConfig = field(default_factory=CTNetConfig)
    ctvit: CTViTConfig = field(default_factory=CTViTConfig)
    cnn3d: CNN3DConfig = field(default_factory=CNN3DConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    # CT-AGRG's per-head backward (step 1): heads also learn from their loss on a detached encoder output, which
    # gives the same gradients as its "per-head backward with frozen backbone, then summed backward" in one pass.
    per_head_backward: bool = False

    def encoder_config(self) -> Any:
        return getattr(self, self.encoder)


class _VisualModel(nn.Module):
    model_type = ""

    def __init__(self, config: VisualModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VisualModelConfig()
        if config.encoder not in ENCODERS:
            raise ValueError(f"VisualModelConfig.encoder: expected one of {', '.join(ENCODERS)}, "
                             f"got {config.encoder!r}")
        enc_cfg = config.encoder_config()
        out_dim = getattr(enc_cfg, "out_dim", enc_cfg.embed_dim)
        if out_dim != config.heads.in_dim:
            raise ValueError(f"encoder embedding width {out_dim} (embed_dim) != heads.in_dim {config.heads.in_dim}")
        if getattr(enc_cfg, "lateral_halves", False) != config.heads.lateral_halves:
            raise ValueError(f"heads.lateral_halves ({config.heads.lateral_halves}) must match the encoder's "
                             f"{config.encoder}.lateral_halves ({getattr(enc_cfg, 'lateral_halves', False)})")
        self.encoder = create_encoder(config.encoder, enc_cfg)

    def gradient_checkpointing_enable(self) -> None:
        self.encoder.gradient_checkpointing_enable()

    # -- save / load ------------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        data = to_dict(self.config)
        for name in ENCODERS:
            if name != self.config.encoder:
                data.pop(name)
        return {"model_type": self.model_type, "labels": list(LABELS), **data}

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        save_model(self, directory, self.config_dict())
        write_text_atomic(directory / "README.md", _model_card(self))
        return directory

    @classmethod
    def config_from_dir(cls, directory: str | Path) -> VisualModelConfig:
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (expected a folder written by save_pretrained)")
        data = json.loads(path.read_text(encoding="utf-8"))
        model_type = data.pop("model_type", None)
        if model_type != cls.model_type:
            raise CheckpointError(f"{path}: model_type is {model_type!r}, expected {cls.model_type!r}")
        labels = data.pop("labels", None)
        if labels != list(LABELS):
            raise CheckpointError(f"{path}: labels differ from ctagrg.labels.LABELS: {labels}")
        return from_dict(VisualModelConfig, data, where=str(path))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> _VisualModel:
        """Build from ``config.json`` and load ``model.safetensors`` (mismatched tensors raise CheckpointError)."""
        model = cls(cls.config_from_dir(directory))
        load_model_weights(model, directory)
        return model.to(map_location).eval()


class PretrainModel(_VisualModel):
    """(B, 1, D, H, W) -> {"logits": (B, 18), "h": (B, 2048)} (+ "half_logits" (B, 2, 18), [right, left], with
    ``heads.lateral_halves``)."""

    model_type = "ctagrg-pretrain"

    def __init__(self, config: VisualModelConfig | None = None) -> None:
        super().__init__(config)
        self.head = PretrainHead(self.config.heads)

    def forward(self, volume: torch.Tensor | None = None, *, stem: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """``volume`` (B, 1, D, H, W), or for the cnn3d encoder ``stem`` (B, stem_channels, d, h, w): its fixed
        stem's output computed elsewhere (pretraining's ``cache_stem``)."""
        if (volume is None) == (stem is None):
            raise ValueError("PretrainModel: give exactly one of volume or stem")
        h = self.encoder(volume) if stem is None else self.encoder.forward_from_stem(stem)
        if self.head.halves == 1:
            return {"logits": self.head(h), "h": h}
        half = self.head.half_logits(h)
        return {"logits": soft_max_over_halves(half), "half_logits": half, "h": h}


class Step1Model(_VisualModel):
    """(B, 1, D, H, W) -> {"logits": (B, 18), "embeddings": (B, 18, 1024)} (+ "logits_detached" when training
    with ``per_head_backward``: the heads applied to the encoder output cut from the graph; + "side_logits"
    (B, 18, 3) and "size_mm" (B, 18) with ``heads.attribute_heads``; + "half_logits" (B, 2, 18), [right, left],
    with ``heads.lateral_halves``). With ``heads.condition_on_halves`` the embeddings are the gated halves,
    (B, 18, 2 x (E + 2)): per half its E units where the label is on in that half (its probability reaches the
    label's half threshold, or it is the higher half where neither does) and zeros elsewhere, then its probability
    and its on flag (:meth:`AbnormalityHeads.conditioning`). Its width: :attr:`embedding_dim`."""

    model_type = "ctagrg-step1"

    def __init__(self, config: VisualModelConfig | None = None) -> None:
        super().__init__(config)
        self.heads = AbnormalityHeads(self.config.heads)

    @property
    def embedding_dim(self) -> int:
        """Width of the "embeddings" output, what step 2's decoder is conditioned on: embed_dim, x 2 with lateral
        halves, 2 x (embed_dim + 2) with ``heads.condition_on_halves``."""
        heads = self.config.heads
        return heads.halves * (heads.embed_dim + (2 if heads.condition_on_halves else 0))

    def forward(self, volume: torch.Tensor | None = None, *, h: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """``volume`` (B, 1, D, H, W), or ``h`` (B, in_dim): an encoder output computed earlier (a frozen encoder's,
        cached by the classifier task), which skips the encoder."""
        if (volume is None) == (h is None):
            raise ValueError("Step1Model: give exactly one of volume or h")
        if h is None:
            h = self.encoder(volume)
        embeddings = self.heads.embed(h)
        half = self.heads.half_logits(embeddings)
        if self.heads.halves == 1:
            out = {"logits": half[:, 0], "embeddings": embeddings}
        else:
            out = {"logits": soft_max_over_halves(half), "half_logits": half, "embeddings": embeddings}
        if self.heads.attribute_heads:
            out["side_logits"], out["size_mm"] = self.heads.attributes(embeddings)
        if self.training and self.config.per_head_backward:
            out["logits_detached"] = self.heads(h.detach())[0]
        if self.config.heads.condition_on_halves:  # step 2's input: each half + its probability and "on"
            out["embeddings"] = self.heads.conditioning(embeddings, half)
        return out


def load_encoder_from(model: _VisualModel, directory: str | Path) -> None:
    """Initialise ``model.encoder`` from another visual checkpoint folder (e.g. pretraining's ``best/``)."""
    from ctagrg.models.checkpoint import describe_mismatch, load_state_file

    path = Path(directory) / "model.safetensors"
    state = {k[len("encoder."):]: v for k, v in load_state_file(path).items() if k.startswith("encoder.")}
    problem = describe_mismatch(model.encoder.state_dict(), state)
    if problem:
        raise CheckpointError(f"{path}: encoder weights do not match this encoder config: {problem}")
    model.encoder.load_state_dict(state)


def _model_card(model: _VisualModel) -> str:
    cfg = model.config.encoder_config()
    n = sum(p.numel() for p in model.parameters())
    if hasattr(cfg, "input_hu"):  # the window the encoder was configured for (ctnet, cnn3d)
        lo, hi, off = cfg.input_hu
        window = f"HU windowed to [{lo:g}, {hi:g}], mapped to [0, 1] then minus {off:g}"
    else:
        window = "with the preprocessing of its training data (a packaged model's preprocess.json)"
    return f"""# ctagrg visual model ({model.model_type})

Research software, **not for diagnostic use**. Part of ctagrg, an implementation of CT-AGRG (Di Piazza et al.,
ISBI 2025).

- Encoder: `{model.config.encoder}`, {n / 1e6:.1f}M parameters in total.
- Input: `(B, 1, {", ".join(map(str, cfg.input_shape))})` float32, axes (D, H, W) in SLP order, preprocessed by
  `ctagrg preprocess` ({window}).
- Output: one logit per CT-RATE label, in this order: {", ".join(LABELS)}.
- Load: `Step1Model.from_pretrained(dir)` / `PretrainModel.from_pretrained(dir)` (ctagrg.models.step1).
- torch {torch.__version__}; config fields: {", ".join(f.name for f in dataclasses.fields(model.config))}.
"""
