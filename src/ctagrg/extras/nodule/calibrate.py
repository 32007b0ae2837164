"""The ``nodule_size`` training extension (step 1): after training, calibrate the nodule measurement's offset on
the validation volumes whose lung-nodule sentence states a size and one side, and write the calibrated options as
the ``nodule_size`` post-processor's section of ``best/postprocess.json`` (which the packaged model's Reporter
applies)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ctagrg.config import ConfigError, from_dict, read_json_object, to_dict
from ctagrg.data.preprocessed import PreprocessedVolume
from ctagrg.extras.halves.heads import SIDE_CLASSES
from ctagrg.extras.halves.thresholds import sides_source
from ctagrg.extras.nodule.measure import (
    SIDES,
    NoduleSizeConfig,
    calibrate_offset,
    check_window,
    largest_isolated_radius,
    solid_spheres,
)
from ctagrg.generation.postprocess import POSTPROCESS_FILE
from ctagrg.labels import LABEL_INDEX
from ctagrg.training.extensions import Extension
from ctagrg.utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)
MIN_MEASURED = 5  # fewer measured validation nodules: the configured offset is kept


@dataclass
class NoduleCalibrationConfig(NoduleSizeConfig):
    """``extras.nodule_size``: the measurement's options, and where the validation sentences are read."""

    sentences_csv: str = ""  # `ctagrg sentences` CSV; empty: extras.attributes.sentences_csv


def add_postprocess_section(best: Path, name: str, options: dict[str, Any]) -> None:
    """Add post-processor ``name``'s options to ``best/postprocess.json`` (atomically)."""
    path = best / POSTPROCESS_FILE
    sections = read_json_object(path) if path.is_file() else {}
    sections[name] = options
    write_json_atomic(path, sections)


class NoduleSizeExtension(Extension):
    config_class = NoduleCalibrationConfig
    stages = ("classifier",)

    def __init__(self, task: Any, config: NoduleCalibrationConfig) -> None:
        super().__init__(task, config)
        if not task.cfg.data.valid_labels:
            raise ConfigError("extras.nodule_size: needs data.valid_labels (its offset is calibrated on the sizes "
                              "that the validation volumes' nodule sentences state)")
        self.targets = sides_source(task, config.sentences_csv, "nodule_size")

    def _preprocess(self) -> Any:
        from ctagrg.data.preprocess import PreprocessConfig

        path = Path(self.task.cfg.data.cache_dir) / "preprocess.json"
        if not path.is_file():
            raise ConfigError(f"{path}: missing; extras.nodule_size needs the cache's spacing and HU window")
        pp = from_dict(PreprocessConfig, read_json_object(path), where=str(path))
        if pp.axcodes != "SLP":
            raise ConfigError(f"{path}: extras.nodule_size needs SLP volumes, the cache is {pp.axcodes}")
        check_window(self.config, pp.hu_min, pp.hu_max, str(path))
        return pp

    def on_train_end(self, model: nn.Module, best: Path) -> None:
        """offset_mm = the median of stated diameter - 2 x radius over the validation nodules measured (the largest
        isolated solid sphere in the stated side's half); the validation agreement within 5 mm is recorded."""
        from ctagrg.data.dataset import CachedVolumeDataset

        task, pp, i = self.task, self._preprocess(), LABEL_INDEX["Lung nodule"]
        measure = NoduleSizeConfig(**{f.name: getattr(self.config, f.name) for f in fields(NoduleSizeConfig)})
        data = task.cfg.data
        ds = CachedVolumeDataset(data.cache_dir, labels=task._labels(data.valid_labels), names=task.selection().valid)
        sides, sizes = self.targets.gather(ds.names, torch.from_numpy(ds.label_matrix()), "cpu")
        radii, stated, found = [], [], 0
        for k in range(len(ds)):
            where = SIDE_CLASSES[int(sides[k, i])] if sides[k, i] >= 0 else None
            if where not in SIDES or torch.isnan(sizes[k, i]):
                continue
            found += 1
            volume = ds[k]["volume"][0].numpy()
            spheres = solid_spheres(PreprocessedVolume.from_config(volume, pp).to_hu(), pp.spacing, measure)
            r = largest_isolated_radius(spheres, volume.shape[1], measure, where)
            if r is not None:
                radii.append(r)
                stated.append(float(sizes[k, i]))
        calibrated = len(radii) >= MIN_MEASURED
        offset = calibrate_offset(radii, stated) if calibrated else measure.offset_mm
        within = (float(np.mean(np.abs(2 * np.array(radii) + offset - np.array(stated)) <= 5.0)) if radii
                  else None)
        result = replace(measure, offset_mm=offset, calibration={
            "rule": ("median of stated diameter - 2 x radius over the validation nodules whose sentence states a "
                     "size and one side (fewer than 5 measured: the configured offset)"),
            "calibrated": calibrated, "sentences_from": self.targets.source, "validation_nodules": found,
            "measured": len(radii), "validation_within_5mm_in_sample": within})
        add_postprocess_section(best, "nodule_size", to_dict(result))
        logger.info(f"nodule size: offset {offset:+.2f} mm from {len(radii)} of {found} validation nodules"
                    + (f"; within 5 mm of the stated size (in-sample): {within:.3f}" if within is not None else ""))
