"""The demo extras' tests: the extras registered with the core's registries, whether or not the installed
package's metadata names the ``ctagrg.plugins`` entry point yet."""

from __future__ import annotations

import pytest

import ctagrg.extras


@pytest.fixture(autouse=True, scope="session")
def _extras_registered() -> None:
    ctagrg.extras.register()
