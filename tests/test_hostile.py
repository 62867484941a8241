"""Hostile but well-formed inputs are refused with a clear error, within bounded memory and
time (docs/reliability.md, Hardening).

Each case runs the real reader under `bounded`, which measures the wall time, the peak of
Python and NumPy allocations (tracemalloc) and the growth of the process's peak resident
size, and fails when the reader takes more than 10 s or 1 GB -- generous bounds that a
reader trusting a declared size (terabytes) or expanding a bomb (gigabytes) breaks.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import pickle
import resource
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from joblib.numpy_pickle import NumpyArrayWrapper

from gallery import bundle as bundles
from gallery.bundle import codec
from gallery.errors import CheckpointError
from gallery.models.checkpoint import read_checkpoint
from gallery.models.safe_pickle import DEFAULT_MAX_BYTES, MAX_LINE_BYTES, MAX_OPCODES
from gallery.pipeline.manifest import ManifestError, parse_manifest
from tests.reference.checkpoints import make_checkpoint

GB = 1024**3
MAX_SECONDS = 10.0
MAX_EXTRA_BYTES = 1 * GB


def bounded(call: Callable[[], Any], error: type[BaseException], match: str,
            trace: bool = True) -> dict[str, float]:
    """Run `call`, which must raise `error` matching `match`, within MAX_SECONDS of CPU
    time (the work done, whatever else shares the machine) and MAX_EXTRA_BYTES; returns
    what was measured."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if trace:
        tracemalloc.start()
    start = time.process_time()
    try:
        with pytest.raises(error, match=match):
            call()
    finally:
        seconds = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        if trace:
            tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    print(f"[bounded] {test}: {seconds:.2f} s, traced peak {peak / 1024**2:.1f} MB, resident size "
          f"grew {rss_growth / 1024**2:.0f} MB")  # shown with pytest -s (docs/reliability.md)
    assert seconds < MAX_SECONDS, f"took {seconds:.1f} s of CPU"
    assert peak < MAX_EXTRA_BYTES, f"allocated {peak / GB:.2f} GB"
    assert rss_growth < MAX_EXTRA_BYTES, f"resident size grew by {rss_growth / GB:.2f} GB"
    return {"seconds": seconds, "peak": peak, "rss_growth": rss_growth}


# --- pieces of hostile pickle streams -----------------------------------------------------


def _FakeWrapper(shape: tuple[int, ...], dtype: str = "float32") -> NumpyArrayWrapper:
    """joblib's own NumpyArrayWrapper, declaring an array of any shape (joblib writes the
    array's bytes after it; here nothing real follows)."""
    wrapper = NumpyArrayWrapper.__new__(NumpyArrayWrapper)
    wrapper.__dict__.update({"subclass": np.ndarray, "shape": shape, "order": "C",
                             "dtype": np.dtype(dtype), "allow_mmap": False})
    return wrapper


