"""CT-ViT (3D), CT-CLIP's image encoder: tubelet patches, factorised spatial then temporal (depth) attention.

Re-implemented (CT-CLIP depends on einops/vector-quantize/torchvision and its code hard-codes ``cuda``) with
CT-CLIP's arithmetic kept exactly, so its checkpoint loads by key mapping (``ctagrg.models.weights``) and computes
the same tokens:

- patch embedding: LayerNorm -> Linear -> LayerNorm on (pt·p·p) voxels; tokens (B, t, h, w, dim);
- every block: depth-wise Conv3d position generator ("PEG", causally padded along depth), cosine-similarity
  attention (l2-normalised q/k, learned per-dim scales, temperature 8; queries from the LayerNorm'd tokens, keys
  and values from the un-normalised ones), GEGLU feed-forward; bias-free LayerNorms;
- spatial blocks get a continuous relative position bias (an MLP over log-distances between the h×w patches);
- CT-CLIP quirk kept for weight compatibility: the temporal blocks' PEG reinterprets the (B·h·w, t) token layout
  as (B, t, h, w) without transposing, mixing positions; fixing it would change what loaded weights compute.
- CT-CLIP vector-quantises the tokens (a VQ-VAE codebook) before its projection; we use the continuous tokens.

``tests/test_ctvit.py`` compares ``forward_tokens`` with tokens written by CT-CLIP's own code; docs/training.md
("CT-ViT and CT-CLIP") has the paper-size figure and every remaining difference.

Pooling to 2048 (not published for CT-AGRG): tokens are averaged over depth as CT-CLIP does, then adaptively
average-pooled to a ``pool_grid`` (4×4 by default) so left/right and anterior/posterior stay distinguishable,
flattened (16·512 = 8192) and projected by Linear -> ReLU -> dropout, like CT-Net's head. CT-CLIP's own flatten of
all 24·24 positions would need a 294,912 × 2048 matrix (604M parameters). ``pool_grid=(1, 1)`` is a plain mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class CTViTConfig:
    """CT-ViT encoder; defaults are CT-CLIP's (tokens (B, 24, 24, 24, 512) for a (240, 480, 480) input)."""

    input_shape: tuple[int, int, int] = (240, 480, 480)
    dim: int = 512
    patch_size: int = 20  # in-plane (H, W)
    temporal_patch_size: int = 10  # along depth D
    spatial_depth: int = 4
    temporal_depth: int = 4
    heads: int = 8
    dim_head: int = 32
    ff_mult: float = 4.0
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    pool_grid: tuple[int, int] = (4, 4)
    embed_dim: int = 2048
    dropout: float = 0.5

    def token_grid(self) -> tuple[int, int, int]:
        d, h, w = self.input_shape
        if d % self.temporal_patch_size or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"CTViTConfig: input_shape {tuple(self.input_shape)} must be divisible by "
                             f"({self.temporal_patch_size}, {self.patch_size}, {self.patch_size})")
        return d // self.temporal_patch_size, h // self.patch_size, w // self.patch_size


