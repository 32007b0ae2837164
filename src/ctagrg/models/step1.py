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
from typing import Any, ClassVar

import torch
from torch import nn

from ctagrg.config import ConfigError, from_dict, to_dict
from ctagrg.labels import LABELS
from ctagrg.models.checkpoint import CheckpointError, load_model_weights, save_model
from ctagrg.models.ctnet import CTNetConfig
from ctagrg.models.ctvit import CTViTConfig
from ctagrg.models.encoder_output import EncoderOutput, encode, encode_from
from ctagrg.models.heads import AbnormalityHeads, HeadsConfig, PretrainHead
from ctagrg.models.registry import BUILTIN_ENCODERS, ENCODERS, create_encoder, encoder_entry, head_variant
from ctagrg.utils.atomic import write_text_atomic


@dataclass
class VisualModelConfig:
    """Encoder choice and sizes plus head sizes. Only the section named by ``encoder`` is used: ``ctnet`` or
    ``ctvit`` (the published encoders), or a plug-in encoder's section in ``extras`` (e.g. the demo's ``cnn3d``).
    ``extras`` also holds the options of a plug-in head variant (``heads.variant``)."""

    encoder: str = "ctnet"  # ctnet | ctvit | a plug-in's encoder (ctagrg.models.registry)
    ctnet: CTNetConfig = field(default_factory=CTNetConfig)
    ctvit: CTViTConfig = field(default_factory=CTViTConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    # CT-AGRG's per-head backward (step 1): heads also learn from their loss on a detached encoder output, which
    # gives the same gradients as its "per-head backward with frozen backbone, then summed backward" in one pass.
    per_head_backward: bool = False
    extras: dict[str, Any] = field(default_factory=dict)  # plug-in sections by name, e.g. {"cnn3d": {...}}

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "cnn3d": "moved to model.extras.cnn3d (a plug-in encoder's section; docs/demo-encoder.md); `ctagrg "
                 "convert-model` converts a model packaged before"}

    def __post_init__(self) -> None:
        try:
            head_variant(self.heads.variant)
        except ValueError as exc:
            raise ConfigError(f"model.heads.variant: {exc}") from None
        # each plug-in section resolved to its full config (defaults filled in), so that it is saved whole
        for name, section in list(self.extras.items()):
            cls = self._plugin_config_class(name)
            self.extras[name] = to_dict(from_dict(cls, dict(section or {}), where=f"model.extras.{name}"))

    def _plugin_config_class(self, name: str) -> type:
        if name in BUILTIN_ENCODERS:
            raise ConfigError(f"model.extras.{name}: {name} is a built-in encoder; its section is model.{name}")
        try:  # a head variant's section (set before or after heads.variant names it)
            variant = head_variant(name)
        except ValueError:
            variant = None
        if variant is not None and variant.config is not None:
            return variant.config
        try:
            return encoder_entry(name)[0]
        except ValueError:
            raise ConfigError(f"model.extras.{name}: no plug-in encoder or head variant of that name is "
                              f"installed") from None

    def encoder_config(self) -> Any:
        """The selected encoder's config dataclass."""
        if self.encoder in BUILTIN_ENCODERS:
            return getattr(self, self.encoder)
        cls = encoder_entry(self.encoder)[0]
        return from_dict(cls, self.extras.get(self.encoder, {}), where=f"model.extras.{self.encoder}")

    def heads_variant_config(self) -> Any:
        """The head variant's own config (None for the published heads)."""
        variant = head_variant(self.heads.variant)
        if variant is None or variant.config is None:
            return None
        return from_dict(variant.config, self.extras.get(self.heads.variant, {}),
                         where=f"model.extras.{self.heads.variant}")


