"""Does an encoder config fit the preprocessing its inputs go through?

Some encoder settings restate facts about the preprocessed input: ``input_shape`` (every encoder), ``input_hu``
(the HU window and offset, which the cnn3d stem and CT-Net's ``input_windows`` invert to read HU again) and
``voxel_mm`` (the voxel size, which places the cnn3d blob, sphere and node channels' shells at their radii in mm). A
mismatch does not fail on its own: the stem bins the wrong HU, or the shells sit at other radii, and the model
silently sees other images than it was trained on. So training and the step-2 embedding cache (against the volume
cache's ``preprocess.json``) and the ``Reporter`` (against its own) check them with :func:`check_encoder_preprocess`.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
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
    reads HU (cnn3d always, CT-Net with ``input_windows``); ``voxel_mm`` vs ``spacing`` when cnn3d's ``blob``,
    ``sphere`` or ``node`` is on.
    """
    p = asdict(preprocess) if is_dataclass(preprocess) else dict(preprocess)
    problems = []
    shape = getattr(encoder_cfg, "input_shape", None)
    if shape is not None and "shape" in p and [int(v) for v in shape] != [int(v) for v in p["shape"]]:
        problems.append(f"the encoder's input_shape {list(shape)} is not the preprocessing's shape "
                        f"{list(p['shape'])}")
    hu = getattr(encoder_cfg, "input_hu", None)
    reads_hu = hasattr(encoder_cfg, "hu_edges") or bool(getattr(encoder_cfg, "input_windows", ()))
    if hu is not None and reads_hu and all(k in p for k in ("hu_min", "hu_max", "offset")):
        window = (p["hu_min"], p["hu_max"], p["offset"])
        if not _close(hu, window):
            problems.append(f"the encoder's input_hu {[float(v) for v in hu]} is not the preprocessing's "
                            f"(hu_min, hu_max, offset) {[float(v) for v in window]}")
    uses_mm = bool(getattr(encoder_cfg, "uses_voxel_mm", False))
    if uses_mm and "spacing" in p and not _close(encoder_cfg.voxel_mm, p["spacing"]):
        problems.append(f"the encoder's voxel_mm {[float(v) for v in encoder_cfg.voxel_mm]} (the voxel size of its "
                        f"blob, sphere and node channels) is not the preprocessing's spacing "
                        f"{[float(v) for v in p['spacing']]} mm")
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
