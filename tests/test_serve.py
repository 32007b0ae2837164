"""``ctagrg serve``: slice orientation and windowing; the HTTP service end to end on localhost with a tiny model."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ctagrg.labels import LABELS
from ctagrg.serve.app import ServeConfig, make_server, safe_filename
from ctagrg.serve.slices import (
    WINDOWS,
    apply_window,
    display_slice,
    encode_png,
    level_width_to_bounds,
    num_slices,
    volume_to_hu,
    window_bounds,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

THRESHOLDS = [0.0] * 9 + [1.01] * 9  # the first 9 labels always detected, the last 9 never


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.mode == "L"
    return np.asarray(image)


# -- pure functions ------------------------------------------------------------------------------------------------
def marked_slp_volume() -> np.ndarray:
    """(4, 6, 8) SLP volume of zeros with markers in corners of the top (superior-most) slice and one below."""
    v = np.zeros((4, 6, 8), dtype=np.int16)
    v[3, 0, 0] = 1  # superior, right-most, anterior-most
    v[3, 5, 0] = 2  # superior, left-most, anterior
    v[3, 0, 7] = 3  # superior, right, posterior-most
    v[0, 0, 0] = 4  # inferior-most, right, anterior
    return v


def test_display_slice_orientation_and_shapes() -> None:
    v = marked_slp_volume()
    axial = display_slice(v, "axial", 3)  # (W, H): anterior up, patient's right on the screen's left
    assert axial.shape == (8, 6)
    assert (axial[0, 0], axial[0, 5], axial[7, 0]) == (1, 2, 3)
    assert display_slice(v, "axial", 0)[0, 0] == 4
    coronal = display_slice(v, "coronal", 0)  # (D, H): superior up, patient's right on the left
    assert coronal.shape == (4, 6)
    assert (coronal[0, 0], coronal[0, 5], coronal[3, 0]) == (1, 2, 4)
    assert display_slice(v, "coronal", 7)[0, 0] == 3
    sagittal = display_slice(v, "sagittal", 0)  # (D, W): superior up, anterior on the left
    assert sagittal.shape == (4, 8)
    assert (sagittal[0, 0], sagittal[0, 7], sagittal[3, 0]) == (1, 3, 4)
    assert display_slice(v, "sagittal", 5)[0, 0] == 2
    assert [num_slices(v.shape, p) for p in ("axial", "coronal", "sagittal")] == [4, 8, 6]
    # every marker appears exactly once in each plane's stack of slices
    for plane in ("axial", "coronal", "sagittal"):
        stack = np.stack([display_slice(v, plane, i) for i in range(num_slices(v.shape, plane))])
        assert sorted(stack[stack > 0].tolist()) == [1, 2, 3, 4]


def test_display_slice_errors() -> None:
    v = marked_slp_volume()
    with pytest.raises(IndexError, match=r"coronal slice 8 out of range: valid indices are 0\.\.7"):
        display_slice(v, "coronal", 8)
    with pytest.raises(IndexError, match="0..3"):
        display_slice(v, "axial", -1)
    with pytest.raises(ValueError, match="axial, coronal, sagittal"):
        display_slice(v, "oblique", 0)


def test_volume_to_hu_inverts_the_preprocessing_map() -> None:
    hu_min, hu_max, offset = -1000.0, 200.0, 0.449
    hu = np.array([-1000, -999, -600, 0, 37, 199, 200], dtype=np.float32)
    volume = ((hu - hu_min) / (hu_max - hu_min) - offset).astype(np.float32)
    back = volume_to_hu(volume, hu_min=hu_min, hu_max=hu_max, offset=offset)
    assert back.dtype == np.int16 and back.tolist() == hu.astype(int).tolist()


def test_windows_clip_to_the_model_window() -> None:
    assert window_bounds(*WINDOWS["lung"], -1000.0, 200.0) == (-1000.0, 150.0)
    assert window_bounds(*WINDOWS["mediastinum"], -1000.0, 200.0) == (-160.0, 200.0)
    assert window_bounds(*WINDOWS["bone"], -1000.0, 200.0) == (-450.0, 200.0)
    assert level_width_to_bounds(40.0, 400.0) == (-160.0, 240.0)
    with pytest.raises(ValueError, match="outside the model's preprocessing window"):
        window_bounds(300.0, 1000.0, -1000.0, 200.0)
    with pytest.raises(ValueError, match="width"):
        level_width_to_bounds(40.0, 0.0)


def test_apply_window_and_png_round_trip() -> None:
    image = np.array([[-1200, -160, 0], [200, 240, 1000]], dtype=np.int16)
    gray = apply_window(image, -160.0, 200.0)
    assert gray.dtype == np.uint8 and gray.tolist() == [[0, 0, 113], [255, 255, 255]]
    assert np.array_equal(decode_png(encode_png(gray)), gray)
    with pytest.raises(ValueError, match="2D uint8"):
        encode_png(gray.astype(np.float32))


def test_safe_filename() -> None:
    assert safe_filename("my scan (1).nii.gz") == "my_scan__1_.nii.gz"
    assert safe_filename("..%2F..%2Fetc.nii") == "_2F.._2Fetc.nii"
    assert safe_filename("x" * 300 + ".nrrd").endswith(".nrrd") and len(safe_filename("x" * 300 + ".nrrd")) == 100


# -- the service ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer_dir: Path) -> Path:
    from test_reporter import SHAPE, tiny_decoder, tiny_visual

    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import Reporter, ReporterConfig
    from ctagrg.models.decoder import load_tokenizer

    assert SHAPE == (12, 32, 32)  # marked_nifti below covers exactly this grid
    torch.manual_seed(0)
    reporter = Reporter(tiny_visual(), tiny_decoder(), load_tokenizer(gpt2_tokenizer_dir), THRESHOLDS,
                        PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE),
                        ReporterConfig(generation=GenerationSettings(max_new_tokens=6)))
    return reporter.save_pretrained(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[Any]:
    from ctagrg.generation.reporter import Reporter

    srv = make_server(Reporter.from_pretrained(model_dir), host="127.0.0.1", port=0,
                      config=ServeConfig(max_upload_mb=0.05, keep=2, log_requests=False))  # 0.05 MiB = 52428 bytes
    # a short poll interval only makes shutdown() return sooner; nothing waits on time
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()
    assert not srv.service.workdir.exists()  # uploads leave nothing behind


def call(server: Any, path: str, data: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET (or a POST when ``data`` is given); HTTP errors are returned too."""
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data, method="POST" if data is not None
                                     else "GET", headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def call_json(server: Any, path: str, data: bytes | None = None) -> tuple[int, dict[str, Any]]:
    status, ctype, body = call(server, path, data)
    assert ctype == "application/json"
    return status, json.loads(body)


