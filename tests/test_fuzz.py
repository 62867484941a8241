"""Property-based fuzzing of the readers of untrusted input (docs/reliability.md, Hardening).

Every reader must either succeed or raise the project's own clear error -- a
`gallery.errors.GalleryError` subclass (`ManifestError`, `CheckpointError`,
`UnsafeCheckpointError`, `BundleError`, `attribution_codec.CodecError`) -- for any input:
never another exception, never a hang, and the checkpoint reader must never import or call
anything outside its allow-list (an audit hook watches every call).

Targets (each a function `input -> outcome` that benchmarks/fuzz_campaign.py reuses):
- the manifest parser: arbitrary text and bytes, YAML documents of wrong types, unknown
  keys, huge numbers, unicode, deep nesting and aliases, and mutated valid manifests;
- the safe checkpoint reader (`read_checkpoint`): random bytes, mutated joblib files
  (uncompressed and every compression joblib writes, and plain pickles), mutated
  decompressed streams, and random pickle opcode programs including payloads;
- the bundle reader (`read_bundle`, `validate_bundle`) and the attribution decoder
  (`attribution_codec.decode` and its stream decoder): mutated files and indexes.

GALLERY_FUZZ_EXAMPLES sets the number of examples per property (default 30, which keeps
this file well under a minute on two cores).
"""

from __future__ import annotations

import atexit
import bz2
import functools
import gzip
import hashlib
import json
import lzma
import os
import pickle
import pickletools
import shutil
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gallery import bundle as bundles
from gallery.bundle import codec
from gallery.errors import CheckpointError, GalleryError
from gallery.models.checkpoint import read_checkpoint
from gallery.pipeline.manifest import ManifestError, load_manifest, parse_manifest
from tests.bundle_helpers import synthetic_attribution, write_small_bundle
from tests.reference.checkpoints import make_checkpoint, write_checkpoint

EXAMPLES = int(os.environ.get("GALLERY_FUZZ_EXAMPLES", "30"))
#: One input taking longer than this is a hang (the readers are bounded by design).
MAX_SECONDS = float(os.environ.get("GALLERY_FUZZ_MAX_SECONDS", "10"))
CLEAR_ERRORS: tuple[type[BaseException], ...] = (GalleryError, codec.CodecError)

FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

WORK = Path(tempfile.mkdtemp(prefix="gallery-fuzz-"))
atexit.register(shutil.rmtree, WORK, True)
#: Payloads in the pickle programs write or touch this file: it must never appear.
SENTINEL = WORK / "PWNED"


class Crash(AssertionError):
    """A reader raised something other than the project's clear errors, or hung."""


# --- the audit hook: nothing outside the allow-list runs ----------------------------------

#: Events that a pickle reader must never cause (sys.audit events of CPython).
FORBIDDEN_EVENTS = {
    "os.system", "subprocess.Popen", "exec", "compile", "import", "os.exec",
    "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.remove", "os.rename",
    "os.mkdir", "os.rmdir", "os.chmod", "os.truncate", "os.symlink", "shutil.rmtree",
    "shutil.copyfile", "shutil.move", "socket.connect", "socket.__new__",
    "ctypes.dlopen", "builtins.input", "urllib.Request", "pickle.find_class",
    "code.__new__", "function.__new__", "os.putenv", "os.kill",
}


class _Watch:
    def __init__(self) -> None:
        self.active = False
        self.allowed_open: set[str] = set()
        self.events: list[tuple[str, str]] = []
        self.thread = 0

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active or threading.get_ident() != self.thread:
            return
        if event in FORBIDDEN_EVENTS:
            self.events.append((event, repr(args)[:200]))
        elif event == "open":
            name = str(args[0]) if args else ""
            mode = str(args[1]) if len(args) > 1 else "r"
            if name not in self.allowed_open or any(c in mode for c in "wax+"):
                self.events.append((event, repr(args)[:200]))


WATCH = _Watch()
sys.addaudithook(WATCH)


def watched(allowed_open: set[str], call: Any) -> Any:
    """Run `call()` with the audit hook recording forbidden events; fail if any."""
    WATCH.events, WATCH.allowed_open = [], allowed_open
    WATCH.thread, WATCH.active = threading.get_ident(), True
    try:
        return call()
    finally:
        WATCH.active = False
        events = list(WATCH.events)
        ran = SENTINEL.exists()
        if ran:
            SENTINEL.unlink()
        if events or ran:
            raise Crash(f"the reader caused forbidden events: {events[:5]}"
                        + ("; a payload ran: the sentinel file was created" if ran else ""))


