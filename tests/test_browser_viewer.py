"""The viewer page in a real headless Chromium (Selenium): upload, report, orientation, navigation, heat maps,
invented vs measured numbers, permalinks, downloads, errors. Marked ``browser``; skipped only without Chromium.

The scan is ``test_serve.marked_nifti``: air with marker voxels in known corners, on exactly the tiny model's
(12, 32, 32) grid at (8, 4, 4) mm, so the preprocessed volume (D, H, W) in SLP holds them at known indices:

- superior right anterior, 200 HU: (11, 0, 0); superior left anterior, 20 HU: (11, 31, 0);
- superior right posterior, -70 HU: (11, 0, 31); inferior right anterior, 110 HU: (0, 0, 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser_fixtures import chrome, console_errors, downloaded, wait_for  # noqa: F401 - chrome is a fixture
from test_serve import THRESHOLDS, call_json, marked_nifti, model_dir, serving  # noqa: F401 - model_dir: fixture

from ctagrg.labels import LABELS

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_torch_thread")]
ORIENTATION = {"axial": "APRL", "coronal": "SIRL", "sagittal": "SIAP"}  # top, bottom, left, right
DETECTED = [label for label, t in zip(LABELS, THRESHOLDS, strict=True) if t <= 0.0]


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[Any]:  # noqa: F811
    with serving(model_dir, max_upload_mb=1.0, keep=8) as srv:
        yield srv


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    path = folder / "marked.nii.gz"
    path.write_bytes(marked_nifti(folder))
    return path


@pytest.fixture
def page(chrome: Any, server: Any) -> Any:  # noqa: F811
    """The viewer, freshly loaded at 1280 x 1000 with nothing shown; checked free of console errors after, except
    those a test expects (``page.expected_errors``, e.g. the 400 of a bad upload)."""
    chrome.set_window_size(1280, 1000)
    chrome.get("about:blank")
    chrome.get(server.url)
    wait_for(lambda: chrome.find_element("id", "model-info").text, "the model info in the footer")
    console_errors(chrome)  # start clean
    chrome.expected_errors = ()
    yield chrome
    assert console_errors(chrome, chrome.expected_errors) == []


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def upload(driver: Any, path: Path, *, folder: bool = False) -> None:
    """Choose ``path`` (a file, or a folder for the DICOM folder picker) and press Generate report."""
    driver.find_element("id", "folder" if folder else "file").send_keys(str(path))
    driver.find_element("id", "go").click()


def wait_done(driver: Any) -> str:
    """Wait for the report of an upload; returns the scan id, from the permalink."""
    wait_for(lambda: "done in" in driver.find_element("id", "status").text, "the upload's 'done in' status")
    return wait_for(lambda: js(driver, "return location.hash.slice(1)"), "the #<id> permalink")


def slider(driver: Any, plane: str) -> int:
    return int(js(driver, f"return document.querySelector('[data-plane={plane}] input[type=range]').value"))


def slice_src(driver: Any, plane: str) -> str:
    return js(driver, f"return document.querySelector('[data-plane={plane}] img.slice').getAttribute('src')") or ""


def loaded(driver: Any, plane: str, cls: str = "slice") -> bool:
    return js(driver, f"const i = document.querySelector('[data-plane={plane}] img.{cls}'); "
                      "return i.complete && i.naturalWidth > 0")


def pointer_at(driver: Any, plane: str, row: int, col: int) -> Any:
    """ActionChains with the pointer on the centre of image pixel (row, col) of ``plane``'s pane (the image may be
    zoomed and panned; its pane is scrolled into view)."""
    from selenium.webdriver.common.action_chains import ActionChains

    view = driver.find_element("css selector", f"[data-plane={plane}] .view")
    x, y = js(driver, f"""const v = arguments[0], i = v.querySelector('img.slice');
        v.scrollIntoView({{block: 'center'}});
        const r = i.getBoundingClientRect(), c = v.getBoundingClientRect();
        return [r.left + ({col} + 0.5) / i.naturalWidth * r.width - (c.left + c.width / 2),
                r.top + ({row} + 0.5) / i.naturalHeight * r.height - (c.top + c.height / 2)]""", view)
    return ActionChains(driver).move_to_element_with_offset(view, round(x), round(y))


def readout(driver: Any) -> str:
    return driver.find_element("id", "readout").text


def test_upload_report_orientation_and_navigation(page: Any, server: Any, scan_file: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    js(page, "window.statuses = []; new MutationObserver(() => statuses.push(document.getElementById('status')"
             ".textContent)).observe(document.getElementById('status'), {childList: true, characterData: true, "
             "subtree: true});")
    upload(page, scan_file)
    scan_id = wait_done(page)
    statuses = js(page, "return statuses")
    # upload progress, then the stage while the model runs, then done
    assert any(s.startswith("marked.nii.gz: uploading") and s.endswith("%") for s in statuses), statuses
    assert any("the server is reading, preprocessing and reporting the scan" in s for s in statuses), statuses
    status, result = call_json(server, f"/api/scans/{scan_id}")
    assert status == 200 and result["input"] == "marked.nii.gz"
    assert page.find_element("id", "report").text == result["report"].strip()
    assert page.find_element("id", "input").text == "marked.nii.gz"
    rows = page.find_elements("css selector", "#abnormalities tr")
    assert [r.find_elements("tag name", "td")[0].text for r in rows] == list(LABELS)
    assert [r.find_elements("tag name", "td")[0].text for r in rows if "detected" in r.get_attribute("class")] \
        == DETECTED
    for row, label in zip(rows, LABELS, strict=True):
        cells = [td.text for td in row.find_elements("tag name", "td")]
        assert cells[1] == f"{result['abnormalities'][label]['probability']:.3f}"

    # three panes in one row at 1280 px, each with its orientation letters on the right sides of its image
    panes = page.find_elements("css selector", ".pane")
    assert len({p.rect["y"] for p in panes}) == 1 and len(panes) == 3
    for plane, letters in ORIENTATION.items():
        view = page.find_element("css selector", f"[data-plane={plane}] .view").rect
        marks = [page.find_element("css selector", f"[data-plane={plane}] .orient[title={side}]")
                 for side in ("top", "bottom", "left", "right")]
        assert "".join(m.text for m in marks) == letters
        # the letters' centres, against the image's box
        (tx, ty), (bx, by), (lx, ly), (rx, ry) = (
            (m.rect["x"] + m.rect["width"] / 2, m.rect["y"] + m.rect["height"] / 2) for m in marks)
        x0, y0, x1, y1 = view["x"], view["y"], view["x"] + view["width"], view["y"] + view["height"]
        assert ty < y0 and by > y1 and x0 < tx < x1 and x0 < bx < x1, plane
        assert lx < x0 and rx > x1 and y0 < ly < y1 and y0 < ry < y1, plane

    # the wheel moves through slices: 5 notches up from the middle (6) to the top axial slice (11)
    assert slider(page, "axial") == 6
    ActionChains(page).scroll_from_origin(_origin(page, "axial"), 0, -500).perform()
    wait_for(lambda: slider(page, "axial") == 11, "the axial slider at 11 after 5 wheel notches")
    wait_for(lambda: slice_src(page, "axial").startswith(f"/api/scans/{scan_id}/slice/axial/11.png"), "slice 11")
    wait_for(lambda: loaded(page, "axial"), "the axial slice 11 loaded")

    # the superior-left-anterior marker, SLP (11, 31, 0), is at row 0 (anterior), column 31 (patient's left) of the
    # axial image: hovering it reads its HU, clicking it moves the other two panes to it
    pointer_at(page, "axial", 0, 31).perform()
    wait_for(lambda: readout(page) == "axial: voxel (d 11, h 31, w 0) 20 HU", "the HU of the marker")
    pointer_at(page, "axial", 0, 31).click().perform()
    wait_for(lambda: (slider(page, "sagittal"), slider(page, "coronal")) == (31, 0), "sagittal 31, coronal 0")
    assert slider(page, "axial") == 11
    # on the coronal slice 0 the inferior-right-anterior marker (0, 0, 0) is the bottom-left pixel (row 11, col 0)
    wait_for(lambda: loaded(page, "coronal"), "the coronal slice loaded")
    pointer_at(page, "coronal", 11, 0).perform()
    wait_for(lambda: readout(page) == "coronal: voxel (d 0, h 0, w 0) 110 HU", "the HU of the lower marker")
    pointer_at(page, "coronal", 11, 0).click().perform()
    wait_for(lambda: (slider(page, "axial"), slider(page, "sagittal")) == (0, 0), "axial 0, sagittal 0")
    assert slider(page, "coronal") == 0


def _origin(driver: Any, plane: str) -> Any:
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    return ScrollOrigin.from_element(driver.find_element("css selector", f"[data-plane={plane}] .view"))


# -- heat maps, numbers, permalinks -------------------------------------------------------------------------------
SENTENCES = {"Cardiomegaly": "the heart is enlarged, with a pericardial rim of 14 mm",
             "Lung nodule": "a 6 mm nodule in the left upper lobe"}
PEAKS = {"Cardiomegaly": (6, 12, 10), "Lung nodule": (3, 25, 7)}


def blob(shape: tuple[int, ...], peak: tuple[int, int, int], sigma: float = 2.0) -> np.ndarray:
    """(D, H, W) float32 Gaussian in [0, 1], 1 at ``peak``, ``sigma`` voxels wide."""
    grid = np.indices(shape, dtype=np.float32)
    d2 = sum((g - p) ** 2 for g, p in zip(grid, peak, strict=True))
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def scan_with_maps(server: Any, scan_file: Path) -> str:
    """Upload the marked scan, then give the stored scan what the service adds when it computes saliency and marks
    numbers (the API contract): maps on the Scan, ``saliency.peak`` and ``numbers`` in its JSON; two sentences with
    numbers, one measured and one written by the decoder, and the report assembled from the sentences."""
    from ctagrg.generation.assemble import assemble_report

    status, result = call_json(server, "/api/report?filename=marked.nii.gz", scan_file.read_bytes())
    assert status == 200, result
    scan = server.service.store.get(result["id"])
    abn = scan.info["abnormalities"]
    for label, sentence in SENTENCES.items():
        abn[label].update(detected=True, sentence=sentence)
        scan.saliency[label] = blob(scan.hu.shape, PEAKS[label])
        abn[label]["saliency"] = {"peak": list(PEAKS[label])}
    abn["Lung nodule"]["size_mm"] = 6.2
    abn["Lung nodule"]["numbers"] = [{"text": "6 mm", "start": 2, "end": 6, "source": "measured", "value_mm": 6.2}]
    at = SENTENCES["Cardiomegaly"].index("14 mm")
    abn["Cardiomegaly"]["numbers"] = [{"text": "14 mm", "start": at, "end": at + 5, "source": "decoder",
                                       "value_mm": None}]
    scan.info["report"] = assemble_report({k: a["sentence"] for k, a in abn.items() if a["detected"]})
    return result["id"]


def open_scan(driver: Any, server: Any, scan_id: str) -> None:
    driver.get(f"{server.url}#{scan_id}")
    wait_for(lambda: driver.find_element("id", "result").is_displayed(), "the result shown from the permalink")
    wait_for(lambda: all(loaded(driver, p) for p in ORIENTATION), "the three slices loaded")


def row(driver: Any, label: str) -> Any:
    return driver.find_element("css selector", f"#abnormalities tr[data-label='{label}']")


def heat_srcs(driver: Any) -> list[str | None]:
    return js(driver, "return [...document.querySelectorAll('img.heat')].map(i => i.hidden ? null : "
                      "i.getAttribute('src'))")


def pixel(driver: Any, plane: str, row_: int, col: int) -> tuple[int, int, int]:
    """The colour on screen at the centre of image pixel (row, col) of ``plane``'s pane (scrolled into view)."""
    import io

    from PIL import Image

    x, y = js(driver, f"""const i = document.querySelector('[data-plane={plane}] img.slice');
        i.closest('.view').scrollIntoView({{block: 'center'}});
        const r = i.getBoundingClientRect();
        return [r.left + ({col} + 0.5) / i.naturalWidth * r.width,
                r.top + ({row_} + 0.5) / i.naturalHeight * r.height]""")
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    return shot.getpixel((int(x), int(y)))


