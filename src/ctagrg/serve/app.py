"""What ``ctagrg serve`` does, without HTTP: its settings, uploads → reports (one model call at a time), and the
in-memory store of reported scans that the slice viewer reads.

Research software, not for diagnostic use. The HTTP side (routes, request checks, upload deadlines) is
:mod:`ctagrg.serve.http`; docs/serve.md has the endpoints and the limits.

>>> service = ReportService(Reporter.from_pretrained("model/"), ServeConfig(max_pending=1))   # doctest: +SKIP
>>> info = service.report_upload("scan.nii.gz", open("scan.nii.gz", "rb"), length)          # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ctagrg.config import to_dict
from ctagrg.data.read_cost import ScanTooLarge
from ctagrg.labels import LABELS
from ctagrg.serve.errors import ApiError
from ctagrg.serve.limits import UnsafeUpload, VolumeTooLarge, check_upload
from ctagrg.serve.slices import (
    PLANES,
    WINDOWS,
    level_width_to_bounds,
    num_slices,
    render_heatmap_png,
    render_slice_png,
    window_bounds,
)
from ctagrg.serve.store import Scan, ScanStore  # noqa: F401 (Scan: re-exported)

if TYPE_CHECKING:
    from ctagrg.generation.inference import ItemResult
    from ctagrg.generation.reporter import Reporter

INTENDED_USE = (
    "Research software, not for diagnostic use. The reports are machine-generated drafts for research on report "
    "generation; they have not been validated clinically, can miss abnormalities or invent them, and must not "
    "inform the care of any patient."
)
# Single-file formats only: .mhd/.nhdr headers point to a separate data file that an upload cannot carry.
UPLOAD_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".zip")
MIB = 1 << 20
KIB = 1 << 10


@dataclass
class ServeConfig:
    """Service settings.

    Attributes:
        max_upload_mb: largest accepted upload, MiB (the bytes sent, compressed or not).
        max_voxels: largest accepted scan, voxels, read from its header before it is decoded. The default,
            600 million, is 512 x 512 x 2288 slices: 1.2 GB as int16 before preprocessing adds its own copies.
        max_pending: uploads received or reported at the same time; one more is answered 503. Bounds the
            temporary folder to ``max_pending x max_upload_mb``.
        max_memory_mb: the memory budget of decoding one upload, MiB, estimated from its headers before any
            voxel is decoded (docs/serve.md, "Limits and threat model"); None: half of this machine's memory.
        timeout_s: seconds a connection may stay silent (mid-request or mid-upload) before it is dropped.
        min_upload_rate_kib: the slowest upload kept, KiB/s on average, counted after its first ``timeout_s``
            seconds: an upload of N bytes must arrive within ``timeout_s + N / (1024 x min_upload_rate_kib)``
            seconds and be on pace for that all along, so a client trickling bytes cannot hold an upload slot.
        allowed_hosts: extra names the ``Host`` header may give besides the bound address (and localhost when
            bound to loopback), e.g. this machine's DNS name when bound to all addresses.
        keep: scans kept in memory for the viewer, least recently used dropped first. Each costs 2 bytes a voxel
            (int16 HU): 105 MiB at the seed's (240, 480, 480), plus 1 byte a voxel per saliency map with ``saliency``.
        log_requests: print one line a request to stderr (successful slice PNGs are never logged: too many).
        saliency: compute a saliency map per detected abnormality with each report (one backward pass each), kept
            with the scan as uint8 levels (1 byte a voxel per map) for the viewer's overlays.
    """

    max_upload_mb: float = 2048.0
    max_voxels: int = 600_000_000
    max_memory_mb: float | None = None
    max_pending: int = 2
    timeout_s: float = 60.0
    min_upload_rate_kib: float = 64.0
    allowed_hosts: tuple[str, ...] = ()
    keep: int = 8
    log_requests: bool = True
    saliency: bool = False

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "timeout_s", "min_upload_rate_kib", "max_memory_mb"):
            value = getattr(self, name)
            if value is None and name == "max_memory_mb":
                continue
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ServeConfig.{name}: expected a finite number > 0, got {value}")
        for name in ("max_voxels", "max_pending", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeConfig.{name}: expected >= 1, got {getattr(self, name)}")
        self.allowed_hosts = tuple(h.lower() for h in self.allowed_hosts)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    @property
    def min_upload_rate(self) -> float:
        """``min_upload_rate_kib`` in bytes a second."""
        return self.min_upload_rate_kib * KIB

    @property
    def max_memory_bytes(self) -> int:
        from ctagrg.data.read_cost import default_max_memory_mb

        return int((default_max_memory_mb() if self.max_memory_mb is None else self.max_memory_mb) * MIB)


class UploadBody(Protocol):
    """Where an upload's bytes come from: ``read1(n)`` returns 1 to ``n`` bytes that have arrived, b"" at the end."""

    def read1(self, size: int, /) -> bytes: ...


