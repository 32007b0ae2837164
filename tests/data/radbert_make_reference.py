"""Write the RadBERT reference fixture by running CT-CLIP's own ``text_classifier/infer.py`` on real reports.

Outputs (into ``--out``):
- ``radbert_tiny.safetensors``: the state dict of CT-CLIP's ``RadBertClassifier`` (its own class, keys as its
  ``torch.save(model.state_dict())`` writes them) around a tiny random RoBERTa; the word embeddings stored as
  float16, and CT-CLIP ran on exactly these values (cast to float32).
- ``radbert_ctclip_reference.json``: the RoBERTa config, and for each of the 800 development reports its VolumeName,
  whether its Findings_EN/Impressions_EN columns rebuild CT-CLIP's text, CT-CLIP's probabilities and decisions.

CT-CLIP hard-codes the hub id ``zzxslp/RadBERT-RoBERTa-4m``. Nothing is downloaded: the tiny model and a RoBERTa-layout
tokenizer (the GPT-2 byte-level BPE that RoBERTa shares, with RoBERTa's special tokens) are written to a folder of that
relative name in the working directory, which ``from_pretrained`` reads as a local path. infer.py runs unchanged via
``runpy``; its ``model_trainer.expit`` is wrapped so that the probabilities are recorded before infer.py thresholds
them (infer.py writes decisions only).

Run in a throw-away venv with CT-CLIP's dependencies, not the project's (transformers 4.30.1 is the version
CT-CLIP's setup.py names):

    python3 -m venv /tmp/radbert_ref/venv
    /tmp/radbert_ref/venv/bin/pip install torch==2.13.0 transformers==4.30.1 pandas scipy scikit-learn tqdm nltk
    mkdir -p /tmp/radbert_ref/CT-CLIP && git --git-dir=CT-CLIP.git archive HEAD text_classifier \\
        | tar -x -C /tmp/radbert_ref/CT-CLIP
    /tmp/radbert_ref/venv/bin/python tests/data/radbert_make_reference.py --ctclip /tmp/radbert_ref/CT-CLIP \\
        --ctclip-commit COMMIT --shared ../shared/data --work /tmp/radbert_ref/run --out tests/data
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np

HUB_ID = "zzxslp/RadBERT-RoBERTa-4m"
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
SEED = 22
TINY = {"hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8,
        "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}


def write_roberta_tokenizer(gpt2_dir: Path, dst: Path) -> int:
    """RoBERTa layout (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask> last) over GPT-2's BPE; returns the vocab size."""
    gpt2 = json.loads((gpt2_dir / "vocab.json").read_text(encoding="utf-8"))
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({tok: i + len(SPECIALS) for tok, i in gpt2.items()})
    vocab["<mask>"] = len(vocab)
    (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    shutil.copy(gpt2_dir / "merges.txt", dst / "merges.txt")
    return len(vocab)


def reference_texts(ctclip: Path, dev_reports: Path):
    """(VolumeNames, CT-CLIP's report_text, recoverable): CT-CLIP's own training text of each development report, and
    whether ``Findings_EN + ' " ' + Impressions_EN`` (findings alone without an impression) rebuilds it exactly."""
    import pandas as pd

    ctclip_text = pd.read_csv(ctclip / "text_classifier" / "data" / "train.csv").set_index("AccessionNo").report_text
    dev = pd.read_csv(dev_reports)
    names = dev.VolumeName.tolist()
    texts = [ctclip_text[n] for n in names]
    composed = [f if not isinstance(i, str) else f + ' " ' + i
                for f, i in zip(dev.Findings_EN, dev.Impressions_EN, strict=True)]
    return names, texts, [c == t for c, t in zip(composed, texts, strict=True)]


def stored(tensor):
    """How the fixture stores a tensor: the word embeddings (the bulk of the file) as float16, the rest as it is."""
    return tensor.half() if tensor.is_floating_point() and tensor.numel() >= 10_000 else tensor


def fill_random(model, texts: list[str], tokenizer) -> None:
    """Seeded weights: N(0, 0.5), LayerNorm gains 1 + N(0, 0.1), kept as :func:`stored` keeps them. Then, so that
    every label's probability varies across ``texts`` and about half of them are positive, each classifier row is
    turned towards the pooled outputs' main axis of variation (its length kept), and each bias is placed in the
    widest gap between the reports' logits (:func:`widest_middle_gap`)."""
    import torch

    rng = np.random.RandomState(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            values = rng.standard_normal(tuple(p.shape))
            values = 1 + 0.1 * values if "LayerNorm.weight" in name else 0.5 * values
            p.copy_(stored(torch.from_numpy(values)).float())
        pooled = []
        for i in range(0, len(texts), 32):
            enc = tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=512, return_tensors="pt")
            pooled.append(model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output)
        pooled = torch.cat(pooled)
        axis = torch.linalg.svd(pooled - pooled.mean(0), full_matrices=False).Vh[0]
        rows = model.classifier.weight
        rows.copy_(rows.norm(dim=1, keepdim=True) * torch.nn.functional.normalize(axis + 0.5 * rows / rows.norm(
            dim=1, keepdim=True), dim=1))
        model.classifier.bias.copy_(-widest_middle_gap(pooled @ rows.T))


def widest_middle_gap(logits):
    """(18,) per label: the midpoint of the widest gap between consecutive sorted logits among the middle 60% of the
    reports, so that no report sits within rounding noise of the threshold."""
    ordered = logits.sort(dim=0).values
    lo, hi = ordered[len(ordered) // 5:-len(ordered) // 5], ordered[len(ordered) // 5 + 1:-len(ordered) // 5 + 1]
    best = (hi - lo).argmax(dim=0, keepdim=True)
    return ((lo.gather(0, best) + hi.gather(0, best)) / 2)[0]


def run_ctclip_infer(ctclip: Path, checkpoint: Path, reports_csv: Path, save_path: Path) -> np.ndarray:
    """Run CT-CLIP's infer.py unchanged; return the (N, 18) probabilities it thresholds (float64)."""
    import model_trainer  # CT-CLIP's module, from ctclip/text_classifier on sys.path

    recorded = []
    expit = model_trainer.expit

    def recording_expit(x):
        out = expit(x)
        recorded.append(np.array(out, copy=True))  # infer.py thresholds ``out`` in place
        return out

    model_trainer.expit = recording_expit
    sys.argv = ["infer.py", "--checkpoint", str(checkpoint), "--single_data", str(reports_csv),
                "--save_path", str(save_path)]
    runpy.run_path(str(ctclip / "text_classifier" / "infer.py"), run_name="__main__")
    if len(recorded) != 1:
        raise RuntimeError(f"expected one expit call in infer.py, saw {len(recorded)}")
    return recorded[0]


def zero_head_decisions(ctclip: Path, model, names: list[str], texts: list[str], work: Path) -> np.ndarray:
    """CT-CLIP's decisions when every probability is exactly 0.5 (classifier weight and bias zero): its threshold
    rule at the boundary. Leaves ``model`` unchanged."""
    import pandas as pd
    import torch

    state = {k: (torch.zeros_like(v) if k.startswith("classifier.") else v) for k, v in model.state_dict().items()}
    torch.save(state, work / "zero_head.pth")
    pd.DataFrame({"AccessionNo": names, "report_text": texts}).to_csv(work / "zero_head.csv", index=False)
    probs = run_ctclip_infer(ctclip, work / "zero_head.pth", work / "zero_head.csv", work / "zero_head_out")
    if not (probs == 0.5).all():
        raise RuntimeError("a zero classifier should give probability 0.5 everywhere")
    return pd.read_csv(work / "zero_head_out" / "inferred.csv").iloc[:, 2:].to_numpy().astype(int)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ctclip", type=Path, required=True, help="CT-CLIP checkout (holds text_classifier/)")
    parser.add_argument("--ctclip-commit", required=True, help="its commit, recorded in the JSON")
    parser.add_argument("--shared", type=Path, required=True, help="../shared/data")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied)")
    parser.add_argument("--out", type=Path, required=True, help="where the two fixture files go")
    args = parser.parse_args()
    ctclip, shared, out = args.ctclip.resolve(), args.shared.resolve(), args.out.resolve()
    shutil.rmtree(args.work, ignore_errors=True)
    hub = args.work / HUB_ID
    hub.mkdir(parents=True)
    os.chdir(args.work)  # CT-CLIP's from_pretrained(HUB_ID) then resolves to the local folder ./zzxslp/...

    import pandas as pd
    import torch
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    config = transformers.RobertaConfig(vocab_size=write_roberta_tokenizer(shared / "gpt2-tokenizer", hub), **TINY)
    config.save_pretrained(hub)
    transformers.RobertaModel(config).save_pretrained(hub)  # overwritten below by the checkpoint CT-CLIP loads
    sys.path.insert(0, str(ctclip / "text_classifier"))
    from classifier import RadBertClassifier  # CT-CLIP's class: the keys of its released checkpoint

    names, texts, recoverable = reference_texts(ctclip, shared / "reports" / "dev_reports.csv")
    if len(texts) % 32 == 1:
        raise RuntimeError("infer.py squeezes a last batch of one report to 1-D; pick another report count")
    model = RadBertClassifier(n_classes=18).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(HUB_ID)
    fill_random(model, texts, tokenizer)
    checkpoint = args.work / "RadBertClassifier.pth"
    torch.save(model.state_dict(), checkpoint)
    reports_csv = args.work / "reports.csv"
    pd.DataFrame({"AccessionNo": names, "report_text": texts}).to_csv(reports_csv, index=False)

    probs = run_ctclip_infer(ctclip, checkpoint, reports_csv, args.work / "out")
    decisions = pd.read_csv(args.work / "out" / "inferred.csv").iloc[:, 2:].to_numpy().astype(int)
    margin = np.abs(probs - 0.5).min()
    if margin < 1e-5:  # the tolerance of the test: decisions then agree wherever probabilities do
        raise RuntimeError(f"a probability lies {margin:.1e} from the threshold: decisions would hang on rounding")
    n_tokens = [len(tokenizer(t)["input_ids"]) for t in texts]
    zero_head = zero_head_decisions(ctclip, model, names[:2], texts[:2], args.work)
    state = {k: stored(v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "radbert_tiny.safetensors"))
    reference = {
        "generated_by": "tests/data/radbert_make_reference.py (see its docstring)",
        "ctclip_commit": args.ctclip_commit, "transformers": transformers.__version__,
        "torch": torch.__version__, "seed": SEED, "config": config.to_diff_dict(),
        "volumes": names, "columns_rebuild_text": recoverable, "n_tokens": n_tokens,
        "probabilities": np.round(probs, 8).tolist(), "decisions": decisions.tolist(),
        "zero_head_decisions": zero_head.tolist(),
    }
    (out / "radbert_ctclip_reference.json").write_text(json.dumps(reference, separators=(",", ":")) + "\n")
    print(f"{len(names)} reports ({sum(recoverable)} rebuilt from their columns, "
          f"{sum(n > 512 for n in n_tokens)} over 512 tokens); positive decisions {decisions.mean():.3f}")


if __name__ == "__main__":
    main()
