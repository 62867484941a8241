"""Read joblib/pickle streams without ever running code from them.

A pickle stream is a small program: its GLOBAL/REDUCE/BUILD opcodes can import and call
anything. `safe_load` runs that program with an interpreter whose `find_class` knows only a
handful of names, each mapped to a function of ours that builds plain data:

- containers and scalars (dict, list, tuple, str, bytes, int, float, bool, None) need no
  globals at all;
- `numpy.ndarray` (plain numpy pickles) and joblib's `NumpyArrayWrapper` (whose array bytes
  follow the pickle opcode in the file) become numpy arrays of numeric dtypes;
- `numpy.dtype`, numpy scalars, `collections.OrderedDict` and `defaultdict` (as dict, the
  factory kept as an inert name) and `_codecs.encode`
  (protocol 2's spelling of bytes).

Anything else -- and object arrays, whose payload joblib pickles unrestricted -- raises
`UnsafeCheckpointError` before it is imported or called. Sizes are bounded, so a file that
declares a 1 TB array fails on what is actually there, not by allocating it. Hostile files
are refused within bounded memory and time (docs/reliability.md, Hardening): the file's
size, the decompressed stream's size (a decompression bomb stops at the limit, and a length
field claiming more is refused before anything is read or allocated), the arrays' declared
sizes and the number of pickle opcodes run (each builds at most one small object) are all
limited.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gallery.errors import CheckpointError, UnsafeCheckpointError

#: Refuse files, decompressed streams and arrays (their declared sizes, summed) larger
#: than this many bytes. The largest checkpoints of the model zoo are a few tens of MB.
DEFAULT_MAX_BYTES = 1024**3
#: Refuse streams that run more pickle opcodes than this (array data does not count): each
#: opcode builds at most one small object, so this bounds the memory of a stream of tiny
#: objects (a real checkpoint runs a few thousand).
MAX_OPCODES = 1_000_000
#: Longest line of a protocol-0 text opcode (a number, a name, an escaped string).
MAX_LINE_BYTES = 64 * 1024**2
_CHUNK = 16 * 1024**2


class _ArrayWrapper:
    """Stands in for joblib.numpy_pickle.NumpyArrayWrapper; holds only its state dict."""


class _NdarrayMarker:
    """Stands in for the `numpy.ndarray` class object inside a pickle stream."""


class _PendingArray:
    """Result of numpy's `_reconstruct`; becomes an array when BUILD gives its state."""


def _numeric_dtype(spec: Any) -> np.dtype:
    if not isinstance(spec, (str, np.dtype)):
        raise UnsafeCheckpointError("<stream>", f"unsupported dtype description {spec!r}")
    dtype = np.dtype(spec)
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise UnsafeCheckpointError("<stream>", f"dtype {dtype} is not a plain numeric dtype")
    return dtype


def _make_dtype(spec: Any, align: Any = 0, copy: Any = 1) -> np.dtype:
    return _numeric_dtype(spec)


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _PendingArray:
    if cls is not _NdarrayMarker:
        raise UnsafeCheckpointError("<stream>", "numpy _reconstruct of a class other than ndarray")
    return _PendingArray()


