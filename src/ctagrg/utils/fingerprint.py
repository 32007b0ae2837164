"""A short content fingerprint of a folder (a packaged model), so that outputs can say which model made them."""

from __future__ import annotations

import hashlib
from pathlib import Path


def folder_fingerprint(path: str | Path, length: int = 16) -> str:
    """SHA-256 over every file under ``path`` (relative name and content, in sorted order), as ``length`` hex
    digits. Copies of a folder share it; any changed byte, added or removed file changes it. Reads every byte:
    about a second per GB."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:length]
