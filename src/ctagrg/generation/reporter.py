"""The packaged model: scan in, report out. Research software, not for diagnostic use.

>>> reporter = Reporter.from_pretrained("model/")                     # doctest: +SKIP
>>> report = reporter.report("scan.nii.gz")                          # doctest: +SKIP
>>> report.text, report.abnormalities["Lung nodule"].probability     # doctest: +SKIP

A packaged model folder::

    visual/           step-1 model (encoder + 18 heads): config.json, model.safetensors
    decoder/          GPT-2 + Φ_T + prefix projections: config.json, model.safetensors
    tokenizer/        the GPT-2 tokenizer
    thresholds.json   {"space": "probability", "thresholds": {label: value}}
    preprocess.json   the PreprocessConfig every input goes through
    reporter.json     generation and assembly settings
    README.md         model card

``report_batch`` runs the visual model on the batch, then generates the sentences of every detected abnormality of
every volume in one batched generation call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ctagrg.config import ConfigError, from_dict, read_json_object, to_dict
from ctagrg.generation.assemble import AssemblyConfig, assemble_report
from ctagrg.generation.generate import GenerationSettings, generate_sentences
from ctagrg.generation.model_card import render_model_card
from ctagrg.generation.numbers import stated_numbers
from ctagrg.generation.postprocess import POSTPROCESS_FILE, ReportBatch, build_postprocessors, postprocessor_config
from ctagrg.labels import LABELS, NUM_LABELS
from ctagrg.models.decoder import ReportDecoder, load_tokenizer
from ctagrg.models.preprocess_match import check_encoder_preprocess, encoder_config_of
from ctagrg.models.thresholds_file import read_thresholds
from ctagrg.utils.atomic import write_json_atomic, write_text_atomic
from ctagrg.utils.device import resolve_device

logger = logging.getLogger(__name__)
Input = str | Path | np.ndarray | torch.Tensor
# what a packaged model folder holds that from_pretrained reads (the model card README.md is a description)
MODEL_PARTS = ("visual", "decoder", "tokenizer", "thresholds.json", "preprocess.json", "reporter.json")
REQUIRED_PARTS = MODEL_PARTS[:5]  # reporter.json may be absent (default settings)


def check_model_dir(directory: str | Path) -> Path:
    """``directory`` as a Path; FileNotFoundError saying what it is when it is not a folder."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "a file, not a model folder" if directory.exists() else "no such model folder"
        raise FileNotFoundError(f"{directory}: {what} (a folder written by Reporter.save_pretrained, e.g. "
                                f"demo_out/model)")
    return directory


def model_fingerprint(directory: str | Path) -> str:
    """16 hex digits of SHA-256 over the parts of a packaged model folder that ``from_pretrained`` reads
    (``MODEL_PARTS``): what `ctagrg report` and `ctagrg evaluate` record as the ``model`` of each output line.
    Files added beside them (a reports file, ``.DS_Store``) and the model card do not change it."""
    from ctagrg.utils.fingerprint import folder_fingerprint

    return folder_fingerprint(directory, MODEL_PARTS)


@dataclass
class ReporterConfig:
    """Inference settings saved as ``reporter.json``."""

    generation: GenerationSettings = field(default_factory=GenerationSettings)
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)
    visual_batch_size: int = 2  # volumes per visual forward pass
    saliency_method: str = "hirescam"  # when saliency maps are asked for (ctagrg.generation.saliency)
    # round every input volume to the preprocessed cache's uint8 levels (ctagrg.data.cache.as_cached) before the
    # visual model: models are trained on cached volumes, so a scan read from its file gets exactly the
    # probabilities its cached copy gets in training and `ctagrg evaluate`. Idempotent on cached volumes.
    quantize_like_cache: bool = True
    # report post-processors (not in the published method) by name, with their options, applied in this order
    # (ctagrg.generation.postprocess), e.g. {"nodule_size": {...}, "ood_warning": {"fraction": 0.01}}
    postprocess: dict[str, Any] = field(default_factory=dict)

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "nodule_size": "moved to postprocess.nodule_size; `ctagrg convert-model` converts a model packaged before",
        "ood_fraction": "moved to postprocess.ood_warning.fraction; `ctagrg convert-model` converts a model packaged "
                        "before"}

    def __post_init__(self) -> None:
        # each post-processor's options resolved to its full config (defaults filled in), so that it is saved whole
        self.postprocess = {name: to_dict(postprocessor_config(name, options, "postprocess"))
                            for name, options in self.postprocess.items()}