def test_heat_maps_numbers_and_permalink(page: Any, server: Any, scan_file: Path, tmp_path: Path) -> None:
    scan_id = scan_with_maps(server, scan_file)
    open_scan(page, server, scan_id)
    report = server.service.store.get(scan_id).info["report"]
    assert page.find_element("id", "report").text == report
    # each detected sentence links to its row; numbers are marked measured (with the measurement) or not
    link = page.find_element("css selector", "#report a.sentence[data-label='Lung nodule']")
    assert link.text == "A 6 mm nodule in the left upper lobe."
    measured = link.find_element("css selector", ".num")
    assert (measured.text, measured.get_attribute("class"), measured.get_attribute("title")) == \
        ("6 mm", "num measured", "measured on the scan: 6.2 mm")
    invented = page.find_element("css selector", "#report a.sentence[data-label=Cardiomegaly] .num")
    assert (invented.text, invented.get_attribute("class"), invented.get_attribute("title")) == \
        ("14 mm", "num decoder", "written by the model, not measured")
    assert page.find_element("id", "numbers-legend").is_displayed()
    cells = row(page, "Lung nodule").find_elements("tag name", "td")
    assert cells[4].text == "6.2 mm" and cells[5].find_element("css selector", ".num.measured").text == "6 mm"
    assert row(page, "Cardiomegaly").find_element("css selector", "td .num.decoder").text == "14 mm"
    labels = {a.get_attribute("data-label") for a in page.find_elements("css selector", "#report a.sentence")}
    assert {"Cardiomegaly", "Lung nodule"} <= labels <= set(DETECTED) | {"Lung nodule"}

    # a map button only where there is a map; pressing it lays the map over the three panes at their slices
    assert len(page.find_elements("css selector", "button.map")) == 2
    js(page, "document.getElementById('crosshair').click()")  # off: its lines would cross the pixels looked at
    d, h, w = PEAKS["Lung nodule"]
    before = pixel(page, "axial", w + 2, h - 2)  # the axial slice (6) shows air there
    assert before == (0, 0, 0)
    button = row(page, "Lung nodule").find_element("css selector", "button.map")
    button.click()
    assert button.get_attribute("aria-pressed") == "true"
    assert page.find_element("id", "opacity").is_enabled()
    wait_for(lambda: heat_srcs(page) == [f"/api/scans/{scan_id}/saliency/Lung%20nodule/{plane}/{slider(page, plane)}"
                                         f".png" for plane in ORIENTATION], "the maps at the current slices")
    # a click on the row moves the panes to the map's peak: axial d, sagittal h, coronal w
    row(page, "Lung nodule").find_element("tag name", "td").click()
    wait_for(lambda: [slider(page, p) for p in ("axial", "sagittal", "coronal")] == [d, h, w], "the peak")
    assert "selected" in row(page, "Lung nodule").get_attribute("class")
    assert "selected" in link.get_attribute("class")
    wait_for(lambda: heat_srcs(page)[0] == f"/api/scans/{scan_id}/saliency/Lung%20nodule/axial/{d}.png", "axial map")
    wait_for(lambda: loaded(page, "axial", "heat") and loaded(page, "axial"), "the axial map loaded")
    # 2 voxels from the peak on both axes (0.37 of it): a warm colour over the black air
    r, g, b = wait_for(lambda: (lambda c: c if c != (0, 0, 0) else None)(pixel(page, "axial", w + 2, h - 2)),
                       "the heat map on screen")
    assert r > g > b and r > 60, (r, g, b)
    assert pixel(page, "axial", 28, 2) == (0, 0, 0)  # far from the map: nothing painted
    js(page, "const o = document.getElementById('opacity'); o.value = 100; o.dispatchEvent(new Event('input'))")
    assert js(page, "return document.querySelector('[data-plane=axial] img.heat').style.opacity") == "1"
    assert pixel(page, "axial", w + 2, h - 2)[0] > r  # more opaque: redder
    page.save_screenshot(str(tmp_path / "viewer.png"))

    # the other sentence in the report: its row, its map, its peak
    page.find_element("css selector", "#report a.sentence[data-label=Cardiomegaly]").click()
    wait_for(lambda: [slider(page, p) for p in ("axial", "sagittal", "coronal")] == [6, 12, 10], "Cardiomegaly's peak")
    assert "selected" in row(page, "Cardiomegaly").get_attribute("class")
    assert "selected" not in row(page, "Lung nodule").get_attribute("class")
    assert [b.get_attribute("aria-pressed") for b in page.find_elements("css selector", "button.map")] == \
        ["true", "false"]  # Cardiomegaly's row comes first (CT-RATE order)
    wait_for(lambda: heat_srcs(page)[0] == f"/api/scans/{scan_id}/saliency/Cardiomegaly/axial/6.png", "its map")
    row(page, "Cardiomegaly").find_element("css selector", "button.map").click()  # off again
    wait_for(lambda: heat_srcs(page) == [None, None, None], "no map shown")
    assert not page.find_element("id", "opacity").is_enabled()

    # the permalink survives a reload while the server keeps the scan
    page.refresh()
    wait_for(lambda: page.find_element("id", "report").text == report, "the report reloaded by id")
    assert page.current_url.endswith(f"#{scan_id}")


