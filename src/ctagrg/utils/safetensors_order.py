"""Byte-reproducible safetensors files: the header's keys in a fixed order.

safetensors writes its ``__metadata__`` from a hash map, so two runs that save the same tensors with the same
metadata write the keys in different orders, and the files differ in bytes (and cannot be checked by hash).
:func:`sort_header` rewrites the header in place with sorted keys: the same key/value pairs re-ordered have the
same length, so the data offsets do not move.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _encode(header: dict[str, Any]) -> bytes:
    return json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sort_header(path: str | Path) -> bool:
    """Sort the metadata keys and the tensor entries of the safetensors file ``path`` in place.

    Returns whether the file was rewritten. A header that this module would not re-encode byte for byte in its
    own order (a serialisation it does not mirror) is left as it is.
    """
    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        raw = fh.read(size)
        text = raw.rstrip(b" ")
        header = json.loads(text)
        if _encode(header) != text:
            logger.debug("%s: header not re-encodable byte for byte; key order left as written", path)
            return False
        meta = header.pop("__metadata__", None)
        ordered = {**({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}),
                   **dict(sorted(header.items()))}
        fh.seek(8)
        fh.write(_encode(ordered) + raw[len(text):])
    return True
