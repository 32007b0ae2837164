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

from ctagrg.models.checkpoint import CheckpointError, describe_mismatch


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


# CT-CLIP CTViT key template -> ours. A {field} matches the pattern in _FIELDS and is carried over by name, so the
# same table renames both ways (CT-CLIP's names in error messages).
_CTVIT_KEYS: list[tuple[str, str]] = [
    ("to_patch_emb.1.{p}", "patch_embed.norm_in.{p}"),
    ("to_patch_emb.2.{p}", "patch_embed.proj.{p}"),
    ("to_patch_emb.3.{p}", "patch_embed.norm_out.{p}"),
    ("spatial_rel_pos_bias.net.{j}.0.{p}", "pos_bias.mlp.{j}.{p}"),
    ("spatial_rel_pos_bias.net.2.{p}", "pos_bias.out.{p}"),
    ("enc_{part}_transformer.layers.{i}.0.dsconv.{p}", "{part}.blocks.{i}.peg.{p}"),
    ("enc_{part}_transformer.layers.{i}.1.norm.gamma", "{part}.blocks.{i}.attn.norm.weight"),
    ("enc_{part}_transformer.layers.{i}.1.{proj}.weight", "{part}.blocks.{i}.attn.{proj}.weight"),
    ("enc_{part}_transformer.layers.{i}.1.{scale}", "{part}.blocks.{i}.attn.{scale}"),
    ("enc_{part}_transformer.layers.{i}.3.0.{p}", "{part}.blocks.{i}.ff.norm.{p}"),
    ("enc_{part}_transformer.layers.{i}.3.1.weight", "{part}.blocks.{i}.ff.proj_in.weight"),
    ("enc_{part}_transformer.layers.{i}.3.4.weight", "{part}.blocks.{i}.ff.proj_out.weight"),
    ("enc_{part}_transformer.norm_out.gamma", "{part}.norm_out.weight"),
]
_FIELDS = {"p": "weight|bias", "part": "spatial|temporal", "i": r"\d+", "j": "[01]", "proj": "to_q|to_kv|to_out",
           "scale": "q_scale|k_scale"}
# Keys CT-CLIP has that the encoder does not need: bias-free LayerNorms' zero "beta" buffers, the context norm and
# null key/values of self-attention (unused, and empty, in CT-CLIP's CTViT; checked by _unsupported), the VQ
# codebook, the VQ-VAE decoder, the unused first-frame patch embedding, GAN parts.
_CTVIT_IGNORE = re.compile(
    r"(.*\.beta|.*\.context_norm\..*|.*\.null_kv|vq\..*|dec_.*|to_pixels.*|to_patch_emb_first_frame\..*"
    r"|discr\..*|vgg\..*)"
)
_CTCLIP_PREFIX = "visual_transformer."


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m[1]}>{_FIELDS[m[1]]})", re.escape(template)))


_RULES = [(_template_regex(theirs), ours, _template_regex(ours), theirs) for theirs, ours in _CTVIT_KEYS]


def _rename(key: str, to_ours: bool = True) -> str | None:
    """A CT-CLIP CTViT key in our naming (or back, ``to_ours=False``); None when no rule matches."""
    for theirs_re, ours, ours_re, theirs in _RULES:
        pattern, target = (theirs_re, ours) if to_ours else (ours_re, theirs)
        if m := pattern.fullmatch(key):
            return target.format(**m.groupdict())
    return None


def map_ctclip_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename CT-CLIP CTViT keys to ours. Returns the mapped tensors and a report whose ``ignored`` and
    ``unexpected`` hold the file's own key names (``visual_transformer.`` kept for a whole CTCLIP checkpoint)."""
    prefix = _CTCLIP_PREFIX if any(k.startswith(_CTCLIP_PREFIX) for k in state) else ""
    report = LoadReport(ignored=sorted(k for k in state if not k.startswith(prefix)))
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        ours = _rename(key[len(prefix):])
        if ours is not None:
            mapped[ours] = tensor
        else:
            (report.ignored if _CTVIT_IGNORE.fullmatch(key[len(prefix):]) else report.unexpected).append(key)
    report.ignored.sort()
    report.unexpected.sort()
    return mapped, report