#: The campaign (benchmarks/fuzz_campaign.py) sets this to see every outcome; with
#: KEEP_GOING it also records crashes instead of failing on the first.
RECORDER: Any = None
KEEP_GOING = False


def outcome(call: Any) -> str:
    """'ok', or 'ErrorClass: message' for a clear error; raises Crash for anything else."""
    start = time.perf_counter()
    try:
        try:
            call()
            result = "ok"
        except CLEAR_ERRORS as err:
            result = f"{type(err).__name__}: {err}"
        except Crash:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:  # noqa: BLE001 -- that is the point of a fuzzer
            raise Crash(f"{type(err).__name__}: {err}"[:2000]) from err
        elapsed = time.perf_counter() - start
        if elapsed > MAX_SECONDS:
            raise Crash(f"took {elapsed:.1f} s (a hang)")
    except Crash as crash:
        if RECORDER is not None:
            RECORDER(f"CRASH {crash}", time.perf_counter() - start)
        if not KEEP_GOING:
            raise
        return f"CRASH {crash}"
    if RECORDER is not None:
        RECORDER(result, time.perf_counter() - start)
    return result


# --- mutations --------------------------------------------------------------------------

MUTATION = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup",
                                      "zero", "ff"]),
                     st.integers(0, 1 << 30), st.integers(0, 255), st.integers(1, 64))


def mutate(data: bytes, ops: list[tuple[str, int, int, int]]) -> bytes:
    """Apply byte-level mutations: bit flips, set/insert/delete, truncation, duplication."""
    buf = bytearray(data)
    for kind, where, value, length in ops:
        if not buf:
            buf = bytearray([value])
            continue
        i = where % len(buf)
        if kind == "flip":
            buf[i] ^= 1 << (value % 8)
        elif kind == "set":
            buf[i] = value
        elif kind == "insert":
            buf[i:i] = bytes([value]) * length
        elif kind == "delete":
            del buf[i:i + length]
        elif kind == "truncate":
            del buf[i:]
        elif kind == "dup":
            buf[i:i] = buf[i:i + length]
        elif kind == "zero":
            buf[i:i + length] = bytes(len(buf[i:i + length]))
        else:
            buf[i:i + length] = b"\xff" * len(buf[i:i + length])
    return bytes(buf)


def _scratch(name: str) -> Path:
    path = WORK / f"{threading.get_ident()}-{name}"
    return path


# --- target 1: the manifest ---------------------------------------------------------------

MANIFEST_DIR = WORK / "manifest"
MANIFEST_DIR.mkdir()
(MANIFEST_DIR / "c.jd").write_bytes(b"not read by the parser")
MANIFEST_PATH = MANIFEST_DIR / "checkpoints.yaml"

VALID_MANIFEST = """\
site:
  name: Fuzz zoo
  url: https://example.org/zoo/
defaults:
  trajectories: {num_envs: 8, num_steps: 512}
  observations: {num_envs: 32, num_obs: 128, obs_every: 128}
  layers: {include: null, discard_first_n: 0, input_layer: false}
  attribution: {integrate_steps: 10, policy: false, single_features: true}
  nmf: {features: 8}
models:
  - id: coinrun-clear
    title: CoinRun, clear CNN
    checkpoint: c.jd
    description: Markdown *here*
    tags: [coinrun, clear]
    env: {distribution_mode: hard}
    options: {attribution: {policy: true}}
    features: {2b: {0: coin, 3: buzzsaw}}
  - id: remote
    title: Remote
    checkpoint: https://example.org/models/coinrun.jd
    sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
comparisons:
  - id: both
    title: Both
    models: [coinrun-clear, remote]
"""


def manifest_text(text: str) -> str:
    return outcome(lambda: parse_manifest(text, MANIFEST_PATH))


def manifest_bytes(data: bytes) -> str:
    path = MANIFEST_DIR / f"{threading.get_ident()}.yaml"
    path.write_bytes(data)
    return outcome(lambda: load_manifest(path))


def manifest_document(doc: Any) -> str:
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    return manifest_text(text)


KEYS = ["site", "defaults", "models", "comparisons", "name", "url", "repo_url", "id",
        "title", "checkpoint", "sha256", "description", "tags", "env", "options",
        "features", "trajectories", "observations", "layers", "attribution", "nmf",
        "num_envs", "num_steps", "seed", "include", "policy", "integrate_steps",
        "training_steps", "citation", "distribution_mode", "2b", "<<", "models "]

SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(-(10**4000), 10**4000), st.sampled_from([2**63, -(2**63) - 1,
                                                                        10**300]),
    st.floats(), st.text(max_size=30), st.sampled_from(KEYS),
    st.sampled_from(["c.jd", "https://x.org/a.jd", "file:///etc/passwd", "ftp://x/y",
                     "http://[", "~nosuchuser/c.jd", "../../etc", "x" * 5000, "a\0b",
                     "coinrun-clear", "remote", "\u202e\ud7ff\U0001f600", ""]))
JSON_KEYS = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3),
                      st.booleans(), st.none(), st.floats(allow_nan=False))


def _values(keys: Any) -> Any:
    return st.recursive(SCALARS, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)), max_leaves=30)


def _put(doc: Any, path: list[int], value: Any) -> Any:
    """Replace the node reached by `path` (indices taken modulo sizes) with `value`."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    if isinstance(doc, dict):
        key = list(doc)[path[0] % len(doc)]
        doc[key] = _put(doc[key], path[1:], value)
    else:
        i = path[0] % len(doc)
        doc[i] = _put(doc[i], path[1:], value)
    return doc


@st.composite
def wrong_documents(draw: Any) -> Any:
    """A valid manifest with a few nodes replaced by values of any type, shared (aliases)."""
    doc = yaml.safe_load(VALID_MANIFEST)
    for _ in range(draw(st.integers(1, 4))):
        value = draw(_values(JSON_KEYS))
        if draw(st.booleans()):  # shared references: safe_dump writes anchors and aliases
            value = [value] * draw(st.integers(2, 4))
            for _ in range(draw(st.integers(0, 6))):
                value = [value, value, value]
        doc = _put(doc, draw(st.lists(st.integers(0, 50), max_size=6)), value)
    return doc


YAML_FRAGMENTS = [
    "!!int ''", "!!int 0x", "!!float abc", "!!timestamp 2001-02-30", "2001-02-30",
    "2001-13-01 25:61:61", "!!binary '###'", "!!python/object/apply:os.system ['true']",
    "!!python/name:os.system", "&a [*a]", "*undefined", "<<: *a", "<<: [1, 2]",
    "{? [a, b]: c}", "[" * 300 + "]" * 300, "{a: " * 300 + "1" + "}" * 300,
    "- " * 300 + "x", "1" * 5000, "0b" + "1" * 20000, "0x" + "f" * 5000,
    "-0o" + "7" * 5000, "1_0" * 3000, "1e99999", ".nan", "-.inf", "'\\x00'", "\"\\x00\"",
    "\"\\ud800\"", "\t", "\ufeff", "\x85", "\u2028", "%YAML 1.1\n---", "--- !!map\n",
    "...", "? ", "&x 1", "!x 1", "!<tag:yaml.org,2002:int> 1", "key: value: other",
    "a: &b {c: &d [1, *b]}", "\"" + "\\u" + "d83d" + "\"",
]


@st.composite
def mutated_manifests(draw: Any) -> str:
    """The valid manifest with fragments spliced into random places, or lines dropped."""
    lines = VALID_MANIFEST.splitlines()
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(lines)))
        kind = draw(st.sampled_from(["value", "line", "drop", "indent", "text"]))
        if kind == "drop" and lines:
            del lines[min(i, len(lines) - 1)]
        elif kind == "indent" and lines:
            j = min(i, len(lines) - 1)
            lines[j] = " " * draw(st.integers(0, 6)) + lines[j].lstrip()
        elif kind == "text":
            lines.insert(i, draw(st.text(max_size=40)))
        else:
            fragment = draw(st.sampled_from(YAML_FRAGMENTS))
            if kind == "value" and lines and ":" in lines[min(i, len(lines) - 1)]:
                j = min(i, len(lines) - 1)
                head = lines[j].split(":", 1)[0]
                lines[j] = f"{head}: {fragment}"
            else:
                lines.insert(i, fragment)
    return "\n".join(lines) + "\n"


def test_valid_manifest_parses():
    manifest = parse_manifest(VALID_MANIFEST, MANIFEST_PATH)
    assert [m.id for m in manifest.models] == ["coinrun-clear", "remote"]


@FUZZ
@given(st.text())
def test_manifest_arbitrary_text(text):
    manifest_text(text)


@FUZZ
@given(st.binary())
def test_manifest_arbitrary_bytes(data):
    manifest_bytes(data)


@FUZZ
@given(wrong_documents())
def test_manifest_wrong_documents(doc):
    result = manifest_document(doc)
    assert result.startswith(("ok", "ManifestError"))


@FUZZ
@given(mutated_manifests())
def test_manifest_mutated_text(text):
    manifest_text(text)


# --- target 2: checkpoints ------------------------------------------------------------------


def small_checkpoint() -> dict[str, Any]:
    """A checkpoint in the real format (make_checkpoint's args, extra, time) whose params
    are cut down to three small arrays, so that every mutation is cheap to read."""
    ckpt = make_checkpoint("clear", seed=1)
    names = list(ckpt["params"])[:3]
    ckpt["params"] = {n: np.ascontiguousarray(ckpt["params"][n].ravel()[:12].reshape(3, 4))
                      for n in names}
    ckpt["params"][names[1]] = np.asfortranarray(ckpt["params"][names[1]])
    ckpt["extra"]["history"] = {"loss": [0.5, 0.25], "nested": ({"a": None},)}
    return ckpt


@functools.lru_cache(maxsize=1)
def checkpoint_bases() -> dict[str, bytes]:
    """The bytes of the small checkpoint as joblib writes it (every compression) and as
    plain pickles of several protocols."""
    ckpt, out = small_checkpoint(), {}
    for label, compress in [("joblib", 0), ("zlib", 3), ("gzip", ("gzip", 3)),
                            ("bz2", ("bz2", 3)), ("xz", ("xz", 3)), ("lzma", ("lzma", 3))]:
        path = write_checkpoint(WORK / f"base-{label}.jd", ckpt, compress=compress)
        out[label] = path.read_bytes()
    for protocol in (2, 4, 5):
        out[f"pickle{protocol}"] = pickle.dumps(ckpt, protocol=protocol)
    return out


COMPRESSORS = {
    "zlib": lambda b: zlib.compress(b, 3), "gzip": lambda b: gzip.compress(b, 3, mtime=0),
    "bz2": lambda b: bz2.compress(b, 3), "xz": lambda b: lzma.compress(b),
    "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE),
}


def read_checkpoint_bytes(data: bytes) -> str:
    """Write `data` to a file and read it as a checkpoint, watched by the audit hook."""
    path = _scratch("c.jd")
    path.write_bytes(data)
    return outcome(lambda: watched({str(path)}, lambda: read_checkpoint(path)))


def test_base_checkpoints_read():
    for label, data in checkpoint_bases().items():
        assert read_checkpoint_bytes(data) == "ok", label


@FUZZ
@given(st.binary(max_size=4096))
def test_checkpoint_random_bytes(data):
    read_checkpoint_bytes(data)


@FUZZ
@given(st.sampled_from(sorted(checkpoint_bases())), st.lists(MUTATION, min_size=1, max_size=6))
def test_checkpoint_mutated_files(label, ops):
    read_checkpoint_bytes(mutate(checkpoint_bases()[label], ops))


@FUZZ
@given(st.sampled_from(sorted(COMPRESSORS)), st.lists(MUTATION, min_size=1, max_size=6))
def test_checkpoint_mutated_streams_recompressed(compressor, ops):
    """Mutations of the pickle stream itself, compressed again (so they reach the
    unpickler rather than the decompressor's checksums)."""
    stream = mutate(checkpoint_bases()["joblib"], ops)
    read_checkpoint_bytes(COMPRESSORS[compressor](stream))


# random pickle programs ----------------------------------------------------------------

GLOBALS = [
    ("builtins", "open"), ("builtins", "eval"), ("builtins", "exec"), ("os", "system"),
    ("posix", "system"), ("subprocess", "Popen"), ("builtins", "__import__"),
    ("builtins", "getattr"), ("pathlib", "Path"), ("shutil", "rmtree"), ("numpy", "load"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"), ("collections", "OrderedDict"),
    ("collections", "defaultdict"), ("_codecs", "encode"), ("builtins", "int"),
    ("builtins", "float"), ("copyreg", "_reconstructor"), ("builtins", "object"),
]


def _payload(module: str, name: str, *args: Any) -> bytes:
    """A protocol-0 program that would call module.name(*args) (a STOP-less fragment)."""
    out = f"c{module}\n{name}\n(".encode()
    for arg in args:
        out += b"V" + arg.encode("raw_unicode_escape") + b"\n"
    return out + b"tR"


PAYLOADS = [
    _payload("builtins", "open", str(SENTINEL), "w"),
    _payload("os", "system", f"touch {SENTINEL}"),
    _payload("posix", "system", f"touch {SENTINEL}"),
    _payload("builtins", "exec", f"open({str(SENTINEL)!r}, 'w')"),
    _payload("builtins", "eval", f"open({str(SENTINEL)!r}, 'w')"),
    _payload("subprocess", "Popen", "touch"),
    b"\x8c\x08builtins\x8c\x04open\x93\x8c" + bytes([len(str(SENTINEL))])
    + str(SENTINEL).encode() + b"\x8c\x01w\x86R",
]


def _sample_fragments() -> list[bytes]:
    """Real pickle pieces: a dict, arrays (numpy and joblib framing), scalars."""
    frags = []
    for protocol in (2, 5):
        for obj in [np.arange(6, dtype=np.float32).reshape(2, 3), np.float64(2.5),
                    {"a": [1, (2.5, "x")], "b": None}, np.dtype(">i2")]:
            frags.append(pickle.dumps(obj, protocol=protocol)[2:-1])  # no PROTO, no STOP
    return frags


FRAGMENTS = _sample_fragments() + PAYLOADS
OPCODES = [op for op in pickletools.opcodes]
BIG = [0, 1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**63 - 1,
       2**64 - 1]


def _encode_op(op: pickletools.OpcodeInfo, payload: bytes, number: int, honest: bool) -> bytes:
    """One opcode with an argument of the right shape (lengths honest or not)."""
    code = op.code.encode("latin-1")
    arg = op.arg
    if arg is None:
        return code
    name, n = arg.name, arg.n
    if name == "stringnl_noescape_pair":
        module, attr = GLOBALS[number % len(GLOBALS)]
        return code + f"{module}\n{attr}\n".encode()
    if n == pickletools.UP_TO_NEWLINE:
        text = payload.replace(b"\n", b"") if not honest else str(number).encode()
        if name == "stringnl" and honest:
            text = b"'" + payload.hex().encode() + b"'"
        return code + text + b"\n"
    if n > 0 and name not in ("float8",):
        width = n
        fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[width]
        signed = {1: "<b", 2: "<h", 4: "<i", 8: "<q"}[width]
        value = number % (1 << (8 * width))
        try:
            return code + struct.pack(fmt if name.startswith("uint") else signed,
                                      value if name.startswith("uint")
                                      else value - (1 << (8 * width - 1)))
        except struct.error:
            return code + bytes(width)
    if name == "float8":
        return code + payload[:8].ljust(8, b"\0")
    # length-prefixed: TAKEN_FROM_ARGUMENT1/4/4U/8U
    width = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
             pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}[n]
    length = len(payload) if honest else number % (1 << (8 * width))
    signed = n == pickletools.TAKEN_FROM_ARGUMENT4
    if signed and length >= 2**31:
        length -= 2**32
    prefix = length.to_bytes(width, "little", signed=signed)
    return code + prefix + payload


OP = st.one_of(
    st.tuples(st.sampled_from(OPCODES), st.binary(max_size=16), st.sampled_from(BIG),
              st.booleans()).map(lambda t: _encode_op(*t)),
    st.tuples(st.sampled_from(OPCODES), st.binary(max_size=16), st.integers(0, 2**64),
              st.just(True)).map(lambda t: _encode_op(*t)),
    st.sampled_from(FRAGMENTS),
)


@st.composite
def pickle_programs(draw: Any) -> bytes:
    protocol = draw(st.integers(0, 5))
    head = b"" if protocol < 2 else bytes([0x80, protocol])
    body = b"".join(draw(st.lists(OP, max_size=40)))
    stop = b"." if draw(st.booleans()) else b""
    return head + body + stop


@FUZZ
@given(pickle_programs())
def test_checkpoint_random_pickle_programs(program):
    read_checkpoint_bytes(program)


@FUZZ
@given(st.sampled_from(PAYLOADS), st.lists(OP, max_size=10), st.integers(2, 5))
def test_payloads_never_run(payload, prefix, protocol):
    program = bytes([0x80, protocol]) + b"".join(prefix) + payload + b"."
    result = read_checkpoint_bytes(program)
    assert result != "ok"
    assert not SENTINEL.exists()


def test_audit_hook_sees_a_payload_that_runs():
    """The watch itself works: an unrestricted pickle.loads of a payload is caught."""
    program = b"\x80\x02" + PAYLOADS[0] + b"."
    with pytest.raises(Crash, match="forbidden events|sentinel"):
        watched(set(), lambda: pickle.loads(program).close())
    assert not SENTINEL.exists()


# --- target 3: bundles and attribution files --------------------------------------------------


@functools.lru_cache(maxsize=1)
def gatr_base() -> bytes:
    features, residual = synthetic_attribution(frames=3, h=5, w=4, k=2, seed=7)
    return codec.encode(features, residual, table=codec.LevelTable(0.01))


def decode_attribution(data: bytes) -> str:
    def run() -> None:
        parsed = codec.decode(data)
        if parsed.header.frames:
            parsed.codes()
            parsed.planes_values(np.array([0]))
    return outcome(run)


def test_base_attribution_decodes():
    assert decode_attribution(gatr_base()) == "ok"


@FUZZ
@given(st.lists(MUTATION, min_size=1, max_size=6))
def test_attribution_mutated_bytes(ops):
    decode_attribution(mutate(gatr_base(), ops))


HEADER_KEYS = ["version", "frames", "height", "width", "features", "scale", "step",
               "linear", "worst_mae", "worst_psnr"]
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.sampled_from([0, -1, 1, 2, 1 << 20, 1 << 31, 10**9]), st.floats(),
              st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=8)


@FUZZ
@given(st.dictionaries(st.sampled_from(HEADER_KEYS + ["extra"]), JSONISH, max_size=4),
       st.lists(st.sampled_from(HEADER_KEYS), max_size=2), st.booleans())
def test_attribution_mutated_headers(changes, removed, keep_body):
    """Headers of any values (sizes, types) in front of a real or an empty body."""
    data = gatr_base()
    meta_len = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8:8 + meta_len])
    header.update(changes)
    for key in removed:
        header.pop(key, None)
    meta = json.dumps(header, allow_nan=True).encode()
    meta += b" " * (-(8 + len(meta)) % 4)
    body = data[8 + meta_len:] if keep_body else b""
    decode_attribution(codec.MAGIC + struct.pack("<I", len(meta)) + meta + body)


