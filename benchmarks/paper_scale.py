"""Paper-size models with random weights, synthetic inputs and timed steps, shared by ``gpu_check.py`` and
``cpu_report_latency.py`` (BENCHMARKS.md, "Paper scale").

Paper size: CT-Net or CT-ViT at (1, 240, 480, 480), built from ``configs/ctrate/{pretrain,classifier}.yaml`` as
``ctagrg train`` builds them (their batch, precision, optimizer, augmentation); step 2's decoder from
``configs/ctrate/decoder.yaml`` with a random GPT-2 of GPT-2 medium's size (24 layers, hidden 1024, 16 heads,
vocabulary 50,257). ``tiny=True`` keeps every code path at shapes a CPU runs in seconds (CI).

Weights are random: the timings and memory are those of the real models, the words are not.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctagrg.config import load_config
from ctagrg.labels import NUM_LABELS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "ctrate"
# benchmark stage -> (ctagrg task name, its CT-RATE config)
STAGES = {"pretrain": ("pretrain", "pretrain.yaml"), "step1": ("classifier", "classifier.yaml")}

TINY_ENCODERS = {
    "ctnet": ["model.ctnet.input_shape=[12, 64, 64]", "model.ctnet.trunk.width=8",
              "model.ctnet.reducer_kernels=[[3, 1, 1], [3, 1, 1], [3, 1, 1]]", "model.ctnet.embed_dim=64"],
    "ctvit": ["model.ctvit.input_shape=[20, 40, 40]", "model.ctvit.dim=32", "model.ctvit.spatial_depth=1",
              "model.ctvit.temporal_depth=1", "model.ctvit.heads=2", "model.ctvit.dim_head=16",
              "model.ctvit.pool_grid=[2, 2]", "model.ctvit.embed_dim=64"],
}
TINY_HEADS = ["model.heads.in_dim=64", "model.heads.pretrain_hidden=[16, 8]", "model.heads.embed_dim=32",
              "model.heads.classifier_hidden=8", "data.augment.max_shift=[0, 2, 2]"]
PAPER_DECODER = ["model.gpt2_path=", "model.n_layer=24", "model.n_embd=1024", "model.n_head=16",
                 "model.n_positions=1024"]
TINY_DECODER = ["model.gpt2_path=", "model.n_layer=2", "model.n_embd=64", "model.n_head=4", "model.n_positions=128",
                "model.conditioning.input_dim=32", "model.conditioning.hidden_dims=[64]",
                "model.conditioning.output_dim=64", "generation.max_new_tokens=8", "train.global_batch_size=16"]
# A CT-RATE-like scan for the end-to-end section when no real one is given: (x, y, z) voxels, mm
SYNTHETIC_CT = {"shape": (512, 512, 300), "spacing": (0.7, 0.7, 1.0)}
TINY_CT = {"shape": (64, 64, 40), "spacing": (2.0, 2.0, 3.0)}
TINY_PREPROCESS = {"shape": (12, 64, 64), "spacing": (10.0, 2.0, 2.0)}


# -- configs and models -----------------------------------------------------------------------------------------
def visual_task_config(stage: str, encoder: str, *, tiny: bool, fp32: bool, extra: list[str] | None = None) -> Any:
    """The task config of ``stage`` ("pretrain" or "step1") from configs/ctrate, with ``encoder`` and no initial
    weights to load; ``fp32`` replaces the config's bf16 (CPU runs)."""
    from ctagrg.training.task import get_task

    name, file = STAGES[stage]
    # random weights: a timing needs no ImageNet trunk (pretraining would otherwise refuse to start without one)
    overrides = [f"model.encoder={encoder}", "init.encoder_from="]
    if name == "pretrain":
        overrides.append("init.resnet18=none")
    if tiny:
        overrides += TINY_ENCODERS[encoder] + TINY_HEADS
    if fp32:
        overrides.append("train.precision=fp32")
    return load_config(get_task(name).Config, CONFIGS / file, overrides + (extra or []))


def decoder_task_config(*, tiny: bool, fp32: bool) -> Any:
    """configs/ctrate/decoder.yaml with a random GPT-2 of GPT-2 medium's size (or a tiny one)."""
    from ctagrg.training.decoder_task import DecoderTaskConfig

    overrides = list(TINY_DECODER if tiny else PAPER_DECODER)
    if fp32:
        overrides.append("train.precision=fp32")
    return load_config(DecoderTaskConfig, CONFIGS / "decoder.yaml", overrides)