# HU of the four markers; with the mediastinum window (-160, 200) they map to 255, 128, 64 and 191.
MARKERS = {"superior right anterior": 200, "superior left anterior": 20, "superior right posterior": -70,
           "inferior right anterior": 110}


def marked_nifti(tmp_path: Path) -> bytes:
    """A RAS NIfTI (32 × 32 × 12 voxels of 4 × 4 × 8 mm) of air with a marker voxel in four corners.

    Its grid is exactly the tiny model's (12, 32, 32) at (8, 4, 4) mm, so preprocessing only reorients it.
    """
    import nibabel as nib

    hu = np.full((32, 32, 12), -1000, dtype=np.int16)  # RAS: index 0 → 31 runs toward Right, Anterior, Superior
    hu[31, 31, 11] = MARKERS["superior right anterior"]
    hu[0, 31, 11] = MARKERS["superior left anterior"]
    hu[31, 0, 11] = MARKERS["superior right posterior"]
    hu[31, 31, 0] = MARKERS["inferior right anterior"]
    path = tmp_path / "marked.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([4.0, 4.0, 8.0, 1.0])), path)
    return path.read_bytes()


def test_health_model_and_page(server: Any) -> None:
    assert call_json(server, "/api/health") == (200, {"status": "ok"})
    status, info = call_json(server, "/api/model")
    assert status == 200 and info["labels"] == list(LABELS)
    assert list(info["thresholds"].values()) == pytest.approx(THRESHOLDS)
    assert info["preprocess"]["shape"] == [12, 32, 32] and info["preprocess"]["axcodes"] == "SLP"
    assert "not for diagnostic use" in info["intended_use"]
    assert info["windows"] == {"lung": [-1000.0, 150.0], "mediastinum": [-160.0, 200.0], "bone": [-450.0, 200.0]}
    status, ctype, page = call(server, "/")
    assert status == 200 and ctype.startswith("text/html")
    assert b"Not for diagnostic use" in page and b"/api/report?filename=" in page
    assert b"http://" not in page and b"https://" not in page  # nothing loaded from outside: works offline
    assert call_json(server, "/nowhere")[0] == 404


