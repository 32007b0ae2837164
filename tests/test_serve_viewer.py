"""The viewer's endpoints besides slices: saliency heat maps, the HU of a voxel, ``HEAD``, reloading a scan by id.

The saliency maps are put on the stored scan directly: this tests the route and its rendering; computing maps is
tested with the model (tests of ``ctagrg.generation``).
"""

from __future__ import annotations

import http.client
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_serve import call, call_json, decode_png, marked_nifti, model_dir, server  # noqa: F401 - fixtures

from ctagrg.serve.slices import HEAT_LUT, display_slice, heatmap_rgba, render_heatmap_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def decode_rgba(data: bytes) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGBA"
    return np.asarray(image)


def test_heatmap_colours_and_transparency() -> None:
    image = np.array([[0.0, 0.001, 0.5], [1.0, 7.0, np.nan]], dtype=np.float32)
    rgba = heatmap_rgba(image)
    assert rgba.shape == (2, 3, 4) and rgba.dtype == np.uint8
    assert rgba[0, 0].tolist() == [0, 0, 0, 0] and rgba[1, 2].tolist() == [0, 0, 0, 0]  # 0 and NaN: transparent
    assert rgba[0, 1].tolist() == [0, 0, 0, 0]  # below half a level rounds to 0
    assert rgba[1, 0].tolist() == [255, 255, 255, 255] and rgba[1, 1].tolist() == [255, 255, 255, 255]  # clipped
    # 0.5 is level 128: alpha from 40 % (102) at level 0+ to 255 at 255; between red and yellow
    red, green, blue, alpha = rgba[0, 2].tolist()
    assert alpha == round(102 + 153 * 128 / 255) and 230 < red < 255 and 30 < green < 210 and blue == 0
    levels = np.array([[0, 128, 255]], dtype=np.uint8)  # uint8 maps are levels already
    assert heatmap_rgba(levels).tolist() == [HEAT_LUT[[0, 128, 255]].tolist()]
    assert heatmap_rgba(levels)[0, 1].tolist() == [red, green, blue, alpha]  # level 128 is 0.5
    # alpha and brightness never fall as the value rises
    assert (np.diff(HEAT_LUT[1:, 3].astype(int)) >= 0).all() and (np.diff(HEAT_LUT[1:, :3].sum(1)) >= 0).all()
    with pytest.raises(IndexError, match=r"axial slice 2 out of range: valid indices are 0\.\.1"):
        render_heatmap_png(np.zeros((2, 3, 4), np.float32), "axial", 2)


def stored_scan(server: Any, tmp_path: Path) -> tuple[dict[str, Any], Any]:  # noqa: F811
    status, result = call_json(server, "/api/report?filename=marked.nii.gz", marked_nifti(tmp_path))
    assert status == 200, result
    return result, server.service.store.get(result["id"])


def test_saliency_png_lies_over_its_slice(server: Any, tmp_path: Path) -> None:  # noqa: F811
    result, scan = stored_scan(server, tmp_path)
    assert scan.saliency == {}
    base = f"/api/scans/{result['id']}"
    label = "Lung nodule"  # a space: the URL carries it %-encoded
    heat = np.zeros(scan.hu.shape, dtype=np.float32)
    heat[11, 0, 0] = 1.0  # the superior, right-most, anterior-most voxel: the marked one
    heat[11, 31, 0] = 0.5  # superior, left-most, anterior: another marker
    scan.saliency[label] = heat
    for plane, index in (("axial", 11), ("coronal", 0), ("sagittal", 0), ("sagittal", 31)):
        status, ctype, body = call(server, f"{base}/saliency/Lung%20nodule/{plane}/{index}.png")
        assert (status, ctype) == (200, "image/png")
        rgba = decode_rgba(body)
        _, _, grey = call(server, f"{base}/slice/{plane}/{index}.png?window=mediastinum")
        slice_ = decode_png(grey)
        assert rgba.shape[:2] == slice_.shape  # the same pixels as the slice
        # painted exactly where the map is non-zero, and the markers (bright on the slice) are among those pixels
        painted = rgba[..., 3] > 0
        assert np.array_equal(painted, display_slice(heat, plane, index) > 0), (plane, index)
        assert (slice_[painted] > 0).all(), (plane, index)
    top = decode_rgba(call(server, f"{base}/saliency/Lung%20nodule/axial/11.png")[2])
    assert top[0, 0].tolist() == [255, 255, 255, 255]  # 1.0: right on the left, anterior up
    assert top[0, 31].tolist() == heatmap_rgba(np.array([0.5])).tolist()[0]  # 0.5: the patient's left
    assert decode_rgba(call(server, f"{base}/saliency/Lung%20nodule/axial/5.png")[2])[..., 3].max() == 0
    scan.saliency["Atelectasis"] = np.rint(heat * 255).astype(np.uint8)  # the same map as uint8 levels
    assert np.array_equal(decode_rgba(call(server, f"{base}/saliency/Atelectasis/axial/11.png")[2]), top)


