"""Φ_T: the block-sparse first layer equals the paper's dense MLP on the zero-padded input; latent noise."""

from __future__ import annotations

import pytest
import torch

from ctagrg.config import ConfigError
from ctagrg.models.conditioning import BlockSparseConditioning, ConditioningConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(**kw) -> ConditioningConfig:
    return ConditioningConfig(num_labels=18, input_dim=8, hidden_dims=(16, 12), output_dim=10, **kw)


def test_equals_dense_mlp_on_block_sparse_input() -> None:
    torch.manual_seed(0)
    phi = BlockSparseConditioning(small()).eval()
    h = torch.randn(7, 8)
    label_index = torch.tensor([0, 17, 3, 3, 9, 0, 12])
    x = torch.zeros(7, 18 * 8)
    for row, label in enumerate(label_index.tolist()):
        x[row, label * 8 : (label + 1) * 8] = h[row]
    dense = phi.layers[2](torch.relu(phi.layers[1](torch.relu(phi.layers[0](x)))))
    got = phi(h, label_index)
    assert got.shape == (7, 10)
    assert torch.allclose(got, dense, atol=1e-6)
    assert torch.equal(phi.dense_input(h, label_index), x)


def test_paper_shapes_and_label_dependence() -> None:
    phi = BlockSparseConditioning(ConditioningConfig())
    assert [tuple(layer.weight.shape) for layer in phi.layers] == [(4096, 18432), (1024, 4096), (1024, 1024)]
    h = torch.randn(1, 1024)
    with torch.no_grad():
        assert not torch.allclose(phi(h, torch.tensor([0])), phi(h, torch.tensor([1])))


def test_gradients_reach_only_the_used_block() -> None:
    phi = BlockSparseConditioning(small())
    phi(torch.randn(2, 8), torch.tensor([4, 4])).sum().backward()
    grad = phi.layers[0].weight.grad.view(16, 18, 8)
    assert grad[:, 4].abs().sum() > 0
    assert grad[:, [i for i in range(18) if i != 4]].abs().sum() == 0


def test_latent_noise_only_in_training() -> None:
    torch.manual_seed(0)
    phi = BlockSparseConditioning(small(latent_noise_std=0.5))
    h, idx = torch.randn(4, 8), torch.arange(4)
    phi.eval()
    assert torch.equal(phi(h, idx), phi(h, idx))
    phi.train()
    a, b = phi(h, idx), phi(h, idx)
    assert (a - b).abs().max() > 1e-3
    # The noise is N(0, σ²) on hᵢ: with a single linear layer, the output's std over draws is σ·‖W row‖.
    linear = BlockSparseConditioning(ConditioningConfig(num_labels=18, input_dim=8, hidden_dims=(), output_dim=6,
                                                        latent_noise_std=0.5)).train()
    draws = linear(h[:1].expand(4000, 8), torch.zeros(4000, dtype=torch.long))
    expected = 0.5 * linear.layers[0].weight[:, 0:8].norm(dim=1)
    assert torch.allclose(draws.std(0), expected, rtol=0.08)


def test_latent_noise_relative_to_the_embedding_scale() -> None:
    """``rms``: σ in units of the batch's non-zero units' RMS, so the same σ gives the same relative noise on
    embeddings 100× larger, and zeros (ReLU, gating) do not shrink it."""
    h = torch.randn(64, 8)
    h[:, :4] = 0  # half the units off
    for scale in (1.0, 100.0):
        linear = BlockSparseConditioning(ConditioningConfig(num_labels=18, input_dim=8, hidden_dims=(), output_dim=6,
                                                            latent_noise_std=0.5, latent_noise_scale="rms")).train()
        x = h * scale
        rms = x[x != 0].pow(2).mean().sqrt()
        assert torch.allclose(torch.as_tensor(linear.noise_std(x)), 0.5 * rms)
        torch.manual_seed(0)
        noisy = linear(x, torch.zeros(64, dtype=torch.long))
        with torch.no_grad():
            linear.eval()
            clean = linear(x, torch.zeros(64, dtype=torch.long))
        torch.manual_seed(0)
        expected = (0.5 * rms * torch.randn_like(x)) @ linear.layers[0].weight[:, 0:8].T
        assert torch.allclose(noisy - clean, expected, atol=1e-4 * scale)
    with pytest.raises(ConfigError, match="latent_noise_scale: expected one of absolute, rms"):
        small(latent_noise_scale="relative")


def test_bad_inputs_raise_clear_errors() -> None:
    phi = BlockSparseConditioning(small())
    with pytest.raises(ValueError, match=r"expected h of shape \(N, 8\)"):
        phi(torch.randn(2, 9), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"label_index must lie in \[0, 18\)"):
        phi(torch.randn(1, 8), torch.tensor([18]))
    with pytest.raises(ConfigError, match="input_dim: must be set"):
        BlockSparseConditioning(ConditioningConfig(input_dim=0))
    with pytest.raises(ConfigError, match="latent_noise_std"):
        small(latent_noise_std=-1.0)
