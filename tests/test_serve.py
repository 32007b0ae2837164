"""``ctagrg serve``: slice orientation and windowing; the HTTP service end to end on localhost with a tiny model."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import select
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ctagrg.labels import LABELS
from ctagrg.serve.app import ServeConfig, safe_filename
from ctagrg.serve.hosts import host_allowed, host_names
from ctagrg.serve.http import Handler, make_server
from ctagrg.serve.slices import (
    WINDOWS,
    apply_window,
    display_slice,
    encode_png,
    level_width_to_bounds,
    num_slices,
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


MAX_VOXELS = 20_000  # the tiny model's (12, 32, 32) = 12288 voxels fit; 64 x 64 x 12 = 49152 do not


@contextlib.contextmanager
def serving(model_dir: Path, **config: Any) -> Iterator[Any]:
    """A server for the tiny model on a free localhost port, serving in a thread; stopped and checked clean after."""
    from ctagrg.generation.reporter import Reporter

    config = {"max_upload_mb": 0.05, "max_voxels": MAX_VOXELS, "keep": 2, "log_requests": False, **config}
    srv = make_server(Reporter.from_pretrained(model_dir), host="127.0.0.1", port=0, config=ServeConfig(**config))
    # a short poll interval only makes shutdown() return sooner; nothing waits on time
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
    assert not srv.service.workdir.exists()  # uploads leave nothing behind


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[Any]:
    with serving(model_dir) as srv:  # max_upload_mb 0.05 MiB = 52428 bytes
        yield srv


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


def raw_call(server: Any, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, Any]:
    """(status, JSON) of a request with exactly these headers (no Host, Content-Type or Content-Length added)."""
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(body or None)
        resp = conn.getresponse()
        assert resp.headers["Content-Type"] == "application/json"
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def upload_head(server: Any, filename: str, length: int) -> bytes:
    """The request line and headers of an upload of ``length`` bytes, for a raw socket."""
    return (f"POST /api/report?filename={filename} HTTP/1.1\r\nHost: 127.0.0.1:{server.server_address[1]}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """(status, JSON) of the one response the server sends on ``sock`` before closing it."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# HU of the four markers; with the mediastinum window (-160, 200) they map to 255, 128, 64 and 191.
MARKERS = {"superior right anterior": 200, "superior left anterior": 20, "superior right posterior": -70,
           "inferior right anterior": 110}


def nifti_bytes(hu: np.ndarray, tmp_path: Path, name: str = "scan.nii.gz") -> bytes:
    """``hu`` (x, y, z) as a .nii.gz of 4 x 4 x 8 mm voxels."""
    import nibabel as nib

    path = tmp_path / name
    nib.save(nib.Nifti1Image(hu, np.diag([4.0, 4.0, 8.0, 1.0])), path)
    return path.read_bytes()