def test_an_error_after_a_good_upload_clears_the_old_report(page: Any, scan_file: Path, tmp_path: Path) -> None:
    upload(page, scan_file)
    wait_done(page)
    assert page.find_element("id", "report").text and len(page.find_elements("css selector", "#abnormalities tr"))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file" * 10)
    page.expected_errors = ("status of 400",)  # the upload's answer, logged by the browser
    upload(page, bad)
    status = wait_for(lambda: (lambda s: s if "error" in s.get_attribute("class") else None)(
        page.find_element("id", "status")), "the error status")
    assert status.text.startswith("bad.nii.gz: ")
    assert not page.find_element("id", "result").is_displayed()
    assert page.find_element("id", "report").get_attribute("textContent") == ""
    assert page.find_elements("css selector", "#abnormalities tr, .pane") == []
    assert js(page, "return location.hash") == ""  # the old permalink is gone too


def test_a_permalink_to_a_dropped_scan_says_so(page: Any, server: Any) -> None:
    page.expected_errors = ("status of 404",)
    page.get(f"{server.url}#0123456789abcdef")
    status = wait_for(lambda: (lambda s: s if "error" in s.get_attribute("class") else None)(
        page.find_element("id", "status")), "the error status")
    assert status.text.startswith("unknown scan id '0123456789abcdef' (never created, or dropped: only the last 8 ")
    assert status.text.endswith("Upload the scan again to see it.")
    assert not page.find_element("id", "result").is_displayed()


