"""The ``nodule_size`` report post-processor: a detected lung nodule's diameter measured on the volume (in the
lateral half or halves where step 1 found it, with the halves heads; else the whole volume) replaces the size the
decoder wrote in its sentence, and is recorded as the abnormality's ``size_mm`` measurement."""

from __future__ import annotations

from typing import Any

import torch

from ctagrg.config import ConfigError
from ctagrg.data.preprocessed import PreprocessedVolume
from ctagrg.extras.halves.heads import halves_on
from ctagrg.extras.nodule.measure import SIDES, NoduleSizeConfig, check_window, nodule_diameter_mm
from ctagrg.generation.postprocess import ReportBatch
from ctagrg.labels import LABEL_INDEX
from ctagrg.text.attributes import restate_size

NODULE = LABEL_INDEX["Lung nodule"]


class NoduleSizePostprocessor:
    def __init__(self, config: NoduleSizeConfig, preprocess: Any, visual: torch.nn.Module) -> None:
        if preprocess.axcodes != "SLP":
            raise ConfigError(f"postprocess.nodule_size needs SLP volumes (its halves run along axis 1, right to "
                              f"left); the preprocessing gives {preprocess.axcodes}")
        check_window(config, preprocess.hu_min, preprocess.hu_max, "postprocess.nodule_size")
        self.config, self.preprocess = config, preprocess
        threshold = getattr(getattr(visual, "heads", None), "half_threshold", None)
        self.half_threshold = threshold.detach().cpu() if threshold is not None else None

    def card_note(self) -> str:
        """The model card's paragraph on measured nodule sizes."""
        cal = self.config.calibration or {}
        how = (f"calibrated on {cal.get('measured')} validation nodules" if cal.get("calibrated")
               else "not calibrated")
        return (f"A detected lung nodule's size is **measured, not generated** (not part of the published method): "
                f"the diameter of the largest solid sphere with aerated lung around it, in the lateral half where the "
                f"nodule was found (the whole volume for a model without lateral halves): diameter = 2 x radius + "
                f"{self.config.offset_mm:.2f} mm ({how}). The nodule's sentence states that diameter in place of the "
                f"one the decoder wrote (a sentence with a range or several sizes is left as written), and `size_mm` "
                f"holds it. Validated on synthetic phantoms only.")

    def _sides(self, batch: ReportBatch, v: int) -> tuple[str | None, ...]:
        half_logits = batch.outputs.get("half_logits")
        if half_logits is None:
            return (None,)
        p = torch.sigmoid(half_logits[v, :, NODULE].float())
        on = halves_on(p, self.half_threshold[NODULE] if self.half_threshold is not None else 0.5)
        return tuple(side for side, o in zip(SIDES, on.tolist(), strict=True) if o)

    def __call__(self, batch: ReportBatch) -> None:
        pp = self.preprocess
        for v in batch.detected[:, NODULE].nonzero().flatten().tolist():
            hu = PreprocessedVolume.from_config(batch.volumes[v], pp).to_hu()
            size = nodule_diameter_mm(hu, pp.spacing, self.config, self._sides(batch, v))
            if size is None:
                continue
            batch.measurements[v].setdefault(NODULE, {})["size_mm"] = size
            if NODULE in batch.sentences[v]:
                batch.sentences[v][NODULE] = restate_size(batch.sentences[v][NODULE], size)