def test_report_and_oriented_slices(server: Any, tmp_path: Path) -> None:
    status, result = call_json(server, "/api/report?filename=marked.nii.gz", marked_nifti(tmp_path))
    assert status == 200, result
    assert list(result) == ["id", "input", "report", "abnormalities", "seconds", "shape", "spacing", "hu_window"]
    assert result["input"] == "marked.nii.gz" and result["report"].strip()
    assert result["shape"] == [12, 32, 32] and result["spacing"] == [8.0, 4.0, 4.0]
    assert result["hu_window"] == [-1000.0, 200.0]
    abn = result["abnormalities"]
    assert list(abn) == list(LABELS)
    for label, threshold in zip(LABELS, THRESHOLDS, strict=True):
        a = abn[label]
        assert set(a) == {"probability", "detected", "threshold", "sentence"}
        assert a["threshold"] == pytest.approx(threshold) and a["detected"] == (a["probability"] >= a["threshold"])
        assert (a["sentence"] is not None) == a["detected"]
    assert [k for k, a in abn.items() if a["detected"]] == list(LABELS[:9])
    assert call_json(server, f"/api/scans/{result['id']}") == (200, result)

    def slice_of(plane: str, index: int) -> np.ndarray:
        status, ctype, body = call(server, f"/api/scans/{result['id']}/slice/{plane}/{index}.png?window=mediastinum")
        assert (status, ctype) == (200, "image/png")
        return decode_png(body)

    # Expected images: air is black, each marker where the radiological convention puts it (see slices.py).
    sra, sla, srp, ira = 255, 128, 64, 191
    expected = {("axial", 11): {(0, 0): sra, (0, 31): sla, (31, 0): srp},  # A up, R left
                ("axial", 0): {(0, 0): ira},
                ("coronal", 0): {(0, 0): sra, (0, 31): sla, (11, 0): ira},  # S up, R left; slice 0 = anterior
                ("coronal", 31): {(0, 0): srp},
                ("sagittal", 0): {(0, 0): sra, (0, 31): srp, (11, 0): ira},  # S up, A left; slice 0 = right
                ("sagittal", 31): {(0, 0): sla}}
    sizes = {"axial": (32, 32), "coronal": (12, 32), "sagittal": (12, 32)}
    for (plane, index), marks in expected.items():
        image = slice_of(plane, index)
        assert image.shape == sizes[plane]
        want = np.zeros(sizes[plane], dtype=np.int32)
        for (row, col), value in marks.items():
            want[row, col] = value
        assert np.abs(image.astype(np.int32) - want).max() <= 1, (plane, index)
    # ?wl=&ww= is the same window as the mediastinum preset
    status, _, body = call(server, f"/api/scans/{result['id']}/slice/axial/11.png?wl=40&ww=400")
    assert status == 200 and np.abs(decode_png(body).astype(int) - slice_of("axial", 11)).max() <= 1


