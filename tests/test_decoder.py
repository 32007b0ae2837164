"""The GPT-2 pseudo self-attention decoder: cache-prefix implementation vs a direct one, loss, freezing, I/O."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ctagrg.config import ConfigError
from ctagrg.labels import LABELS
from ctagrg.models.conditioning import ConditioningConfig
from ctagrg.models.decoder import DecoderConfig, ReportDecoder, load_tokenizer, next_token_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**kw) -> DecoderConfig:
    cond = ConditioningConfig(num_labels=18, input_dim=16, hidden_dims=(32, 24), output_dim=20)
    return DecoderConfig(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=300, conditioning=cond, **kw)


def direct_forward(model: ReportDecoder, h: torch.Tensor, label_index: torch.Tensor,
                   input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """GPT-2 written out by hand, with the conditioning key/value concatenated in front of the text ones and the
    causal mask widened by one always-visible column. Returns logits (N, T, V)."""
    gpt = model.gpt2.transformer
    n, t = input_ids.shape
    e = model.conditioning.layers[0](model.conditioning.dense_input(h, label_index))
    for layer in model.conditioning.layers[1:]:
        e = layer(torch.relu(e))
    x = gpt.wte(input_ids) + gpt.wpe(torch.arange(1, t + 1))  # the slot is position 0
    heads, hd = model.num_heads, model.head_dim
    visible = torch.ones(t, t + 1, dtype=torch.bool).tril(diagonal=1)  # column 0 (slot) always visible
    visible = visible[None, None] & torch.cat([torch.ones(n, 1), attention_mask], 1).bool()[:, None, None, :]
    for i, block in enumerate(gpt.h):
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(gpt.config.n_embd, dim=2)
        split = lambda z: z.view(n, -1, heads, hd).transpose(1, 2)
        k = torch.cat([model.uk[i](e).view(n, heads, 1, hd), split(k)], dim=2)
        v = torch.cat([model.uv[i](e).view(n, heads, 1, hd), split(v)], dim=2)
        scores = (split(q) @ k.transpose(-1, -2)) / math.sqrt(hd)
        attn = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v
        x = x + block.attn.c_proj(attn.transpose(1, 2).reshape(n, t, -1))
        x = x + block.mlp(block.ln_2(x))
    return model.gpt2.lm_head(gpt.ln_f(x))


@pytest.fixture
def model() -> ReportDecoder:
    torch.manual_seed(0)
    return ReportDecoder(tiny_config()).eval()


def test_cache_prefix_equals_direct_implementation(model: ReportDecoder) -> None:
    torch.manual_seed(1)
    h = torch.randn(3, 16)
    label_index = torch.tensor([0, 9, 17])
    input_ids = torch.randint(0, 300, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    with torch.no_grad():
        got = model(h, label_index, input_ids, mask)["logits"]
        want = direct_forward(model, h, label_index, input_ids, mask)
    real = mask.bool()
    assert got.shape == (3, 7, 300)
    assert torch.allclose(got[real], want[real], atol=1e-5), (got[real] - want[real]).abs().max()
    # The slot matters: a different hᵢ changes the logits.
    other = model(torch.randn(3, 16), label_index, input_ids, mask)["logits"]
    assert (other[real] - got[real]).abs().max() > 1e-3


def test_positions_come_from_wpe_not_wte(model: ReportDecoder) -> None:
    ids = torch.randint(0, 300, (1, 5))
    h, idx = torch.randn(1, 16), torch.tensor([3])
    with torch.no_grad():
        before = model(h, idx, ids)["logits"]
        model.gpt2.transformer.wpe.weight[1:6] += torch.randn(5, 32)  # text positions 1..5
        after = model(h, idx, ids)["logits"]
    assert (after - before).abs().max() > 1e-3
    with torch.no_grad():
        model.gpt2.transformer.wte.weight[1:6] += torch.randn(5, 32)  # the table RGRG wrongly used for positions
        unchanged = model(h, idx, ids.clamp(min=6))["logits"][..., 6:]  # rows 1..5 are also tied output rows
        model.gpt2.transformer.wte.weight[1:6] += torch.randn(5, 32)
        assert torch.equal(model(h, idx, ids.clamp(min=6))["logits"][..., 6:], unchanged)


def test_loss_counts_real_tokens_only() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 10)
    ids = torch.tensor([[1, 2, 3, 4], [1, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    loss = next_token_loss(logits, ids, mask)
    logp = logits.log_softmax(-1)
    terms = [-logp[0, 0, 2], -logp[0, 1, 3], -logp[0, 2, 4], -logp[1, 0, 5]]
    assert torch.isclose(loss, torch.stack(terms).mean())
    # Changing logits at padded positions leaves the loss unchanged.
    logits2 = logits.clone()
    logits2[1, 1:] = 100.0
    assert torch.isclose(next_token_loss(logits2, ids, mask), loss)


def test_frozen_by_default_and_unfreezable() -> None:
    frozen = ReportDecoder(tiny_config())
    assert not any(p.requires_grad for p in frozen.gpt2.parameters())
    out = frozen(torch.randn(2, 16), torch.tensor([1, 2]), torch.randint(0, 300, (2, 5)))
    out["loss"].backward()
    assert frozen.uk[0].weight.grad is not None and frozen.uk[0].weight.grad.abs().sum() > 0
    assert frozen.conditioning.layers[0].weight.grad.abs().sum() > 0
    assert frozen.gpt2.transformer.wte.weight.grad is None
    unfrozen = ReportDecoder(tiny_config(freeze_gpt2=False))
    assert all(p.requires_grad for p in unfrozen.gpt2.parameters())


def test_save_and_load_roundtrip(tmp_path: Path, model: ReportDecoder) -> None:
    model.save_pretrained(tmp_path / "dec")
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ReportDecoder.from_pretrained(tmp_path / "dec").eval()
    h, idx, ids = torch.randn(2, 16), torch.tensor([4, 5]), torch.randint(0, 300, (2, 6))
    with torch.no_grad():
        assert torch.equal(model(h, idx, ids)["logits"], loaded(h, idx, ids)["logits"])
    assert loaded.config == model.config
    assert loaded.gpt2.lm_head.weight.data_ptr() == loaded.gpt2.transformer.wte.weight.data_ptr()


def test_load_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ReportDecoder.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        ReportDecoder(DecoderConfig(gpt2_path=str(tmp_path)))
    with pytest.raises(ConfigError, match="divisible"):
        DecoderConfig(n_embd=30, n_head=4)
    with pytest.raises(FileNotFoundError, match="no GPT-2 tokenizer"):
        load_tokenizer(tmp_path)


def test_loads_local_hf_gpt2_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ReportDecoder(tiny_config()).gpt2.save_pretrained(tmp_path / "gpt2")
    model = ReportDecoder(tiny_config(gpt2_path=str(tmp_path / "gpt2")))
    assert model.gpt2.config.n_layer == 2 and len(model.uk) == 2


def test_real_tokenizer(gpt2_tokenizer_dir: Path) -> None:
    tok = load_tokenizer(gpt2_tokenizer_dir)
    assert len(tok) == 50257 and tok.eos_token_id == 50256 and tok.pad_token_id == 50256
    assert tok.decode(tok("Nodule of 4.5 mm in the left lobe.")["input_ids"]) == "Nodule of 4.5 mm in the left lobe."


# -- step-2 training (DecoderTask) through the shared loop -------------------------------------------------------
def _write_cache(path: Path, dim: int = 16) -> None:
    from ctagrg.training.embedding_cache import build_embedding_cache

    sentences = {
        "train_1_a_1": {"Lung nodule": "A 4.5 mm nodule in the left lower lobe.", "Emphysema": "Emphysema."},
        "train_2_a_1": {"Pleural effusion": "Right pleural effusion."},
        "valid_3_a_1": {"Lung nodule": "A 7 mm nodule in the right upper lobe."},
    }
    items = []
    for v, name in enumerate(sentences):
        labels = torch.tensor([1.0 if label in sentences[name] else 0.0 for label in LABELS])
        items.append({"volume": torch.full((1, 1, 1, 1), float(v)), "labels": labels, "name": name})
    torch.manual_seed(0)
    table = torch.randn(3, 18, dim)
    step1 = lambda x: {"logits": torch.zeros(x.shape[0], 18), "embeddings": table[x.flatten().long()]}  # noqa: E731
    build_embedding_cache(step1, items, sentences, path, thresholds=[0.4] * 18)


def test_prepare_target_keeps_numbers() -> None:
    from ctagrg.training.decoder_task import TargetConfig, prepare_target

    text = "Nodule (4.5 mm), left lobe; no 3-mm nodule. "
    assert prepare_target(text, TargetConfig()) == "Nodule (4.5 mm), left lobe; no 3-mm nodule."
    paper = TargetConfig(lowercase=True, strip_punctuation=True)
    assert prepare_target(text, paper) == "nodule 4.5 mm left lobe no 3-mm nodule"


def test_decoder_task_trains_through_the_loop(tmp_path: Path, gpt2_tokenizer_dir: Path) -> None:
    from ctagrg.config import load_config
    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig
    from ctagrg.training.loop import train

    _write_cache(tmp_path / "emb")
    cfg = load_config(DecoderTaskConfig, None, [
        f"train.out_dir={tmp_path / 'run'}", "train.epochs=3", "train.batch_size=2", "train.grad_accum=1",
        "train.lr=1e-2", "train.scheduler=none", "train.tensorboard=false", "train.log_every=1",
        f"embeddings.out_dir={tmp_path / 'emb'}", f"model.tokenizer_path={gpt2_tokenizer_dir}",
        "model.n_layer=2", "model.n_embd=32", "model.n_head=4", "model.conditioning.input_dim=0",
        "model.conditioning.hidden_dims=[32]", "model.conditioning.output_dim=24"])
    task = DecoderTask(cfg)
    assert len(task.train_dataset()) == 3 and len(task.valid_dataset()) == 1
    batch = task.collate([task.train_dataset()[k] for k in range(3)])
    assert batch["input_ids"][:, 0].tolist() == [50256] * 3
    assert batch["attention_mask"].sum(1).tolist() == [len(task.train_dataset().ids[k]) for k in range(3)]
    best = train(task)
    assert sorted(p.name for p in best.iterdir()) == ["config.json", "generation.json", "metrics.json",
                                                       "model.safetensors", "tokenizer"]
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    losses = [float(r.split(",")[-1]) for r in rows if ",train,loss," in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    loaded = ReportDecoder.from_pretrained(best)
    assert loaded.config.conditioning.input_dim == 16  # 0 in the config: taken from the embedding cache
    assert not any(p.requires_grad for p in loaded.gpt2.parameters())
    assert len(load_tokenizer(best / "tokenizer")) == 50257
    # "detected_and_present" with thresholds above every probability (0.5) leaves no training pair: a clear error.
    (tmp_path / "thr.json").write_text(str([0.9] * 18))
    strict = DecoderTask(load_config(DecoderTaskConfig, None, [f"embeddings.out_dir={tmp_path / 'emb'}",
                                                               f"thresholds={tmp_path / 'thr.json'}",
                                                               f"model.tokenizer_path={gpt2_tokenizer_dir}"]))
    with pytest.raises(ConfigError, match="no training pairs"):
        strict.train_dataset()


def test_validation_and_valid_name_the_same_split(tmp_path: Path, gpt2_tokenizer_dir: Path) -> None:
    from ctagrg.config import load_config
    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig

    _write_cache(tmp_path / "emb")

    def valid_names(spelling: str) -> list[str]:
        task = DecoderTask(load_config(DecoderTaskConfig, None, [
            f"embeddings.out_dir={tmp_path / 'emb'}", f"model.tokenizer_path={gpt2_tokenizer_dir}",
            f"valid_splits=[{spelling}]", "pairs=present"]))
        ds = task.valid_dataset()
        return [] if ds is None else [task.table().names[v] for v, _ in ds.pairs]

    assert valid_names("validation") == valid_names("valid") == ["valid_3_a_1"]