def _scalar(dtype: Any, data: Any) -> Any:
    dtype = _numeric_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafeCheckpointError("<stream>", "malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 array constructor, with the checks `_check_size` makes."""
    dtype = _numeric_dtype(dtype)
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(shape, tuple):
        raise CheckpointError("<stream>", "malformed protocol-5 numpy array")
    if int(np.prod(shape, dtype=object)) * dtype.itemsize != len(buf):
        raise CheckpointError("<stream>", "numpy array data does not match its shape")
    flat = np.frombuffer(bytes(buf), dtype=dtype).copy()
    return flat.reshape(shape[::-1]).transpose() if order == "F" else flat.reshape(shape)


class _FactoryName:
    """Stands in for a builtin type named as a defaultdict's factory; never called."""

    def __init__(self, name: str):
        self.name = name


def _defaultdict(factory: Any = None, *rest: Any) -> dict:
    if factory is not None and not isinstance(factory, _FactoryName):
        raise UnsafeCheckpointError("<stream>", "defaultdict with a non-builtin factory")
    return {}


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or str(encoding).lower() not in {"latin1", "latin-1"}:
        raise UnsafeCheckpointError("<stream>", "only latin-1 _codecs.encode is allowed")
    return text.encode("latin-1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _ArrayWrapper,
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _make_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("collections", "OrderedDict"): dict,
    ("collections", "defaultdict"): _defaultdict,  # e.g. the official checkpoints' `extra`
    ("_codecs", "encode"): _codecs_encode,
}
_ALLOWED.update(
    {("builtins", n): _FactoryName(n) for n in ("float", "int", "list", "dict", "str", "bool")}
)


class _LimitedStream:
    """The (decompressed) pickle stream, refusing to deliver more than `limit` bytes in all.

    A read asking for more than is left is refused before anything is read, so a length
    field that claims gigabytes fails at once, whatever the decompressor could produce."""

    def __init__(self, raw: BinaryIO, limit: int):
        self._raw, self.limit, self.used = raw, limit, 0

    def remaining(self) -> int:
        return self.limit - self.used

    def _refuse(self, wanted: int) -> CheckpointError:
        return CheckpointError(
            "<stream>", f"the pickle stream asks for {wanted} more bytes after {self.used}, "
            f"more than the limit of {self.limit} bytes in all; refusing to read (a "
            "decompression bomb or a corrupt length)")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.remaining() + 1
        if n > self.remaining():
            raise self._refuse(n)
        data = self._raw.read(n)
        self.used += len(data)
        return data

    def readline(self) -> bytes:
        line = self._raw.readline(min(self.remaining(), MAX_LINE_BYTES) + 1)
        self.used += len(line)
        if self.used > self.limit:
            raise self._refuse(len(line))
        if len(line) > MAX_LINE_BYTES:
            raise CheckpointError("<stream>", f"a text line of the pickle stream is longer "
                                  f"than {MAX_LINE_BYTES} bytes; refusing to read it")
        return line


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python one: BUILD is overridable
    def __init__(self, file: BinaryIO, max_bytes: int):
        self._stream = _LimitedStream(file, max_bytes)
        super().__init__(self._stream)
        self._max_bytes = max_bytes
        self._bytes_read = 0
        self._opcodes = 0
        self.dispatch = {code: self._counted(load)
                         for code, load in pickle._Unpickler.dispatch.items()}
        self.dispatch[pickle.BUILD[0]] = self._counted(_RestrictedUnpickler._load_build)
        self.dispatch[pickle.BYTEARRAY8[0]] = self._counted(
            _RestrictedUnpickler._load_bytearray8)

    def _counted(self, load: Callable[[Any], None]) -> Callable[[Any], None]:
        def run(unpickler: Any) -> None:
            self._opcodes += 1
            if self._opcodes > MAX_OPCODES:
                raise CheckpointError("<stream>", f"the pickle stream runs more than "
                                      f"{MAX_OPCODES} opcodes; a checkpoint needs a few "
                                      "thousand, so it was refused")
            load(unpickler)
        return run

    def _load_bytearray8(self) -> None:
        # pickle's own allocates the declared length before reading: check it first
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self._stream.remaining():
            raise self._stream._refuse(size)
        self.append(bytearray(self._read_exact(size)))

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                "<stream>",
                f"the file asks to load {module}.{name}; only arrays, dicts, lists, tuples and "
                "scalars are allowed in a checkpoint, so it was refused and nothing was run",
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError("<stream>", "persistent ids are not allowed")

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _ArrayWrapper):
            self.stack[-1] = self._read_wrapped_array(state)
        elif isinstance(inst, _PendingArray):
            self.stack[-1] = self._array_from_state(state)
        elif isinstance(inst, np.dtype):
            self.stack[-1] = self._dtype_with_state(inst, state)
        else:
            raise UnsafeCheckpointError("<stream>", f"BUILD on {type(inst).__name__} is not allowed")

    def _check_size(self, shape: Any, dtype: np.dtype) -> int:
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CheckpointError("<stream>", f"malformed array shape {shape!r}")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        self._bytes_read += nbytes
        if self._bytes_read > self._max_bytes:
            raise CheckpointError(
                "<stream>",
                f"arrays declare {self._bytes_read} bytes, more than the limit of "
                f"{self._max_bytes}; refusing to allocate",
            )
        return nbytes

    def _read_exact(self, nbytes: int) -> np.ndarray:
        """The next `nbytes` bytes as a uint8 array, read in chunks into one buffer."""
        out = np.empty(nbytes, np.uint8)
        done = 0
        while done < nbytes:
            part = self.read(min(nbytes - done, _CHUNK))
            if not part:
                raise CheckpointError("<stream>", "file ends inside an array: it is truncated")
            out[done:done + len(part)] = np.frombuffer(part, np.uint8)
            done += len(part)
        return out

    def _read_wrapped_array(self, state: Any) -> np.ndarray:
        if not isinstance(state, dict) or state.get("subclass") is not _NdarrayMarker:
            raise UnsafeCheckpointError("<stream>", "joblib array wrapper of a non-ndarray class")
        dtype = _numeric_dtype(state.get("dtype"))
        shape, order = state.get("shape"), state.get("order", "C")
        nbytes = self._check_size(shape, dtype)
        if state.get("numpy_array_alignment_bytes") is not None:
            pad = int(self._read_exact(1)[0])
            self._read_exact(pad)
        flat = self._read_exact(nbytes).view(dtype)
        if order == "F":
            return flat.reshape(shape[::-1]).transpose()
        return flat.reshape(shape)

    def _array_from_state(self, state: Any) -> np.ndarray:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise CheckpointError("<stream>", "malformed numpy array state")
        _, shape, dtype, fortran, raw = state
        dtype = _numeric_dtype(dtype)
        nbytes = self._check_size(shape, dtype)
        if not isinstance(raw, bytes) or len(raw) != nbytes:
            raise CheckpointError("<stream>", "numpy array data does not match its shape")
        flat = np.frombuffer(raw, dtype=dtype).copy()
        return flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)

    @staticmethod
    def _dtype_with_state(dtype: np.dtype, state: Any) -> np.dtype:
        # numpy pickles a dtype's byte order as state[1]; structured parts must be empty.
        if not (isinstance(state, tuple) and len(state) >= 5) or any(
            s is not None for s in state[2:5]
        ):
            raise UnsafeCheckpointError("<stream>", "structured dtypes are not allowed")
        order = state[1]
        if order not in ("<", ">", "|", "="):
            raise CheckpointError("<stream>", f"bad dtype byte order {order!r}")
        return _numeric_dtype(dtype.newbyteorder(order) if order != "|" else dtype)


