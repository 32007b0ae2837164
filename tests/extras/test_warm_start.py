"""extras.heads_warm_start: step 1's heads start from the pretraining model's linear head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctagrg.cli.main import main as cli_main
from ctagrg.extras.warm_start import warm_start
from ctagrg.models.heads import AbnormalityHeads, HeadsConfig
from tests.test_training_visual import MODEL, write_cache


def test_warm_started_heads_give_the_linear_read_out_then_learn():
    torch.manual_seed(0)
    cfg = HeadsConfig(in_dim=20, embed_dim=6, classifier_hidden=5, dropout=0.3)
    heads = AbnormalityHeads(cfg)
    weight, bias = torch.randn(18, 20), torch.randn(18)
    warm_start(heads, weight, bias)
    h = torch.randn(7, 20)
    heads.eval()
    logits, emb = heads(h)
    torch.testing.assert_close(logits, h @ weight.T + bias, rtol=1e-5, atol=1e-5)
    assert emb.shape == (7, 18, 6)
    torch.testing.assert_close(emb[:, :, 0] - emb[:, :, 1], h @ weight.T + bias, rtol=1e-5, atol=1e-5)
    # the zeroed output weights of the other hidden units get gradients: training is not stuck on the copy
    heads.train()
    heads(h)[0].sum().backward()
    assert heads.fc2_weight.grad[:, 2:].abs().sum() > 0
    with pytest.raises(ValueError, match=r"expected weight \(18, 20\) and bias \(18,\), got \(18, 21\)"):
        warm_start(heads, torch.zeros(18, 21), torch.zeros(18))
    with pytest.raises(ValueError, match="warm start needs embed_dim and classifier_hidden >= 2, got 1, 5"):
        warm_start(AbnormalityHeads(HeadsConfig(in_dim=20, embed_dim=1, classifier_hidden=5)), weight, bias)


def test_classifier_heads_warm_started_from_the_pretraining_head(tmp_path):
    """extras.heads_warm_start: step 1 begins with the pretraining model's logits; a pretraining head with hidden
    layers, or no encoder_from, is refused with a message naming the problem."""
    from ctagrg.config import ConfigError, load_config
    from ctagrg.models.step1 import PretrainModel
    from ctagrg.training.visual_tasks import ClassifierTask, ClassifierTaskConfig

    rng = np.random.default_rng(4)
    train_csv = write_cache(tmp_path, 8, "train", rng)
    model = [m for m in MODEL if "pretrain_hidden" not in m]
    common = ["train.batch_size=4", "train.tensorboard=false", "train.epochs=1", f"data.cache_dir={tmp_path / 'cache'}",
              f"data.train_labels={train_csv}", *model]
    for name, hidden in (("linear", "[]"), ("mlp", "[8]")):
        assert cli_main(["train", "pretrain", "--set", f"train.out_dir={tmp_path / name}",
                         "--set", f"model.heads.pretrain_hidden={hidden}",
                         *sum((["--set", s] for s in common), [])]) == 0

    def classifier(pre: str, *extra: str):
        over = [*common, "extras.heads_warm_start={}", *([f"init.encoder_from={tmp_path / pre / 'best'}"] if pre
                                                            else []), *extra]
        return ClassifierTask(load_config(ClassifierTaskConfig, None, over)).build_model().eval()

    step1 = classifier("linear")
    pre = PretrainModel.from_pretrained(tmp_path / "linear" / "best")
    x = torch.randn(3, 1, 6, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(step1(x)["logits"], pre(x)["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match=r"mlp/best/model.safetensors has no linear pretraining head .* found "
                                          r"head.net.0.bias, head.net.0.weight, head.net.3.bias, head.net.3.weight\)"):
        classifier("mlp")
    with pytest.raises(ConfigError, match="extras.heads_warm_start: needs init.encoder_from"):
        classifier("")
