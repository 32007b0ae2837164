"""ctagrg: abnormality-guided report generation for 3D chest CT (CT-AGRG, Di Piazza et al., ISBI 2025).

Research software. Not for diagnostic use.

Heavy modules (torch, transformers) are imported lazily, so ``import ctagrg`` and ``ctagrg --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from ctagrg.labels import LABELS

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first access (PEP 562).
_LAZY = {
    "preprocess_file": "ctagrg.data.preprocess",
    "PreprocessConfig": "ctagrg.data.preprocess",
    "load_ct": "ctagrg.data.ctio",
    "Reporter": "ctagrg.generation.reporter",
    "Report": "ctagrg.generation.reporter",
}

__all__ = ["LABELS", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ctagrg' has no attribute {name!r}")