class _ZlibReader(io.RawIOBase):
    """A read-only stream over joblib's raw zlib format, decompressing lazily."""

    def __init__(self, raw: BinaryIO):
        self._raw, self._z, self._buf = raw, zlib.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf and not self._z.eof:
            # leftover input from the last call comes first, so the stream stays in order
            data = self._z.unconsumed_tail or self._raw.read(1 << 16)
            if not data:
                raise EOFError("zlib stream ends early: the file is truncated")
            self._buf = self._z.decompress(data, max(len(b), 1 << 16))
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n


_OPENERS: list[tuple[bytes, str, Callable[[BinaryIO], BinaryIO]]] = [
    (b"\x1f\x8b", "gzip", lambda f: gzip.GzipFile(fileobj=f)),
    (b"BZh", "bz2", lambda f: bz2.BZ2File(f)),
    (b"\xfd7zXZ", "xz", lambda f: lzma.LZMAFile(f)),
    (b"]\x00\x00", "lzma", lambda f: lzma.LZMAFile(f, format=lzma.FORMAT_ALONE)),
    (b"\x78", "zlib", lambda f: io.BufferedReader(_ZlibReader(f))),
]


def open_stream(path: Path, raw: BinaryIO) -> BinaryIO:
    """Return a readable pickle stream, undoing joblib's compression if there is one."""
    head = raw.read(8)
    raw.seek(0)
    if head.startswith(b"\x80"):
        return raw
    for magic, _name, opener in _OPENERS:
        if head.startswith(magic):
            return opener(raw)
    if head.startswith(b"ZF"):
        raise CheckpointError(path, "joblib's pre-0.10 compressed format is not supported; "
                              "re-save the checkpoint with a current joblib")
    raise CheckpointError(path, "not a joblib/pickle file (unknown header "
                          f"{head[:4]!r}); a checkpoint is written with joblib.dump")


def safe_load(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Load a joblib/pickle file, reconstructing plain data and numeric arrays only."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            if size > max_bytes:
                raise CheckpointError(path, f"the file is {size} bytes, more than the limit "
                                      f"of {max_bytes} bytes for a checkpoint; refusing to "
                                      "read it")
            stream = open_stream(path, raw)
            return _RestrictedUnpickler(stream, max_bytes).load()
    except CheckpointError as err:
        cls = type(err)
        raise cls(path, err.problem) from None
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except (EOFError, pickle.UnpicklingError, zlib.error, lzma.LZMAError, OSError,
            ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            struct.error, OverflowError) as err:
        raise CheckpointError(
            path, f"not a readable joblib/pickle file (truncated or corrupt: {err})"
        ) from None
