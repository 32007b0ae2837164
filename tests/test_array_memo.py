"""ctagrg.utils.array_memo: a bounded, content-keyed memo (the cnn3d sphere channel's)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from ctagrg.utils.array_memo import ArrayMemo


def test_the_digest_depends_on_contents_shape_dtype_and_salt():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    key = ArrayMemo.digest(b"s", a)
    assert len(key) == 16 and key == ArrayMemo.digest(b"s", a.copy())
    assert key == ArrayMemo.digest(b"s", np.asfortranarray(a))  # same values, other memory order
    b = a.copy()
    b[2, 3] += 1.0
    others = [ArrayMemo.digest(b"s", b), ArrayMemo.digest(b"t", a), ArrayMemo.digest(b"s", a.reshape(4, 3)),
              ArrayMemo.digest(b"s", a.astype(np.float64))]
    assert len({key, *others}) == 5


def test_get_put_copy_and_read_only():
    memo = ArrayMemo(1024)
    value = np.ones(4, np.float32)
    assert memo.get(b"k") is None and memo.misses == 1
    memo.put(b"k", value)
    value[0] = 5.0  # the caller's array changes later; the memo keeps what was put
    got = memo.get(b"k")
    assert got is not None and got.tolist() == [1.0] * 4 and memo.hits == 1
    with pytest.raises(ValueError, match="read-only"):
        got[0] = 2.0
    memo.put(b"k", np.zeros(4, np.float32))  # replacing a key does not count its bytes twice
    assert memo.nbytes == 16 and len(memo) == 1 and memo.get(b"k").tolist() == [0.0] * 4


def test_the_least_recently_used_values_go_first_past_max_bytes():
    memo = ArrayMemo(100)
    for k in range(3):
        memo.put(bytes([k]), np.full(10, k, np.float32))  # 40 bytes each: the third pushes the first out
    assert memo.get(bytes([0])) is None and len(memo) == 2 and memo.nbytes == 80
    memo.get(bytes([1]))  # used: now the newest
    memo.put(bytes([3]), np.zeros(10, np.float32))
    assert memo.get(bytes([2])) is None and memo.get(bytes([1])) is not None
    memo.put(b"big", np.zeros(30, np.float32))  # larger than the whole memo: not kept, nothing dropped
    assert memo.get(b"big") is None and len(memo) == 2
    memo.put(bytes([1]), np.zeros(30, np.float32))  # too large for a key that holds a value: the old one goes too
    assert memo.get(bytes([1])) is None and len(memo) == 1 and memo.nbytes == 40
    memo.clear()
    assert len(memo) == 0 and memo.nbytes == 0
    with pytest.raises(ValueError, match="max_bytes"):
        ArrayMemo(-1)


def test_a_deep_copy_shares_the_memo():
    """A model holding a memo can be deep-copied (an EMA shadow): the copy uses the same memo."""
    memo = ArrayMemo(100)
    holder = {"memo": memo, "weights": np.zeros(3)}
    copied = copy.deepcopy(holder)
    assert copied["memo"] is memo and copied["weights"] is not holder["weights"]
