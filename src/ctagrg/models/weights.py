"""Load published pretrained weights from local files into our encoders, reporting every key that does not fit.

- :func:`load_resnet18_trunk`: an ImageNet ResNet-18 state dict in torchvision's layout (``resnet18-f37072fd.pth``
  or a ``.safetensors`` of the same keys) into the CT-Net trunk; ``fc.*`` is dropped (the trunk has no fc).
- :func:`load_ctclip_ctvit`: CT-CLIP's checkpoint (the whole CTCLIP model, keys ``visual_transformer.*``, or a
  bare CTViT state dict) into :class:`~ctagrg.models.ctvit.CTViTEncoder` by an explicit key map. The VQ codebook,
  the decoder half of the VQ-VAE and CT-CLIP's text side are ignored (listed in the report).

Nothing is downloaded: pass the path of a file you fetched yourself. Files load with ``weights_only=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ctagrg.training.checkpoint import CheckpointError, describe_mismatch


@dataclass
class LoadReport:
    """What happened to each key: loaded, deliberately ignored, or unexpected (unknown to the mapping)."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.loaded)} tensors loaded, {len(self.ignored)} ignored, "
                f"{len(self.unexpected)} unexpected" + (f": {', '.join(self.unexpected[:10])}" if self.unexpected
                                                        else ""))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (plain dict, or nested under "state_dict"/"model")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read as a torch state dict (weights_only=True): {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_mapped(module: nn.Module, mapped: dict[str, torch.Tensor], path: Path, report: LoadReport,
                 what: str) -> LoadReport:
    problem = describe_mismatch(module.state_dict(), mapped)
    if problem:
        raise CheckpointError(f"{path}: {what} does not fit: {problem}")
    module.load_state_dict(mapped)
    report.loaded = sorted(mapped)
    return report


# torchvision's ImageNet ResNet-18 (ResNet18_Weights.IMAGENET1K_V1), the weights CT-Net starts from in the paper
RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = f"https://download.pytorch.org/models/{RESNET18_FILE}"


def load_resnet18_trunk(trunk: nn.Module, path: str | Path) -> LoadReport:
    """Load torchvision ResNet-18 weights (``.pth`` or ``.safetensors``, torchvision's key names) into a
    ``ResNetTrunk`` (width 64). ``fc.*`` is ignored. A missing, unexpected or mis-shaped tensor raises one
    ``CheckpointError`` naming the file and the keys.

    BatchNorm ``num_batches_tracked`` counters may be absent: torchvision's ImageNet files predate them (torch
    0.4.1). They only matter for ``momentum=None``; an absent one is set to 0, as torch does for such state dicts.
    """
    state = read_state_dict(path)
    report = LoadReport(ignored=sorted(k for k in state if k.startswith("fc.")))
    mapped = {k: v for k, v in state.items() if not k.startswith("fc.")}
    for key, tensor in trunk.state_dict().items():
        bn = key.removesuffix("num_batches_tracked")
        if bn != key and key not in mapped and f"{bn}running_mean" in mapped:
            mapped[key] = torch.zeros_like(tensor)
    _load_mapped(trunk, mapped, Path(path), report, "torchvision ResNet-18 state dict")
    report.loaded = sorted(k for k in report.loaded if k in state)
    return report


# CT-CLIP CTViT key -> ours. Block index i and sub-keys are carried over by the regex groups.
_CTVIT_RULES: list[tuple[str, str]] = [
    (r"to_patch_emb\.1\.(weight|bias)", r"patch_embed.norm_in.\1"),
    (r"to_patch_emb\.2\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"to_patch_emb\.3\.(weight|bias)", r"patch_embed.norm_out.\1"),
    (r"spatial_rel_pos_bias\.net\.(\d)\.0\.(weight|bias)", r"pos_bias.mlp.\1.\2"),
    (r"spatial_rel_pos_bias\.net\.2\.(weight|bias)", r"pos_bias.out.\1"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.0\.dsconv\.(weight|bias)", r"\1.blocks.\2.peg.\3"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.1\.norm\.gamma", r"\1.blocks.\2.attn.norm.weight"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.1\.(to_q|to_kv|to_out)\.weight",
     r"\1.blocks.\2.attn.\3.weight"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.1\.(q_scale|k_scale)", r"\1.blocks.\2.attn.\3"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.3\.0\.(weight|bias)", r"\1.blocks.\2.ff.norm.\3"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.3\.1\.weight", r"\1.blocks.\2.ff.proj_in.weight"),
    (r"enc_(spatial|temporal)_transformer\.layers\.(\d+)\.3\.4\.weight", r"\1.blocks.\2.ff.proj_out.weight"),
    (r"enc_(spatial|temporal)_transformer\.norm_out\.gamma", r"\1.norm_out.weight"),
]
# Keys CT-CLIP has that the encoder does not need: bias-free LayerNorms' zero "beta" buffers, the unused
# context norm and (empty) null key/values of self-attention, the VQ codebook, the VQ-VAE decoder, GAN parts.
_CTVIT_IGNORE = re.compile(
    r"(.*\.beta|.*\.context_norm\..*|.*\.null_kv|vq\..*|dec_.*|to_pixels.*|to_patch_emb_first_frame\..*"
    r"|discr\..*|vgg\..*)"
)


def map_ctclip_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename CT-CLIP CTViT keys to ours; returns the mapped tensors and a report of ignored/unexpected keys."""
    prefix = "visual_transformer."
    if any(k.startswith(prefix) for k in state):  # a whole CTCLIP checkpoint: keep only the image encoder
        other = [k for k in state if not k.startswith(prefix)]
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    else:
        other = []
    report = LoadReport(ignored=sorted(other))
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        for pattern, repl in _CTVIT_RULES:
            if re.fullmatch(pattern, key):
                mapped[re.sub(pattern, repl, key)] = tensor
                break
        else:
            (report.ignored if _CTVIT_IGNORE.fullmatch(key) else report.unexpected).append(key)
    return mapped, report


def load_ctclip_ctvit(encoder: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load CT-CLIP's CTViT weights into ``encoder`` (a CTViTEncoder). The pooling/projection ``fc`` stays as
    initialised (CT-CLIP has no 2048-d projection). Raises on shape mismatches, on missing encoder tensors, and on
    unexpected keys when ``strict``."""
    path = Path(path)
    mapped, report = map_ctclip_keys(read_state_dict(path))
    if strict and report.unexpected:
        raise CheckpointError(f"{path}: keys not known to the CT-CLIP mapping: {', '.join(report.unexpected[:20])}")
    target = {k: v for k, v in encoder.state_dict().items() if not k.startswith("fc.")}
    problem = describe_mismatch(target, mapped)
    if problem:
        raise CheckpointError(f"{path}: CT-CLIP CTViT weights do not fit this CTViT config: {problem}")
    encoder.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    return report
