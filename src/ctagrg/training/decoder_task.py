"""The ``decoder`` training stage (step 2): GPT-2 with pseudo self-attention, trained from the embedding cache.

``ctagrg train decoder --config configs/ctrate/decoder.yaml``. The frozen step-1 model's outputs come from the
embedding cache (ctagrg.training.embedding_cache), built on first use when ``embeddings.step1_dir`` is set. Each
training example is one (volume, abnormality) pair: hᵢ, the label index i and the target sentence.

Pairs (``pairs``): ``detected_and_present`` (the paper: the step-1 probability reaches the label's threshold and
the label is present) or ``present`` (every present label). ``split`` chooses the cache's training and validation
volumes by split name (the CT-RATE name prefix, ``train_12_a_1`` → ``train``), patient-level carve or name list
(:mod:`ctagrg.training.splits`); the names are written to ``out_dir/splits/``.

Targets (``target``): ``<|endoftext|> sentence <|endoftext|>``, at most ``max_tokens`` sentence tokens. CT-AGRG
lowercases and strips punctuation. We keep the text as written by default, because the reports are read by people
and the grounding metrics read sides and sizes ("4.5 mm") back from the generated text; ``lowercase`` and
``strip_punctuation`` reproduce the paper, and even then digits and decimal points inside numbers are kept.

Training extensions (``extras``, not in the published method; :mod:`ctagrg.training.extensions`) may wrap the
training pairs, the collate function and each training batch (the demo's mirrored pairs, ``ctagrg.extras.mirror``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from ctagrg.config import ConfigError, to_dict
from ctagrg.generation.generate import GenerationSettings
from ctagrg.models.decoder import DecoderConfig, ReportDecoder, load_tokenizer
from ctagrg.text.extract import SENTENCE_RULES
from ctagrg.training.config import TrainConfig
from ctagrg.training.embedding_cache import (
    EmbeddingCacheConfig,
    EmbeddingTable,
    build_from_config,
    load_embedding_cache,
    read_thresholds,
)
from ctagrg.training.extensions import Extension, build_extensions
from ctagrg.training.splits import Selection, SplitConfig, resolve, write_record
from ctagrg.training.task import Task
from ctagrg.utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)


@dataclass
class TargetConfig:
    """How report sentences become decoder targets."""

    lowercase: bool = False  # paper: True
    strip_punctuation: bool = False  # paper: True (we still keep digits and decimal points such as "4.5")
    max_tokens: int = 60  # sentence tokens, before the closing <|endoftext|>


def paper_train_config() -> TrainConfig:
    """CT-AGRG step 2: AdamW lr 5e-5, wd 0.01, batch 64 (micro-batches of 8), 100 epochs, StepLR(50, 0.1), clip 0.1."""
    return TrainConfig(out_dir="runs/decoder", optimizer="adamw", lr=5e-5, weight_decay=0.01, global_batch_size=64,
                       batch_size=8, epochs=100, scheduler="step", step_size_epochs=50, gamma=0.1,
                       grad_clip_value=0.1)


@dataclass
class DecoderTaskConfig:
    """Everything ``ctagrg train decoder`` reads."""

    train: TrainConfig = field(default_factory=paper_train_config)
    model: DecoderConfig = field(default_factory=DecoderConfig)
    embeddings: EmbeddingCacheConfig = field(default_factory=EmbeddingCacheConfig)
    pairs: str = "detected_and_present"  # | present
    thresholds: str = ""  # thresholds.json overriding those recorded in the cache
    # the cache's volumes to train and select on (ctagrg.training.splits); empty train: every volume, empty
    # valid: no validation
    split: SplitConfig = field(default_factory=lambda: SplitConfig(train=("train",), valid=("valid",)))
    target: TargetConfig = field(default_factory=TargetConfig)
    generation: GenerationSettings = field(default_factory=GenerationSettings)  # saved for the packaged model
    # training extensions (not in the published method) by name, with their options: ctagrg.training.extensions
    extras: dict[str, Any] = field(default_factory=dict)

    REMOVED_KEYS: ClassVar[dict[str, str]] = {"mirror": "moved to extras.mirror (docs/demo-encoder.md)"}

    def __post_init__(self) -> None:
        if self.pairs not in ("detected_and_present", "present"):
            raise ConfigError(f"pairs: expected 'detected_and_present' or 'present', got {self.pairs!r}")
        if self.target.max_tokens < 1:
            raise ConfigError(f"target.max_tokens: expected >= 1, got {self.target.max_tokens}")
        if self.embeddings.sentence not in SENTENCE_RULES:
            raise ConfigError(f"embeddings.sentence: expected one of {', '.join(SENTENCE_RULES)}, got "
                              f"{self.embeddings.sentence!r}")


def check_target_source(emb: EmbeddingCacheConfig) -> None:
    """Refuse a cache whose target sentences were taken from the reports otherwise than ``emb`` asks (other report
    columns or sentence rule): its targets are fixed when it is built. A cache built from a sentences CSV, or one
    without a readable index (load_embedding_cache says why), is not checked."""
    index = Path(emb.out_dir) / "index.json"
    try:
        source = json.loads(index.read_text(encoding="utf-8")).get("source") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return
    if not emb.reports_csv or not source.get("reports_csv"):
        return
    defaults = EmbeddingCacheConfig()  # a cache from before these settings were recorded used the defaults
    built = (list(source.get("text_columns", defaults.text_columns)), source.get("sentence", defaults.sentence))
    if built != (list(emb.text_columns), emb.sentence):
        raise ConfigError(f"{index}: its targets were taken from {built[0]} with sentence rule {built[1]!r}, the "
                          f"config asks for {list(emb.text_columns)} and {emb.sentence!r}; rebuild the cache (remove "
                          f"{emb.out_dir}) or set embeddings.text_columns / embeddings.sentence to match")


_PUNCT = re.compile(r"(?<!\d)\.|\.(?!\d)|[^\w\s.\-]")  # a dot between two digits is a decimal point: keep it


def prepare_target(sentence: str, cfg: TargetConfig) -> str:
    """'Nodule of 4.5 mm, left lobe.' → (paper options) 'nodule of 4.5 mm left lobe'."""
    text = sentence
    if cfg.strip_punctuation:
        text = _PUNCT.sub(" ", text)
    if cfg.lowercase:
        text = text.lower()
    return re.sub(r"\s+", " ", text).strip()


class PairDataset(Dataset):
    """(volume, abnormality) pairs: items {"embedding": (D,) float32, "label_index": int, "input_ids": (T,) long,
    "name": str}, input_ids = BOS + sentence tokens (≤ max_tokens) + EOS."""

    def __init__(self, table: EmbeddingTable, pairs: list[tuple[int, int, str]], tokenizer: Any,
                 cfg: TargetConfig, bos: int, eos: int) -> None:
        self.table = table
        self.pairs = [(v, i) for v, i, _ in pairs]
        self.texts = [prepare_target(s, cfg) for _, _, s in pairs]
        self.tokenizer, self.cfg, self.bos, self.eos = tokenizer, cfg, bos, eos
        self.ids = self.encode(self.texts)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """BOS + each text's tokens (at most ``max_tokens``) + EOS."""
        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [[self.bos, *ids[: self.cfg.max_tokens], self.eos] for ids in rows]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict[str, Any]:
        v, i = self.pairs[k]
        return {"embedding": self.table.embeddings[v, i].float(), "label_index": i,
                "input_ids": torch.tensor(self.ids[k]), "name": self.table.names[v]}


