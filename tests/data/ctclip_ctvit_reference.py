"""CT-CLIP's own CTViT as the reference for ``ctagrg.models.ctvit``: writes its pre-VQ tokens, then compares ours.

Two environments, because CT-CLIP's code is never part of ctagrg (docs/training.md, "CT-ViT and CT-CLIP"):

- ``generate`` runs in a throw-away venv holding CT-CLIP's ``transformer_maskgit`` (its device strings patched to
  ``cpu``). It builds CT-CLIP's ``CTViT`` with seeded random weights, runs CT-CLIP's own ``forward`` on a seeded
  input, and records the tokens that enter its vector quantiser (a forward pre-hook on ``vq``). ``--size tiny``
  writes ``tests/data/ctclip_ctvit_tiny.safetensors`` (the CI fixture, read by ``tests/test_ctvit.py``); ``--size
  paper`` writes CT-CLIP's hyperparameters (dim 512, image 480, patch 20, temporal patch 10, 4 + 4 layers, 8 heads
  x 32) to a folder: ``ctclip_ctvit.pt`` (the state dict, saved with ``torch.save`` as CT-CLIP saves it) and
  ``ctclip_ctvit_io.safetensors`` (input and tokens).
- ``compare`` runs in ctagrg's environment: loads the state dict through ``load_ctclip_ctvit`` and prints the
  relative error of ``CTViTEncoder.forward_tokens`` against CT-CLIP's tokens.

The fixture file holds ``state.<CT-CLIP key>`` tensors, ``input`` (B, 1, D, H, W) and ``tokens`` (B, t, h, w, dim),
and its metadata holds the CT-CLIP constructor arguments (``ctvit_kwargs``, JSON) and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch

TINY = dict(dim=32, codebook_size=16, image_size=16, patch_size=4, temporal_patch_size=2, spatial_depth=2,
            temporal_depth=2, dim_head=8, heads=2)
TINY_INPUT = (2, 1, 8, 16, 16)
PAPER = dict(dim=512, codebook_size=8192, image_size=480, patch_size=20, temporal_patch_size=10, spatial_depth=4,
             temporal_depth=4, dim_head=32, heads=8)  # CT-CLIP's scripts/run_zero_shot.py
PAPER_INPUT = (1, 1, 240, 480, 480)


def _import_ctclip_ctvit(root: Path) -> type:
    """CT-CLIP's CTViT class from ``root/transformer_maskgit``, without the package ``__init__`` (which pulls in
    its trainer, T5 and datasets) and with torchvision stubbed (ctvit.py imports it only for its GAN losses)."""
    pkg = types.ModuleType("transformer_maskgit")
    pkg.__path__ = [str(root / "transformer_maskgit" / "transformer_maskgit")]
    sys.modules["transformer_maskgit"] = pkg
    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        tv.transforms, tv.utils = types.ModuleType("torchvision.transforms"), types.ModuleType("torchvision.utils")
        sys.modules |= {"torchvision": tv, "torchvision.transforms": tv.transforms, "torchvision.utils": tv.utils}
    from transformer_maskgit.ctvit import CTViT

    return CTViT


def _seeded_ctvit(ctvit_cls: type, kwargs: dict, seed: int) -> torch.nn.Module:
    """CT-CLIP's CTViT with its own seeded initialisation; every 1-D parameter (LayerNorm gains and biases, q/k
    scales, biases) is then moved off its default by N(0, 0.2) so that a key mapped to the wrong place shows."""
    torch.manual_seed(seed)
    model = ctvit_cls(**kwargs, use_vgg_and_gan=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _pre_vq_tokens(model: torch.nn.Module, video: torch.Tensor) -> torch.Tensor:
    """Run CT-CLIP's own forward (``return_encoded_tokens=True``, as CTCLIP calls it) and catch the vq input."""
    caught: list[torch.Tensor] = []
    hook = model.vq.register_forward_pre_hook(lambda _m, args: caught.append(args[0].detach().clone()))
    with torch.no_grad():
        model(video, return_encoded_tokens=True)
    hook.remove()
    b, _, d, hh, ww = video.shape
    t, h, w = d // model.temporal_patch_size, hh // model.patch_size[0], ww // model.patch_size[1]
    return caught[0].reshape(b, t, h, w, -1)  # CT-CLIP packs 'b t h w d -> b (t h w) d'


def generate(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    kwargs, shape = (TINY, TINY_INPUT) if args.size == "tiny" else (PAPER, PAPER_INPUT)
    model = _seeded_ctvit(_import_ctclip_ctvit(Path(args.ctclip)), kwargs, args.seed)
    video = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + 1))
    tokens = _pre_vq_tokens(model, video)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"ctvit_kwargs": json.dumps(kwargs), "command": " ".join(["ctclip_ctvit_reference.py", *sys.argv[1:]])}
    out = Path(args.out)
    if args.size == "tiny":
        tensors = {f"state.{k}": v for k, v in state.items()} | {"input": video, "tokens": tokens}
        save_file(tensors, str(out), metadata=meta)
    else:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(state, out / "ctclip_ctvit.pt")
        save_file({"input": video, "tokens": tokens}, str(out / "ctclip_ctvit_io.safetensors"), metadata=meta)
    print(f"{out}: tokens {tuple(tokens.shape)}, {sum(v.numel() for v in state.values())} state values")


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref||_2 / ||ref||_2 over all elements."""
    return float((ours.double() - ref.double()).norm() / ref.double().norm())


def compare(args: argparse.Namespace) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ctagrg.models.ctvit import CTViTConfig, CTViTEncoder
    from ctagrg.models.weights import load_ctclip_ctvit

    folder = Path(args.folder)
    io = load_file(str(folder / "ctclip_ctvit_io.safetensors"))
    with safe_open(str(folder / "ctclip_ctvit_io.safetensors"), "pt") as f:
        kw = json.loads(f.metadata()["ctvit_kwargs"])
    cfg = CTViTConfig(input_shape=tuple(io["input"].shape[2:]), dim=kw["dim"], patch_size=kw["patch_size"],
                      temporal_patch_size=kw["temporal_patch_size"], spatial_depth=kw["spatial_depth"],
                      temporal_depth=kw["temporal_depth"], heads=kw["heads"], dim_head=kw["dim_head"])
    enc = CTViTEncoder(cfg).eval()
    print(load_ctclip_ctvit(enc, folder / "ctclip_ctvit.pt").summary())
    with torch.no_grad():
        ours = enc.forward_tokens(io["input"])
    diff = (ours - io["tokens"]).abs().max().item()
    print(f"tokens {tuple(ours.shape)}: relative error {relative_error(ours, io['tokens']):.2e}, "
          f"max |diff| {diff:.2e}, max |tokens| {io['tokens'].abs().max().item():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="in CT-CLIP's venv: write CT-CLIP's weights, input and pre-VQ tokens")
    gen.add_argument("--ctclip", required=True, help="a CT-CLIP checkout (holds transformer_maskgit/)")
    gen.add_argument("--size", choices=("tiny", "paper"), default="tiny")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("out", help="tiny: a .safetensors file; paper: a folder")
    cmp_ = sub.add_parser("compare", help="in ctagrg's venv: our tokens against a --size paper folder")
    cmp_.add_argument("folder")
    args = parser.parse_args()
    generate(args) if args.cmd == "generate" else compare(args)


if __name__ == "__main__":
    main()
