"""Write ``cnn3d_reference.safetensors``: what the demo encoder computed as ``ctagrg.models.cnn3d`` (one module, flat
config), for ``tests/extras/test_cnn3d_reference.py`` to compare ``ctagrg.extras.cnn3d`` against, bit for bit.

    PYTHONPATH=src python tests/extras/data/make_cnn3d_reference.py 5822c93

reads ``src/ctagrg/models/cnn3d.py`` and ``configs/demo/{pretrain,classifier}.yaml`` at that commit (``git show``) and
writes, for two tiny configs with every stem channel on, a volume of balls, a vessel and a chest wall, the
encoder's state dict (after two training batches, so that the BatchNorm statistics are not the defaults; the
embedding's variances then shrunk, so that some features are clipped), the stem measurements of the volume, the
embeddings of the volume and its mirror image in eval and in training mode and its outlier fraction; and for the demo's
cnn3d sections their derived sizes and state-dict layout (metadata, JSON).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

OUT = Path(__file__).with_name("cnn3d_reference.safetensors")
SHAPE = (8, 32, 32)  # (D, H, W) at 4 x 2 x 2 mm
HU = (-1000.0, 1500.0, 0.449)
TINY = {
    "all": {"input_shape": list(SHAPE), "input_hu": list(HU), "width": 2, "region_grid": 2, "embed_dim": 0,
            "dropout": 0.2, "context": True, "context_patches": 1, "lateral_halves": True, "blob": True,
            "voxel_mm": [4.0, 2.0, 2.0], "blob_radii_mm": [8.0, 12.0], "blob_whole_shell_erosion": [1, 3, 3],
            "sphere": True, "node": True},
    "profile": {"input_shape": list(SHAPE), "input_hu": list(HU), "width": 1, "region_grid": 2, "embed_dim": 8,
                "dropout": 0.0, "context": True, "blob": True, "blob_profile": True, "voxel_mm": [4.0, 2.0, 2.0],
                "blob_radii_mm": [4.0, 8.0, 12.0], "sphere": True, "sphere_radius_weight": 0.25, "node": True,
                "node_radius_mm": [4.0, 10.0]},
}


def _git_show(commit: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{commit}:{path}"], check=True, capture_output=True, text=True).stdout


def _old_module(commit: str):  # noqa: ANN202
    """The encoder module at ``commit``, imported from a temporary file (its nodule-measurement import is served by
    the module's new home when the old one is gone: the move kept its content)."""
    try:
        import ctagrg.measurement.nodule_size  # noqa: F401
    except ImportError:
        import ctagrg.extras.nodule.measure as moved

        sys.modules["ctagrg.measurement.nodule_size"] = moved
    path = Path(tempfile.mkdtemp()) / "old_cnn3d.py"
    path.write_text(_git_show(commit, "src/ctagrg/models/cnn3d.py"))
    spec = importlib.util.spec_from_file_location("old_cnn3d", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_cnn3d"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def volume() -> torch.Tensor:
    """(1, 1, *SHAPE) preprocessed: noisy lung on the right, fat on the left, a nodule, a node, a vessel, a chest
    wall and a calcified speck."""
    rng = np.random.default_rng(0)
    d, h, w = np.meshgrid(*(np.arange(n) * mm for n, mm in zip(SHAPE, (4.0, 2.0, 2.0), strict=True)), indexing="ij")
    hu = np.where(h < 32.0, -860.0, -90.0) + rng.normal(0.0, 20.0, SHAPE)
    for centre, radius in (((16.0, 14.0, 30.0), 5.0), ((16.0, 46.0, 20.0), 7.0)):
        hu[(d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2 <= radius**2] = 40.0
    hu[:, 20:22, 6:8] = 45.0  # a vessel through every slice
    hu[:, :, -3:] = 50.0  # the chest wall
    hu[3, 5, 9] = 1100.0
    return torch.from_numpy(((hu - HU[0]) / (HU[1] - HU[0]) - HU[2]).astype(np.float32))[None, None]


def tiny_reference(old, name: str, flat: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:  # noqa: ANN001
    torch.manual_seed(0)
    enc = old.CNN3DEncoder(old.CNN3DConfig(**flat))
    batch = torch.cat([x, x.flip(3)])
    enc.train()
    for _ in range(2):
        enc(batch + 0.05 * torch.randn_like(batch))
    enc.norm.running_var.mul_(1e-3)  # some standardised features beyond OUTLIER_SD: the clipping and its fraction
    out = {f"{name}.state.{k}": v.contiguous().clone() for k, v in enc.state_dict().items()}  # before h_train
    torch.manual_seed(1)
    out[f"{name}.h_train"] = enc(batch).detach()
    enc.eval()
    with torch.no_grad():
        out[f"{name}.h_eval"] = enc(batch)
        out[f"{name}.outlier_fraction"] = enc.last_outlier_fraction
        out[f"{name}.measure"] = enc.stem.measure(x)
    return out


def derived(old, flat: dict) -> dict:  # noqa: ANN001
    cfg = old.CNN3DConfig(**flat)
    enc = old.CNN3DEncoder(cfg)
    return {"stem_channels": cfg.stem_channels, "measure_channels": enc.stem.measure_channels,
            "blob_channels": cfg.blob_channels, "sphere_channels": cfg.sphere_channels, "part_dim": cfg.part_dim,
            "pooled_dim": cfg.pooled_dim, "out_dim": cfg.out_dim, "halves": cfg.halves, "grid": list(cfg.grid),
            "lung_bins": cfg.lung_bins, "solid_bins": cfg.solid_bins, "blob_offsets": cfg.blob_offsets(),
            "shapes": {k: list(v) for k, v in cfg.shapes().items()},
            "state": {k: list(v.shape) for k, v in enc.state_dict().items()}}


def main(commit: str) -> None:
    old = _old_module(commit)
    x = volume()
    tensors = {"volume": x}
    for name, flat in TINY.items():
        tensors.update(tiny_reference(old, name, flat, x))
    demo = {}
    for stage in ("pretrain", "classifier"):
        flat = yaml.safe_load(_git_show(commit, f"configs/demo/{stage}.yaml"))["model"]["cnn3d"]
        demo[stage] = {"section": flat, "derived": derived(old, flat)}
    meta = {"commit": commit, "tiny": json.dumps(TINY), "demo": json.dumps(demo)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT), metadata=meta)
    print(f"{OUT}: {OUT.stat().st_size} bytes, {len(tensors)} tensors")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "5822c93")