def _unsupported(state: dict[str, torch.Tensor], prefix: str) -> list[str]:
    """Ignored tensors of CT-CLIP's encoder transformers that would change the tokens: non-zero LayerNorm betas
    (CT-CLIP keeps them as zero buffers) and self-attention null key/values (CT-CLIP's CTViT has none)."""
    found = []
    for key, tensor in state.items():
        if not key.startswith(prefix + "enc_"):
            continue
        if key.endswith(".beta") and ".context_norm." not in key and bool(tensor.any()):
            found.append(f"{key} is not zero (CTViTEncoder's LayerNorms there have no bias)")
        elif key.endswith(".null_kv") and tensor.numel():
            found.append(f"{key} holds {tensor.shape[1] // 2} null key/values (CTViTEncoder has none)")
    return found


def describe_ctvit_weights(state: dict[str, torch.Tensor]) -> str:
    """The hyperparameters a CTViTEncoder state dict (our key names) fixes, e.g. 'dim 512, 4000 voxels per tubelet,
    4 spatial + 4 temporal blocks, 8 heads x 32, feed-forward 1365'."""
    parts = []
    if (w := state.get("patch_embed.proj.weight")) is not None:
        parts.append(f"dim {w.shape[0]}, {w.shape[1]} voxels per tubelet")
    depths = [len({k.split(".")[2] for k in state if k.startswith(f"{p}.blocks.")}) for p in ("spatial", "temporal")]
    parts.append(f"{depths[0]} spatial + {depths[1]} temporal blocks")
    heads, scale = state.get("pos_bias.out.weight"), state.get("spatial.blocks.0.attn.q_scale")
    if heads is not None and scale is not None:
        parts.append(f"{heads.shape[0]} heads x {scale.shape[0]}")
    if (w := state.get("spatial.blocks.0.ff.proj_out.weight")) is not None:
        parts.append(f"feed-forward {w.shape[1]}")
    return ", ".join(parts)


def load_ctclip_ctvit(encoder: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load CT-CLIP's CTViT weights into ``encoder`` (a CTViTEncoder); its ``fc`` (the projection to ``embed_dim``)
    stays as initialised, CT-CLIP has none. Every problem raises a one-line CheckpointError naming the file, in
    CT-CLIP's key names: encoder tensors the file lacks, CTViT tensors the encoder has no place for (a deeper
    checkpoint), wrong shapes (with the hyperparameters of file and config), ignored tensors that would change the
    tokens, and, when ``strict``, keys unknown to the mapping. The tubelet's split into temporal and in-plane patch
    sizes is not in the weights (only its voxel count): ``encoder.config`` must state CT-CLIP's (10, 20)."""
    path = Path(path)
    state = read_state_dict(path)
    mapped, report = map_ctclip_keys(state)
    if strict and report.unexpected:
        raise CheckpointError(f"{path}: keys not known to the CT-CLIP CTViT mapping [{len(report.unexpected)}]: "
                              f"{', '.join(report.unexpected[:20])}")
    prefix = _CTCLIP_PREFIX if any(k.startswith(_CTCLIP_PREFIX) for k in state) else ""
    if unsupported := _unsupported(state, prefix):
        raise CheckpointError(f"{path}: CT-CLIP CTViT weights this encoder cannot compute: {'; '.join(unsupported)}")
    target = {k: v for k, v in encoder.state_dict().items() if not k.startswith("fc.")}
    problem = describe_mismatch({prefix + (_rename(k, to_ours=False) or k): v for k, v in target.items()},
                                {prefix + (_rename(k, to_ours=False) or k): v for k, v in mapped.items()})
    if problem:
        raise CheckpointError(f"{path}: CT-CLIP CTViT weights do not fit this CTViTConfig (file: "
                              f"{describe_ctvit_weights(mapped)}; config: {describe_ctvit_weights(target)}): {problem}")
    encoder.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    return report
