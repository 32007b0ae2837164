"""Shared fixtures. Tests needing the real data in ../shared/data skip with a clear reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test when the folder is absent (users' clones do not have it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA} (only present in the developers' checkout and CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(shared_data: Path) -> Path:
    path = shared_data / "gpt2-tokenizer"
    if not (path / "vocab.json").is_file():
        pytest.skip(f"GPT-2 tokenizer files not found in {path}")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: on a shared 2-core machine, thread oversubscription makes small-model
    tests 10-20x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