class _VisualModel(nn.Module):
    model_type = ""

    def __init__(self, config: VisualModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VisualModelConfig()
        try:
            encoder_entry(config.encoder)
        except ValueError:
            raise ValueError(f"VisualModelConfig.encoder: expected one of {', '.join(ENCODERS)}, "
                             f"got {config.encoder!r}") from None
        enc_cfg = config.encoder_config()
        out_dim = getattr(enc_cfg, "out_dim", getattr(enc_cfg, "embed_dim", None))
        if out_dim != config.heads.in_dim:
            raise ValueError(f"encoder embedding width {out_dim} (embed_dim) != heads.in_dim {config.heads.in_dim}")
        unused = sorted(set(config.extras) - {config.encoder, config.heads.variant})
        if unused:
            raise ConfigError(f"model.extras.{unused[0]}: not used by this model (its encoder is "
                              f"{config.encoder!r}, heads.variant {config.heads.variant!r})")
        self.encoder = create_encoder(config.encoder, enc_cfg)
        self._variant = head_variant(config.heads.variant)
        self._variant_config = config.heads_variant_config()

    def _check_parts(self, heads: nn.Module) -> None:
        """The heads must read the encoder's features in as many parts as the encoder writes them."""
        enc_parts = getattr(self.config.encoder_config(), "parts", 1)
        if heads.parts != enc_parts:
            raise ValueError(f"heads ({self.config.heads.variant}) read {heads.parts} part(s) of the features, the "
                             f"{self.config.encoder} encoder writes {enc_parts}")

    def _encode(self, volume: torch.Tensor | None, encoder_inputs: dict[str, Any] | None) -> EncoderOutput:
        """The encoder on ``volume``, or on ``encoder_inputs`` (keyword inputs an encoder accepts instead, e.g.
        a plug-in encoder's precomputed stem)."""
        if (volume is None) == (encoder_inputs is None):
            raise ValueError(f"{type(self).__name__}: give exactly one of volume, h or encoder_inputs")
        if volume is not None:
            return encode(self.encoder, volume)
        return encode_from(self.encoder, encoder_inputs)

    def gradient_checkpointing_enable(self) -> None:
        self.encoder.gradient_checkpointing_enable()

    # -- save / load ------------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        data = to_dict(self.config)
        for name in BUILTIN_ENCODERS:
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
    """(B, 1, D, H, W) -> {"logits": (B, 18), "h": (B, 2048)} (+ what a plug-in head variant adds, e.g.
    "half_logits")."""

    model_type = "ctagrg-pretrain"

    def __init__(self, config: VisualModelConfig | None = None) -> None:
        super().__init__(config)
        cls = self._variant.pretrain_head if self._variant is not None else PretrainHead
        self.head = cls(self.config.heads, self._variant_config)
        self._check_parts(self.head)

    def forward(self, volume: torch.Tensor | None = None, *, encoder_inputs: dict[str, Any] | None = None
                ) -> dict[str, torch.Tensor]:
        """``volume`` (B, 1, D, H, W), or ``encoder_inputs`` (what the encoder takes instead of a volume)."""
        h = self._encode(volume, encoder_inputs).features
        return {**self.head.outputs(h), "h": h}


class Step1Model(_VisualModel):
    """(B, 1, D, H, W) -> {"logits": (B, 18), "embeddings": (B, 18, embedding_dim)} (+ "logits_detached" when
    training with ``per_head_backward``: the heads applied to the encoder output cut from the graph; + in eval mode
    "diagnostics": the encoder's per-volume diagnostics, when it reports any; + what a plug-in head variant adds)."""

    model_type = "ctagrg-step1"

    def __init__(self, config: VisualModelConfig | None = None) -> None:
        super().__init__(config)
        cls = self._variant.abnormality_heads if self._variant is not None else AbnormalityHeads
        self.heads = cls(self.config.heads, self._variant_config)
        self._check_parts(self.heads)

    @property
    def embedding_dim(self) -> int:
        """Width of the "embeddings" output, what step 2's decoder is conditioned on."""
        return self.heads.embedding_dim

    def forward(self, volume: torch.Tensor | None = None, *, h: torch.Tensor | None = None,
                encoder_inputs: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """``volume`` (B, 1, D, H, W), or ``h`` (B, in_dim): an encoder output computed earlier (a frozen encoder's,
        cached by the classifier task), which skips the encoder, or ``encoder_inputs``."""
        diagnostics: dict[str, torch.Tensor] = {}
        if h is None:
            encoded = self._encode(volume, encoder_inputs)
            h, diagnostics = encoded.features, encoded.diagnostics
        elif volume is not None or encoder_inputs is not None:
            raise ValueError("Step1Model: give exactly one of volume, h or encoder_inputs")
        out = self.heads.outputs(h)
        if self.training and self.config.per_head_backward:
            out["logits_detached"] = self.heads(h.detach())[0]
        if diagnostics and not self.training:
            out["diagnostics"] = diagnostics
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
