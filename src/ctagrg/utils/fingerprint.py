"""A short content fingerprint of a folder (a packaged model), so that outputs can say which model made them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path


def folder_fingerprint(path: str | Path, parts: Sequence[str] | None = None, length: int = 16) -> str:
    """SHA-256 over the files under ``path`` (relative name and content, in sorted order), as ``length`` hex
    digits. ``parts``: only these top-level entries (files or folders; missing ones are skipped), else all.
    Hidden files and folders (``.DS_Store``, ``.git``) are left out. Copies of a folder share it; a changed byte,
    an added or a removed file in what is hashed changes it. Reads every byte: about a second per GB."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    tops = [root / p for p in parts] if parts is not None else sorted(root.iterdir())
    files = []
    for top in tops:
        if top.name.startswith("."):
            continue
        if top.is_file():
            files.append(top)
        elif top.is_dir():
            files += [f for f in top.rglob("*")
                      if f.is_file() and not any(p.startswith(".") for p in f.relative_to(root).parts)]
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:length]