class PatchEmbed(nn.Module):
    def __init__(self, cfg: CTViTConfig) -> None:
        super().__init__()
        self.p, self.pt = cfg.patch_size, cfg.temporal_patch_size
        n = self.pt * self.p * self.p
        self.norm_in, self.proj, self.norm_out = nn.LayerNorm(n), nn.Linear(n, cfg.dim), nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, t, h, w, dim), voxels of a tubelet ordered (pt, p1, p2) like CT-CLIP."""
        b, c, d, h, w = x.shape
        p, pt = self.p, self.pt
        x = x.reshape(b, c, d // pt, pt, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        x = x.reshape(b, d // pt, h // p, w // p, c * pt * p * p)
        return self.norm_out(self.proj(self.norm_in(x)))


class ContinuousPositionBias(nn.Module):
    """(h·w, h·w) attention bias per head from an MLP over signed log-distances of patch positions (SwinV2)."""

    def __init__(self, dim: int, heads: int, layers: int = 2) -> None:
        super().__init__()
        sizes = [2] + [dim] * layers
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.out = nn.Linear(dim, heads)

    def forward(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        grid = torch.stack(torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                                          indexing="ij")).flatten(1).T  # (h*w, 2)
        rel = (grid[:, None] - grid[None]).float()
        x = torch.sign(rel) * torch.log1p(rel.abs())
        for layer in self.mlp:
            x = F.leaky_relu(layer(x), 0.1)
        return self.out(x).permute(2, 0, 1)  # (heads, h*w, h*w)


class Attention(nn.Module):
    def __init__(self, cfg: CTViTConfig) -> None:
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads = cfg.heads
        self.norm = nn.LayerNorm(cfg.dim, bias=False)
        self.to_q = nn.Linear(cfg.dim, inner, bias=False)
        self.to_kv = nn.Linear(cfg.dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(cfg.dim_head))
        self.k_scale = nn.Parameter(torch.ones(cfg.dim_head))
        self.to_out = nn.Linear(inner, cfg.dim, bias=False)
        self.dropout = cfg.attn_dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        # CT-CLIP normalises the queries' input only: keys and values see the un-normalised tokens
        q, k, v = (self.to_q(self.norm(x)), *self.to_kv(x).chunk(2, dim=-1))
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        # cosine attention with CT-CLIP's fixed temperature 8 (SDPA's default scale would be 1/sqrt(dim_head))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training
                                             else 0.0, scale=8.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: CTViTConfig) -> None:
        super().__init__()
        inner = int(cfg.ff_mult * (2 / 3) * cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)
        self.proj_in = nn.Linear(cfg.dim, inner * 2, bias=False)
        self.dropout = nn.Dropout(cfg.ff_dropout)
        self.proj_out = nn.Linear(inner, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(self.dropout(F.gelu(gate) * x))


class Block(nn.Module):
    def __init__(self, cfg: CTViTConfig) -> None:
        super().__init__()
        self.peg = nn.Conv3d(cfg.dim, cfg.dim, 3, groups=cfg.dim)
        self.attn = Attention(cfg)
        self.ff = FeedForward(cfg)

    def _peg(self, x: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        y = x.reshape(*grid, -1).permute(0, 4, 1, 2, 3)  # CT-CLIP's reshape, see the module docstring
        y = self.peg(F.pad(y, (1, 1, 1, 1, 2, 0)))  # causal along depth
        return y.permute(0, 2, 3, 4, 1).reshape(x.shape)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int, int], bias: torch.Tensor | None) -> torch.Tensor:
        x = self._peg(x, grid) + x
        x = self.attn(x, bias) + x
        return self.ff(x) + x


class FactorTransformer(nn.Module):
    def __init__(self, cfg: CTViTConfig, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.norm_out = nn.LayerNorm(cfg.dim, bias=False)
        self.checkpointing = False

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int, int], bias: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, grid, bias, use_reentrant=False)
            else:
                x = block(x, grid, bias)
        return self.norm_out(x)


class CTViTEncoder(nn.Module):
    """(B, 1, D, H, W) float32 preprocessed CT (SLP) -> (B, embed_dim); ``forward_tokens`` gives (B, t, h, w, dim)."""

    def __init__(self, config: CTViTConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or CTViTConfig()
        self.grid = cfg.token_grid()
        self.patch_embed = PatchEmbed(cfg)
        self.pos_bias = ContinuousPositionBias(cfg.dim, cfg.heads)
        self.spatial = FactorTransformer(cfg, cfg.spatial_depth)
        self.temporal = FactorTransformer(cfg, cfg.temporal_depth)
        # the tokens as a 3-D map (B, dim, t, h, w) spanning the input (SLP), hooked by saliency
        # (ctagrg.generation.saliency)
        self.feature_map = nn.Identity()
        gh, gw = cfg.pool_grid
        self.fc = nn.Linear(gh * gw * cfg.dim, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def gradient_checkpointing_enable(self) -> None:
        self.spatial.checkpointing = self.temporal.checkpointing = True

    def forward_tokens(self, volume: torch.Tensor) -> torch.Tensor:
        if tuple(volume.shape[1:]) != (1, *self.config.input_shape):
            raise ValueError(f"CTViTEncoder: expected (B, 1, {', '.join(map(str, self.config.input_shape))}), "
                             f"got {tuple(volume.shape)}")
        x = self.patch_embed(volume)
        b, t, h, w, d = x.shape
        grid = (b, t, h, w)
        bias = self.pos_bias(h, w, x.device).to(x.dtype)
        x = self.spatial(x.reshape(b * t, h * w, d), grid, bias)
        x = x.view(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        x = self.temporal(x, grid, None)
        return x.view(b, h, w, t, d).permute(0, 3, 1, 2, 4)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, t, h, w, dim) -> (B, gh * gw * dim): mean over depth, adaptive average over the in-plane grid."""
        x = tokens.mean(dim=1).permute(0, 3, 1, 2)
        return F.adaptive_avg_pool2d(x, self.config.pool_grid).flatten(1)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        tokens = self.feature_map(self.forward_tokens(volume).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        return self.dropout(torch.relu(self.fc(self.pool(tokens))))

