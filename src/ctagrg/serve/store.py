"""The scans the service keeps for the viewer: the last ``keep`` reported scans, with their HU volumes and maps."""

from __future__ import annotations

import collections
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctagrg.serve.errors import ApiError


@dataclass
class Scan:
    """A reported scan kept for the viewer.

    Attributes:
        info: the JSON ``POST /api/report`` returned.
        hu: (D, H, W) int16 HU, SLP, clipped to the model's preprocessing window.
        saliency: label → (D, H, W) map on the same grid, float32 in [0, 1] or uint8 levels 0..255, for the
            abnormalities the service computed one for (none unless it does). At the seed's (240, 480, 480) a map
            costs 221 MiB as float32, 55 MiB as uint8.
    """

    info: dict[str, Any]
    hu: np.ndarray
    saliency: dict[str, np.ndarray] = field(default_factory=dict)


class ScanStore:
    """The last ``keep`` scans by id; thread-safe; reading a scan makes it the most recently used."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._scans: collections.OrderedDict[str, Scan] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, info: dict[str, Any], hu: np.ndarray, saliency: dict[str, np.ndarray] | None = None
            ) -> dict[str, Any]:
        """Store a scan (and its saliency maps, label → (D, H, W), see :class:`Scan`) under a new id; returns
        ``{"id": id, **info}``, the JSON kept for it."""
        scan_id = secrets.token_hex(8)  # unguessable: ids are the only thing separating one user's scans from another's
        scan = Scan(info={"id": scan_id, **info}, hu=hu, saliency=dict(saliency or {}))
        with self._lock:
            self._scans[scan_id] = scan
            while len(self._scans) > self.keep:
                self._scans.popitem(last=False)
        return scan.info

    def get(self, scan_id: str) -> Scan:
        with self._lock:
            scan = self._scans.get(scan_id)
            if scan is None:
                raise ApiError(404, f"unknown scan id {scan_id!r} (never created, or dropped: only the last "
                                    f"{self.keep} scans are kept)")
            self._scans.move_to_end(scan_id)
            return scan