def dicom_folder(tmp_path: Path) -> Path:
    """A DICOM series of air (12 slices of 32 x 32 at 8 x 4 x 4 mm: the tiny model's grid) with one 20 HU marker at
    SLP (11, 31, 0), and a hidden file beside the slices."""
    from ct_fixtures import write_dicom_series

    hu = np.full((12, 32, 32), -1000, dtype=np.int16)  # (slices, rows, cols): LPS, so SLP (k, col, row)
    hu[11, 0, 31] = 20  # superior, anterior, the patient's left: SLP (11, 31, 0)
    folder = tmp_path / "series"
    write_dicom_series(folder, hu, spacing=(8.0, 4.0, 4.0))
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden files are left out of the zip
    return folder


def check_series(page: Any, server: Any, name: str) -> None:
    """The page reported ``name`` (a .zip it wrote), and the server read the marker where it belongs."""
    wait_for(lambda: f"{name}: done in" in page.find_element("id", "status").text, f"{name} reported")
    scan_id = js(page, "return location.hash.slice(1)")
    status, result = call_json(server, f"/api/scans/{scan_id}")
    assert result["input"] == name and result["shape"] == [12, 32, 32]
    assert call_json(server, f"/api/scans/{scan_id}/voxel/11/31/0")[1]["hu"] == 20
    assert int(server.service.store.get(scan_id).hu.max()) == 20  # the marker, and nothing else, survived
    assert len(page.find_elements("css selector", "#abnormalities tr")) == 18