@dataclass
class Abnormality:
    probability: float
    detected: bool
    threshold: float
    sentence: str | None  # the generated sentence when detected, else None
    size_mm: float | None = None  # a measured diameter (a post-processor's, e.g. nodule_size), rounded to 0.1 mm
    # each size the sentence states: {"text", "start", "end", "value_mm", "source": "measured" | "decoder"}
    numbers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    """One scan's result: ``text`` and, for each of the 18 labels (``LABELS`` order), an ``Abnormality``."""

    text: str
    abnormalities: dict[str, Abnormality]
    warnings: list[str] = field(default_factory=list)  # e.g. the scan is unlike the model's training data
    # per detected abnormality, where its logit comes from: (D, H, W) float32 in [0, 1] on the preprocessed grid
    # (``report_volumes(..., saliency=True)``; ctagrg.generation.saliency)
    saliency: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def detected(self) -> list[str]:
        return [label for label, a in self.abnormalities.items() if a.detected]

    def to_dict(self) -> dict[str, Any]:
        """``{"report": str, "abnormalities": {label: {probability, detected, threshold, sentence, size_mm,
        numbers}}}``, plus ``"warnings": [...]`` when there are any and, with saliency maps, each detected
        abnormality's ``"saliency": {"peak": [d, h, w]}``."""
        out: dict[str, Any] = {"report": self.text,
                               "abnormalities": {k: asdict(v) for k, v in self.abnormalities.items()}}
        if self.saliency:
            from ctagrg.generation.saliency import peak_index

            for label, saliency in self.saliency.items():  # the map's peak, (d, h, w) on the preprocessed grid
                out["abnormalities"][label]["saliency"] = {"peak": list(peak_index(saliency))}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


