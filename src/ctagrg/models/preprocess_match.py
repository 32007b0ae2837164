"""Does an encoder config fit the preprocessing its inputs go through?

Some encoder settings describe the preprocessed input: ``input_shape`` (every encoder), ``input_hu`` (the HU window
and offset, which an encoder that reads HU inverts, e.g. CT-Net with ``input_windows``) and ``voxel_mm`` (the voxel
size an encoder measures in). A mismatch does not fail on its own: the model silently sees other images than it was
trained on. The visual stages take ``input_hu`` and ``voxel_mm`` from the cache's ``preprocess.json``
(:func:`with_preprocess`), so they are not restated; training, the step-2 embedding cache and the ``Reporter``
(against its own preprocess.json) check them with :func:`check_encoder_preprocess`.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass, replace
from pathlib import Path
from typing import Any

from ctagrg.config import ConfigError, read_json_object

_TOL = 1e-6


def _close(a: Any, b: Any) -> bool:
    a, b = [float(v) for v in a], [float(v) for v in b]
    return len(a) == len(b) and all(abs(x - y) <= _TOL * max(1.0, abs(y)) for x, y in zip(a, b, strict=True))


def encoder_preprocess_mismatches(encoder_cfg: Any, preprocess: Any) -> list[str]:
    """What ``encoder_cfg`` (an encoder config dataclass) states about its input that ``preprocess`` (a
    ``PreprocessConfig`` or its dict, as in ``preprocess.json``) contradicts; empty when they agree.

    Checked: ``input_shape`` vs ``shape``; ``input_hu`` vs (``hu_min``, ``hu_max``, ``offset``) when the encoder
    reads HU (its config's ``reads_hu`` is true, e.g. CT-Net with ``input_windows``); ``voxel_mm`` vs ``spacing``
    when it measures in mm (``reads_mm``).
    """
    p = asdict(preprocess) if is_dataclass(preprocess) else dict(preprocess)
    problems = []
    shape = getattr(encoder_cfg, "input_shape", None)
    if shape is not None and "shape" in p and [int(v) for v in shape] != [int(v) for v in p["shape"]]:
        problems.append(f"the encoder's input_shape {list(shape)} is not the preprocessing's shape "
                        f"{list(p['shape'])}")
    hu = getattr(encoder_cfg, "input_hu", None)
    reads_hu = bool(getattr(encoder_cfg, "reads_hu", False))
    if hu is not None and reads_hu and all(k in p for k in ("hu_min", "hu_max", "offset")):
        window = (p["hu_min"], p["hu_max"], p["offset"])
        if not _close(hu, window):
            problems.append(f"the encoder's input_hu {[float(v) for v in hu]} is not the preprocessing's "
                            f"(hu_min, hu_max, offset) {[float(v) for v in window]}")
    if getattr(encoder_cfg, "reads_mm", False) and "spacing" in p and not _close(encoder_cfg.voxel_mm, p["spacing"]):
        problems.append(f"the encoder's voxel_mm {[float(v) for v in encoder_cfg.voxel_mm]} (the voxel size it "
                        f"measures in) is not the preprocessing's spacing {[float(v) for v in p['spacing']]} mm")
    return problems


def encoder_config_of(model: Any) -> Any | None:
    """The encoder config of a visual model (``Step1Model``, ``PretrainModel``); None for anything else (e.g. a
    test double), which then goes unchecked."""
    encoder_config = getattr(getattr(model, "config", None), "encoder_config", None)
    return encoder_config() if callable(encoder_config) else None


def check_encoder_preprocess(encoder_cfg: Any, preprocess: Any, where: str) -> None:
    """Raise ConfigError naming ``where`` (the preprocessing's file) when :func:`encoder_preprocess_mismatches`
    finds anything."""
    problems = encoder_preprocess_mismatches(encoder_cfg, preprocess)
    if problems:
        raise ConfigError(f"{where}: the encoder does not fit this preprocessing: {'; '.join(problems)}. Set the "
                          f"encoder's fields to the preprocessing's values (or preprocess with the values the "
                          f"encoder was built for)")


def check_cache_preprocess(encoder_cfg: Any, cache_dir: str | Path) -> None:
    """:func:`check_encoder_preprocess` against ``cache_dir/preprocess.json`` (``ctagrg preprocess`` writes it);
    nothing when the cache has none."""
    path = Path(cache_dir) / "preprocess.json"
    if not path.is_file():
        return
    check_encoder_preprocess(encoder_cfg, read_json_object(path), str(path))


def with_preprocess(model_config: Any, preprocess: Any, where: str = "preprocess.json") -> Any:
    """``model_config`` (a VisualModelConfig) with its encoder's ``input_hu`` and ``voxel_mm``, where the encoder has
    them, taken from ``preprocess`` (a PreprocessConfig or its dict): what the encoder inverts or measures in is
    read from the preprocessing, not restated."""
    p = asdict(preprocess) if is_dataclass(preprocess) else dict(preprocess)
    missing = [k for k in ("hu_min", "hu_max", "offset", "spacing") if k not in p]
    if missing:
        raise ConfigError(f"{where}: no {', '.join(missing)} (a PreprocessConfig written by `ctagrg preprocess`)")
    values = {"input_hu": [float(p["hu_min"]), float(p["hu_max"]), float(p["offset"])],
              "voxel_mm": [float(v) for v in p["spacing"]]}
    encoder_cfg = model_config.encoder_config()
    changes = {k: v for k, v in values.items() if hasattr(encoder_cfg, k)}
    if not changes:
        return model_config
    name = model_config.encoder
    if is_dataclass(getattr(model_config, name, None)):
        return replace(model_config, **{name: replace(getattr(model_config, name), **changes)})
    extras = dict(model_config.extras)
    extras[name] = {**extras.get(name, {}), **changes}
    return replace(model_config, extras=extras)
