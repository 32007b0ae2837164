"""Batched sentence generation: one sentence per (volume, detected abnormality) pair, all pairs in one batch.

CT-AGRG runs one beam search per detected label. Here every pair of every volume goes through one
``GPT2LMHeadModel.generate()`` call (in chunks of ``batch_size`` pairs): all prompts have the same length (the
placeholder of the conditioning slot + ``<|endoftext|>``), so no padding is needed and each row's result equals
its one-at-a-time result (tests/test_generation.py; speed in BENCHMARKS.md "Batched generation").

Hugging Face's generation machinery does the search; we only hand it a prefilled key/value cache (see
``ctagrg.models.decoder``). Beam search needs that cache already expanded to batch × beams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ctagrg.config import ConfigError
from ctagrg.models.decoder import CACHE_KWARG, ReportDecoder

STRATEGIES = ("beam", "greedy", "sample")


@dataclass
class GenerationSettings:
    """Decoding settings. Paper: beam search, 4 beams, at most 60 tokens, length penalty 1."""

    strategy: str = "beam"  # beam | greedy | sample
    num_beams: int = 4
    max_new_tokens: int = 60
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # 0: off (paper: off)
    temperature: float = 1.0  # sample only
    top_k: int = 0  # sample only; 0: off
    top_p: float = 1.0  # sample only; 1: off
    seed: int = 0  # sample only: torch's global RNG is seeded with this before each call (reproducible output)
    batch_size: int = 64  # pairs per generate() call; memory grows with batch_size × num_beams × tokens

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"generation.strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.num_beams < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("generation: num_beams, max_new_tokens and batch_size must be >= 1")

    @property
    def beams(self) -> int:
        return self.num_beams if self.strategy == "beam" else 1

    def hf_config(self, eos_token_id: int, pad_token_id: int) -> Any:
        """The equivalent ``transformers.GenerationConfig``."""
        from transformers import GenerationConfig

        common = {"max_new_tokens": self.max_new_tokens, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
                  "no_repeat_ngram_size": self.no_repeat_ngram_size}
        if self.strategy == "beam":
            return GenerationConfig(num_beams=self.num_beams, do_sample=False, length_penalty=self.length_penalty,
                                    early_stopping=True, **common)
        if self.strategy == "greedy":
            return GenerationConfig(num_beams=1, do_sample=False, **common)
        return GenerationConfig(num_beams=1, do_sample=True, temperature=self.temperature, top_k=self.top_k or None,
                                top_p=self.top_p, **common)


@torch.no_grad()
def generate_token_ids(decoder: ReportDecoder, embeddings: torch.Tensor, label_index: torch.Tensor,
                       settings: GenerationSettings) -> list[list[int]]:
    """Generated token ids (without BOS/EOS/padding) for each pair.

    Args:
        decoder: the report decoder (its device is used).
        embeddings: (N, input_dim) float, hᵢ of each pair.
        label_index: (N,) long, label i of each pair (CT-RATE order).
        settings: decoding settings.
    """
    if embeddings.shape[0] != label_index.shape[0]:
        raise ValueError(f"generate: {embeddings.shape[0]} embeddings but {label_index.shape[0]} label indices")
    was_training = decoder.training
    decoder.eval()
    device = next(decoder.parameters()).device
    dtype = next(decoder.conditioning.parameters()).dtype
    cfg = decoder.config
    hf_config = settings.hf_config(cfg.eos_token_id, cfg.pad_token_id)
    results: list[list[int]] = []
    try:
        for start in range(0, embeddings.shape[0], settings.batch_size):
            h = embeddings[start : start + settings.batch_size].to(device=device, dtype=dtype)
            idx = label_index[start : start + settings.batch_size].to(device)
            results.extend(_generate_chunk(decoder, h, idx, settings, hf_config))
    finally:
        decoder.train(was_training)
    return results


def _generate_chunk(decoder: ReportDecoder, h: torch.Tensor, idx: torch.Tensor, settings: GenerationSettings,
                    hf_config: Any) -> list[list[int]]:
    cfg = decoder.config
    n = h.shape[0]
    cache = decoder.prefix_cache(decoder.condition(h, idx), repeat=settings.beams)
    # Column 0 is a placeholder for the cached slot: generate() skips it because the cache already holds it.
    input_ids = torch.tensor([[cfg.pad_token_id, cfg.bos_token_id]], device=h.device).expand(n, 2).contiguous()
    if settings.strategy == "sample":
        torch.manual_seed(settings.seed)
    out = decoder.gpt2.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                generation_config=hf_config, **{CACHE_KWARG: cache})
    special = {cfg.eos_token_id, cfg.pad_token_id, cfg.bos_token_id}
    results = []
    for row in out[:, 2:].tolist():
        tokens = []
        for tok in row:
            if tok in special:
                break
            tokens.append(tok)
        results.append(tokens)
    return results


def generate_sentences(decoder: ReportDecoder, tokenizer: Any, embeddings: torch.Tensor, label_index: torch.Tensor,
                       settings: GenerationSettings | None = None) -> list[str]:
    """One decoded, whitespace-trimmed sentence per pair; see ``generate_token_ids`` for the arguments."""
    ids = generate_token_ids(decoder, embeddings, label_index, settings or GenerationSettings())
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