@functools.lru_cache(maxsize=1)
def bundle_base() -> Path:
    """A small valid bundle (two trajectories, one layer with attribution and features)."""
    root = WORK / "bundle-base"
    write_small_bundle(root, frames=4, side=8, grid_side=2, features=2, extra=6,
                       action_names=("LEFT", "RIGHT"), image_effort="fast", created="fuzz")
    return root


def _json_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            paths += _json_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            paths += _json_paths(v, prefix + (i,))
    return paths


def _set_path(doc: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def validate(root: Path) -> str:
    def run() -> None:
        bundles.read_bundle(root)
        bundles.validate_bundle(root, decode_frames=2)
    return outcome(run)


def _fresh_bundle() -> Path:
    root = _scratch("bundle")
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(bundle_base(), root)
    return root


def test_base_bundle_validates():
    assert validate(_fresh_bundle()) == "ok"


@FUZZ
@given(st.data())
def test_bundle_mutated_index(data):
    """bundle.json with values replaced (any JSON), keys deleted, or its bytes mutated."""
    root = _fresh_bundle()
    index_path = root / bundles.INDEX_FILE
    if data.draw(st.booleans(), "structural"):
        index = json.loads(index_path.read_text())
        for _ in range(data.draw(st.integers(1, 4), "changes")):
            paths = _json_paths(index)
            path = paths[data.draw(st.integers(0, len(paths) - 1), "path")]
            delete = bool(path) and data.draw(st.booleans(), "delete")
            index = _set_path(index, path, None if delete else data.draw(JSONISH, "value"),
                              delete)
        index_path.write_text(json.dumps(index))
    else:
        index_path.write_bytes(mutate(index_path.read_bytes(),
                                      data.draw(st.lists(MUTATION, min_size=1, max_size=4))))
    validate(root)


@FUZZ
@given(st.data())
def test_bundle_mutated_files(data):
    """A data file mutated, its size and sha256 in the index updated (or not), so that the
    content checks (gzip JSON, WebP headers, attribution files) see the damage."""
    root = _fresh_bundle()
    index_path = root / bundles.INDEX_FILE
    index = json.loads(index_path.read_text())
    names = sorted(index["files"])
    for _ in range(data.draw(st.integers(1, 3), "files")):
        name = data.draw(st.sampled_from(names), "file")
        path = root / name
        if data.draw(st.booleans(), "gzip json") and name.endswith(".json.gz"):
            value = json.loads(gzip.decompress((bundle_base() / name).read_bytes()))
            paths = _json_paths(value)
            where = paths[data.draw(st.integers(0, len(paths) - 1), "path")]
            value = _set_path(value, where, data.draw(JSONISH, "value"), False)
            new = gzip.compress(json.dumps(value).encode())
        else:
            new = mutate(path.read_bytes(), data.draw(st.lists(MUTATION, min_size=1,
                                                              max_size=4), "ops"))
        path.write_bytes(new)
        if data.draw(st.booleans(), "fix index"):
            index["files"][name] = {"bytes": len(new),
                                    "sha256": hashlib.sha256(new).hexdigest()}
    index_path.write_text(json.dumps(index))
    validate(root)


# --- regressions: each crash the fuzzing found (or that reading the readers showed) -----------


@pytest.mark.parametrize("text, expected", [
    ("models: []\n\x08", "special characters"),                # ReaderError escaped
    ("a: !!int ''\n", "cannot read this value"),               # IndexError in PyYAML
    ("a: !!float abc\n", "cannot read this value"),            # ValueError
    ("a: 2001-02-30\n", "day is out of range"),                # ValueError (timestamp)
    ("a: " + "1" * 5000 + "\n", "cannot read this value"),     # int digit limit
    ("models: " + "[" * 3000 + "]" * 3000 + "\n", "nested"),  # RecursionError
    ("models: &a [*a]\n", "nested deeper"),                    # a recursive alias
])
def test_regression_manifest_yaml_values(text, expected):
    with pytest.raises(ManifestError, match=expected):
        parse_manifest(text, MANIFEST_PATH)


def test_regression_manifest_not_utf8(tmp_path):
    path = tmp_path / "checkpoints.yaml"
    path.write_bytes(b"models:\n  - id: \xff\xfe\n")
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(path)


def test_regression_manifest_billion_laughs_is_bounded():
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    text = "\n".join(lines) + "\nmodels:\n  - id: m\n    title: *l9\n    checkpoint: c.jd\n"
    start = time.perf_counter()
    with pytest.raises(ManifestError, match="expands to more than"):
        parse_manifest(text, MANIFEST_PATH)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("checkpoint, expected", [
    ("http://[", "not a valid URL"),                # ValueError from urlparse
    ("x" * 5000, "cannot use this path"),           # OSError: file name too long
    ("~nosuchuser-gallery/c.jd", "cannot use this path"),  # RuntimeError: no such home
])
def test_regression_manifest_checkpoint_paths(checkpoint, expected):
    text = f"models:\n  - id: m\n    title: t\n    checkpoint: '{checkpoint}'\n"
    with pytest.raises(ManifestError, match=expected):
        parse_manifest(text, MANIFEST_PATH)


def test_regression_manifest_comparison_of_unhashable_names():
    doc = yaml.safe_load(VALID_MANIFEST)
    doc["comparisons"][0]["models"] = [["coinrun-clear"], "remote"]
    with pytest.raises(ManifestError, match=r"comparisons\[0\]\.models\[0\]"):
        manifest_document_strict(doc)


def manifest_document_strict(doc: Any) -> None:
    parse_manifest(yaml.safe_dump(doc), MANIFEST_PATH)


def _checkpoint_file(tmp_path: Path, data: Any, protocol: int = 4) -> Path:
    path = tmp_path / "c.jd"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def test_regression_truncated_stream_is_a_clear_error(tmp_path):
    # struct.error escaped from the pickle machine (an unframed BINFLOAT cut short)
    path = tmp_path / "c.jd"
    path.write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00timeG\x41\xd7")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)


def test_regression_huge_int_time(tmp_path):
    ckpt = small_checkpoint()
    ckpt["time"] = 10**400  # float() overflowed
    assert read_checkpoint(_checkpoint_file(tmp_path, ckpt)).time is None


@pytest.mark.parametrize("key", ["use_lstm", "cnn", "env_name", "env_kind"])
def test_regression_array_valued_args(tmp_path, key):
    ckpt = small_checkpoint()
    ckpt["args"][key] = np.ones(3)  # truth value / comparison of an array raised ValueError
    with pytest.raises(CheckpointError, match=f"args.{key} is a ndarray"):
        read_checkpoint(_checkpoint_file(tmp_path, ckpt))


def test_regression_params_beyond_float32(tmp_path):
    ckpt = small_checkpoint()
    name = next(iter(ckpt["params"]))
    ckpt["params"][name] = np.full((2, 2), 1e300)  # became inf as float32, unchecked
    with pytest.raises(CheckpointError, match="NaN/inf values"):
        read_checkpoint(_checkpoint_file(tmp_path, ckpt))


def test_regression_shared_references_are_bounded(tmp_path):
    """A 'billion laughs' pickle: 30 levels, each a list holding the level below twice;
    walking it for its depth visited 2^30 lists (a hang)."""
    program = b"\x80\x04}(\x8c\x06params}\x8c\x01w" + pickle.dumps(
        np.ones(2, np.float32), protocol=4)[2:-1] + b"s\x8c\x04args}\x8c\x03env\x8c\x07coinrun"
    program += b"s\x8c\x05extra]"
    program += b"2\x86" * 30  # DUP, TUPLE2: each level refers twice to the level below
    program += b"u."
    path = tmp_path / "c.jd"
    path.write_bytes(program)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="more than 1000000 values"):
        read_checkpoint(path)
    assert time.perf_counter() - start < 10


