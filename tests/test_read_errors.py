"""ctagrg.data.read_errors: one error line per scan, and read warnings collected instead of printed."""

from __future__ import annotations

import warnings

import pytest

from ctagrg.data.read_errors import CTReadError, CTReadWarning, collect_read_warnings, error_text


def test_error_text_names_the_scan_once() -> None:
    assert error_text("a.nii", CTReadError("a.nii: truncated")) == "a.nii: truncated"
    assert error_text("a.nii", CTReadError("no voxels")) == "a.nii: no voxels"
    assert error_text("a.nii", KeyError("x")) == "a.nii: KeyError: 'x'"


def test_collect_read_warnings_keeps_each_message_once_and_passes_others_on() -> None:
    with pytest.warns(UserWarning, match="not a read warning") as passed:
        with collect_read_warnings() as messages:
            warnings.warn("b.nii: oblique", CTReadWarning, stacklevel=1)
            warnings.warn("b.nii: oblique", CTReadWarning, stacklevel=1)
            warnings.warn("b.nii: several series", CTReadWarning, stacklevel=1)
            warnings.warn("not a read warning", UserWarning, stacklevel=1)
    assert messages == ["b.nii: oblique", "b.nii: several series"]
    assert [type(w.message) for w in passed] == [UserWarning]