def itk_bytes(hu_kji: np.ndarray, path: Path) -> bytes:
    """``hu_kji`` written by SimpleITK (compressed) to ``path`` (.nrrd or .mha)."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(hu_kji), str(path), useCompression=True)
    return path.read_bytes()


def dicom_zip(hu: np.ndarray, tmp_path: Path, name: str) -> Path:
    """``hu`` (slices, rows, cols) as a DICOM series in a .zip."""
    from ct_fixtures import write_dicom_series

    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for dcm in write_dicom_series(tmp_path / f"{name}.d", hu, spacing=(8.0, 4.0, 4.0)):
            archive.write(dcm, f"series/{dcm.name}")
    return path


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
    assert b"id=\"warnings\"" in page and b"result.warnings" in page  # a report's warnings are shown
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
        assert set(a) == {"probability", "detected", "threshold", "sentence", "size_mm", "numbers"}
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
    status, err = call_json(server, f"{base}/axial/0.png?wl=abc&ww=1")
    assert status == 400 and err["error"] == "wl='abc': not a number (HU)"
    status, err = call_json(server, f"{base}/axial/0.png?wl=40&ww=nan")
    assert status == 400 and err["error"] == "ww='nan': not a finite number (HU)"
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


def test_oversized_uploads_are_413_before_decoding(server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    import ctagrg.data.ctio as ctio

    def never(path: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the reader was called for {path}")

    monkeypatch.setattr(ctio, "load_ct", never)
    big = np.full((12, 64, 64), -1000, dtype=np.int16)  # 49152 voxels, a few kB compressed
    uploads = {"big.nii.gz": nifti_bytes(big.T, tmp_path), "big.nrrd": itk_bytes(big, tmp_path / "big.nrrd"),
               "big.mha": itk_bytes(big, tmp_path / "big.mha")}
    for name, data in uploads.items():
        assert len(data) < server.service.config.max_upload_bytes
        status, err = call_json(server, f"/api/report?filename={name}", data)
        assert status == 413, err
        assert err["error"].startswith(f"{name}: 64x64x12 = 49,152 voxels exceed the limit of 20,000 voxels")
        assert "--max-voxels" in err["error"]
    status, err = call_json(server, "/api/report?filename=series.zip",
                            dicom_zip(np.zeros((24, 32, 32), np.int16), tmp_path, "series.zip").read_bytes())
    assert status == 413
    assert err["error"] == ("series.zip: its DICOM files hold 24,576 voxels in all, which exceed the limit of "
                            "20,000 voxels (ctagrg serve --max-voxels)")
    zeros = io.BytesIO()  # 17 MiB unpacked (over 2 x 20000 + 16 MiB), 17 kB packed
    with zipfile.ZipFile(zeros, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.dcm", bytes(17 << 20))
    status, err = call_json(server, "/api/report?filename=zeros.zip", zeros.getvalue())
    assert status == 413 and err["error"].startswith("zeros.zip: unpacks to 17.0 MiB, over the 16.0 MiB allowed")
    assert list(server.service.workdir.iterdir()) == []


# -- HTTP hardening ----------------------------------------------------------------------------------------------
def test_uploads_need_the_octet_stream_content_type(server: Any) -> None:
    port = server.server_address[1]
    path = "/api/report?filename=a.nii.gz"
    # urllib, like a cross-site HTML form, sends application/x-www-form-urlencoded unless told otherwise
    request = urllib.request.Request(server.url.rstrip("/") + path, data=b"abc", method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request, timeout=60)
    assert exc.value.code == 415
    assert json.loads(exc.value.read())["error"] == ("a.nii.gz: expected Content-Type: application/octet-stream "
                                                     "(the raw file bytes), got 'application/x-www-form-urlencoded'")
    for ctype in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "multipart/form-data; boundary=x"}):
        status, err = raw_call(server, "POST", path, {"Host": f"127.0.0.1:{port}", "Content-Length": "3", **ctype},
                               b"abc")
        assert status == 415 and err["error"].startswith("a.nii.gz: expected Content-Type"), (ctype, err)
    # parameters and case do not matter: this one reaches the reader, which refuses the bytes
    status, err = raw_call(server, "POST", path, {"Host": f"127.0.0.1:{port}", "Content-Length": "3",
                                                  "Content-Type": "Application/Octet-Stream; x=1"}, b"abc")
    assert status == 400 and err["error"].startswith("a.nii.gz: cannot decompress"), err


def test_requests_must_name_this_server(server: Any) -> None:
    port = server.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert raw_call(server, "GET", "/api/health", {"Host": host}) == (200, {"status": "ok"}), host
    for host in (f"attacker.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", f"evil@127.0.0.1:{port}", ""):
        status, err = raw_call(server, "GET", "/api/model", {"Host": host} if host else {})
        assert status == 403 and "does not name this server" in err["error"] and "DNS rebinding" in err["error"]
    status, err = raw_call(server, "POST", "/api/report?filename=a.nii.gz",
                           {"Host": f"attacker.example:{port}", "Content-Type": "application/octet-stream",
                            "Content-Length": "3"}, b"abc")
    assert status == 403 and "'attacker.example:" in err["error"]


def test_host_names_by_bound_address() -> None:
    loopback = host_names("localhost", "127.0.0.1")
    assert loopback == {"localhost", "127.0.0.1", "::1"}
    assert host_allowed("localhost:8000", loopback, 8000) and not host_allowed("localhost:8001", loopback, 8000)
    assert not host_allowed("192.168.1.7:8000", loopback, 8000)
    one = host_names("ws12.lab", "192.168.1.7", ("ws12.lab.example.org",))
    assert one == {"ws12.lab", "192.168.1.7", "ws12.lab.example.org"}
    assert host_allowed("ws12.lab.example.org:8000", one, 8000) and not host_allowed("localhost:8000", one, 8000)
    assert host_allowed("ws12.lab", one, 80) and not host_allowed("ws12.lab", one, 8000)  # no port means 80
    assert host_names("0.0.0.0", "0.0.0.0") is None and host_names("::", "::") is None
    # bound to all addresses: any IP address (a DNS-rebinding page uses a DNS name), localhost and the extra names
    for header in ("10.0.0.5:8000", "[fe80::1]:8000", "localhost:8000", "ws12:8000"):
        assert host_allowed(header, None, 8000, ("ws12",)), header
    for header in ("attacker.example:8000", "10.0.0.5:8001", "10.0.0.5", "a b:8000"):
        assert not host_allowed(header, None, 8000, ("ws12",)), header


def test_bad_numbers_are_4xx_not_500(server: Any, tmp_path: Path) -> None:
    port = server.server_address[1]
    status, err = raw_call(server, "POST", "/api/report?filename=a.nii.gz",
                           {"Host": f"127.0.0.1:{port}", "Content-Type": "application/octet-stream",
                            "Content-Length": "²"})  # str.isdigit() is true for it, int() refuses it
    assert status == 400 and err["error"] == "invalid Content-Length '²'"
    status, result = call_json(server, "/api/report?filename=marked.nii.gz", marked_nifti(tmp_path))
    assert status == 200
    for index in ("9" * 5000, "1" * 10, "%C2%B2", "1e3"):  # int() of 5000 digits raises
        status, err = call_json(server, f"/api/scans/{result['id']}/slice/axial/{index}.png")
        assert status == 404 and "valid indices are 0..11" in err["error"], index


def test_a_client_leaving_mid_answer_is_quiet(server: Any, capsys: pytest.CaptureFixture) -> None:
    client, ours = socket.socketpair()
    client.sendall(f"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1:{server.server_address[1]}\r\n\r\n".encode())
    client.close()  # gone before the answer: writing it raises BrokenPipeError
    handler = Handler(ours, ("client", 0), server)  # handles the request here, in this thread
    ours.close()
    assert handler.close_connection
    assert capsys.readouterr().err == ""  # no traceback, and no second exception escaped


def test_too_many_uploads_are_503_busy(model_dir: Path, tmp_path: Path) -> None:
    data = marked_nifti(tmp_path)
    with serving(model_dir, max_pending=1) as srv, socket.create_connection(srv.server_address[:2]) as first:
        first.sendall(upload_head(srv, "first.nii.gz", len(data)) + data[:100])
        deadline = time.monotonic() + 30
        while not any(srv.service.workdir.iterdir()):  # the first upload's folder: it holds the only slot
            assert time.monotonic() < deadline, "the first upload never started"
            time.sleep(0.01)
        status, err = call_json(srv, "/api/report?filename=second.nii.gz", data)
        assert status == 503
        assert err["error"] == ("second.nii.gz: busy, try again: the server is already receiving or reporting 1 "
                                "uploads (ctagrg serve --max-pending)")
        first.sendall(data[100:])
        status, result = read_response(first)
        assert status == 200 and result["input"] == "first.nii.gz"
        assert call_json(srv, "/api/report?filename=third.nii.gz", data)[0] == 200  # the slot was given back


def test_a_stalled_upload_times_out_and_frees_its_slot(model_dir: Path, tmp_path: Path) -> None:
    data = marked_nifti(tmp_path)
    # 0.1 KiB/s: the 100 bytes keep the upload on pace ~1 s beyond the silence timeout, so the stall ends it
    with serving(model_dir, max_pending=1, timeout_s=0.3, min_upload_rate_kib=0.1) as srv, \
            socket.create_connection(srv.server_address[:2]) as stalled:
        stalled.sendall(upload_head(srv, "slow.nii.gz", len(data)) + data[:100])  # and then nothing
        stalled.settimeout(30)
        status, err = read_response(stalled)
        assert status == 408
        assert err["error"] == (f"slow.nii.gz: upload stalled after 100 of {len(data)} bytes: no data for 0.3 s "
                                f"(ctagrg serve --timeout)")
        assert call_json(srv, "/api/report?filename=next.nii.gz", data)[0] == 200


def test_trickling_uploads_are_dropped_and_others_served(model_dir: Path, tmp_path: Path) -> None:
    """Two clients that hold both upload slots by sending one byte every 50 ms (never silent for --timeout) are
    dropped once behind the minimum rate, and a normal upload then goes through within seconds."""
    import re

    data, slow = marked_nifti(tmp_path), bytes(40_000)  # at 20 bytes a second, `slow` would take 33 minutes
    outcomes: dict[str, Any] = {}

    def trickle(srv: Any, name: str) -> None:
        with socket.create_connection(srv.server_address[:2], timeout=30) as sock:
            sock.sendall(upload_head(srv, name, len(slow)))
            for sent in range(len(slow)):
                if select.select([sock], [], [], 0.05)[0]:  # the server answered: stop sending
                    break
                sock.sendall(slow[sent:sent + 1])
            try:
                outcomes[name] = read_response(sock)
            except ConnectionResetError:  # a byte sent as the server closed: the kernel resets, the 408 is lost
                outcomes[name] = "reset"

    start = time.monotonic()
    with serving(model_dir, max_pending=2, timeout_s=2.0, min_upload_rate_kib=4) as srv:
        clients = [threading.Thread(target=trickle, args=(srv, f"slow{i}.nii.gz")) for i in range(2)]
        for client in clients:
            client.start()
        while len(list(srv.service.workdir.iterdir())) < 2:  # both uploads started: they hold both slots
            assert time.monotonic() < start + 30, "the trickling uploads never started"
            time.sleep(0.01)
        assert call_json(srv, "/api/report?filename=third.nii.gz", data)[0] == 503
        for client in clients:
            client.join(30)
        status, result = call_json(srv, "/api/report?filename=third.nii.gz", data)
        seconds = time.monotonic() - start
    assert status == 200 and result["input"] == "third.nii.gz"
    assert seconds < 20
    assert set(outcomes) == {"slow0.nii.gz", "slow1.nii.gz"}
    for name, outcome in outcomes.items():
        if outcome != "reset":
            assert outcome[0] == 408 and re.fullmatch(
                rf"{name}: upload too slow: [0-9]+ of 40000 bytes in [0-9.]+ s, under the minimum of 4 KiB/s after "
                r"the first 2 s \(ctagrg serve --min-upload-rate\)", outcome[1]["error"]), outcome


def test_paced_body_keeps_the_minimum_rate() -> None:
    """The two limits of an upload body, on a socket pair: a client silent for the timeout is stalled; one that
    keeps sending, but too little, is dropped when the bytes so far fall behind the minimum rate."""
    from ctagrg.serve.app import ApiError
    from ctagrg.serve.http import PacedBody

    client, ours = socket.socketpair()
    with client, ours, ours.makefile("rb") as rfile:
        body = PacedBody(rfile, ours, name="x.nii", length=10_000, timeout_s=0.2, min_rate=10_000.0)
        with pytest.raises(ApiError) as exc:
            body.read1(100)
    assert (exc.value.status, exc.value.message) == (408, "x.nii: upload stalled after 0 of 10000 bytes: no data "
                                                          "for 0.2 s (ctagrg serve --timeout)")
    client, ours = socket.socketpair()
    with client, ours, ours.makefile("rb") as rfile:
        body = PacedBody(rfile, ours, name="x.nii", length=10_000, timeout_s=0.2, min_rate=10_000.0)
        start = time.monotonic()
        client.sendall(b"a" * 5000)
        assert body.read1(10_000) == b"a" * 5000  # on pace until 0.2 s + 5000 bytes / 10000 bytes/s = 0.7 s
        with pytest.raises(ApiError) as exc:
            while True:  # a byte every 50 ms: never silent for 0.2 s, and 1 % of the rate
                client.sendall(b"b")
                assert body.read1(10_000) == b"b"
                time.sleep(0.05)
        seconds = time.monotonic() - start
    assert exc.value.status == 408 and exc.value.message.startswith("x.nii: upload too slow: 50")
    assert " of 10000 bytes in " in exc.value.message and exc.value.message.endswith(
        " s, under the minimum of 9.76562 KiB/s after the first 0.2 s (ctagrg serve --min-upload-rate)")
    assert 0.7 <= seconds < 5  # not before the pace allows


def test_upload_names() -> None:
    from ctagrg.serve.app import ApiError, upload_name

    assert upload_name("C:\\scans\\a b.NII.GZ") == "a b.NII.GZ" and upload_name("x/.hidden.nrrd") == ".hidden.nrrd"
    for name, suffix in ((".nii.gz", ".nii.gz"), ("dir/.nii", ".nii"), ("...mha", ".mha"), (" . .ZIP", ".zip")):
        with pytest.raises(ApiError) as exc:
            upload_name(name)
        assert exc.value.status == 400
        assert f"no file name before the extension {suffix}: give the file a name, e.g. scan{suffix}" in (
            exc.value.message)
    assert safe_filename(".hidden.nrrd") == "hidden.nrrd" and safe_filename("..nii.gz") == "upload.nii.gz"


def test_cli_parses_and_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ctagrg.cli.main import build_parser, main

    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port, args.device, args.max_upload_mb, args.keep) == ("127.0.0.1", 8000, "auto",
                                                                                 2048.0, 8)
    assert (args.max_voxels, args.max_pending, args.timeout, args.allow_host) == (600_000_000, 2, 60.0, [])
    assert args.min_upload_rate == 64.0
    defaults = ServeConfig()  # the CLI writes its defaults out (no numpy import for --help): they must agree
    assert (defaults.max_upload_mb, defaults.max_voxels, defaults.max_pending, defaults.timeout_s, defaults.keep,
            defaults.min_upload_rate_kib) == (args.max_upload_mb, args.max_voxels, args.max_pending, args.timeout,
                                              args.keep, args.min_upload_rate)
    args = build_parser().parse_args(["serve", "--model", "m", "--port", "65535", "--allow-host", "a",
                                      "--allow-host", "b", "--max-voxels", "1_000"])
    assert (args.port, args.allow_host, args.max_voxels) == (65535, ["a", "b"], 1000)
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a packaged ctagrg model" in capsys.readouterr().err
    bad = [("--port", "65536", "expected a port number 0..65535, got 65536"), ("--port", "-1", "0..65535"),
           ("--port", "²", "expected a port number 0..65535, got '²'"),
           ("--max-upload-mb", "nan", "expected a finite number > 0, got nan"), ("--max-upload-mb", "inf", "inf"),
           ("--max-upload-mb", "0", "got 0"), ("--max-upload-mb", "-5", "got -5"), ("--timeout", "0", "got 0"),
           ("--keep", "0", "expected an integer >= 1, got 0"), ("--max-voxels", "1e9", "got '1e9'"),
           ("--max-pending", "0", "got 0"), ("--min-upload-rate", "0", "got 0"),
           ("--min-upload-rate", "nan", "got nan")]
    for flag, value, message in bad:
        with pytest.raises(SystemExit) as exc:
            main(["serve", "--model", str(tmp_path), flag, value])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"argument {flag}: " in err and message in err, (flag, value, err)


def test_cli_serves_until_interrupted_then_cleans_up(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    import signal

    from ctagrg.cli.main import main
    from ctagrg.serve.http import ReportServer

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


def test_warnings_from_reading_an_upload_are_in_the_result(model_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    import ctagrg.data.ctio as ctio

    real = ctio.load_ct

    def load_with_warning(path, metadata=None, **kwargs):
        warnings.warn(f"{path}: irregular slice spacing; missing slices?", ctio.CTReadWarning, stacklevel=2)
        return real(path, metadata, **kwargs)

    monkeypatch.setattr(ctio, "load_ct", load_with_warning)
    with serving(model_dir) as srv:
        status, result = call_json(srv, "/api/report?filename=marked.nii.gz", marked_nifti(tmp_path))
    assert status == 200, result
    # named by the upload's file name, not the server's temporary path
    assert result["warnings"][0] == "marked.nii.gz: irregular slice spacing; missing slices?"