def upload_suffix(name: str) -> str | None:
    """The supported extension ``name`` ends with (any case), or None."""
    return next((suffix for suffix in UPLOAD_SUFFIXES if name.lower().endswith(suffix)), None)


def upload_name(filename: str | None) -> str:
    """The base name of an uploaded file, checked for a supported extension and a name before it."""
    name = re.split(r"[\\/]", filename or "")[-1].strip()
    if not name:
        raise ApiError(400, "missing file name: POST the raw file bytes to /api/report?filename=NAME")
    suffix = upload_suffix(name)
    if suffix is None:
        raise ApiError(400, f"{name}: unsupported file type; expected one of {', '.join(UPLOAD_SUFFIXES)} "
                            f"(a DICOM series as one .zip)")
    if not name[:-len(suffix)].strip(". "):
        raise ApiError(400, f"{name!r}: no file name before the extension {suffix}: give the file a name, e.g. "
                            f"scan{suffix}")
    return name


def safe_filename(name: str) -> str:
    """``name`` reduced to [A-Za-z0-9._-], at most 100 characters, its extension kept (the reader keys on it).

    ``name`` has passed :func:`upload_name`; a name of dots only before the extension becomes ``upload``.
    """
    suffix = upload_suffix(name) or ""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name[:len(name) - len(suffix)])[-(100 - len(suffix)):].lstrip(".")
    return (stem or "upload") + name[len(name) - len(suffix):]


