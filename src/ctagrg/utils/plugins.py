"""Plug-ins: code outside the published method (the demo's extras, a user's own encoder) that attaches to the
core through its registries, never through imports from the core.

A plug-in is a callable named in the ``ctagrg.plugins`` entry-point group of an installed distribution (ctagrg's
own demo extras: ``ctagrg.extras:register``). :func:`load_plugins` calls each one once; it registers what it
provides (``ctagrg.models.registry.register_encoder``, ``register_heads``, ``ctagrg.generation.postprocess.
register_postprocessor``, ``ctagrg.training.extensions.register_extension``). Registries call it when asked for a
name they do not hold yet.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)

GROUP = "ctagrg.plugins"
_loaded: set[str] = set()


def missing_hint() -> str:
    """``"; ..."`` saying how to fix it when no plug-in is installed at all (an editable install made before the
    entry point existed keeps its old metadata), else ``""``: for the registries' unknown-name errors."""
    if any(True for _ in entry_points(group=GROUP)):
        return ""
    return f"; no {GROUP!r} entry point is installed: reinstall ctagrg (pip install -e .)"


def load_plugins() -> list[str]:
    """Call every ``ctagrg.plugins`` entry point not called yet; returns the names of those called now. A plug-in
    that fails to import is logged and skipped (its names then stay unknown, and the lookup's error says so)."""
    called = []
    for ep in entry_points(group=GROUP):
        if ep.name in _loaded:
            continue
        _loaded.add(ep.name)
        try:
            ep.load()()
        except Exception as exc:  # a broken third-party plug-in must not break the core
            logger.warning(f"plug-in {ep.name} ({ep.value}) failed to load: {exc}")
            continue
        called.append(ep.name)
    return called