def embedding_rms(ds: PairDataset, limit: int = 10_000) -> float:
    """Root mean square of the non-zero units of (up to ``limit``, evenly spaced) training pairs' embeddings: the
    scale the latent noise σ is added to (ReLU and gating leave many units at exactly 0)."""
    step = max(1, len(ds.pairs) // limit)
    h = torch.stack([ds.table.embeddings[v, i] for v, i in ds.pairs[::step]]).float()
    nonzero = h[h != 0]
    return float(nonzero.pow(2).mean().sqrt()) if nonzero.numel() else 0.0


def pad_rows(rows: list[torch.Tensor], length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows to ``length``: ids and attention mask (N, length)."""
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return ids, mask


def collate_pairs(items: list[dict[str, Any]], pad_id: int, length: int = 0) -> dict[str, Any]:
    """Right-pad to the longest sequence (or ``length`` when longer): input_ids, attention_mask (N, T);
    embeddings (N, D); label_index (N,); name."""
    longest = max([length, *(len(it["input_ids"]) for it in items)])
    ids, mask = pad_rows([it["input_ids"] for it in items], longest, pad_id)
    return {"embeddings": torch.stack([it["embedding"] for it in items]), "input_ids": ids, "attention_mask": mask,
            "label_index": torch.tensor([it["label_index"] for it in items]), "name": [it["name"] for it in items]}


class DecoderTask(Task):
    """Step 2 for the shared training loop (see ctagrg.training.task)."""

    Config = DecoderTaskConfig

    def __init__(self, cfg: DecoderTaskConfig) -> None:
        super().__init__(cfg)
        self._table: EmbeddingTable | None = None
        self._tokenizer: Any = None
        self._selection: Selection | None = None
        self.collate = functools.partial(collate_pairs, pad_id=cfg.model.pad_token_id)  # picklable for workers
        self.extensions: list[Extension] = []
        build_extensions(self, cfg.extras, "decoder")

    # -- data ------------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            path = self.cfg.model.tokenizer_path or self.cfg.model.gpt2_path
            if not path:
                raise ConfigError("model.tokenizer_path: required (or model.gpt2_path with tokenizer files)")
            self._tokenizer = load_tokenizer(path)
        return self._tokenizer

    def table(self) -> EmbeddingTable:
        if self._table is None:
            emb = self.cfg.embeddings
            if not emb.out_dir:
                raise ConfigError("embeddings.out_dir: required (the embedding cache folder)")
            if not (Path(emb.out_dir) / "index.json").is_file() and emb.step1_dir:
                build_from_config(emb)
            check_target_source(emb)
            self._table = load_embedding_cache(emb.out_dir)
        return self._table

    def selection(self) -> Selection:
        """The cache's training and validation volumes (``split``; empty valid: none). Resolved once; written to
        ``out_dir/splits/`` when training starts."""
        if self._selection is None:
            names, split = self.table().names, self.cfg.split
            valid_pool = names if split.valid else []
            self._selection = resolve(split, names, valid_pool, f"the embedding cache {self.cfg.embeddings.out_dir}")
        return self._selection

    def _dataset(self, names: list[str]) -> PairDataset:
        table = self.table()
        thresholds = read_thresholds(self.cfg.thresholds) if self.cfg.thresholds else None
        pairs = table.pairs(self.cfg.pairs, thresholds=thresholds, names=set(names))
        m = self.cfg.model
        return PairDataset(table, pairs, self.tokenizer, self.cfg.target, m.bos_token_id, m.eos_token_id)

    def train_dataset(self) -> PairDataset:
        ds = self._dataset(self.selection().train)
        for ext in self.extensions:
            ds = ext.wrap_dataset(ds, "train")
        cond = self.cfg.model.conditioning
        if cond.latent_noise_std > 0 and len(ds):
            rms, sigma = embedding_rms(ds), cond.latent_noise_std
            noise = (f"σ {sigma:g} × each batch's RMS (≈ {sigma * rms:.3g})" if cond.latent_noise_scale == "rms"
                     else f"σ {sigma:g} (≈ {sigma / rms if rms else float('inf'):.2f} × their RMS)")
            logger.info(f"latent noise: the training embeddings' non-zero units have RMS {rms:.3g}; {noise} "
                        "(docs/decoder.md, 'Latent-space augmentation')")
        if len(ds) == 0:
            hint = (" The step-1 model detects none of the present abnormalities (undertrained?): train step 1 "
                    "longer, or train on every present abnormality with --set pairs=present."
                    if self.cfg.pairs == "detected_and_present" else "")
            raise ConfigError(f"{self.cfg.embeddings.out_dir}: no training pairs (split.train "
                              f"{list(self.cfg.split.train)}, pairs {self.cfg.pairs!r}).{hint}")
        return ds

    def valid_dataset(self) -> PairDataset | None:
        names = self.selection().valid
        ds = self._dataset(names) if names else None
        return ds if ds is not None and len(ds) else None

    def on_train_start(self, model: Any) -> None:
        folder = write_record(self.cfg.train.out_dir, self.selection(), self.cfg.split,
                              {"cache": self.cfg.embeddings.out_dir})
        selection = self.selection()
        logger.info(f"split: {len(selection.train)} training and {len(selection.valid)} validation volumes "
                    f"(names in {folder})")

    # -- model -----------------------------------------------------------------------------------------------
    def build_model(self) -> ReportDecoder:
        table_dim = self.table().embeddings.shape[-1]
        if self.cfg.model.conditioning.input_dim == 0:  # "from the cache": the step-1 model's embedding width
            cond = dataclasses.replace(self.cfg.model.conditioning, input_dim=table_dim)
            self.cfg.model = dataclasses.replace(self.cfg.model, conditioning=cond)
        model = ReportDecoder(self.cfg.model)
        if table_dim != self.cfg.model.conditioning.input_dim:
            raise ConfigError(f"model.conditioning.input_dim is {self.cfg.model.conditioning.input_dim} but the "
                              f"embedding cache {self.cfg.embeddings.out_dir} holds {table_dim}-d embeddings")
        if len(self.tokenizer) > model.gpt2.config.vocab_size:
            raise ConfigError(f"tokenizer has {len(self.tokenizer)} tokens, GPT-2 only {model.gpt2.config.vocab_size}")
        return model

    def training_step(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        for ext in self.extensions:
            batch = ext.training_batch(batch)
        return {"loss": self._loss(model, batch)}

    def _loss(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        out = model(batch["embeddings"].to(self.device), batch["label_index"].to(self.device),
                    batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
        return out["loss"]

    def validate(self, model: Any, loader: Any) -> dict[str, float]:
        """Token-weighted mean next-token loss on the validation pairs; score = −loss."""
        total, tokens = 0.0, 0
        for batch in loader:
            n = int(batch["attention_mask"][:, 1:].sum())
            total += float(self._loss(model, batch)) * n
            tokens += n
        loss = total / max(tokens, 1)
        return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "tokens": float(tokens), "score": -loss}

    # -- checkpoints -----------------------------------------------------------------------------------------
    def save_model(self, model: Any, directory: Path) -> None:
        model.save_pretrained(directory)

    def load_model(self, model: Any, directory: Path) -> None:
        from safetensors.torch import load_model

        path = Path(directory) / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: decoder checkpoint weights not found")
        load_model(model, str(path), device=str(next(model.parameters()).device))

    def on_train_end(self, model: Any, out_dir: Path) -> None:
        """best/tokenizer/ and best/generation.json, so best/ is all the packaged model needs from step 2."""
        best = Path(out_dir) / "best"
        self.tokenizer.save_pretrained(str(best / "tokenizer"))
        write_json_atomic(best / "generation.json", {"generation": to_dict(self.cfg.generation),
                                                     "target": to_dict(self.cfg.target)})
