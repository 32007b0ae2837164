"""GPT-2 with pseudo self-attention: writes one sentence about one abnormality from its embedding hᵢ.

Pseudo self-attention (Ziegler et al. 2019, used by RGRG and CT-AGRG): every layer ℓ gets two new projections
``uk[ℓ]``, ``uv[ℓ]`` (conditioning → hidden) that turn eᵢ = Φ_T(hᵢ) into one extra key and one extra value. Text
queries attend to that slot in front of the text keys/values, and every text position may see it.

How: that extra slot is exactly a one-token *prefix* in GPT-2's key/value cache. We prefill a ``DynamicCache`` with
the per-layer (k, v) and let Hugging Face's unmodified GPT-2 do the rest, for training and for ``generate()`` alike
(no fork of its attention code). Conventions that follow from it, identical in training and inference:

- the cached slot counts as position 0, so text positions are 1, 2, ... (GPT-2 derives them from the cache length);
- the attention mask has one leading 1 for the slot: (N, 1 + T);
- for ``generate()`` the input ids carry one placeholder token for the slot (never embedded: it is already cached),
  and for beam search the cache is repeated per beam (see ``ctagrg.generation.generate``).

Positions come from GPT-2's own position table ``wpe``. RGRG and the CT-AGRG code looked positions up in the token
table ``wte`` (a bug: position p got the embedding of token id p); we do not copy that.

Checkpoint: ``config.json`` (this DecoderConfig + the GPT-2 config) and ``model.safetensors`` (all weights, so a
saved decoder needs no GPT-2 download or path to load).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from ctagrg.config import ConfigError, from_dict, to_dict
from ctagrg.models.conditioning import BlockSparseConditioning, ConditioningConfig
from ctagrg.utils.atomic import atomic_path, write_json_atomic

GPT2_EOS = 50256  # GPT-2's <|endoftext|>; CT-AGRG uses it as BOS, EOS and PAD

# transformers 5.x renamed the cache argument of forward()/generate() from past_key_values to cache.
CACHE_KWARG = "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"


@dataclass
class DecoderConfig:
    """The report decoder. With ``gpt2_path`` set, GPT-2 is loaded from that local HF checkpoint folder (paper:
    healx/gpt-2-pubmed-medium, 24 layers, hidden 1024); otherwise a random GPT-2 is built from ``n_layer``,
    ``n_embd``, ``n_head`` (tiny models for tests and the demo)."""

    gpt2_path: str = ""
    tokenizer_path: str = ""  # folder with tokenizer.json or vocab.json + merges.txt; empty: gpt2_path
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_positions: int = 128
    vocab_size: int = 50257
    freeze_gpt2: bool = True  # paper: every original GPT-2 weight frozen; only Φ_T, uk and uv train
    bos_token_id: int = GPT2_EOS
    eos_token_id: int = GPT2_EOS
    pad_token_id: int = GPT2_EOS
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)

    def __post_init__(self) -> None:
        if not self.gpt2_path and self.n_embd % self.n_head:
            raise ConfigError(f"decoder: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


# What a local GPT-2 folder may hold its weights in; healx/gpt-2-pubmed-medium ships a 2020 pytorch_model.bin only
# (torch's pre-1.6 serialisation, "transformer." keys, attn.bias/masked_bias buffers).
GPT2_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")


def _build_gpt2(config: DecoderConfig) -> GPT2LMHeadModel:
    if config.gpt2_path:
        return load_gpt2_folder(config.gpt2_path)
    gpt2_config = GPT2Config(n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head,
                             n_positions=config.n_positions, vocab_size=config.vocab_size,
                             bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)
    return GPT2LMHeadModel(gpt2_config)


def load_gpt2_folder(path: str | Path) -> GPT2LMHeadModel:
    """GPT-2 from a local Hugging Face folder: ``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``.

    A ``.bin`` is read with ``weights_only=True``: torch's restricted unpickler, which accepts tensors and plain
    containers only, so the file cannot run code. Any failure is one ``ConfigError`` naming the folder.
    """
    import pickle

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: not a Hugging Face GPT-2 checkpoint folder (no config.json)")
    if not any((path / name).is_file() for name in GPT2_WEIGHT_FILES):
        raise ConfigError(f"{path}: no GPT-2 weights (expected one of {', '.join(GPT2_WEIGHT_FILES)})")
    try:
        return GPT2LMHeadModel.from_pretrained(path, weights_only=True)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"{path}: cannot load GPT-2 from this folder ({type(exc).__name__}: {first})") from None


class ReportDecoder(nn.Module):
    """Φ_T + per-layer prefix projections + GPT-2.

    Args:
        config: the decoder config.
        gpt2: an already built GPT-2 (used by ``from_pretrained``); default: built from ``config``.
    """

    def __init__(self, config: DecoderConfig, gpt2: GPT2LMHeadModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.gpt2 = gpt2 if gpt2 is not None else _build_gpt2(config)
        g = self.gpt2.config
        self.num_heads = g.n_head
        self.head_dim = g.n_embd // g.n_head
        self.conditioning = BlockSparseConditioning(config.conditioning)
        cond = config.conditioning.output_dim
        self.uk = nn.ModuleList(nn.Linear(cond, g.n_embd) for _ in range(g.n_layer))
        self.uv = nn.ModuleList(nn.Linear(cond, g.n_embd) for _ in range(g.n_layer))
        self.set_gpt2_trainable(not config.freeze_gpt2)

    def set_gpt2_trainable(self, trainable: bool) -> None:
        """Freeze (paper) or unfreeze GPT-2's own weights; Φ_T, uk and uv always train."""
        for p in self.gpt2.parameters():
            p.requires_grad_(trainable)

    def condition(self, embeddings: torch.Tensor, label_index: torch.Tensor) -> torch.Tensor:
        """embeddings: (N, input_dim) hᵢ; label_index: (N,) → eᵢ: (N, output_dim)."""
        return self.conditioning(embeddings, label_index)

    def prefix_key_values(self, e: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """eᵢ: (N, output_dim) → per layer (key, value), each (N, num_heads, 1, head_dim)."""
        shape = (e.shape[0], self.num_heads, 1, self.head_dim)
        return [(k(e).view(shape), v(e).view(shape)) for k, v in zip(self.uk, self.uv, strict=True)]

    def prefix_cache(self, e: torch.Tensor, repeat: int = 1) -> DynamicCache:
        """A ``DynamicCache`` holding the pseudo self-attention slot; each row repeated ``repeat`` times (beams)."""
        kv = self.prefix_key_values(e)
        if repeat > 1:
            kv = [(k.repeat_interleave(repeat, 0), v.repeat_interleave(repeat, 0)) for k, v in kv]
        return DynamicCache(kv)  # GPT-2 takes a Cache object from transformers 4.52 on (pyproject.toml)

    def forward(self, embeddings: torch.Tensor, label_index: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Teacher-forced pass.

        Args:
            embeddings: (N, input_dim) float, hᵢ of each (volume, label) pair.
            label_index: (N,) long, i of each pair (CT-RATE label order).
            input_ids: (N, T) long, ``<|endoftext|> sentence <|endoftext|>``, right-padded.
            attention_mask: (N, T) 0/1 over the text tokens (1 = real); default all ones.

        Returns:
            ``logits`` (N, T, vocab) and ``loss``: next-token cross-entropy averaged over real target tokens only
            (padding excluded, unlike RGRG/CT-AGRG whose mean included padded positions).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        cache = self.prefix_cache(self.condition(embeddings, label_index))
        slot = attention_mask.new_ones(attention_mask.shape[0], 1)
        out = self.gpt2(input_ids=input_ids, attention_mask=torch.cat([slot, attention_mask], dim=1),
                        use_cache=False, **{CACHE_KWARG: cache})
        logits = out.logits
        return {"logits": logits, "loss": next_token_loss(logits, input_ids, attention_mask)}

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` (decoder + GPT-2 config) and ``model.safetensors`` (all weights) atomically."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "model.safetensors") as tmp:
            save_model(self, str(tmp))  # handles GPT-2's tied wte/lm_head
        write_json_atomic(directory / "config.json", {"decoder": to_dict(self.config),
                                                      "gpt2": self.gpt2.config.to_dict()})

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> ReportDecoder:
        """Load a folder written by ``save_pretrained`` (needs no access to the original GPT-2 path)."""
        from safetensors.torch import load_model

        directory = Path(directory)
        data = _read_config(directory)
        config = from_dict(DecoderConfig, data["decoder"], where=str(directory / "config.json"))
        gpt2 = GPT2LMHeadModel(GPT2Config.from_dict(data["gpt2"]))
        model = cls(config, gpt2=gpt2)
        load_model(model, str(directory / "model.safetensors"), device=str(map_location))
        return model


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file() or not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"{directory}: not a decoder checkpoint (expected config.json and model.safetensors)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "decoder" not in data or "gpt2" not in data:
        raise ConfigError(f"{path}: expected keys 'decoder' and 'gpt2' (a ReportDecoder checkpoint)")
    return data


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from position t, over real target tokens only.

    logits: (N, T, V); input_ids, attention_mask: (N, T). BOS = EOS = PAD share one id, so the mask (not the id)
    says which targets are real.
    """
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def load_tokenizer(path: str | Path) -> Any:
    """A GPT-2 fast tokenizer from a local folder (HF checkpoint with tokenizer files, or vocab.json + merges.txt).

    pad = eos = ``<|endoftext|>`` as in CT-AGRG.
    """
    from transformers import GPT2TokenizerFast

    path = Path(path)
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        tok = GPT2TokenizerFast.from_pretrained(path)
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        # Positional on purpose: transformers 5.x ignores the vocab_file=/merges_file= keywords here.
        tok = GPT2TokenizerFast(str(path / "vocab.json"), str(path / "merges.txt"))
    else:
        raise FileNotFoundError(f"{path}: no GPT-2 tokenizer (expected tokenizer.json or vocab.json + merges.txt)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