class Reporter:
    """Visual model + thresholds + decoder + tokenizer + preprocessing, with ``report``/``report_batch``.

    Args:
        visual: step-1 model, (B, 1, D, H, W) → {"logits": (B, 18), "embeddings": (B, 18, E)}.
        decoder: the report decoder (conditioning input_dim = E).
        tokenizer: its GPT-2 tokenizer.
        thresholds: 18 probability thresholds, ``LABELS`` order.
        preprocess: a ``ctagrg.data.preprocess.PreprocessConfig``.
        config: generation/assembly settings.
        card: extra model-card fields (``training_data``, ``metrics``) kept for ``save_pretrained``.
        device: "cpu", "cuda", "cuda:N", "auto" (CUDA when available) or a torch.device.
    """

    def __init__(self, visual: torch.nn.Module, decoder: ReportDecoder, tokenizer: Any, thresholds: Sequence[float],
                 preprocess: Any, config: ReporterConfig | None = None, card: dict[str, Any] | None = None,
                 device: str | torch.device = "cpu") -> None:
        if len(thresholds) != NUM_LABELS:
            raise ConfigError(f"Reporter: expected 18 thresholds, got {len(thresholds)}")
        width = getattr(visual, "embedding_dim", None)  # a Step1Model's; other visual models are not checked
        if width is not None and width != decoder.config.conditioning.input_dim:
            raise ConfigError(f"Reporter: the visual model's embeddings are {width}-d but the decoder was trained on "
                              f"{decoder.config.conditioning.input_dim}-d ones (conditioning.input_dim): they do not "
                              f"belong together (a step-2 embedding cache left from another step-1 model? rebuild "
                              f"it and retrain the decoder)")
        # "auto": CUDA when available, else the CPU
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.visual = visual.to(self.device).eval()
        self.decoder = decoder.to(self.device).eval()
        self.tokenizer = tokenizer
        self.thresholds = [float(t) for t in thresholds]
        # the visual encoder must fit the preprocessing every input goes through
        encoder_cfg = encoder_config_of(visual)
        if encoder_cfg is not None:
            check_encoder_preprocess(encoder_cfg, preprocess, "the Reporter's preprocessing (preprocess.json)")
        self.preprocess = preprocess
        self.config = config or ReporterConfig()
        self.postprocessors = build_postprocessors(self.config.postprocess, preprocess, self.visual,
                                                   "Reporter postprocess")
        self.card = card or {}

    # -- inference -------------------------------------------------------------------------------------------
    def report(self, scan: Input, *, saliency: bool = False) -> Report:
        """One scan (a path, or a preprocessed (D, H, W) array) → its Report (with ``saliency``, its maps)."""
        return self.report_batch([scan], saliency=saliency)[0]

    def report_batch(self, inputs: Sequence[Input], *, saliency: bool = False) -> list[Report]:
        """Reports for several scans; raises ValueError naming the first input that cannot be read. For many
        scans with per-scan errors, warnings and timing, use :func:`ctagrg.generation.inference.run_inference`."""
        volumes = np.stack([self.load_input(x) for x in inputs]) if inputs else np.zeros((0,))
        return self.report_volumes(volumes, saliency=saliency)

    def load_input(self, scan: Input, *, max_bytes: int | None = None) -> np.ndarray:
        """A path is read (within ``max_bytes`` of memory, see :func:`ctagrg.data.ctio.load_ct`) and preprocessed;
        an array must already be preprocessed to ``preprocess.shape``."""
        if isinstance(scan, (str, Path)):
            from ctagrg.data.preprocess import preprocess_file

            return preprocess_file(scan, config=self.preprocess, max_bytes=max_bytes)
        array = scan.detach().cpu().numpy() if isinstance(scan, torch.Tensor) else np.asarray(scan)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        expected = tuple(self.preprocess.shape)
        if array.shape != expected:
            raise ValueError(f"array input: expected a preprocessed volume of shape {expected} (D, H, W), "
                             f"got {array.shape}; pass a file path to have it preprocessed")
        return array.astype(np.float32, copy=False)

    @torch.no_grad()
    def report_volumes(self, volumes: np.ndarray, *, saliency: bool = False) -> list[Report]:
        """volumes: (N, D, H, W) float32, preprocessed → N Reports. With ``saliency``, each report also holds a
        saliency map per detected abnormality (one backward pass per map; :mod:`ctagrg.generation.saliency`)."""
        if len(volumes) == 0:
            return []
        if self.config.quantize_like_cache:
            from ctagrg.data.cache import as_cached

            lo, hi = -self.preprocess.offset, 1.0 - self.preprocess.offset
            volumes = np.stack([as_cached(v, lo, hi) for v in volumes])
        probs, embeddings, outputs = self.score(volumes)
        # float64, as the reported probability/threshold values are: "detected" always equals probability >= threshold
        detected = probs.double() >= torch.tensor(self.thresholds, dtype=torch.float64)
        rows, cols = detected.nonzero(as_tuple=True)
        sentences = generate_sentences(self.decoder, self.tokenizer, embeddings[rows, cols], cols,
                                       self.config.generation) if len(rows) else []
        per_volume: list[dict[int, str]] = [{} for _ in range(len(volumes))]
        for r, c, s in zip(rows.tolist(), cols.tolist(), sentences, strict=True):
            per_volume[r][c] = s
        batch = ReportBatch(volumes=volumes, preprocess=self.preprocess, outputs=outputs, detected=detected,
                            sentences=per_volume)
        for postprocess in self.postprocessors:
            postprocess(batch)
        reports = [self._report(probs[v], detected[v], batch.sentences[v], batch.measurements[v], batch.warnings[v])
                   for v in range(len(volumes))]
        if saliency:
            self._add_saliency(volumes, detected, reports)
        return reports

    def _add_saliency(self, volumes: np.ndarray, detected: torch.Tensor, reports: list[Report]) -> None:
        """Each report's ``saliency``: a map per detected abnormality, from the volume the model saw."""
        from ctagrg.generation.saliency import abnormality_saliency

        with torch.enable_grad():
            for volume, row, report in zip(volumes, detected, reports, strict=True):
                labels = row.nonzero().flatten().tolist()
                if not labels:
                    continue
                try:
                    maps = abnormality_saliency(self.visual, volume, labels, self.config.saliency_method)
                except (RuntimeError, ValueError) as exc:  # e.g. out of memory in a backward pass: keep the report
                    logger.warning(f"saliency not computed: {type(exc).__name__}: {exc}")
                    report.warnings.append(f"saliency: not computed ({type(exc).__name__}: {exc})")
                    continue
                report.saliency = {LABELS[i]: maps[i] for i in labels}

    def score(self, volumes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Visual model in chunks: probabilities (N, 18) and embeddings (N, 18, E), float32 on the CPU, and the
        model's other outputs concatenated on the CPU (e.g. "logits", a plug-in head's "half_logits", and
        "diagnostics": {name: (N,)} from an encoder that reports any)."""
        chunks: list[dict[str, Any]] = []
        step = self.config.visual_batch_size
        for start in range(0, len(volumes), step):
            x = torch.from_numpy(np.ascontiguousarray(volumes[start : start + step])).unsqueeze(1).to(self.device)
            chunks.append(_to_cpu(self.visual(x)))
        outputs = _concat(chunks)
        return torch.sigmoid(outputs["logits"].float()), outputs["embeddings"].float(), outputs

    def _report(self, probs: torch.Tensor, detected: torch.Tensor, sentences: dict[int, str],
                measurements: dict[int, dict[str, Any]], warnings: list[str]) -> Report:
        abn = {}
        for i, label in enumerate(LABELS):
            sentence = sentences.get(i) if detected[i] else None
            size = measurements.get(i, {}).get("size_mm")
            abn[label] = Abnormality(probability=float(probs[i]), detected=bool(detected[i]),
                                     threshold=self.thresholds[i], sentence=sentence,
                                     size_mm=round(float(size), 1) if size is not None else None,
                                     numbers=stated_numbers(sentence, size))
        return Report(text=assemble_report(sentences, self.config.assembly), abnormalities=abn,
                      warnings=list(warnings))

    # -- packaging -------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the packaged model folder (see the module docstring)."""
        import transformers

        import ctagrg

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.visual.save_pretrained(directory / "visual")
        self.decoder.save_pretrained(directory / "decoder")
        self.tokenizer.save_pretrained(str(directory / "tokenizer"))
        write_json_atomic(directory / "thresholds.json", {
            "space": "probability", "thresholds": dict(zip(LABELS, self.thresholds, strict=True))})
        write_json_atomic(directory / "preprocess.json", to_dict(self.preprocess))
        write_json_atomic(directory / "reporter.json", {**to_dict(self.config), "card": self.card})
        versions = {"ctagrg": ctagrg.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
        write_text_atomic(directory / "README.md", render_model_card(
            preprocess=to_dict(self.preprocess), thresholds=self.thresholds, generation=to_dict(self.config.generation),
            training_data=self.card.get("training_data", ""), metrics=self.card.get("metrics"), versions=versions,
            notes=[p.card_note() for p in self.postprocessors if hasattr(p, "card_note")],
            hub=self._hub_metadata()))
        return directory

    def _hub_metadata(self) -> dict[str, Any]:
        """The model card's Hub fields from ``card`` (license, datasets, base_model, tags); without a base_model,
        the Hub id of the GPT-2 the decoder started from when that was a Hub cache snapshot."""
        from ctagrg.generation.hub import hub_id_of_cache_path

        hub = {k: self.card[k] for k in ("license", "datasets", "base_model", "tags") if self.card.get(k)}
        if "base_model" not in hub:
            base = hub_id_of_cache_path(getattr(self.decoder.config, "gpt2_path", "") or "")
            if base:
                hub["base_model"] = base
        return hub

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> Reporter:
        """Load a folder written by ``save_pretrained``, or a Hub id ``org/name[@revision]`` (a folder of that name
        wins; :mod:`ctagrg.generation.hub`); a missing part is named in the error."""
        from ctagrg.data.preprocess import PreprocessConfig
        from ctagrg.generation.hub import resolve_model_dir
        from ctagrg.models.step1 import Step1Model

        directory = resolve_model_dir(directory)
        missing = [p for p in REQUIRED_PARTS if not (directory / p).exists()]
        if missing:
            raise FileNotFoundError(f"{directory}: not a packaged ctagrg model (missing {', '.join(missing)})")
        settings = read_json_object(directory / "reporter.json") if (directory / "reporter.json").is_file() else {}
        card = settings.pop("card", {})
        return cls(visual=Step1Model.from_pretrained(directory / "visual"),
                   decoder=ReportDecoder.from_pretrained(directory / "decoder"),
                   tokenizer=load_tokenizer(directory / "tokenizer"),
                   thresholds=read_thresholds(directory / "thresholds.json"),
                   preprocess=from_dict(PreprocessConfig, read_json_object(directory / "preprocess.json"),
                                        where=str(directory / "preprocess.json")),
                   config=from_dict(ReporterConfig, settings, where=str(directory / "reporter.json")),
                   card=card, device=device)

    @classmethod
    def from_training_outputs(cls, step1_dir: str | Path, decoder_dir: str | Path, *,
                              thresholds: str | Path | Sequence[float] | None = None,
                              preprocess: str | Path | Any = None, tokenizer_dir: str | Path | None = None,
                              config: ReporterConfig | None = None, card: dict[str, Any] | None = None,
                              device: str | torch.device = "cpu") -> Reporter:
        """Assemble a Reporter from a step-1 checkpoint and a decoder checkpoint (``ctagrg train`` best/ folders).

        thresholds: a thresholds.json path or 18 values (default: thresholds.json in step1_dir or its parent).
        preprocess: a preprocess.json / YAML path or a PreprocessConfig (default: the seed's PreprocessConfig).
        tokenizer_dir: default ``decoder_dir/tokenizer`` (written by the decoder stage).
        config: default: generation settings from ``decoder_dir/generation.json`` when present. The report
            post-processors step 1's extensions set up (``postprocess.json`` in step1_dir) are added to it, except
            those the given config names itself.
        card: model-card fields; without ``metrics``, the validation metrics of both ``best/`` folders
            (``metrics.json``, written by the training loop) are used.
        """
        from ctagrg.data.preprocess import PreprocessConfig
        from ctagrg.models.step1 import Step1Model
        from ctagrg.models.thresholds_file import find_thresholds

        decoder_dir = Path(decoder_dir)
        if thresholds is None:
            thresholds = find_thresholds(step1_dir)
            if thresholds is None:
                raise FileNotFoundError(f"{step1_dir}: no thresholds.json here or in its parent; pass thresholds=")
        thr = read_thresholds(thresholds) if isinstance(thresholds, (str, Path)) else list(thresholds)
        if preprocess is None or isinstance(preprocess, (str, Path)):
            from ctagrg.config import load_config

            preprocess = load_config(PreprocessConfig, preprocess)
        if config is None:
            gen_path = decoder_dir / "generation.json"
            gen = read_json_object(gen_path).get("generation", {}) if gen_path.is_file() else {}
            config = ReporterConfig(generation=from_dict(GenerationSettings, gen, where=str(gen_path)))
        post_path = Path(step1_dir) / POSTPROCESS_FILE
        if post_path.is_file():  # step 1's calibrated post-processors, unless the given config sets them itself
            sections = read_json_object(post_path)
            for name, options in sections.items():  # checked here, so that the error names the file
                postprocessor_config(name, options, str(post_path))
            config = replace(config, postprocess={**sections, **config.postprocess})
        card = dict(card or {})
        if "metrics" not in card:
            card["metrics"] = {**_validation_metrics(Path(step1_dir), "step 1 validation"),
                               **_validation_metrics(decoder_dir, "decoder validation")}
        return cls(visual=Step1Model.from_pretrained(step1_dir), decoder=ReportDecoder.from_pretrained(decoder_dir),
                   tokenizer=load_tokenizer(tokenizer_dir or decoder_dir / "tokenizer"), thresholds=thr,
                   preprocess=preprocess, config=config, card=card, device=device)


def _validation_metrics(best: Path, prefix: str) -> dict[str, float]:
    """Headline numbers of a ``best/metrics.json`` (scalars, no per-label entries, no NaN)."""
    path = best / "metrics.json"
    if not path.is_file():
        return {}
    data = read_json_object(path)
    return {f"{prefix} {k}": float(v) for k, v in data.items() if isinstance(v, (int, float)) and v == v
            and "/" not in k and k not in ("epoch", "step", "score")}


def _to_cpu(out: dict[str, Any]) -> dict[str, Any]:
    return {k: _to_cpu(v) if isinstance(v, dict) else v.detach().cpu() for k, v in out.items()}


def _concat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the chunks' tensors concatenated along the batch axis (nested dicts likewise)."""
    if not chunks:
        return {}
    return {k: _concat([c[k] for c in chunks]) if isinstance(v, dict) else torch.cat([c[k] for c in chunks])
            for k, v in chunks[0].items()}
