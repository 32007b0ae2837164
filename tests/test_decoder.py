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
        f"train.out_dir={tmp_path / 'run'}", "train.epochs=3", "train.batch_size=2", "train.global_batch_size=2",
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
    with pytest.raises(ConfigError, match=r"no training pairs .* train on every present abnormality with "
                                          r"--set pairs=present\.$"):
        strict.train_dataset()


def test_validation_and_valid_name_the_same_split(tmp_path: Path, gpt2_tokenizer_dir: Path) -> None:
    from ctagrg.config import load_config
    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig

    _write_cache(tmp_path / "emb")

    def valid_names(spelling: str) -> list[str]:
        task = DecoderTask(load_config(DecoderTaskConfig, None, [
            f"embeddings.out_dir={tmp_path / 'emb'}", f"model.tokenizer_path={gpt2_tokenizer_dir}",
            f"split.valid=[{spelling}]", "pairs=present"]))
        ds = task.valid_dataset()
        return [] if ds is None else [task.table().names[v] for v, _ in ds.pairs]

    assert valid_names("validation") == valid_names("valid") == ["valid_3_a_1"]


# -- a GPT-2 folder as healx/gpt-2-pubmed-medium ships it --------------------------------------------------------
def write_healx_style_gpt2(folder: Path, tokenizer_dir: Path) -> dict[str, torch.Tensor]:
    """A tiny random GPT-2 laid out as healx/gpt-2-pubmed-medium is: config.json, pytorch_model.bin, vocab.json,
    merges.txt, tokenizer_config.json, special_tokens_map.json, no safetensors. The .bin is written as the
    transformers of 2020 wrote it: torch's pre-1.6 serialisation, ``transformer.`` + ``lm_head`` keys, and the
    attention-mask buffers ``attn.bias`` / ``attn.masked_bias`` that today's GPT-2 no longer stores.
    Returns the state dict of the model the file holds (today's keys)."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(3)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=50257))
    state = {k: v.clone() for k, v in gpt2.state_dict().items()}
    old = dict(state)
    for i in range(2):
        old[f"transformer.h.{i}.attn.bias"] = torch.ones(64, 64).tril().view(1, 1, 64, 64)
        old[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    folder.mkdir(parents=True)
    torch.save(old, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    gpt2.config.to_json_file(folder / "config.json")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer_dir / name, folder / name)
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 1024}')
    (folder / "special_tokens_map.json").write_text(
        '{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}')
    return state


def test_healx_style_folder_loads_every_tensor(tmp_path: Path, gpt2_tokenizer_dir: Path) -> None:
    state = write_healx_style_gpt2(tmp_path / "gpt2", gpt2_tokenizer_dir)
    assert not list((tmp_path / "gpt2").glob("*.safetensors"))
    model = ReportDecoder(tiny_config(gpt2_path=str(tmp_path / "gpt2")))
    loaded = model.gpt2.state_dict()
    assert sorted(loaded) == sorted(state)
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key
    assert model.gpt2.lm_head.weight.data_ptr() == model.gpt2.transformer.wte.weight.data_ptr()
    tok = load_tokenizer(tmp_path / "gpt2")
    assert len(tok) == 50257 and tok.eos_token_id == tok.pad_token_id == 50256


def test_gpt2_folder_errors_name_the_folder(tmp_path: Path) -> None:
    import argparse

    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    folder.mkdir()
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=50))
    gpt2.config.to_json_file(folder / "config.json")
    with pytest.raises(ConfigError, match=f"^{folder}: no GPT-2 weights \\(expected one of model.safetensors, .*"
                                          "pytorch_model.bin"):
        ReportDecoder(tiny_config(gpt2_path=str(folder)))
    # weights_only=True: a pickle that holds anything but tensors and plain containers is refused, not run
    torch.save({**gpt2.state_dict(), "note": argparse.Namespace(run="code")}, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=f"^{folder}: cannot load GPT-2 from this folder") as err:
        ReportDecoder(tiny_config(gpt2_path=str(folder)))
    assert "\n" not in str(err.value)


def test_healx_style_folder_trains_packages_and_reports(tmp_path: Path, gpt2_tokenizer_dir: Path) -> None:
    """Step 2 on a GPT-2 folder with a pytorch_model.bin and its own tokenizer files, then the packaged model
    reports without that folder."""
    import json
    import shutil

    from ctagrg.config import load_config
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import Reporter, ReporterConfig
    from ctagrg.models.ctnet import CTNetConfig
    from ctagrg.models.heads import HeadsConfig
    from ctagrg.models.resnet import ResNetConfig
    from ctagrg.models.step1 import Step1Model, VisualModelConfig
    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig
    from ctagrg.training.loop import train

    state = write_healx_style_gpt2(tmp_path / "gpt2", gpt2_tokenizer_dir)
    _write_cache(tmp_path / "emb")
    cfg = load_config(DecoderTaskConfig, None, [
        f"train.out_dir={tmp_path / 'run'}", "train.epochs=2", "train.batch_size=3", "train.global_batch_size=3",
        "train.lr=1e-2", "train.scheduler=none", "train.tensorboard=false", "train.log_every=1",
        f"embeddings.out_dir={tmp_path / 'emb'}", f"model.gpt2_path={tmp_path / 'gpt2'}", "model.tokenizer_path=",
        "model.conditioning.input_dim=0", "model.conditioning.hidden_dims=[32]", "model.conditioning.output_dim=24"])
    best = train(DecoderTask(cfg))
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    losses = [float(r.split(",")[-1]) for r in rows if ",train,loss," in r]
    assert len(losses) == 2 and losses[-1] < losses[0]
    decoder = ReportDecoder.from_pretrained(best)
    for key, tensor in state.items():  # GPT-2 frozen (the paper): its weights leave training unchanged
        assert torch.equal(decoder.gpt2.state_dict()[key], tensor), key

    torch.manual_seed(0)
    shape = (12, 32, 32)
    ctnet = CTNetConfig(input_shape=shape, trunk=ResNetConfig(width=4, layers=(1, 1, 1, 1)),
                        reducer_channels=(4, 4, 4), reducer_kernels=((3, 1, 1), (3, 1, 1), (1, 1, 1)),
                        reducer_strides=((3, 1, 1), (3, 1, 1), (1, 1, 1)), embed_dim=32)
    visual = Step1Model(VisualModelConfig(ctnet=ctnet, heads=HeadsConfig(in_dim=32, embed_dim=16,
                                                                         classifier_hidden=8)))
    visual.save_pretrained(tmp_path / "step1")
    (tmp_path / "step1" / "thresholds.json").write_text(json.dumps([0.0] * 18))  # every label detected
    (tmp_path / "pre.json").write_text(json.dumps({"spacing": [8.0, 4.0, 4.0], "shape": list(shape)}))
    built = Reporter.from_training_outputs(tmp_path / "step1", best, preprocess=tmp_path / "pre.json",
                                           config=ReporterConfig(generation=GenerationSettings(max_new_tokens=6)))
    built.save_pretrained(tmp_path / "model")
    shutil.rmtree(tmp_path / "gpt2")  # the package carries every weight and the tokenizer
    packaged = Reporter.from_pretrained(tmp_path / "model")
    assert not list((tmp_path / "model").rglob("*.bin"))
    volume = torch.randn(*shape).numpy()
    report = packaged.report(volume)
    assert len(report.detected) == 18 and all(a.sentence for a in report.abnormalities.values())
    assert report.to_dict() == built.report(volume).to_dict()
