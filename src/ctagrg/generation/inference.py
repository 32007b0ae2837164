"""The front door of inference: input items in; per item a report or an error, its read warnings and its timing.

``ctagrg report``, ``ctagrg serve`` and ``ctagrg evaluate`` are adapters over :func:`run_inference`: they turn
their inputs into :class:`InferenceItem` s and each :class:`ItemResult` into their output (a JSON line, an HTTP
answer, a prediction line). Research software, not for diagnostic use.

>>> reporter = Reporter.from_pretrained("model/")                                       # doctest: +SKIP
>>> items = [InferenceItem("a", "a.nii.gz"), InferenceItem("b", "dicom_folder/")]        # doctest: +SKIP
>>> for batch in run_inference(reporter, items, batch_size=2, workers=2):                # doctest: +SKIP
...     for result in batch:
...         print(result.name, result.error or result.report.text, result.warnings, result.seconds)

What happens to one item:

1. Read and preprocess its ``source`` with the reporter's ``preprocess`` config (in a worker process with
   ``workers`` > 0, ahead of the model; :mod:`ctagrg.data.prefetch`): a scan path (anything
   :func:`ctagrg.data.ctio.load_ct` reads, with the item's CT-RATE ``metadata`` row), a preprocessed cache file
   (``.safetensors``, :mod:`ctagrg.data.cache`, preprocessed with the same config), or an array already
   preprocessed to ``preprocess.shape``. :class:`ctagrg.data.ctio.CTReadWarning` s raised while reading are kept
   as the item's ``warnings``; any failure becomes its ``error``.
2. The batch's readable items go through ``reporter.report_volumes`` together; when that fails, each is retried
   alone, so one bad item never costs the good ones of its batch their reports.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctagrg.data.preprocessed import PreprocessedVolume

if TYPE_CHECKING:
    from ctagrg.data.inputs import InputItem
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.generation.reporter import Report, Reporter

# A measured diameter comes from voxels of about 0.75-2 mm: tenths of a millimetre are all the precision it has.
SIZE_MM_DECIMALS = 1


@dataclass
class InferenceItem:
    """One input: ``name`` (how outputs call it), ``source`` (a scan path, a cache file, or a preprocessed
    (D, H, W) array) and an optional CT-RATE ``metadata`` row for reading a scan. A
    :class:`ctagrg.data.inputs.InputItem` serves as well."""

    name: str
    source: str | Path | np.ndarray
    metadata: dict[str, Any] | None = None


@dataclass
class ItemResult:
    """What became of one item.

    Attributes:
        index: the item's position in the ``items`` given to :func:`run_inference`.
        item: the item.
        report: its Report, or None when it failed.
        error: None, or one line naming the item (its source path; its name for an array) and the problem.
        warnings: what the reader noted while reading it (CTReadWarning messages); the model's own warnings
            (e.g. out of distribution) are in ``report.warnings``; :meth:`all_warnings` joins both.
        seconds: reading + preprocessing time plus the item's share of its batch's model time.
        volume: the preprocessed volume (None when reading failed).
        exception: the exception behind ``error`` when it was raised in this process (not in a worker).
    """

    index: int
    item: InferenceItem | InputItem
    report: Report | None
    error: str | None
    warnings: list[str]
    seconds: float
    volume: PreprocessedVolume | None = field(default=None, repr=False)
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.item.name

    def all_warnings(self) -> list[str]:
        """The reader's warnings, then the model's."""
        return [*self.warnings, *(self.report.warnings if self.report is not None else ())]

    def to_dict(self) -> dict[str, Any]:
        """``{"error": str}``, or ``{"report": str, "abnormalities": {label: {probability, detected, threshold,
        sentence, size_mm}}}`` with ``"warnings": [...]`` when there are any (:meth:`all_warnings`). ``size_mm``
        is rounded to the measurement's precision (``SIZE_MM_DECIMALS``)."""
        if self.report is None:
            return {"error": self.error}
        out = self.report.to_dict()
        for abnormality in out["abnormalities"].values():
            if abnormality.get("size_mm") is not None:
                abnormality["size_mm"] = round(float(abnormality["size_mm"]), SIZE_MM_DECIMALS)
        warnings = self.all_warnings()
        out.pop("warnings", None)
        if warnings:
            out["warnings"] = warnings
        return out


def source_label(item: InferenceItem | InputItem) -> str:
    """What an item's error line names: its source path, or its name when the source is an array."""
    return item.name if isinstance(item.source, np.ndarray) else str(item.source)