def test_regression_attribution_truncated_and_mistyped_headers():
    data = gatr_base()
    for cut in (5, 9, 30, 60, 120):
        with pytest.raises(codec.CodecError):
            codec.decode(data[:cut])  # struct.error escaped
    meta_len = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8:8 + meta_len])
    for key, value in [("frames", {}), ("features", None), ("height", "2"),
                       ("features", 36_000_000_035), ("frames", -1), ("step", 0),
                       ("height", 1 << 20)]:
        bad = dict(header, **{key: value})
        meta = json.dumps(bad).encode()
        meta += b" " * (-(8 + len(meta)) % 4)
        with pytest.raises(codec.CodecError, match="bad header"):  # TypeError, MemoryError
            codec.decode(codec.MAGIC + struct.pack("<I", len(meta)) + meta
                         + data[8 + meta_len:])


def test_regression_attribution_stream_read_past_its_end():
    parsed = codec.decode(gatr_base())
    parsed.streams[0] = parsed.streams[0][:5]  # an IndexError deep in the rANS decoder
    with pytest.raises(codec.CodecError, match="stream ends"):
        parsed.codes(np.array([0]))


def test_regression_bundle_malformed_index():
    for change in [lambda i: i["layers"][0].pop("attribution"),  # KeyError
                   lambda i: i.__setitem__("files", []),            # AttributeError
                   lambda i: i["trajectories"][0]["frames"].__setitem__("tile", []),
                   lambda i: i["layers"][0]["attribution"].__setitem__("value", [{}]),
                   lambda i: i.__setitem__("default_layer", "nope")]:
        root = _fresh_bundle()
        index = json.loads((root / bundles.INDEX_FILE).read_text())
        change(index)
        (root / bundles.INDEX_FILE).write_text(json.dumps(index))
        with pytest.raises(bundles.BundleError):
            bundles.validate_bundle(root)