def test_a_dicom_folder_is_zipped_in_the_browser(page: Any, server: Any, tmp_path: Path) -> None:
    """The folder picker's files go through the page's own zip writer; the server reads the .zip as a series."""
    upload(page, dicom_folder(tmp_path), folder=True)
    check_series(page, server, "series.zip")
    assert page.find_element("id", "chosen").text == "series/ (12 files, sent as a .zip)"


def drop(page: Any, paths: list[Path]) -> None:
    """Drop ``paths`` on the drop zone, as files (a test cannot make the browser's directory entries)."""
    js(page, "const i = document.createElement('input'); i.type = 'file'; i.multiple = true; i.id = 'to-drop'; "
             "document.body.append(i)")
    page.find_element("id", "to-drop").send_keys("\n".join(str(p) for p in paths))
    js(page, "const dt = new DataTransfer(); for (const f of document.getElementById('to-drop').files) "
             "dt.items.add(f); document.getElementById('to-drop').remove(); document.getElementById('drop')"
             ".dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}))")


def test_dropped_files(page: Any, server: Any, scan_file: Path, tmp_path: Path) -> None:
    """One dropped file is sent as it is; several (the slices of a series) are zipped like a folder."""
    drop(page, [scan_file])
    assert page.find_element("id", "chosen").text == "marked.nii.gz"
    page.find_element("id", "go").click()
    wait_done(page)
    assert page.find_element("id", "input").text == "marked.nii.gz"
    slices = sorted(p for p in dicom_folder(tmp_path).iterdir() if not p.name.startswith("."))
    drop(page, slices)
    assert page.find_element("id", "chosen").text == "dropped-files/ (12 files, sent as a .zip)"
    page.find_element("id", "go").click()
    check_series(page, server, "dropped-files.zip")


