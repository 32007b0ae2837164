"""Latent-space augmentation σ on the phantoms: step 2 trained at several σ, scored on held-out test phantoms.

Needs a demo folder run up to its embeddings stage (``ctagrg demo --out DEMO --until embeddings``): its step-1
model, volume cache, tokenizer and train + valid embedding cache. The script embeds the demo's *test* phantoms
with that step-1 model (a cache of its own, OUT/test_embeddings; the demo never embeds them), then for each σ
(``model.conditioning.latent_noise_std``) and seed trains the demo's decoder (configs/demo/decoder.yaml with the
demo's overrides: train on train, best checkpoint on valid) and scores it on every present finding of the test
phantoms that has a reference sentence (step 1's detections play no part: this measures the decoder):

- ``test_nll``: teacher-forced next-token loss per target token on the reference sentences (lower is better);
- ``bleu_4``, ``rouge_l``: corpus BLEU-4 and ROUGE-L of the beam-searched sentences against the references;
- ``side``: of the lateralised findings whose reference states a side, the fraction whose generated sentence states
  the same one (``ctagrg.text.attributes.side_from_text``).

σ is in units of each batch's RMS of hᵢ's non-zero units (``latent_noise_scale: rms``, the scale-free setting
configs/ctrate use; ``--scale absolute`` for plain σ); the script also prints the training embeddings' RMS.

    python benchmarks/latent_noise.py --demo DEMO --out OUT [--sigmas 0 0.1 0.3] [--seeds 0 1 2] [--threads 1]

Results: docs/decoder.md, "Latent-space augmentation".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_cache(demo: Path, out: Path) -> Path:
    """The demo's test phantoms through its step-1 model, targets from Findings_EN as the demo's sentences."""
    from ctagrg.data.ctrate import split_csv
    from ctagrg.training.embedding_cache import EmbeddingCacheConfig, build_from_config

    path = out / "test_embeddings"
    if not (path / "index.json").is_file():
        build_from_config(EmbeddingCacheConfig(
            out_dir=str(path), step1_dir=str(demo / "runs" / "classifier" / "best"), volume_cache=str(demo / "cache"),
            labels_csv=str(split_csv(demo / "data", "labels", "test")),
            reports_csv=str(split_csv(demo / "data", "reports", "test")), text_columns=("Findings_EN",),
            sentence="joined", device="cpu"))
    return path


def train_decoder(demo: Path, run: Path, sigma: float, seed: int, scale: str) -> Path:
    from ctagrg.config import load_config
    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig
    from ctagrg.training.loop import train

    if (run / "best" / "model.safetensors").is_file() and (run / "done").is_file():
        return run / "best"
    vocab = json.loads((demo / "stages" / "embeddings.json").read_text())["vocab_size"]
    cfg = load_config(DecoderTaskConfig, ROOT / "configs" / "demo" / "decoder.yaml", [
        f"train.out_dir={run}", f"train.seed={seed}", "train.tensorboard=false",
        f"model.conditioning.latent_noise_std={sigma}", f"model.conditioning.latent_noise_scale={scale}",
        f"embeddings.out_dir={demo / 'embeddings'}",
        "embeddings.step1_dir=", f"model.tokenizer_path={demo / 'tokenizer'}", f"model.vocab_size={vocab}",
        "model.bos_token_id=0", "model.eos_token_id=0", "model.pad_token_id=0"])
    best = Path(train(DecoderTask(cfg)))
    (run / "done").write_text("")
    return best


def test_pairs(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(h (N, D) float32, label index (N,), reference sentence) of every present test finding with a sentence."""
    from ctagrg.training.embedding_cache import load_embedding_cache

    table = load_embedding_cache(path)
    pairs = table.pairs("present")
    h = torch.stack([table.embeddings[v, i].float() for v, i, _ in pairs])
    return h, torch.tensor([i for _, i, _ in pairs]), [s for _, _, s in pairs]