class ReportService:
    """What the routes do, without HTTP: uploads → reports (one model call at a time), stored scans → slices.

    Args:
        reporter: a loaded :class:`~ctagrg.generation.reporter.Reporter`.
        config: service settings.

    Uploads are written only into ``workdir``, a private (0700) temporary folder removed by :meth:`close`.
    """

    def __init__(self, reporter: Reporter, config: ServeConfig | None = None) -> None:
        self.reporter = reporter
        self.config = config or ServeConfig()
        self.store = ScanStore(self.config.keep)
        self.page = resources.files("ctagrg.serve").joinpath("page.html").read_bytes()
        self.workdir = Path(tempfile.mkdtemp(prefix="ctagrg-serve-"))
        # One model and a few hundred MB to GB of working memory per scan: reading, preprocessing and the model
        # run one upload at a time. torch already spreads each call over every core.
        self._model_lock = threading.Lock()
        # Uploads being received or waiting for the model; each holds up to max_upload_mb in the temporary folder.
        self._pending = threading.BoundedSemaphore(self.config.max_pending)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- model ---------------------------------------------------------------------------------------------------
    @property
    def hu_window(self) -> tuple[float, float]:
        return float(self.reporter.preprocess.hu_min), float(self.reporter.preprocess.hu_max)

    def model_info(self) -> dict[str, Any]:
        from ctagrg import __version__

        windows = {}
        for name, (lower, upper) in WINDOWS.items():
            try:
                windows[name] = list(window_bounds(lower, upper, *self.hu_window))
            except ValueError:
                continue  # a preset the model's HU window keeps nothing of
        return {"labels": list(LABELS), "thresholds": dict(zip(LABELS, self.reporter.thresholds, strict=True)),
                "preprocess": to_dict(self.reporter.preprocess), "intended_use": INTENDED_USE,
                "windows": windows, "planes": list(PLANES), "max_upload_mb": self.config.max_upload_mb,
                "max_voxels": self.config.max_voxels, "keep": self.config.keep, "device": str(self.reporter.device),
                "version": __version__}

    # -- reports -------------------------------------------------------------------------------------------------
    def reserve_upload(self, filename: str) -> None:
        """Take one of the ``max_pending`` upload slots (503 when none is free); :meth:`release_upload` returns it."""
        if not self._pending.acquire(blocking=False):
            raise ApiError(503, f"{filename}: busy, try again: the server is already receiving or reporting "
                                f"{self.config.max_pending} uploads (ctagrg serve --max-pending)")

    def release_upload(self) -> None:
        self._pending.release()

    def report_upload(self, filename: str, body: UploadBody, length: int) -> dict[str, Any]:
        """Write ``length`` bytes of ``body`` to the private folder, report the scan, store it for the viewer.

        Returns ``{id, input, report, abnormalities, seconds, shape, spacing, hu_window}``, with ``warnings`` when
        reading the scan or the model raised any.
        """
        folder = Path(tempfile.mkdtemp(dir=self.workdir))  # one folder per upload: equal names cannot collide
        path = folder / safe_filename(filename)
        try:
            _receive(body, length, path, filename)
            path = self._check_size(path, filename)
            with self._model_lock:
                result = self._report(path, filename)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        volume = result.volume
        info = {"input": filename, **result.to_dict(), "seconds": round(result.seconds, 3),
                "shape": list(volume.shape), "spacing": list(volume.spacing_mm), "hu_window": list(volume.hu_window)}
        maps = {label: np.rint(m * 255).astype(np.uint8) for label, m in result.report.saliency.items()}
        return self.store.add(info, np.rint(volume.to_hu()).astype(np.int16), maps)

    def _check_size(self, path: Path, filename: str) -> Path:
        """Headers only, before the reader decodes anything: 413 past ``max_voxels`` or the memory budget, 400 for
        an unsafe header. Returns the file the reader may open (see :func:`ctagrg.serve.limits.check_upload`)."""
        try:
            return check_upload(path, filename, max_voxels=self.config.max_voxels,
                                max_bytes=self.config.max_memory_bytes)
        except VolumeTooLarge as exc:
            raise ApiError(413, str(exc)) from None
        except UnsafeUpload as exc:
            raise ApiError(400, str(exc)) from None

    def _report(self, path: Path, filename: str) -> ItemResult:
        """Read, preprocess and report ``path`` through the inference front door, its warnings and errors naming
        the upload; reader errors (ValueError, e.g. CTReadError) become 400s naming the upload, a scan that decodes
        to more than the memory budget 413. Under the model lock: one reader and one model call at a time."""
        from ctagrg.generation.inference import InferenceItem, run_inference

        # the reader names its path: show the user's file name, not our temporary path
        def named(text: str) -> str:
            return text.replace(str(path), filename).replace(str(path.parent), "")

        [result] = next(run_inference(self.reporter, [InferenceItem(filename, str(path))],
                                      max_bytes=self.config.max_memory_bytes, saliency=self.config.saliency))
        exc, read_failed = result.exception, result.volume is None
        if read_failed and isinstance(exc, ScanTooLarge):  # found while decoding: more than its header says
            raise ApiError(413, named(str(exc))) from None
        if read_failed and isinstance(exc, ValueError):
            message = named(str(exc))
            raise ApiError(400, message if filename in message else f"{filename}: {message}") from None
        if exc is not None:
            raise exc  # anything else (the model failed, an OSError): an internal error, answered 500 and logged
        if result.error is not None:
            raise RuntimeError(named(result.error))
        result.warnings[:] = [named(w) for w in result.warnings]
        return result

    # -- viewer --------------------------------------------------------------------------------------------------
    def scan_info(self, scan_id: str) -> dict[str, Any]:
        return self.store.get(scan_id).info

    def slice_png(self, scan_id: str, plane: str, index: str, query: dict[str, list[str]]) -> bytes:
        """PNG of one slice; 404 for an unknown id or an index out of range, 400 for a bad plane or window."""
        scan = self.store.get(scan_id)
        if plane not in PLANES:
            raise ApiError(400, f"unknown plane {plane!r}: expected one of {', '.join(PLANES)}")
        lower, upper = self._window(query)
        return render_slice_png(scan.hu, plane, _slice_index(scan.hu.shape, plane, index), lower, upper)

    def saliency_png(self, scan_id: str, label: str, plane: str, index: str) -> bytes:
        """RGBA PNG heat map of ``label``'s saliency on one slice, the size and orientation of that slice's PNG,
        transparent where the map is 0. 404 for an unknown id, a label without a map or an index out of range; 400
        for a bad plane or an unknown label."""
        scan = self.store.get(scan_id)
        if label not in LABELS:
            raise ApiError(400, f"unknown abnormality {label!r}: expected one of the 18 CT-RATE labels, e.g. "
                                f"{LABELS[0]!r}")
        if plane not in PLANES:
            raise ApiError(400, f"unknown plane {plane!r}: expected one of {', '.join(PLANES)}")
        saliency = scan.saliency.get(label)
        if saliency is None:
            have = ", ".join(scan.saliency) or "none"
            raise ApiError(404, f"scan {scan_id}: no saliency map for {label!r} (maps are computed for detected "
                                f"abnormalities only; this scan has: {have})")
        if saliency.shape != scan.hu.shape:
            raise ValueError(f"scan {scan_id}: saliency map of {label!r} is {saliency.shape}, the volume "
                             f"{scan.hu.shape}")
        return render_heatmap_png(saliency, plane, _slice_index(saliency.shape, plane, index))

    def voxel_hu(self, scan_id: str, d: str, h: str, w: str) -> dict[str, Any]:
        """``{"index": [d, h, w], "hu": value}`` of one voxel of the preprocessed (D, H, W) grid; HU clipped to the
        model's window (``hu_window`` of the scan). 404 for an unknown id or an index out of range."""
        scan = self.store.get(scan_id)
        index = []
        for axis, (name, value) in enumerate(zip("dhw", (d, h, w), strict=True)):
            n = scan.hu.shape[axis]
            if not re.fullmatch(r"[0-9]{1,9}", value) or not int(value) < n:
                raise ApiError(404, f"voxel index {name}={value!r} out of range: valid indices are 0..{n - 1}")
            index.append(int(value))
        return {"index": index, "hu": int(scan.hu[tuple(index)])}

    def _window(self, query: dict[str, list[str]]) -> tuple[float, float]:
        """(lower, upper) HU from ``?window=NAME`` or ``?wl=L&ww=W`` (default: lung), clipped to the model's."""
        name = query.get("window", [None])[0]
        wl, ww = query.get("wl", [None])[0], query.get("ww", [None])[0]
        try:
            if wl is not None or ww is not None:
                if name is not None or wl is None or ww is None:
                    raise ValueError("give either window=NAME or both wl= and ww= (HU)")
                bounds = level_width_to_bounds(_number("wl", wl), _number("ww", ww))
            elif (name or "lung") in WINDOWS:
                bounds = WINDOWS[name or "lung"]
            else:
                raise ValueError(f"unknown window {name!r}: expected one of {', '.join(WINDOWS)}, or wl= and ww=")
            return window_bounds(*bounds, *self.hu_window)
        except ValueError as exc:  # float() of a non-number lands here too
            raise ApiError(400, str(exc)) from None