def test_slice_errors(server: Any, tmp_path: Path) -> None:
    status, result = call_json(server, "/api/report?filename=marked.nii.gz", marked_nifti(tmp_path))
    assert status == 200
    base = f"/api/scans/{result['id']}/slice"
    status, err = call_json(server, f"{base}/coronal/32.png")
    assert status == 404 and "0..31" in err["error"]
    assert call_json(server, f"{base}/axial/-1.png")[0] == 404
    status, err = call_json(server, f"{base}/oblique/0.png")
    assert status == 400 and "axial, coronal, sagittal" in err["error"]
    status, err = call_json(server, f"{base}/axial/0.png?window=brain")
    assert status == 400 and "lung, mediastinum, bone" in err["error"]
    assert call_json(server, f"{base}/axial/0.png?wl=40")[0] == 400
    status, err = call_json(server, "/api/scans/0123456789abcdef")
    assert status == 404 and "unknown scan id" in err["error"]
    assert call_json(server, "/api/scans/0123456789abcdef/slice/axial/0.png")[0] == 404


def test_bad_uploads_are_400_and_the_service_goes_on(server: Any, tmp_path: Path) -> None:
    status, err = call_json(server, "/api/report?filename=x.nii.gz", b"this is not a NIfTI file" * 10)
    assert status == 400 and err["error"].startswith("x.nii.gz: ")
    assert str(server.service.workdir) not in err["error"]  # the user's file name, not our temporary path
    status, err = call_json(server, "/api/report?filename=notes.txt", b"hello")
    assert status == 400 and "notes.txt" in err["error"] and ".nii.gz" in err["error"]
    status, err = call_json(server, "/api/report", b"abc")
    assert status == 400 and "filename" in err["error"]
    status, err = call_json(server, "/api/report?filename=empty.nrrd", b"")
    assert status == 400 and "empty.nrrd" in err["error"] and "empty" in err["error"]
    status, err = call_json(server, "/api/report?filename=big.mha", bytes(60_000))
    assert status == 413 and "big.mha" in err["error"] and "--max-upload-mb" in err["error"]
    status, result = call_json(server, "/api/report?filename=dir%2Fafter%20bad.nii.gz", marked_nifti(tmp_path))
    assert status == 200 and result["input"] == "after bad.nii.gz" and len(result["abnormalities"]) == 18
    assert list(server.service.workdir.iterdir()) == []  # every upload's folder removed


def test_only_the_last_scans_are_kept(server: Any, tmp_path: Path) -> None:
    data = marked_nifti(tmp_path)
    ids = [call_json(server, "/api/report?filename=s.nii.gz", data)[1]["id"] for _ in range(3)]
    assert len(set(ids)) == 3
    assert call_json(server, f"/api/scans/{ids[0]}")[0] == 404  # keep=2: the oldest is gone
    assert all(call_json(server, f"/api/scans/{i}")[0] == 200 for i in ids[1:])


def test_cli_parses_and_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ctagrg.cli.main import build_parser, main

    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port, args.device, args.max_upload_mb, args.keep) == ("127.0.0.1", 8000, "auto",
                                                                                 2048.0, 8)
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a packaged ctagrg model" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--keep", "0"]) == 2
    assert "--keep" in capsys.readouterr().err


def test_cli_serves_until_interrupted_then_cleans_up(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    import signal

    from ctagrg.cli.main import main
    from ctagrg.serve.app import ReportServer

    seen: dict[str, Any] = {}

    def serve_then_ctrl_c(self: ReportServer, poll_interval: float = 0.5) -> None:
        seen["url"], seen["workdir"] = self.url, self.service.workdir
        seen["sigterm"] = signal.getsignal(signal.SIGTERM)
        assert seen["workdir"].is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(ReportServer, "serve_forever", serve_then_ctrl_c)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["serve", "--model", str(model_dir), "--port", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert seen["url"].startswith("http://127.0.0.1:") and seen["url"] in out.out and "stopped" in out.err
    assert "not for diagnostic use" in out.out
    assert not seen["workdir"].exists()
    assert seen["sigterm"] is not before and signal.getsignal(signal.SIGTERM) is before  # SIGTERM stops it too