def score(best: Path, h: torch.Tensor, labels: torch.Tensor, refs: list[str]) -> dict[str, float]:
    from ctagrg.evaluation.nlg import nlg_metrics
    from ctagrg.generation.generate import GenerationSettings, generate_sentences
    from ctagrg.labels import LABELS, LATERALISED
    from ctagrg.models.decoder import ReportDecoder, load_tokenizer
    from ctagrg.text.attributes import side_from_text
    from ctagrg.training.decoder_task import TargetConfig, collate_pairs, prepare_target

    decoder, tok = ReportDecoder.from_pretrained(best).eval(), load_tokenizer(best / "tokenizer")
    settings = json.loads((best / "generation.json").read_text())
    target = TargetConfig(**settings["target"])
    c = decoder.config
    ids = tok([prepare_target(r, target) for r in refs], add_special_tokens=False)["input_ids"]
    items = [{"embedding": h[k], "label_index": int(labels[k]), "name": str(k), "mirror_embedding": None,
              "mirror_input_ids": None, "input_ids": torch.tensor([c.bos_token_id, *x[: target.max_tokens],
                                                                   c.eos_token_id])} for k, x in enumerate(ids)]
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), 64):
            batch = collate_pairs(items[start : start + 64], pad_id=c.pad_token_id)
            n = int(batch["attention_mask"][:, 1:].sum())
            out = decoder(batch["embeddings"], batch["label_index"], batch["input_ids"], batch["attention_mask"])
            total, tokens = total + float(out["loss"]) * n, tokens + n
    generated = generate_sentences(decoder, tok, h, labels, GenerationSettings(**settings["generation"]))
    nlg = nlg_metrics(generated, [prepare_target(r, target) for r in refs], meteor=False).scores
    sided = [(side_from_text(g), side_from_text(r)) for g, r, i in zip(generated, refs, labels.tolist(), strict=True)
             if LABELS[i] in LATERALISED and side_from_text(r)]
    return {"test_nll": total / tokens, "bleu_4": nlg["bleu_4"], "rouge_l": nlg["rouge_l"],
            "side": sum(g == r for g, r in sided) / len(sided), "side_n": len(sided)}


def mean_sd(values: list[float]) -> str:
    """'mean ± sd' over seeds (sample sd; 0 for one seed)."""
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", required=True, help="a demo folder run up to its embeddings stage")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--scale", choices=("rms", "absolute"), default="rms",
                        help="model.conditioning.latent_noise_scale (default rms: σ in units of the embeddings' RMS)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo, out = Path(args.demo), Path(args.out)
    from ctagrg.training.embedding_cache import load_embedding_cache

    train_table = load_embedding_cache(demo / "embeddings")
    units = train_table.embeddings.float()
    nonzero = units[units != 0]
    rms, share = float(nonzero.pow(2).mean().sqrt()), float((units != 0).float().mean())
    print(f"training embeddings {tuple(units.shape)}: RMS of the non-zero units {rms:.3f} ({share:.2f} non-zero)")
    h, labels, refs = test_pairs(test_cache(demo, out))
    print(f"test pairs (present findings with a sentence): {len(refs)}")
    rows = {}
    for sigma in args.sigmas:
        for seed in args.seeds:
            start = time.perf_counter()
            best = train_decoder(demo, out / f"{args.scale}{sigma:g}_seed{seed}", sigma, seed, args.scale)
            rows[(sigma, seed)] = r = score(best, h, labels, refs)
            print(f"σ {sigma:g} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k != "side_n")
                  + f" (side n {r['side_n']}; {time.perf_counter() - start:.0f} s)", flush=True)
    print("\n| σ | test NLL / token | BLEU-4 | ROUGE-L | side accuracy |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for sigma in args.sigmas:
        cells = [mean_sd([rows[(sigma, s)][k] for s in args.seeds]) for k in ("test_nll", "bleu_4", "rouge_l", "side")]
        print(f"| {sigma:g} | " + " | ".join(cells) + " |")
    (out / "results.json").write_text(json.dumps({f"{k[0]:g}/{k[1]}": v for k, v in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
