"""Decoder-only grounding: does the decoder state the side and size that its conditioning embedding carries?

End-to-end side/size accuracy (benchmarks/phantom_grounding.py) mixes two things: whether the visual model's
abnormality embedding hᵢ encodes the side/size at all, and whether the decoder reads them out. This measures the
second alone. Phantom cases and their report sentences come from ``ctagrg.phantom`` (no volumes are rendered);
a stand-in for the step-1 model gives each present finding an embedding encoding its side (one-hot), size (mm/10),
lobe and extent, plus N(0, 0.1²) noise. The decoder (configs/demo/decoder.yaml, with a BPE tokenizer trained on the
train sentences) is trained through the normal ``decoder`` stage and scored on held-out cases with the grounding
metric's own text readers (``side_from_text``, ``size_mm_from_text``).

    .venv/bin/python benchmarks/decoder_grounding_oracle.py --out /tmp/oracle [--n 1200] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ctagrg.labels import LABELS, LATERALISED

DIM = 32
SIDES = {"left": 0, "right": 1, "bilateral": 2}


def make_cases(n: int, seed: int) -> tuple[list[dict], dict[str, torch.Tensor], dict[str, dict], dict[str, list]]:
    from ctagrg.phantom.anatomy import sample_anatomy
    from ctagrg.phantom.findings import sample_case
    from ctagrg.phantom.reports import write_report

    rng = np.random.default_rng(seed)
    lobes: dict[str | None, int] = {}
    extents: dict[str | None, int] = {}
    items, emb, sentences, truth = [], {}, {}, {}
    for k in range(n):
        split = "train" if k < 0.8 * n else "valid" if k < 0.9 * n else "test"
        name = f"{split}_{k}_a_1"
        case = sample_case(rng, sample_anatomy(rng, 300.0))
        sentences[name] = write_report(case, rng)[2]
        h = np.zeros((len(LABELS), DIM), np.float32)
        for f in case.findings:
            v = h[LABELS.index(f.label)]
            v[SIDES.get(f.side, 3)] = 1
            v[4] = (f.size_mm or 0) / 10
            v[5 + lobes.setdefault(f.lobe, len(lobes)) % 12] = 1
            v[17 + extents.setdefault(f.extent, len(extents)) % 15] = 1
            v += 0.1 * rng.normal(size=DIM).astype(np.float32)
        emb[name] = torch.from_numpy(h)
        truth[name] = [f.attributes() for f in case.findings]
        labels = torch.tensor(case.labels(), dtype=torch.float32)
        items.append({"volume": torch.tensor([[[[float(k)]]]]), "labels": labels, "name": name})
    return items, emb, sentences, truth


def train_decoder(out: Path, epochs: int, vocab: int) -> Path:
    from ctagrg.config import load_config
    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig
    from ctagrg.training.loop import train

    config = Path(__file__).resolve().parents[1] / "configs" / "demo" / "decoder.yaml"
    cfg = load_config(DecoderTaskConfig, config, [
        f"train.out_dir={out / 'decoder'}", f"train.epochs={epochs}", "train.batch_size=32", "train.tensorboard=false",
        f"embeddings.out_dir={out / 'embeddings'}", "embeddings.step1_dir=", f"model.tokenizer_path={out / 'tok'}",
        f"model.vocab_size={vocab}", "model.bos_token_id=0", "model.eos_token_id=0", "model.pad_token_id=0",
        "pairs=present"])
    return Path(train(DecoderTask(cfg)))


def score(best: Path, out: Path, truth: dict[str, list]) -> dict[str, float]:
    from ctagrg.evaluation.grounding import expected_side
    from ctagrg.generation.generate import GenerationSettings, generate_sentences
    from ctagrg.models.decoder import ReportDecoder, load_tokenizer
    from ctagrg.text.attributes import side_from_text, size_mm_from_text
    from ctagrg.training.embedding_cache import load_embedding_cache

    decoder, tok = ReportDecoder.from_pretrained(best), load_tokenizer(best / "tokenizer")
    table = load_embedding_cache(out / "embeddings")
    pairs = [(v, i) for v, n in enumerate(table.names) if n.startswith("test_") for i in range(len(LABELS))
             if table.labels[v, i] == 1]
    h = torch.stack([table.embeddings[v, i].float() for v, i in pairs])
    sents = generate_sentences(decoder, tok, h, torch.tensor([i for _, i in pairs]), GenerationSettings())
    side = [0, 0]
    size = [0, 0]
    for (v, i), s in zip(pairs, sents, strict=True):
        findings, label = truth[table.names[v]], LABELS[i]
        expected = expected_side(findings, label) if label in LATERALISED else None
        if expected:
            side[0] += side_from_text(s) == expected
            side[1] += 1
        sizes = [f["size_mm"] for f in findings if f["label"] == label and f["size_mm"]]
        if label == "Lung nodule" and sizes:
            stated = size_mm_from_text(s)
            size[0] += stated is not None and min(abs(stated - z) for z in sizes) <= 5
            size[1] += 1
    return {"pairs": len(pairs), "side_correct": side[0], "side_n": side[1], "size_correct": size[0],
            "size_n": size[1]}


def main() -> None:
    from ctagrg.demo import train_tokenizer
    from ctagrg.training.embedding_cache import build_embedding_cache

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=1200, help="phantom cases (80/10/10 train/valid/test)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.perf_counter()
    items, emb, sentences, truth = make_cases(args.n, seed=0)
    vocab = train_tokenizer([s for n, d in sentences.items() if n.startswith("train_") for s in d.values()],
                            out / "tok")
    table = torch.stack([emb[it["name"]] for it in items])
    step1 = lambda x: {"logits": torch.zeros(x.shape[0], len(LABELS)), "embeddings": table[x.flatten().long()]}  # noqa: E731
    build_embedding_cache(step1, items, sentences, out / "embeddings", batch_size=64, shard_size=4096)
    best = train_decoder(out, args.epochs, vocab)
    r = score(best, out, truth)
    print(f"{args.n} cases, {args.epochs} epochs, {time.perf_counter() - start:.0f} s; test pairs {r['pairs']}")
    print(f"side accuracy {r['side_correct']}/{r['side_n']} = {r['side_correct'] / max(r['side_n'], 1):.3f}; "
          f"nodule size within 5 mm {r['size_correct']}/{r['size_n']} = {r['size_correct'] / max(r['size_n'], 1):.3f}")


if __name__ == "__main__":
    main()