class _FakeArray:
    """Pickles like a numpy array (protocol 2) whose state declares any shape."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    def __reduce__(self) -> Any:
        fn, args, state = np.zeros(2, np.float32).__reduce__()
        return fn, args, (state[0], self.shape, state[2], state[3], state[4])


def checkpoint_prefix() -> bytes:
    """Protocol-2 opcodes opening a real checkpoint dict, up to `params: {name:` (the
    caller appends a value and `s` + CHECKPOINT_SUFFIX)."""
    ckpt = make_checkpoint("clear", seed=2)
    ckpt["params"] = {}
    data = pickle.dumps(ckpt, protocol=2)
    # the key, its memo put, then the empty params dict `}` and its memo put; cut after it
    at = data.index(b"X\x06\x00\x00\x00params") + len(b"X\x06\x00\x00\x00params")
    at += 2 if data[at:at + 1] == b"q" else 0
    assert data[at:at + 1] == b"}"
    at += 3 if data[at + 1:at + 2] == b"q" else 1
    return data[:at] + b"X\x01\x00\x00\x00w"


CHECKPOINT_SUFFIX = b"s."  # SETITEM into params ... an unterminated outer dict is fine


def write(tmp_path: Path, data: bytes, name: str = "hostile.jd") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- huge declared sizes -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10**6, 10**6), (10**12,), (2**31, 2**31, 2**31)])
def test_joblib_array_declaring_a_trillion_elements(tmp_path, shape):
    value = pickle.dumps(_FakeWrapper(shape), protocol=2)[2:-1]
    path = write(tmp_path, checkpoint_prefix() + value + b"\x00" * 64 + CHECKPOINT_SUFFIX)
    bounded(lambda: read_checkpoint(path), CheckpointError, "more than the limit")


def test_numpy_array_declaring_a_trillion_elements(tmp_path):
    value = pickle.dumps(_FakeArray((10**6, 10**6)), protocol=2)[2:-1]
    path = write(tmp_path, checkpoint_prefix() + value + CHECKPOINT_SUFFIX)
    bounded(lambda: read_checkpoint(path), CheckpointError, "more than the limit")


@pytest.mark.parametrize("opcode, width", [(b"\x8e", 8),   # BINBYTES8
                                           (b"\x8d", 8),   # BINUNICODE8
                                           (b"\x96", 8),   # BYTEARRAY8 (allocates first)
                                           (b"\x8b", 4),   # LONG4
                                           (b"B", 4)])     # BINBYTES
def test_strings_declaring_enormous_lengths(tmp_path, opcode, width):
    length = 2**32 - 1 if width == 4 else 10**12
    if opcode == b"\x8b":
        length = 2**31 - 1  # LONG4 is signed
    value = opcode + length.to_bytes(width, "little") + b"x" * 100
    path = write(tmp_path, b"\x80\x05" + checkpoint_prefix()[2:] + value + CHECKPOINT_SUFFIX)
    bounded(lambda: read_checkpoint(path), CheckpointError, "more than the limit")


def test_enormous_list_of_tiny_objects(tmp_path):
    """3 million empty lists appended to one: refused by the opcode limit, not by memory."""
    value = b"](" + b"]" * 3_000_000 + b"e"
    path = write(tmp_path, checkpoint_prefix() + value + CHECKPOINT_SUFFIX)
    # without tracemalloc, which slows the pure-Python unpickler four times
    bounded(lambda: read_checkpoint(path), CheckpointError, f"more than {MAX_OPCODES} opcodes",
            trace=False)


def test_deeply_nested_containers(tmp_path):
    """100,000 lists nested in each other: no recursion anywhere, refused by depth."""
    n = 100_000
    value = b"]" * n + b"a" * (n - 1)
    path = write(tmp_path, checkpoint_prefix() + value + CHECKPOINT_SUFFIX)
    bounded(lambda: read_checkpoint(path), CheckpointError, "nested deeper than 32")


def test_long_text_line(tmp_path):
    """A protocol-0 INT whose digits never end (no newline)."""
    path = write(tmp_path, b"\x80\x02I" + b"1" * (MAX_LINE_BYTES + 10))
    bounded(lambda: read_checkpoint(path), CheckpointError, "text line")


# --- a 10 GB file --------------------------------------------------------------------------------


def test_ten_gigabyte_file_refused_by_size(tmp_path):
    """A sparse 10 GB file (costs no disk) that starts like a checkpoint: refused by its size
    before reading it."""
    path = tmp_path / "huge.jd"
    with open(path, "wb") as f:
        f.write(checkpoint_prefix())
        f.truncate(10 * GB)
    assert path.stat().st_size == 10 * GB
    assert path.stat().st_blocks * 512 < 64 * 1024**2, "the file system did not keep it sparse"
    measured = bounded(lambda: read_checkpoint(path), CheckpointError,
                       f"more than the limit of {DEFAULT_MAX_BYTES} bytes")
    assert measured["seconds"] < 1


# --- decompression bombs -----------------------------------------------------------------------

CHUNK = 16 * 1024**2


def _multi_member(compress: Callable[[bytes], bytes], head: bytes, filler: bytes,
                  repeats: int, tail: bytes) -> bytes:
    """Concatenated compressed members (gzip, bz2 and xz readers continue across them):
    a few MB that expand to repeats x 16 MB."""
    member = compress(filler * (CHUNK // len(filler)))
    return compress(head) + member * repeats + compress(tail)


def _single_stream(make: Callable[[], Any], head: bytes, filler: bytes, repeats: int,
                   tail: bytes) -> bytes:
    z = make()
    block = filler * (CHUNK // len(filler))
    parts = [z.compress(head)] + [z.compress(block) for _ in range(repeats)]
    return b"".join(parts + [z.compress(tail), z.flush()])


BOMBS = {
    "gzip": lambda h, f, r, t: _multi_member(lambda b: gzip.compress(b, 9, mtime=0), h, f, r, t),
    "bz2": lambda h, f, r, t: _multi_member(lambda b: bz2.compress(b, 9), h, f, r, t),
    "xz": lambda h, f, r, t: _multi_member(lambda b: lzma.compress(b, preset=1), h, f, r, t),
    "lzma": lambda h, f, r, t: _single_stream(
        lambda: lzma.LZMACompressor(lzma.FORMAT_ALONE, preset=0), h, f, min(r, 16), t),
    "zlib": lambda h, f, r, t: _single_stream(lambda: zlib.compressobj(9), h, f,
                                              min(r, 16), t),
}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_bomb_of_array_data(tmp_path, kind):
    """A joblib array declaring 4 GiB, followed by gigabytes of compressed zeros."""
    value = pickle.dumps(_FakeWrapper((2**30,)), protocol=2)[2:-1]
    bomb = BOMBS[kind](checkpoint_prefix() + value, b"\x00", 256, CHECKPOINT_SUFFIX)
    path = write(tmp_path, bomb)
    assert len(bomb) < 64 * 1024**2
    bounded(lambda: read_checkpoint(path), CheckpointError, "more than the limit")


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_bomb_of_opcodes(tmp_path, kind):
    """Gigabytes of one-byte opcodes (None) once decompressed: the opcode limit stops it
    after a million, whatever the expansion."""
    bomb = BOMBS[kind](checkpoint_prefix() + b"(", b"N", 256, b"l" + CHECKPOINT_SUFFIX)
    path = write(tmp_path, bomb)
    bounded(lambda: read_checkpoint(path), CheckpointError, "opcodes", trace=False)


@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz"])
def test_bomb_of_bytes_under_a_false_length(tmp_path, kind):
    """A BINBYTES8 declaring 4 GiB with 4 GiB of zeros behind it: refused at the length."""
    value = b"\x8e" + (4 * GB).to_bytes(8, "little")
    bomb = BOMBS[kind](b"\x80\x04" + checkpoint_prefix()[2:] + value, b"\x00", 256,
                       CHECKPOINT_SUFFIX)
    path = write(tmp_path, bomb)
    bounded(lambda: read_checkpoint(path), CheckpointError, "more than the limit")


def test_bomb_stops_at_the_stream_limit(tmp_path):
    """Many legal 64 MiB strings (each under every limit) from a 1 MB file: the stream
    limit stops it; what was read is bounded by DEFAULT_MAX_BYTES."""
    piece = b"\x8e" + (64 * 1024**2).to_bytes(8, "little")
    head = checkpoint_prefix() + b"("
    z = gzip.compress(b"\x00" * (64 * 1024**2), 9, mtime=0)
    count = DEFAULT_MAX_BYTES // (64 * 1024**2) + 4
    bomb = gzip.compress(head, mtime=0) + (gzip.compress(piece, mtime=0) + z) * count
    path = write(tmp_path, bomb)
    assert len(bomb) < 4 * 1024**2
    start = time.process_time()
    with pytest.raises(CheckpointError, match="more than the limit"):
        read_checkpoint(path)
    assert time.process_time() - start < 30


# --- bundles and attribution files --------------------------------------------------------------


def _bundle(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    import shutil

    from tests.test_fuzz import bundle_base

    root = tmp_path / "bundle"
    shutil.copytree(bundle_base(), root)
    return root, json.loads((root / bundles.INDEX_FILE).read_text())


def _record(root: Path, index: dict[str, Any], name: str, data: bytes) -> None:
    (root / name).write_bytes(data)
    index["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (root / bundles.INDEX_FILE).write_text(json.dumps(index))


def test_bundle_gzip_bomb_in_trajectory_json(tmp_path):
    """A trajectory file of about 2 MB that would expand to 2 GB: refused at
    MAX_JSON_BYTES, with its sha256 recorded so that the content check reads it."""
    root, index = _bundle(tmp_path)
    name = index["trajectories"][0]["data"]
    member = gzip.compress(b" " * CHUNK, 9, mtime=0)
    _record(root, index, name, member * 128)
    bounded(lambda: bundles.validate_bundle(root), bundles.BundleError, "expands to more than")


def test_bundle_ten_gigabyte_files(tmp_path):
    """Sparse 10 GB files in a bundle (a data file, then bundle.json): refused by size."""
    root, index = _bundle(tmp_path)
    name = index["layers"][0]["attribution"]["value"][0]
    with open(root / name, "r+b") as f:
        f.truncate(10 * GB)
    bounded(lambda: bundles.validate_bundle(root), bundles.BundleError,
            "over the .* byte limit")
    with open(root / bundles.INDEX_FILE, "r+b") as f:
        f.truncate(10 * GB)
    bounded(lambda: bundles.read_bundle(root), bundles.BundleError, "over the .* byte limit")


@pytest.mark.parametrize("key, value", [("frames", 10**12), ("features", 10**9),
                                        ("height", 10**6)])
def test_attribution_header_declaring_huge_sizes(key, value):
    from tests.test_fuzz import gatr_base

    data = gatr_base()
    meta_len = int.from_bytes(data[4:8], "little")
    header = dict(json.loads(data[8:8 + meta_len]), **{key: value})
    meta = json.dumps(header).encode()
    meta += b" " * (-(8 + len(meta)) % 4)
    hostile = codec.MAGIC + struct.pack("<I", len(meta)) + meta + data[8 + meta_len:]
    bounded(lambda: codec.decode(hostile), codec.CodecError, "bad header")


# --- the manifest -------------------------------------------------------------------------------


def test_manifest_billion_laughs_and_deep_nesting():
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 12)]
    text = "\n".join(lines) + "\nmodels:\n  - id: m\n    title: *l11\n    checkpoint: c.jd\n"
    bounded(lambda: parse_manifest(text), ManifestError, "expands to more than")
    deep = "models: " + "[" * 50_000 + "]" * 50_000 + "\n"
    bounded(lambda: parse_manifest(deep), ManifestError, "nested")


def test_limits_are_what_the_documentation_says():
    assert DEFAULT_MAX_BYTES == GB and MAX_OPCODES == 1_000_000
    assert MAX_LINE_BYTES == 64 * 1024**2
    assert codec.MAX_CODES_PER_FRAME == 1 << 20
    assert bundles.MAX_JSON_BYTES == 4 * bundles.MAX_FILE_BYTES