def load_item(items: Sequence[InferenceItem | InputItem], config: PreprocessConfig, max_bytes: int | None,
              index: int) -> PreprocessedVolume:
    """Read and preprocess ``items[index]`` (see the module docstring); runs in a worker with ``workers`` > 0."""
    from ctagrg.data import ctio
    from ctagrg.data.cache import SUFFIX as CACHE_SUFFIX
    from ctagrg.data.preprocessed import preprocess_to_volume

    source = items[index].source
    if isinstance(source, np.ndarray):
        return PreprocessedVolume.from_config(source, config)
    if str(source).endswith(CACHE_SUFFIX):
        return _load_cache_file(Path(source), config)
    return preprocess_to_volume(ctio.load_ct(source, items[index].metadata, max_bytes=max_bytes), config)


def _load_cache_file(path: Path, config: PreprocessConfig) -> PreprocessedVolume:
    from ctagrg.data.cache import CacheError, levels_to_float, load_cached_raw

    q, lo, hi = load_cached_raw(path)
    expected = (-config.offset, 1.0 - config.offset)
    if not np.allclose((lo, hi), expected, rtol=0.0, atol=1e-6):
        raise CacheError(f"{path}: cached values span [{lo:g}, {hi:g}], the model's preprocessing gives "
                         f"[{expected[0]:g}, {expected[1]:g}] (another offset): re-preprocess with the model's "
                         f"preprocess.json")
    return PreprocessedVolume.from_config(levels_to_float(q, lo, hi), config)


def run_inference(reporter: Reporter, items: Sequence[InferenceItem | InputItem], *, batch_size: int = 1,
                  workers: int = 0, max_bytes: int | None = None, saliency: bool = False
                  ) -> Iterator[list[ItemResult]]:
    """Report ``items`` batch by batch; yields each batch's :class:`ItemResult` s, in the order of ``items``.

    Args:
        reporter: a :class:`~ctagrg.generation.reporter.Reporter` (its ``preprocess`` and ``report_volumes``).
        items: the inputs. Arrays travel to worker processes by copy: give arrays with ``workers`` = 0.
        batch_size: items per model batch.
        workers: 0 = read in this process; N = N processes reading up to 2 batches ahead each.
        max_bytes: the memory budget of reading, all workers together (each gets its share; a scan whose read
            would need more, estimated from its headers, fails); None: half of this machine's memory per read.
        saliency: ask the reporter for saliency maps too (``report_volumes(..., saliency=True)``).

    The output does not depend on ``workers`` (apart from ``seconds``). Stop signals are left to the caller: it
    may stop between two batches.
    """
    from ctagrg.data.prefetch import prepared_batches

    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    items = list(items)
    per_read = max_bytes // max(1, workers) if max_bytes is not None else None
    load = functools.partial(load_item, items, reporter.preprocess, per_read)
    labels = [source_label(it) for it in items]
    for batch in prepared_batches(load, labels, batch_size, workers):
        results = {p.index: ItemResult(p.index, items[p.index], None, p.error, p.warnings, p.seconds,
                                       exception=p.exception) for p in batch if p.error is not None}
        good = [p for p in batch if p.error is None]
        outcomes = _reports(reporter, [p.volume for p in good], [labels[p.index] for p in good], saliency)
        for p, (report, error, exc, share) in zip(good, outcomes, strict=True):
            results[p.index] = ItemResult(p.index, items[p.index], report, error, p.warnings, p.seconds + share,
                                          p.volume, exc)
        yield [results[p.index] for p in batch]


_Outcome = tuple[Any, str | None, BaseException | None, float]  # report, error, exception, model seconds


def _reports(reporter: Reporter, volumes: list[PreprocessedVolume], labels: list[str], saliency: bool
             ) -> list[_Outcome]:
    """One model call for ``volumes``; when it fails, one call per volume, so that only the bad ones fail."""
    if not volumes:
        return []
    start = time.perf_counter()
    try:
        arrays = np.stack([v.array for v in volumes])
        # only asked for when wanted: a Reporter without saliency support still serves every other call
        reports = (reporter.report_volumes(arrays, saliency=True) if saliency  # type: ignore[call-arg]
                   else reporter.report_volumes(arrays))
        if len(reports) != len(volumes):
            raise RuntimeError(f"the reporter returned {len(reports)} reports for {len(volumes)} volumes")
    except Exception as exc:  # noqa: BLE001 - one bad volume must not cost the others their reports
        if len(volumes) == 1:  # the model's message does not name the input: always prefix it
            return [(None, f"{labels[0]}: {type(exc).__name__}: {exc}", exc, time.perf_counter() - start)]
        return [o for k in range(len(volumes)) for o in _reports(reporter, volumes[k:k + 1], labels[k:k + 1],
                                                                 saliency)]
    share = (time.perf_counter() - start) / len(volumes)
    return [(report, None, None, share) for report in reports]
