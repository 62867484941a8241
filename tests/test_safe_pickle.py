"""The safe reader reconstructs plain data and arrays, and refuses anything else unrun."""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pytest

from gallery.errors import CheckpointError, UnsafeCheckpointError
from gallery.models.safe_pickle import safe_load

DATA = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": [1, (2.5, "x"), None, True],
        "c": np.float64(3.0), "f": np.asfortranarray(np.ones((2, 3)))}


def _check(loaded: dict) -> None:
    assert loaded["a"].dtype == np.float32
    np.testing.assert_array_equal(loaded["a"], DATA["a"])
    np.testing.assert_array_equal(loaded["f"], DATA["f"])
    assert loaded["b"] == [1, (2.5, "x"), None, True]
    assert loaded["c"] == 3.0


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)])
def test_joblib_files_round_trip(tmp_path, compress):
    path = tmp_path / "c.jd"
    joblib.dump(DATA, path, compress=compress)
    _check(safe_load(path))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_pickles_round_trip(tmp_path, protocol):
    path = tmp_path / "c.pkl"
    path.write_bytes(pickle.dumps(DATA, protocol=protocol))
    _check(safe_load(path))


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_payload_is_refused_and_never_runs(tmp_path, how):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.jd"
    data = {"params": {"w": np.ones(2, np.float32)}, "args": {"x": _Payload(str(target))}}
    if how == "joblib":
        joblib.dump(data, path)
    else:
        path.write_bytes(pickle.dumps(data))
    with pytest.raises(UnsafeCheckpointError, match="builtins.open|io.open") as err:
        safe_load(path)
    assert str(path) in str(err.value)
    assert not target.exists()


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.jd"
    joblib.dump({"a": np.array([object()], dtype=object)}, path)
    with pytest.raises(CheckpointError):
        safe_load(path)


def test_huge_declared_array_fails_without_allocating(tmp_path):
    path = tmp_path / "huge.jd"
    joblib.dump({"a": np.ones(4, np.float32)}, path)
    raw = path.read_bytes()
    # declare a 2**40-element array in the stream: shape (4,) -> (1099511627776,)
    forged = raw.replace(b"K\x04\x85", b"\x8a\x06\x00\x00\x00\x00\x00\x01\x85", 1)
    assert forged != raw
    path.write_bytes(forged)
    with pytest.raises(CheckpointError, match="limit|truncated"):
        safe_load(path, max_bytes=1 << 30)


@pytest.mark.parametrize("compress", [3, True, ("zlib", 9)])
def test_zlib_compressed_realistic_checkpoint(tmp_path, compress):
    # larger than one read chunk, so the decompressor's leftover input must come first
    from tests.reference.checkpoints import make_checkpoint
    ckpt = make_checkpoint("clear")
    path = tmp_path / "z.jd"
    joblib.dump(ckpt, path, compress=compress)
    loaded = safe_load(path)
    for name, value in ckpt["params"].items():
        np.testing.assert_array_equal(loaded["params"][name], value)


@pytest.mark.parametrize("compress", [3, ("gzip", 3), ("xz", 3)])
def test_truncated_compressed_file(tmp_path, compress):
    path = tmp_path / "t.jd"
    joblib.dump({"a": np.random.default_rng(0).normal(size=100000)}, path, compress=compress)
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(CheckpointError, match="truncated"):
        safe_load(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "t.jd"
    joblib.dump({"a": np.ones(10000, np.float32)}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        safe_load(path)


def test_not_a_pickle(tmp_path):
    path = tmp_path / "n.jd"
    path.write_text("name: not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a joblib/pickle file"):
        safe_load(path)