def test_downloads_json_and_a_self_contained_html_report(page: Any, server: Any, scan_file: Path) -> None:
    import base64
    import io
    import re

    from PIL import Image

    scan_id = scan_with_maps(server, scan_file)
    open_scan(page, server, scan_id)
    for old in page.download_dir.iterdir():
        old.unlink()
    page.find_element("id", "save-json").click()
    saved = json.loads(downloaded(page.download_dir, ".json").read_text(encoding="utf-8"))
    assert saved == call_json(server, f"/api/scans/{scan_id}")[1]
    assert downloaded(page.download_dir, ".json").name == "marked.report.json"
    page.find_element("id", "save-html").click()
    html = downloaded(page.download_dir, ".html").read_text(encoding="utf-8")
    assert "Not for diagnostic use" in html or "not for diagnostic use" in html
    assert "A 6 mm nodule in the left upper lobe." in html and html.count("<tr") == 19
    assert "/api/" not in html and "http" not in html  # nothing to load from the server or elsewhere
    images = re.findall(r'<img alt="([a-z]+) slice ([0-9]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # the three slices shown, then each map at its peak (Cardiomegaly, Lung nodule)
    assert [(plane, int(i)) for plane, i, _ in images] == [
        ("axial", 6), ("coronal", 16), ("sagittal", 16), ("axial", 6), ("coronal", 10), ("sagittal", 12),
        ("axial", 3), ("coronal", 7), ("sagittal", 25)]
    sizes = [Image.open(io.BytesIO(base64.b64decode(data))).size for _, _, data in images]
    # drawn to scale in mm (voxels of 8 x 4 x 4 mm, 4 mm a pixel): axial 32 x 32, coronal and sagittal 32 x 24
    assert sizes[:3] == [(32, 32), (32, 24), (32, 24)]
    heat = np.asarray(Image.open(io.BytesIO(base64.b64decode(images[6][2]))).convert("RGB")).astype(int)
    plain = np.asarray(Image.open(io.BytesIO(base64.b64decode(images[0][2]))).convert("RGB")).astype(int)
    assert (heat[..., 0] - heat[..., 2]).max() > 100 and (plain[..., 0] == plain[..., 2]).all()  # the map is in it


def test_layout_zoom_and_pan(page: Any, scan_file: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    upload(page, scan_file)
    wait_done(page)
    wait_for(lambda: all(loaded(page, p) for p in ORIENTATION), "the three slices loaded")

    def rows() -> int:
        return len({p.rect["y"] for p in page.find_elements("css selector", ".pane")})

    page.set_window_size(1200, 1000)
    wait_for(lambda: rows() == 1, "three panes in one row at 1200 px")
    page.set_window_size(900, 1000)
    wait_for(lambda: rows() == 2, "two rows of panes at 900 px")
    page.set_window_size(1280, 1000)
    wait_for(lambda: rows() == 1, "one row again")

    def stage() -> str:
        return js(page, "return document.querySelector('[data-plane=axial] .stage').style.transform")

    assert stage() == "translate(0px, 0px) scale(1)"
    ActionChains(page).key_down(Keys.CONTROL).scroll_from_origin(_origin(page, "axial"), 0, -300) \
        .key_up(Keys.CONTROL).perform()
    zoom = wait_for(lambda: (lambda m: float(m[1]) if m and float(m[1]) > 1.5 else None)(
        __import__("re").search(r"scale\(([0-9.]+)\)", stage())), "zoomed in")
    assert slider(page, "axial") == 6  # Ctrl + wheel zooms, it does not scroll
    # zoomed, the pointer still reads the voxel under it: the marker (11, 31, 0) on axial slice 11
    ActionChains(page).scroll_from_origin(_origin(page, "axial"), 0, -500).perform()
    wait_for(lambda: slider(page, "axial") == 11 and loaded(page, "axial"), "axial slice 11")
    view = page.find_element("css selector", "[data-plane=axial] .view")
    # zoomed about the centre, the marker's corner (top right) is out of view: drag the image left and down
    js(page, "arguments[0].scrollIntoView({block: 'center'})", view)
    ActionChains(page).drag_and_drop_by_offset(view, -170, 160).perform()
    assert slider(page, "sagittal") == 16 and slider(page, "coronal") == 16  # a drag is not a click
    x, y = js(page, "const r = document.querySelector('[data-plane=axial] img.slice').getBoundingClientRect(); "
                    "const v = arguments[0].getBoundingClientRect(); "
                    "return [r.left - v.left + 31.5 / 32 * r.width, r.top - v.top + 0.5 / 32 * r.height]", view)
    assert 0 < x < view.size["width"] and 0 < y < view.size["height"], (x, y, zoom)  # the marker, now in view
    pointer_at(page, "axial", 0, 31).perform()
    wait_for(lambda: readout(page) == "axial: voxel (d 11, h 31, w 0) 20 HU", "the marker's HU when zoomed")
    pointer_at(page, "axial", 0, 31).click().perform()
    wait_for(lambda: (slider(page, "sagittal"), slider(page, "coronal")) == (31, 0), "a click when zoomed")
    ActionChains(page).double_click(view).perform()
    wait_for(lambda: stage() == "translate(0px, 0px) scale(1)", "a double click resets the view")


# -- the picture in docs/serve.md ----------------------------------------------------------------------------------
def phantom_scan(tmp_path: Path) -> tuple[np.ndarray, tuple[float, ...], dict[str, Any], dict[str, tuple[int, ...]]]:
    """A small phantom (ctagrg.phantom) preprocessed to (56, 128, 128) SLP at (4.5, 2.6, 2.6) mm: (HU volume, spacing,
    its ground truth, label → the preprocessed index of each finding's centre)."""
    from ctagrg.data.ctio import load_ct
    from ctagrg.data.preprocess import PreprocessConfig, plan, preprocess_volume
    from ctagrg.data.preprocessed import PreprocessedVolume
    from ctagrg.phantom.generate import generate_dataset

    root = generate_dataset(tmp_path / "phantom", n=1, seed=10, size="small", split="train=1")
    truth = json.loads((root / "ground_truth" / "train_1_a_1.json").read_text(encoding="utf-8"))
    vol = load_ct(root / "train" / "train_1" / "train_1_a" / "train_1_a_1.nii.gz")
    config = PreprocessConfig(spacing=(4.5, 2.6, 2.6), shape=(56, 128, 128))
    p = plan(vol, config)
    assert "".join(vol.axcodes) == "LPS"  # to SLP: voxel (i, j, k) → (k, i, j), no flip
    centres = {}
    for f in truth["findings"]:
        if "center_voxel" in f:
            i, j, k = f["center_voxel"]
            centres[f["label"]] = tuple(int(round(c * r / o - s)) for c, r, o, s in zip(
                (k, i, j), p.resampled_shape, p.reoriented_shape, p.start, strict=True))
    hu = np.rint(PreprocessedVolume.from_config(preprocess_volume(vol, config), config).to_hu()).astype(np.int16)
    return hu, config.spacing, truth, centres


def test_docs_screenshot(page: Any, server: Any, tmp_path: Path) -> None:
    """The picture at the top of docs/serve.md, written to $CTAGRG_SCREENSHOT when set: a phantom scan stored with
    its ground-truth sentences, made-up probabilities and a Gaussian map at each focal finding (not a model's
    output), the nodule's row selected. Checks that its map is drawn over the nodule on screen."""
    import io
    import os
    import re

    from PIL import Image

    from ctagrg.generation.assemble import assemble_report

    hu, spacing, truth, centres = phantom_scan(tmp_path)
    found = {f["label"]: f for f in truth["findings"]}
    abnormalities, maps = {}, {}
    for label in LABELS:
        f = found.get(label)
        abnormalities[label] = {"probability": 0.86 if f else 0.07, "detected": bool(f), "threshold": 0.5,
                                "sentence": f["sentence"] if f else None, "size_mm": None}
        if label in ("Lung nodule", "Consolidation"):
            maps[label] = blob(hu.shape, centres[label], sigma=2.5 if label == "Lung nodule" else 5.0)
            abnormalities[label]["saliency"] = {"peak": list(centres[label])}
    nodule = abnormalities["Lung nodule"]
    size = re.search(r"[0-9]+ mm", nodule["sentence"])
    assert size, nodule["sentence"]
    nodule["numbers"] = [{"text": size[0], "start": size.start(), "end": size.end(), "source": "decoder",
                          "value_mm": None}]
    info = {"input": "phantom_train_1_a_1.nii.gz", "report": assemble_report(
            {k: a["sentence"] for k, a in abnormalities.items() if a["detected"]}), "abnormalities": abnormalities,
            "seconds": 0.0, "shape": list(hu.shape), "spacing": list(spacing), "hu_window": [-1000.0, 200.0]}
    scan_id = server.service.store.add(info, hu, maps)["id"]

    page.set_window_size(1280, 1300)  # about 1160 px of it for the page
    open_scan(page, server, scan_id)
    row(page, "Lung nodule").find_element("tag name", "td").click()
    d, h, w = centres["Lung nodule"]
    wait_for(lambda: [slider(page, p) for p in ("axial", "sagittal", "coronal")] == [d, h, w], "the nodule's peak")
    wait_for(lambda: all(loaded(page, p) and loaded(page, p, "heat") for p in ORIENTATION), "slices and maps")
    js(page, "document.getElementById('crosshair').click()")
    r, g, b = pixel(page, "axial", w + 2, h)  # beside the peak: the map's warm colour over the nodule
    assert r > g > b, (r, g, b)
    js(page, "window.scrollTo(0, document.querySelector('#result').offsetTop - 8)")
    shot = Image.open(io.BytesIO(page.get_screenshot_as_png())).convert("RGB")
    small = shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT)  # a few hundred kB as RGB; ~100 kB as 128
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    assert shot.width == 1280 and len(buf.getvalue()) < 400_000
    (tmp_path / "viewer.png").write_bytes(buf.getvalue())
    if os.environ.get("CTAGRG_SCREENSHOT"):
        Path(os.environ["CTAGRG_SCREENSHOT"]).write_bytes(buf.getvalue())
