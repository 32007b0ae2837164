"""``ctagrg inspect --model DIR``: the plan of that packaged model's preprocess.json, not the paper's defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ct_fixtures import phantom_hu, write_nifti

from ctagrg.cli.main import main
from ctagrg.config import to_dict
from ctagrg.data.preprocess import PreprocessConfig


def scan(tmp_path: Path) -> Path:
    """20 x 20 x 10 voxels of 2 x 2 x 5 mm, LPS."""
    return write_nifti(tmp_path / "p.nii.gz", phantom_hu((20, 20, 10)), np.diag([-2.0, -2.0, 5.0, 1.0]))


def model_folder(tmp_path: Path, config: PreprocessConfig) -> Path:
    """A folder holding ``preprocess.json`` as ``Reporter.save_pretrained`` writes it (``to_dict`` of the config)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "preprocess.json").write_text(json.dumps(to_dict(config)), encoding="utf-8")
    return folder


def test_inspect_model_uses_its_preprocess_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = scan(tmp_path)
    model = model_folder(tmp_path, PreprocessConfig(spacing=(2.5, 1.0, 1.0), shape=(24, 32, 32), hu_min=-900.0,
                                                    hu_max=300.0, offset=0.25))
    assert main(["inspect", str(path), "--model", str(model), "--run"]) == 0
    out = capsys.readouterr().out
    assert ("preprocess:   to SLP, 2.5 x 1 x 1 mm, 24 x 32 x 32, HU window [-900, 300] -> [0, 1] - 0.25"
            in out)
    assert f"plan from:  {model / 'preprocess.json'}\n" in out
    assert "resampled:  20 x 40 x 40" in out  # int(10 * 5 / 2.5) = 20, int(20 * 2 / 1) = 40
    assert "D (S): pad 2 before, 2 after with -0.25 (air)" in out  # the model's offset is its air value
    assert "output:       24 x 32 x 32 float32" in out
    # without --model: the paper's defaults (480 x 480 in plane at 0.75 mm, 240 slices at 1.5 mm)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "plan from:  the paper's defaults" in out and "output:       240 x 480 x 480 float32" in out
    # --set still overrides the model's plan, and says so
    assert main(["inspect", str(path), "--model", str(model), "--set", "shape=[20,40,40]"]) == 0
    out = capsys.readouterr().out
    assert f"plan from:  {model / 'preprocess.json'} with shape=[20,40,40]" in out
    assert "output:       20 x 40 x 40 float32" in out


def test_inspect_model_errors_name_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = scan(tmp_path)
    assert main(["inspect", str(path), "--model", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith(f"{tmp_path / 'missing'}: no such model folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["inspect", str(path), "--model", str(empty)]) == 1
    assert capsys.readouterr().err.startswith(f"{empty}: no preprocess.json")
    with pytest.raises(SystemExit) as exc:  # one source of the plan only
        main(["inspect", str(path), "--model", str(empty), "--config", "x.yaml"])
    assert exc.value.code == 2
