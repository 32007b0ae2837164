"""Saliency where users get it: Reporter.report_volumes(saliency=True), ctagrg report --saliency DIR (NIfTI maps
aligned with the original scan) and ctagrg serve --saliency (the viewer's overlay route)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_report_cli import model_dir, write_scan  # noqa: F401 (the module's tiny packaged model)

from ctagrg.cli.main import main as cli_main
from ctagrg.generation.reporter import Reporter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reporter_gives_a_map_per_detected_abnormality_only_when_asked(model_dir: Path) -> None:  # noqa: F811
    from ctagrg.generation.saliency import peak_index

    reporter = Reporter.from_pretrained(model_dir)
    volume = torch.randn(1, *reporter.preprocess.shape).numpy() * 0.2
    [plain] = reporter.report_volumes(volume)
    [report] = reporter.report_volumes(volume, saliency=True)
    assert plain.saliency == {} and "saliency" not in json.dumps(plain.to_dict())
    assert report.text == plain.text  # the maps change nothing else
    assert sorted(report.saliency) == sorted(report.detected) and report.detected
    line = report.to_dict()
    for label, saliency in report.saliency.items():
        assert saliency.shape == tuple(reporter.preprocess.shape) and saliency.dtype == np.float32
        assert 0.0 <= saliency.min() and saliency.max() <= 1.0
        assert line["abnormalities"][label]["saliency"] == {"peak": list(peak_index(saliency))}
    assert all("saliency" not in a for label, a in line["abnormalities"].items() if label not in report.saliency)


def test_report_saliency_writes_nifti_maps_aligned_with_the_scan(model_dir: Path, tmp_path: Path,  # noqa: F811
                                                                  capsys: pytest.CaptureFixture) -> None:
    import nibabel as nib

    from ctagrg.data.ctio import load_ct
    from ctagrg.data.preprocess import output_affine

    scan = write_scan(tmp_path / "scans" / "case_1.nii.gz", 3)
    out = tmp_path / "maps"
    assert cli_main(["report", str(scan), "--model", str(model_dir), "--out", str(tmp_path / "r.jsonl"),
                     "--saliency", str(out), "--quiet"]) == 0
    [line] = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    detected = [label for label, a in line["abnormalities"].items() if a["detected"]]
    files = sorted(p.name for p in (out / "case_1").iterdir())
    assert files == sorted("_".join(label.lower().split()) + ".nii.gz" for label in detected)
    reporter = Reporter.from_pretrained(model_dir)
    expected_affine = output_affine(load_ct(scan), reporter.preprocess)
    for label in detected:
        img = nib.load(out / "case_1" / ("_".join(label.lower().split()) + ".nii.gz"))
        data = np.asarray(img.dataobj)
        assert data.shape == tuple(reporter.preprocess.shape) and data.dtype == np.float32
        np.testing.assert_allclose(img.affine, expected_affine, atol=1e-4)
        assert list(np.unravel_index(int(np.argmax(data)), data.shape)) == \
            line["abnormalities"][label]["saliency"]["peak"]


def test_serve_saliency_stores_the_maps_for_the_viewer(model_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    import urllib.request

    from test_serve import call, serving

    with serving(model_dir, saliency=True, max_upload_mb=1.0) as srv:
        body = write_scan(tmp_path / "up.nii.gz", 5).read_bytes()
        request = urllib.request.Request(srv.url.rstrip("/") + "/api/report?filename=up.nii.gz", data=body,
                                         method="POST", headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=120) as resp:
            info = json.loads(resp.read())
        detected = [label for label, a in info["abnormalities"].items() if a["detected"]]
        assert detected and all("peak" in info["abnormalities"][label]["saliency"] for label in detected)
        scan = srv.service.store.get(info["id"])
        assert sorted(scan.saliency) == sorted(detected)
        assert all(m.dtype == np.uint8 and m.shape == scan.hu.shape and m.max() == 255 for m in scan.saliency.values())
        label = detected[0].replace(" ", "%20")
        status, kind, png = call(srv, f"/api/scans/{info['id']}/saliency/{label}/axial/0.png")
        assert status == 200 and kind == "image/png" and png.startswith(b"\x89PNG")
