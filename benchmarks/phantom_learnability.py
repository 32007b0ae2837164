"""Are the phantom findings learnable and groundable? A small 3D CNN, CPU, time-boxed.

1. Generate 300 train and 100 test ``small`` phantoms (different seeds, so different patients) and time it.
2. Preprocess them as the demo does (``configs/demo/preprocess.yaml``: SLP (64, 128, 128) at (4, 2, 2) mm, window
   [-1000, 1500] HU) and compute the demo encoder's fixed HU-bin stem once (``ctagrg.models.cnn3d``).
3. Train the demo's model, the cnn3d encoder with a linear read-out, for at most ``--minutes`` (default 10) on CPU,
   with left-right mirroring and +-1-patch shifts. A side probe shares the encoder: the same pooling on each half
   of the volume (the left one mirrored) and one linear read-out per lateralised finding (nodule, pleural
   effusion, consolidation): "is it on this side?".
4. Report per-label AUROC on the test set and side accuracy (left / right / bilateral) on the test findings.

    .venv/bin/python benchmarks/phantom_learnability.py --out /tmp/phantom_bench [--minutes 10] [--threads 2]

Writes ``results.json`` in --out and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np

SIDE_LABELS = ("Lung nodule", "Pleural effusion", "Consolidation")
SHAPE, SPACING = (64, 128, 128), (4.0, 2.5, 2.5)


def generate(out: Path, workers: int, n_train: int, n_test: int, min_prevalence: float) -> dict[str, float]:
    from ctagrg.phantom.generate import generate_dataset

    times = {}
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        start, cpu0 = time.perf_counter(), _cpu_seconds()
        generate_dataset(out / name, n=n, seed=seed, size="small", split={name: 1.0}, workers=workers,
                         min_prevalence=min_prevalence)
        times[f"generate_{name}_s"] = time.perf_counter() - start
        # CPU seconds (this process + its workers) are far less sensitive to other jobs on a shared machine
        times[f"generate_{name}_cpu_s"] = _cpu_seconds() - cpu0
        print(f"generated {n} {name} volumes in {times[f'generate_{name}_s']:.1f} s wall, "
              f"{times[f'generate_{name}_cpu_s']:.1f} s CPU ({workers} workers)", flush=True)
    return times


def _cpu_seconds() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# The project's demo preprocessing and encoder: SLP (64, 128, 128) at (4, 2, 2) mm, window [-1000, 1500] HU, and
# the cnn3d encoder (fixed HU-bin stem, 3D CNN, region pooling). The stem has no weights, so it is computed once.
SHAPE, SPACING, WINDOW = (64, 128, 128), (4.0, 2.0, 2.0), (-1000.0, 1500.0, 0.449)
PATCH = [2, 4, 4]  # the stem's patch (--patch); the demo's is 2x4x4 voxels = 8 mm
CONTEXT = [True]  # the stem's "solid surrounded by lung" channels (--no-context: without them)


def encoder_config():
    from ctagrg.models.cnn3d import CNN3DConfig

    return CNN3DConfig(input_shape=SHAPE, input_hu=WINDOW, patch=tuple(PATCH), width=8, region_grid=4, embed_dim=0,
                       dropout=0.0, context=CONTEXT[0])


def _prep_one(path: str) -> np.ndarray:
    import torch

    from ctagrg.data.preprocess import PreprocessConfig, preprocess_file
    from ctagrg.models.cnn3d import HUBinStem

    torch.set_num_threads(1)
    cfg = PreprocessConfig(spacing=SPACING, shape=SHAPE, hu_min=WINDOW[0], hu_max=WINDOW[1], offset=WINDOW[2])
    x = torch.from_numpy(preprocess_file(path, config=cfg))[None, None]
    return HUBinStem(encoder_config())(x)[0].numpy().astype(np.float16)


def load_split(root: Path, split: str, workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Stem features (N, C, d, l, p) float16, labels (N, 18), side targets (N, 3 labels, 2 sides), names."""
    from ctagrg.data.ctrate import CTRateIndex
    from ctagrg.labels import LABELS

    index = CTRateIndex(root)
    names = index.names(split)
    paths = [str(index.row(n)["path"]) for n in names]
    cache = root / f"stem_{split}_{'x'.join(map(str, PATCH))}{'_context' if CONTEXT[0] else ''}.npy"
    if cache.is_file():
        vols = np.load(cache)
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            vols = np.stack(pool.map(_prep_one, paths, chunksize=4))
        np.save(cache, vols)
    labels = index.labels(names).astype(np.float32)
    sides = np.zeros((len(names), len(SIDE_LABELS), 2), np.float32)  # [..., 0] = right, [..., 1] = left
    for i, name in enumerate(names):
        gt = json.loads((root / "ground_truth" / f"{name}.json").read_text())
        for f in gt["findings"]:
            if f["label"] in SIDE_LABELS:
                k = SIDE_LABELS.index(f["label"])
                sides[i, k, 0] = f["side"] in ("right", "bilateral")
                sides[i, k, 1] = f["side"] in ("left", "bilateral")
    assert labels.shape[1] == len(LABELS)
    return vols, labels, sides, names