def build_on(device: torch.device, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``factory()`` with its parameters created directly on ``device`` (no CPU copy of a 355M-parameter GPT-2)."""
    with torch.device(device):
        model = factory()
    return model.to(device)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_flops(model_cls: type, model_config: Any, batch: int) -> int:
    """Model FLOPs of one training step (forward + backward of the logits' loss) at ``batch``, counted by
    ``FlopCounterMode`` on the meta device (shapes only; recomputation under checkpointing not included)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = model_cls(model_config).train()
    x = torch.empty(batch, 1, *model_config.encoder_config().input_shape, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(volume=x)["logits"].float().sum().backward()
    return int(counter.get_total_flops())


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products, convolutions and attention that ``fn()`` runs (``FlopCounterMode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


# -- synthetic inputs -------------------------------------------------------------------------------------------
def visual_batch(batch: int, shape: tuple[int, ...], pin: bool, seed: int = 0) -> dict[str, Any]:
    """A training batch as ``CachedVolumeDataset(dtype="uint8")`` + the default collate give it: volume (B, 1, D, H,
    W) uint8 cache levels, lo/hi (B,) float64, labels (B, 18) 0/1 float32, names."""
    g = torch.Generator().manual_seed(seed)
    volume = torch.randint(0, 256, (batch, 1, *shape), dtype=torch.uint8, generator=g)
    out = {"volume": volume.pin_memory() if pin else volume,
           "lo": torch.full((batch,), -0.449, dtype=torch.float64), "hi": torch.full((batch,), 0.551,
                                                                                      dtype=torch.float64),
           "labels": torch.randint(0, 2, (batch, NUM_LABELS), generator=g).float(),
           "name": [f"synthetic_{i}" for i in range(batch)]}
    return out


def decoder_batch(batch: int, tokens: int, input_dim: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """A step-2 batch as ``collate_pairs`` gives it, every row ``tokens`` long (the longest target: the worst case)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50256, (batch, tokens), generator=g)
    ids[:, 0] = ids[:, -1] = 50256  # <|endoftext|> sentence <|endoftext|>
    out = {"embeddings": torch.randn(batch, input_dim, generator=g), "input_ids": ids,
           "attention_mask": torch.ones_like(ids), "label_index": torch.randint(0, NUM_LABELS, (batch,), generator=g),
           "name": [f"synthetic_{i}" for i in range(batch)]}
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in out.items()}


def write_synthetic_ct(path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                       seed: int = 0) -> Path:
    """An int16 HU ``.nii.gz`` shaped like a chest CT: air, an elliptic body of soft tissue (40 HU) with two
    lungs (-850 HU), noise of ±20 HU (so it compresses like a scan, not like zeros). Affine: LPS-stored (x, y)
    flipped, as CT-RATE's files."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.6) ** 2 < 1
    lungs = ((np.abs(x) - 0.4) / 0.3) ** 2 + (y / 0.45) ** 2 < 1
    plane = np.where(lungs, -850, np.where(body, 40, -1000)).astype(np.int16)
    data = np.repeat(plane[:, :, None], shape[2], axis=2)
    data += rng.integers(-20, 21, size=data.shape, dtype=np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


class IdTokenizer:
    """Stands in for the GPT-2 tokenizer where its files are absent: ``decode`` writes the token ids as text. A
    random-weight decoder writes no words anyway; only the time counts, and decoding 18 sentences takes
    microseconds either way."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def load_tokenizer_or_ids(path: Path | None) -> tuple[Any, str]:
    """The GPT-2 tokenizer in ``path`` when it has one, else :class:`IdTokenizer`; plus what was used."""
    if path is not None and (path / "vocab.json").is_file():
        from ctagrg.models.decoder import load_tokenizer

        return load_tokenizer(path), str(path)
    return IdTokenizer(), "token ids (no GPT-2 tokenizer files given)"


def with_beams(settings: Any, beams: int) -> Any:
    """Generation settings with ``beams`` beams (1: greedy), everything else kept."""
    import dataclasses

    return dataclasses.replace(settings, num_beams=beams, strategy="beam" if beams > 1 else "greedy")


def build_reporter(*, encoder: str, tiny: bool, device: torch.device, tokenizer: Any) -> Any:
    """A Reporter with random weights: the step-1 model of configs/ctrate/classifier.yaml and the decoder of
    decoder.yaml (GPT-2 medium's size), thresholds 0 so that all 18 abnormalities are detected (the worst case:
    18 sentences), generation as decoder.yaml sets it (beam search, 4 beams, 60 new tokens)."""
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.generation.reporter import Reporter, ReporterConfig
    from ctagrg.models.decoder import ReportDecoder
    from ctagrg.models.step1 import Step1Model

    visual_cfg = visual_task_config("step1", encoder, tiny=tiny, fp32=True).model
    dec_cfg = decoder_task_config(tiny=tiny, fp32=True)
    visual = build_on(device, lambda: Step1Model(visual_cfg))
    decoder = build_on(device, lambda: ReportDecoder(dec_cfg.model))
    preprocess = PreprocessConfig(**TINY_PREPROCESS) if tiny else PreprocessConfig()
    if tiny and encoder == "ctvit":
        preprocess = PreprocessConfig(shape=(20, 40, 40), spacing=(6.0, 3.2, 3.2))
    return Reporter(visual, decoder, tokenizer, [0.0] * NUM_LABELS, preprocess,
                    ReporterConfig(generation=dec_cfg.generation), device=device)


# -- measuring --------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(wall seconds, result) of ``fn()``, with the device's queued work finished on both sides."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> dict[str, float | None]:
    """Peak device memory since :func:`reset_peak`: allocated by tensors and reserved by the caching allocator
    (GB = 1e9 bytes); None on the CPU (see :func:`peak_rss_mb`)."""
    if device.type != "cuda":
        return {"peak_allocated_gb": None, "peak_reserved_gb": None}
    return {"peak_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 1e9, 2)}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (what ``uptime`` prints)."""
    return [round(v, 2) for v in os.getloadavg()]


def summary(times: list[float]) -> dict[str, float]:
    """Median, min and max of a list of seconds."""
    return {"median": round(float(np.median(times)), 4), "min": round(min(times), 4), "max": round(max(times), 4)}


# -- one report, split ------------------------------------------------------------------------------------------
REPORT_PARTS = ("read", "preprocess", "encoder_heads", "generation", "assemble")


def report_split(reporter: Any, path: Path, device: torch.device) -> dict[str, Any]:
    """One scan to report in the order ``Reporter.report`` runs it, each part timed apart: read (``load_ct``),
    preprocess (``preprocess_volume``), encoder_heads (rounding to the cache's levels, the copy to the device and
    the step-1 model), generation (one batched beam search over the detected labels, decoding included) and
    assemble. Wall seconds per part and in ``"total"``; this process's CPU seconds (all threads) under ``"cpu"``.
    ``Reporter.report`` itself is timed by the caller."""
    from ctagrg.data.cache import as_cached
    from ctagrg.data.ctio import load_ct
    from ctagrg.data.preprocess import preprocess_volume
    from ctagrg.generation.assemble import assemble_report
    from ctagrg.generation.generate import generate_token_ids

    pp, out, cpu = reporter.preprocess, {}, {}

    def part(name: str, fn: Callable[[], Any]) -> Any:
        cpu0 = time.process_time()
        out[name], result = timed(fn, device)
        cpu[name] = round(time.process_time() - cpu0, 3)
        return result

    vol = part("read", lambda: load_ct(path))
    x = part("preprocess", lambda: preprocess_volume(vol, pp))

    def encode() -> Any:
        with torch.no_grad():
            return reporter.score(as_cached(x, -pp.offset, 1.0 - pp.offset)[None])

    probs, emb, _ = part("encoder_heads", encode)
    detected = probs.double() >= torch.tensor(reporter.thresholds, dtype=torch.float64)
    rows, cols = detected.nonzero(as_tuple=True)
    tokens = []

    def generate() -> list[str]:
        ids = generate_token_ids(reporter.decoder, emb[rows, cols], cols, reporter.config.generation)
        tokens.append(sum(map(len, ids)))
        return [reporter.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]

    sentences = part("generation", generate)
    text = part("assemble", lambda: assemble_report(dict(zip(cols.tolist(), sentences, strict=True)),
                                                    reporter.config.assembly))
    out["total"] = sum(out[p] for p in REPORT_PARTS)
    cpu["total"] = round(sum(cpu[p] for p in REPORT_PARTS), 3)
    return out | {"cpu": cpu, "detected": len(rows), "tokens": tokens[0], "report_chars": len(text)}