def test_saliency_errors(server: Any, tmp_path: Path) -> None:  # noqa: F811
    result, scan = stored_scan(server, tmp_path)
    base = f"/api/scans/{result['id']}/saliency"
    status, err = call_json(server, f"{base}/Cardiomegaly/axial/0.png")
    assert status == 404 and err["error"] == (f"scan {result['id']}: no saliency map for 'Cardiomegaly' (maps are "
                                              f"computed for detected abnormalities only; this scan has: none)")
    scan.saliency["Cardiomegaly"] = np.zeros(scan.hu.shape, dtype=np.float32)
    assert call(server, f"{base}/Cardiomegaly/coronal/31.png")[0] == 200
    status, err = call_json(server, f"{base}/Cardiomegaly/coronal/32.png")
    assert status == 404 and "valid indices are 0..31" in err["error"]
    status, err = call_json(server, f"{base}/Heart%20attack/axial/0.png")
    assert status == 400 and err["error"].startswith("unknown abnormality 'Heart attack'")
    status, err = call_json(server, f"{base}/Cardiomegaly/oblique/0.png")
    assert status == 400 and "axial, coronal, sagittal" in err["error"]
    status, err = call_json(server, f"{base}/Atelectasis/axial/0.png")
    assert status == 404 and err["error"].endswith("this scan has: Cardiomegaly)")


def test_voxel_hu(server: Any, tmp_path: Path) -> None:  # noqa: F811
    result, _ = stored_scan(server, tmp_path)
    base = f"/api/scans/{result['id']}/voxel"
    # marked_nifti's superior-right-anterior marker, 200 HU, lands at SLP (11, 0, 0); air elsewhere
    assert call_json(server, f"{base}/11/0/0") == (200, {"index": [11, 0, 0], "hu": 200})
    assert call_json(server, f"{base}/11/31/0") == (200, {"index": [11, 31, 0], "hu": 20})
    assert call_json(server, f"{base}/5/5/5") == (200, {"index": [5, 5, 5], "hu": -1000})
    status, err = call_json(server, f"{base}/12/0/0")
    assert status == 404 and err["error"] == "voxel index d='12' out of range: valid indices are 0..11"
    for bad in ("-1/0/0", "0/x/0", "0/0/1e1"):
        assert call_json(server, f"{base}/{bad}")[0] == 404, bad


def head(server: Any, path: str) -> tuple[int, dict[str, str], bytes]:  # noqa: F811
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    try:
        conn.request("HEAD", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.headers), resp.read()
    finally:
        conn.close()


def test_head_answers_like_get_without_a_body(server: Any, tmp_path: Path) -> None:  # noqa: F811
    status, headers, body = head(server, "/")
    _, _, page = call(server, "/")
    assert (status, body) == (200, b"")
    assert headers["Content-Type"] == "text/html; charset=utf-8" and int(headers["Content-Length"]) == len(page)
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    result, _ = stored_scan(server, tmp_path)
    status, headers, body = head(server, f"/api/scans/{result['id']}/slice/axial/0.png")
    assert (status, headers["Content-Type"], body) == (200, "image/png", b"")
    status, headers, body = head(server, "/api/scans/0123456789abcdef")
    assert (status, headers["Content-Type"], body) == (404, "application/json", b"")


def test_a_scan_reloads_by_id_with_its_saliency_peaks(server: Any, tmp_path: Path) -> None:  # noqa: F811
    """The page's ``#<id>`` permalink reads ``GET /api/scans/<id>``: the stored result, as the upload returned it,
    including what the service added to it (here a saliency peak)."""
    result, scan = stored_scan(server, tmp_path)
    assert call_json(server, f"/api/scans/{result['id']}") == (200, result)
    scan.info["abnormalities"]["Atelectasis"]["saliency"] = {"peak": [11, 0, 0]}
    status, again = call_json(server, f"/api/scans/{result['id']}")
    assert status == 200 and again["abnormalities"]["Atelectasis"]["saliency"] == {"peak": [11, 0, 0]}