def _slice_index(shape: tuple[int, ...], plane: str, index: str) -> int:
    """``index`` (URL text) as a slice index of ``plane`` in a (D, H, W) volume; 404 ApiError when out of range."""
    n = num_slices(shape, plane)
    if not re.fullmatch(r"-?[0-9]{1,9}", index) or not 0 <= int(index) < n:
        raise ApiError(404, f"{plane} slice {index!r} out of range: valid indices are 0..{n - 1}")
    return int(index)


def _number(name: str, value: str) -> float:
    """A query parameter as a finite float; the ValueError names the parameter."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: not a number (HU)") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}={value!r}: not a finite number (HU)")
    return number


def _receive(body: UploadBody, length: int, path: Path, filename: str) -> None:
    """Copy ``length`` bytes of the request body to ``path`` in pieces of up to 1 MiB (an upload can be GBs).

    ``body`` enforces the time limits (:class:`ctagrg.serve.http.PacedBody` raises a 408 ApiError); this checks
    only that the bytes arrive. Not an atomic write: the file lives in a private per-upload folder that nothing
    else reads, it is read only after this returns, and the folder is removed whatever happens.
    """
    left = length
    with open(path, "wb") as fh:
        while left > 0:
            chunk = body.read1(min(left, MIB))  # what has arrived: a stall is then counted exactly
            if not chunk:
                raise ApiError(400, f"{filename}: upload ended after {length - left} of {length} bytes")
            fh.write(chunk)
            left -= len(chunk)
