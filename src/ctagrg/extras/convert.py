"""Convert a model packaged by ctagrg before the demo's extras became plug-ins (``ctagrg convert-model``).

What changed in the packaged files (weights, thresholds, tokenizer and preprocessing are unchanged):

- ``visual/config.json``: a plug-in encoder's section moved from the top level (``"cnn3d": {...}``) into
  ``"extras"``, and the heads' ``lateral_halves`` / ``attribute_heads`` / ``condition_on_halves`` flags became the
  ``halves`` head variant (``heads.variant: halves``, ``extras.halves``).
- ``reporter.json``: ``ood_fraction`` and ``nodule_size`` became report post-processors (``postprocess``).

Every model packaged before had these layouts (the flags and fields existed for the demo's extras), so the
converter lives with the extras.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ctagrg.config import ConfigError, read_json_object
from ctagrg.models.registry import BUILTIN_ENCODERS

logger = logging.getLogger(__name__)
HALVES_FLAGS = ("lateral_halves", "attribute_heads", "condition_on_halves")


def convert_visual_config(data: dict[str, Any]) -> dict[str, Any]:
    """An old ``visual/config.json`` object in the current layout (a current one is returned unchanged)."""
    out = dict(data)
    extras = dict(out.pop("extras", {}) or {})
    encoder = out.get("encoder", "ctnet")
    if encoder not in BUILTIN_ENCODERS and encoder in out:
        section = out.pop(encoder)
        extras[encoder] = _convert_encoder_section(encoder, section)
    heads = dict(out.get("heads", {}))
    flags = {k: bool(heads.pop(k)) for k in HALVES_FLAGS if k in heads}
    if any(flags.values()):
        heads["variant"] = "halves"
        extras["halves"] = {k: flags.get(k, False) for k in HALVES_FLAGS}
    out["heads"] = heads
    if extras:
        out["extras"] = extras
    return out


def _convert_encoder_section(name: str, section: dict[str, Any]) -> dict[str, Any]:
    if name != "cnn3d":
        return section
    from ctagrg.extras.cnn3d.config import convert_legacy_cnn3d

    return convert_legacy_cnn3d(section)


def convert_reporter_settings(data: dict[str, Any], encoder_reports_outliers: bool) -> dict[str, Any]:
    """An old ``reporter.json`` object in the current layout. ``ood_fraction`` applied only to encoders reporting an
    outlier fraction (the demo's cnn3d): ``encoder_reports_outliers`` says whether this model's does."""
    out = dict(data)
    postprocess = dict(out.pop("postprocess", {}) or {})
    nodule = out.pop("nodule_size", None)
    if isinstance(nodule, dict) and nodule.pop("enabled", False):
        postprocess["nodule_size"] = nodule
    fraction = out.pop("ood_fraction", None)
    if encoder_reports_outliers and fraction is not None and float(fraction) > 0:
        postprocess["ood_warning"] = {"fraction": float(fraction)}
    if postprocess:
        out["postprocess"] = postprocess
    return out


def convert_model(source: str | Path, target: str | Path) -> Path:
    """Copy the packaged model ``source`` to ``target`` in the current layout and check that it loads (the model
    card is written again). ``target`` must not exist; it appears whole or not at all."""
    from ctagrg.generation.reporter import Reporter

    source, target = Path(source), Path(target)
    for part in ("visual/config.json", "decoder", "tokenizer", "thresholds.json", "preprocess.json"):
        if not (source / part).exists():
            raise FileNotFoundError(f"{source}: not a packaged ctagrg model (missing {part})")
    if target.exists():
        raise FileExistsError(f"{target}: exists; give a new folder")
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    try:
        visual = read_json_object(partial / "visual" / "config.json")
        converted = convert_visual_config(visual)
        (partial / "visual" / "config.json").write_text(json.dumps(converted, indent=2) + "\n", encoding="utf-8")
        settings_path = partial / "reporter.json"
        if settings_path.is_file():
            outliers = converted.get("encoder") == "cnn3d"
            settings = convert_reporter_settings(read_json_object(settings_path), outliers)
            settings_path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        try:
            reporter = Reporter.from_pretrained(partial)
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"{source}: converted, but the result does not load: {exc}") from None
        reporter.save_pretrained(partial)  # the model card in the current layout
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info(f"{source} -> {target}: converted")
    return target
