"""Per-abnormality saliency: where in the volume each label's step-1 logit comes from (HiResCAM or Grad-CAM, captum).

>>> model = Step1Model.from_pretrained("model/visual")                      # doctest: +SKIP
>>> maps = abnormality_saliency(model, volume, [LABEL_INDEX["Lung nodule"]])  # doctest: +SKIP
>>> maps[9].shape, peak_index(maps[9])                                       # doctest: +SKIP
((64, 128, 128), (27, 40, 77))

Attribution at the encoder's ``feature_map``, the ``nn.Identity`` every encoder passes a 3-D feature map through,
(B, C, d, h, w) spanning the input in SLP order (CT-Net: the trunk's per-triplet maps stacked along depth; CT-ViT:
the tokens; cnn3d: its stem's maps, which both its CNN and its region pooling read), with captum:

- ``hirescam`` (the default; captum's ``LayerGradientXActivation`` summed over channels): label ``i``'s map is
  ``sum_c (d logit_i / d A_c) * A_c`` voxel by voxel (HiResCAM, Draelos & Carin 2020);
- ``gradcam`` (captum's ``LayerGradCam``): ``sum_c mean(d logit_i / d A_c) * A_c``, one weight per channel.

Either is upsampled trilinearly to the preprocessed grid (D, H, W), passed through a ReLU and divided by its
maximum: float32 in [0, 1], all zeros where nothing in the map raises the logit. One forward and one backward per
label. Why HiResCAM, what it costs and how well it points on phantoms: docs/saliency.md.

:func:`save_saliency_nifti` writes a map with :func:`ctagrg.data.preprocess.output_affine` so that it overlays the
original scan in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctagrg.utils.atomic import atomic_open

logger = logging.getLogger("ctagrg.generation.saliency")


def feature_layer(model: nn.Module) -> nn.Module:
    """The module saliency hooks: ``model.encoder.feature_map``; ValueError when the encoder has none."""
    layer = getattr(getattr(model, "encoder", None), "feature_map", None)
    if not isinstance(layer, nn.Module):
        raise ValueError(f"{type(model).__name__}: its encoder has no feature_map module (an nn.Identity its forward "
                         f"passes the last 3-D feature map through), so saliency cannot hook it")
    return layer


def _logits(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """captum's forward function: the step-1 logits (B, 18)."""
    def forward(volume: torch.Tensor) -> torch.Tensor:
        return model(volume)["logits"]
    return forward


def _grads_at_layer(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
    """Forward hook: a feature map computed without a graph (cnn3d's weightless stem under a frozen encoder) is a
    leaf, and Grad-CAM needs only the gradient at it, so let it take one."""
    if torch.is_grad_enabled() and not output.requires_grad:
        output.requires_grad_(True)


METHODS = ("hirescam", "gradcam")


def saliency_maps(model: nn.Module, volume: torch.Tensor, labels: Sequence[int], method: str = "hirescam"
                  ) -> dict[int, np.ndarray]:
    """Saliency maps of the step-1 logits ``labels`` for a batch.

    Args:
        model: a step-1 model (``forward(volume)["logits"]`` (B, 18)) whose encoder has a ``feature_map``; it is
            run in eval mode (dropout off) and left in the mode it was in.
        volume: (B, 1, D, H, W) float32 preprocessed CT (SLP), on the model's device.
        labels: label indices (``ctagrg.labels.LABELS`` order), each 0 <= i < 18.
        method: ``hirescam`` (gradient x activation per voxel) or ``gradcam`` (channel-mean gradient x activation).

    Returns:
        {label: (B, D, H, W) float32 in [0, 1]} on the CPU, each volume's map divided by its own maximum.
    """
    from captum.attr import LayerGradCam, LayerGradientXActivation

    if method not in METHODS:
        raise ValueError(f"saliency: method must be one of {', '.join(METHODS)}, got {method!r}")
    if volume.ndim != 5 or volume.shape[1] != 1:
        raise ValueError(f"saliency: expected a volume batch (B, 1, D, H, W), got {tuple(volume.shape)}")
    layer = feature_layer(model)
    was_training = model.training
    model.eval()
    cam = (LayerGradCam if method == "gradcam" else LayerGradientXActivation)(_logits(model), layer)
    handle = layer.register_forward_hook(_grads_at_layer)
    out: dict[int, np.ndarray] = {}
    try:
        with torch.enable_grad():
            for label in labels:
                if not 0 <= int(label) < 18:
                    raise ValueError(f"saliency: label index {label} is not in 0..17")
                attr = cam.attribute(volume, target=int(label))  # (B, 1 or C, d, h, w)
                attr = attr.sum(1, keepdim=True) if method == "hirescam" else attr
                out[int(label)] = _to_input_grid(attr.detach(), tuple(volume.shape[2:]))
    finally:
        handle.remove()
        model.train(was_training)
    return out


def _to_input_grid(attr: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """(B, 1, d, h, w) layer attribution -> (B, D, H, W) float32: trilinear upsampling (cell centres on voxel
    centres, ``align_corners=False``), ReLU, each map divided by its maximum (left at 0 where that is 0)."""
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(attr.float(), shape, interpolate_mode="trilinear")[:, 0].clamp_min_(0.0)
    peak = up.flatten(1).amax(1).view(-1, 1, 1, 1)
    return torch.where(peak > 0, up / peak.clamp_min(torch.finfo(up.dtype).tiny), up).cpu().numpy()


def abnormality_saliency(model: nn.Module, volume: torch.Tensor | np.ndarray, labels: Sequence[int],
                         method: str = "hirescam") -> dict[int, np.ndarray]:
    """:func:`saliency_maps` of one volume: ``volume`` (D, H, W), (1, D, H, W) or (1, 1, D, H, W) preprocessed
    (SLP) -> {label: (D, H, W) float32 in [0, 1]}. The volume is moved to the model's device."""
    x = torch.as_tensor(volume, dtype=torch.float32)
    while x.ndim < 5:
        x = x.unsqueeze(0)
    if x.shape[:2] != (1, 1):
        raise ValueError(f"abnormality_saliency: expected one volume, got shape {tuple(torch.as_tensor(volume).shape)}"
                         f" (use saliency_maps for a batch)")
    device = next(model.parameters()).device
    return {label: m[0] for label, m in saliency_maps(model, x.to(device), labels, method).items()}


def peak_index(saliency: np.ndarray) -> tuple[int, int, int]:
    """(D, H, W) map -> the (d, h, w) index of its maximum (the first in C order where several tie)."""
    if saliency.ndim != 3:
        raise ValueError(f"peak_index: expected a (D, H, W) map, got shape {saliency.shape}")
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(saliency)), saliency.shape))  # type: ignore[return-value]


def save_saliency_nifti(saliency: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a (D, H, W) map as float32 NIfTI-1 (``.nii`` or ``.nii.gz``), atomically.

    ``affine``: voxel index -> RAS mm (nibabel's convention; :func:`ctagrg.data.preprocess.output_affine` gives
    the preprocessed grid's in the original scan's world), stored as sform and qform (code 1, scanner)."""
    import gzip

    import nibabel as nib

    path = Path(path)
    if saliency.ndim != 3:
        raise ValueError(f"{path}: expected a (D, H, W) map, got shape {saliency.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{path}: expected a 4x4 affine, got shape {affine.shape}")
    img = nib.Nifti1Image(np.asarray(saliency, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    data = img.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    logger.debug("%s: saliency map %s written", path, saliency.shape)
    return path