def build_model():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ctagrg.models.cnn3d import CNN3DEncoder

    class Net(nn.Module):
        """Stem features (B, 14, 32, 32, 32) → 18 label logits and (3, 2) per-side logits of the lateralised findings.

        Labels: the demo's model, i.e. cnn3d's region-pooled, standardised features and a linear read-out. Sides:
        the same features computed on each half (right; left mirrored, so lateral matches lateral) and one shared
        linear read-out per lateralised label: "is it on this side?".
        """

        def __init__(self) -> None:
            super().__init__()
            self.encoder = CNN3DEncoder(encoder_config())
            cfg = self.encoder.config
            c = 8 * cfg.width
            self.labels = nn.Linear(cfg.pooled_dim, 18)
            # per half: 4 octants x (max, mean), 4 x 2 x 4 regions x (max, mean), the stem's max
            half = 4 * 2 * c + 2 * cfg.stem_channels * 32 + cfg.stem_channels
            self.side_norm = nn.BatchNorm1d(half)
            self.sides = nn.Linear(half, len(SIDE_LABELS))
            self.dropout = nn.Dropout(0.2)

        def forward(self, stem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            enc = self.encoder
            pooled, maps = enc.features_from_stem(stem)
            logits = self.labels(self.dropout(enc.norm(pooled)))
            w = maps.shape[3] // 2
            sides = []
            hs = stem.shape[3] // 2
            halves = ((maps[:, :, :, :w], stem[:, :, :, :hs]), (maps[:, :, :, w:].flip(3), stem[:, :, :, hs:].flip(3)))
            for m, s in halves:
                f = torch.cat([F.adaptive_max_pool3d(m, (2, 1, 2)).flatten(1),
                               F.adaptive_avg_pool3d(m, (2, 1, 2)).flatten(1),
                               F.adaptive_max_pool3d(s, (4, 2, 4)).flatten(1),
                               F.adaptive_avg_pool3d(s, (4, 2, 4)).flatten(1), s.amax(dim=(2, 3, 4))], dim=1)
                sides.append(self.sides(self.dropout(self.side_norm(f))))
            return logits, torch.stack(sides, dim=2)

    return Net()


def train(model, x: np.ndarray, y: np.ndarray, s: np.ndarray, minutes: float, batch: int = 8) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    pos = y.mean(0).clip(1e-3, None)
    pos_weight = torch.tensor(np.sqrt((1 - pos) / pos).clip(1.0, 4.0), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    rng = np.random.default_rng(0)
    start, steps, epochs = time.perf_counter(), 0, 0
    budget = minutes * 60.0
    model.train()
    while time.perf_counter() - start < budget:
        order = rng.permutation(len(x))
        for i in range(0, len(order) - batch + 1, batch):
            idx = np.sort(order[i:i + batch])
            xb, sb = torch.from_numpy(x[idx].astype(np.float32)), torch.from_numpy(s[idx])
            if rng.random() < 0.5:  # mirror left-right (axis l) and swap the side targets
                xb, sb = xb.flip(3), sb.flip(2)
            shift = tuple(int(v) for v in rng.integers(-1, 2, 3))  # +-1 patch (8-10 mm) translation
            xb = torch.roll(xb, shifts=shift, dims=(2, 3, 4))
            logits, sides = model(xb)
            has = torch.from_numpy(y[idx][:, [LABEL_POS[k] for k in SIDE_LABELS]])[:, :, None].expand(-1, -1, 2)
            side_loss = F.binary_cross_entropy_with_logits(sides, sb, weight=0.2 + has)
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y[idx]), pos_weight=pos_weight)
            for group in opt.param_groups:  # cosine decay over the time budget
                group["lr"] = 3e-3 * 0.5 * (1.0 + np.cos(np.pi * min((time.perf_counter() - start) / budget, 1.0)))
            opt.zero_grad()
            (loss + side_loss).backward()
            opt.step()
            steps += 1
            if time.perf_counter() - start > budget:
                break
        epochs += 1
        print(f"epoch {epochs}: step {steps}, loss {loss.item():.3f}, side {side_loss.item():.3f}, "
              f"{(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return {"train_minutes": (time.perf_counter() - start) / 60, "steps": steps, "epochs": epochs}


def evaluate(model, x: np.ndarray, y: np.ndarray, s: np.ndarray) -> dict:
    import torch
    from sklearn.metrics import roc_auc_score

    from ctagrg.labels import LABELS

    model.eval()
    outs, side_outs = [], []
    with torch.no_grad():
        for i in range(0, len(x), 8):
            logits, sides = model(torch.from_numpy(x[i:i + 8].astype(np.float32)))
            outs.append(torch.sigmoid(logits).numpy())
            side_outs.append(torch.sigmoid(sides).numpy())
    p, ps = np.concatenate(outs), np.concatenate(side_outs)
    auroc = {name: float(roc_auc_score(y[:, j], p[:, j])) if 0 < y[:, j].sum() < len(y) else float("nan")
             for j, name in enumerate(LABELS)}
    side_acc = {}
    for k, name in enumerate(SIDE_LABELS):
        present = y[:, LABEL_POS[name]] == 1
        pred = ps[present, k] > 0.5
        # no side above 0.5: take the likelier one (the finding is known to be present here)
        none = ~pred.any(axis=1)
        pred[none, np.argmax(ps[present, k][none], axis=1)] = True
        side_acc[name] = {"accuracy": float(np.mean(np.all(pred == (s[present, k] > 0.5), axis=1))),
                          "n": int(present.sum())}
    return {"auroc": auroc, "macro_auroc": float(np.nanmean(list(auroc.values()))), "side": side_acc,
            "test_positives": {name: int(y[:, j].sum()) for j, name in enumerate(LABELS)}}


LABEL_POS: dict[str, int] = {}


def main() -> None:
    import torch

    from ctagrg.labels import LABELS

    LABEL_POS.update({name: i for i, name in enumerate(LABELS)})
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy machine")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--min-prevalence", type=float, default=0.15,
                        help="label probability floor (0.15: every label has test positives; 0: CT-RATE-like)")
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--patch", type=int, nargs=3, default=PATCH, metavar=("D", "H", "W"),
                        help="stem patch in voxels (default 2 4 4, the demo's; 2 2 2 halves it in-plane: 4 mm)")
    parser.add_argument("--no-context", action="store_true",
                        help="the stem without its context channels (the encoder before 2026-11-28)")
    parser.add_argument("--skip-generate", action="store_true", help="reuse the phantoms already in --out")
    args = parser.parse_args()
    PATCH[:] = args.patch
    CONTEXT[0] = not args.no_context
    torch.manual_seed(0)
    results: dict = {}
    if not args.skip_generate:
        results.update(generate(args.out, args.workers, args.n_train, args.n_test, args.min_prevalence))
    results["min_prevalence"] = args.min_prevalence
    start = time.perf_counter()
    xtr, ytr, str_, _ = load_split(args.out / "train", "train", args.workers)
    xte, yte, ste, _ = load_split(args.out / "test", "test", args.workers)
    results["preprocess_s"] = time.perf_counter() - start
    print(f"preprocessed {len(xtr)} + {len(xte)} volumes in {results['preprocess_s']:.1f} s", flush=True)
    torch.set_num_threads(args.threads)
    model = build_model()
    results.update(train(model, xtr, ytr, str_, args.minutes))
    results.update(evaluate(model, xte, yte, ste))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| label | test positives | AUROC |\n| --- | ---: | ---: |")
    for name in LABELS:
        print(f"| {name} | {results['test_positives'][name]} | {results['auroc'][name]:.3f} |")
    print(f"| **macro** | | **{results['macro_auroc']:.3f}** |")
    for name, v in results["side"].items():
        print(f"side accuracy {name}: {v['accuracy']:.3f} (n={v['n']})")


if __name__ == "__main__":
    main()