def test_regression_bundle_corrupt_gzip_json_listed():
    root = _fresh_bundle()
    index = json.loads((root / bundles.INDEX_FILE).read_text())
    name = index["trajectories"][0]["data"]
    data = bytearray((root / name).read_bytes())
    data[12] ^= 0xFF  # zlib.error escaped validate_bundle
    (root / name).write_bytes(bytes(data))
    index["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (root / bundles.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(bundles.BundleError, match=f"{name}: cannot read it"):
        bundles.validate_bundle(root)


def test_regression_bundle_index_nested_too_deeply():
    root = _fresh_bundle()
    (root / bundles.INDEX_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(bundles.BundleError, match="cannot read the bundle index"):
        bundles.read_bundle(root)  # RecursionError


@pytest.mark.parametrize("entry", ["training_steps: -0x" + "f" * 5000,
                                   "env:\n      ? 0x" + "f" * 5000 + "\n      : 1",
                                   "features:\n      2b:\n        ? 0x" + "f" * 5000
                                   + "\n        : coin",
                                   "\n  - id: 0b" + "1" * 20000 + "\n    title: u"])
def test_regression_manifest_integers_too_long_to_print(entry):
    """Found by the long campaign: a hexadecimal integer of 6,000 decimal digits reached
    an error message, whose repr() raised ValueError (Python's 4,300-digit limit)."""
    text = f"models:\n  - id: m\n    title: t\n    checkpoint: c.jd\n    {entry}\n"
    with pytest.raises(ManifestError, match="bits>"):
        parse_manifest(text, MANIFEST_PATH)


def test_regression_bundle_atlas_over_pils_bomb_limit(monkeypatch):
    """PIL raises DecompressionBombError (not an OSError) for images over twice its pixel
    limit; validate_bundle let it escape. A small limit makes the real atlases such images."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(bundles.BundleError, match="cannot decode"):
        bundles.validate_bundle(_fresh_bundle())
