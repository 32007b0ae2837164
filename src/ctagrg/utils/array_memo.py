"""A bounded in-memory memo for results computed from a numpy array's contents.

Why: the cnn3d sphere and node channels (a numpy/scipy pass, ~0.15 CPU-s per channel and demo volume) are
measured from the same preprocessed volumes by three demo stages in one process: pretraining's stem cache, step 1's
frozen-encoder cache and the step-2 embedding cache. Keyed by a digest of the array's bytes, the second and third
stage reuse the first one's result, and a changed volume (another file, an augmentation) is a different key, so a
hit is always the value that recomputing would give.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np


class ArrayMemo:
    """Digest -> numpy array, least recently used first out once the values exceed ``max_bytes``.

    Thread-safe. Values are stored as given; :meth:`get` returns them read-only, so a caller that wants to change
    one copies it."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"ArrayMemo: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._values: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def digest(salt: bytes, array: np.ndarray) -> bytes:
        """BLAKE2b (16 bytes) of ``salt`` (what else the result depends on, e.g. a config), the array's dtype,
        shape and bytes (C order). About 5 ms for 4 MB."""
        h = hashlib.blake2b(salt, digest_size=16)
        h.update(f"|{array.dtype.str}|{array.shape}|".encode())
        h.update(np.ascontiguousarray(array).data)
        return h.digest()

    def get(self, key: bytes) -> np.ndarray | None:
        with self._lock:
            value = self._values.get(key)
            if value is None:
                self.misses += 1
                return None
            self._values.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: bytes, value: np.ndarray) -> None:
        value = np.array(value)  # an own copy, so later changes to the caller's array do not reach the memo
        value.flags.writeable = False
        with self._lock:
            old = self._values.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if value.nbytes > self.max_bytes:  # not kept; nor is the key's old value, which this replaces
                return
            self._values[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._values.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._values)

    def __deepcopy__(self, memo: dict) -> ArrayMemo:
        """The memo itself: a copy of a model that holds one (an EMA shadow) shares it, as its values depend only on
        the keys."""
        return self

    @property
    def nbytes(self) -> int:
        return self._bytes
