"""Work units and the persisted unit store: resumable, verifiable, shareable builds.

A build (one interface, or every interface of a gallery) is split into **units**: pieces of
work with a key, the keys of the units they need, and a task (a top-level function and its
arguments, run by `run_task` in any process). A unit's key is derived from everything
its result depends on (`unit_key`: the checkpoint's sha256, the effective settings, the
format versions, the keys of its dependencies), so a key names one result, forever.

Every finished unit is kept in a `UnitStore`, one file per key, written atomically (a
temporary file in the same folder, fsync, `os.replace`, fsync of the folder): a build killed
at any moment leaves either the whole entry or none. Each entry carries the sha256 and the
length of its payload; an entry that does not match (truncated, flipped bits, foreign
bytes) is logged, deleted and computed again -- never served. Payloads are arrays
(`np.savez`, read back with `allow_pickle=False`) and a JSON value; nothing is pickled.

Two processes that want the same unit serialise on a lock file per unit (`fcntl.flock`):
the second waits, then finds the first one's entry and uses it. Every computed unit appends
one JSON line to `events.jsonl` in the store (tests count recomputations with it).

`run_units` runs a list of units in dependency order: in this process, or spread over an
executor (mpi4py.futures, see gallery.pipeline.distributed) that takes whichever unit is ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import signal
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

STORE_FORMAT = 1
"""Layout of one entry file; part of every key, so a new layout never reads an old one."""
MAGIC = b"GUNIT\x01\n"
EVENTS_FILE = "events.jsonl"
_LENGTH = struct.Struct("<Q")


class CorruptEntry(Exception):
    """An entry whose bytes do not match its checksum (or cannot be parsed)."""


class Interrupted(KeyboardInterrupt):
    """The build was asked to stop (SIGINT/SIGTERM); what finished is kept. A
    KeyboardInterrupt, so that `except Exception` handlers let it through."""

    def __init__(self, summary: RunSummary):
        super().__init__(f"interrupted: {summary.describe()}")
        self.summary = summary


def unit_key(kind: str, **inputs: Any) -> str:
    """The key of a unit of `kind` whose result depends on exactly `inputs` (JSON-able:
    checkpoint sha256, settings, versions, the keys of its dependencies)."""
    described = {"kind": kind, "store_format": STORE_FORMAT, "inputs": inputs}
    text = json.dumps(described, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value) if isinstance(value, tuple) else sorted(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not part of a unit key")


@dataclass
class UnitResult:
    """What a unit computed: named arrays and a JSON value."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    value: Any = None
    seconds: float = 0.0
    """How long the computation took (not part of the checksum's meaning: it is metadata)."""


# --- the store ------------------------------------------------------------------------------


class UnitStore:
    """Finished units, one file per key under `root` (created on first use)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # paths
    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.unit"

    def lock_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.lock"

    def has(self, key: str) -> bool:
        """Whether an entry file exists (not verified: `load` verifies)."""
        return self.path(key).is_file()

    # reading and writing
    def save(self, key: str, result: UnitResult, kind: str = "") -> Path:
        """Persist `result` under `key` atomically (temp file, fsync, rename, fsync dir)."""
        buffer = io.BytesIO()
        arrays = {name: np.ascontiguousarray(a) for name, a in sorted(result.arrays.items())}
        np.savez(buffer, **arrays)
        body = buffer.getvalue()
        value = json.dumps(result.value, sort_keys=True, separators=(",", ":")).encode()
        meta = json.dumps({
            "key": key, "kind": kind, "format": STORE_FORMAT,
            "arrays_bytes": len(body), "value_bytes": len(value),
            "sha256": hashlib.sha256(body + value).hexdigest(),
            "seconds": round(float(result.seconds), 3)}, sort_keys=True).encode()
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, [MAGIC, _LENGTH.pack(len(meta)), meta, body, value])
        return path

    def load(self, key: str) -> UnitResult | None:
        """The entry of `key`, or None when there is none. A corrupted entry is logged,
        deleted and reported as absent."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _parse(key, data)
        except CorruptEntry as err:
            log.warning("unit store: %s is corrupted (%s); deleting it, it will be computed "
                        "again", path, err)
            self.event("corrupt", key, reason=str(err))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """An exclusive lock on one unit, across processes (waits while another holds it)."""
        path = self.lock_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def get_or_compute(self, key: str, compute: Callable[[], UnitResult], kind: str = "",
                       label: str = "") -> tuple[UnitResult, bool]:
        """The stored result of `key`, or compute, persist and return it; the flag says
        whether it was computed here. Holds the unit's lock while computing, so that two
        builds sharing the store compute it once."""
        found = self.load(key)
        if found is not None:
            return found, False
        with self.lock(key):
            found = self.load(key)  # another process may have finished it while we waited
            if found is not None:
                return found, False
            start = time.perf_counter()
            result = compute()
            result.seconds = time.perf_counter() - start
            self.save(key, result, kind)
            self.event("computed", key, kind=kind, label=label,
                       seconds=round(result.seconds, 3), finished=round(time.time(), 3))
            return result, True

    # the event log
    def event(self, event: str, key: str, **details: Any) -> None:
        """Append one JSON line to events.jsonl (O_APPEND: lines never interleave)."""
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "key": key, "pid": os.getpid(), **details},
                          sort_keys=True) + "\n"
        fd = os.open(self.root / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def events(self) -> list[dict[str, Any]]:
        path = self.root / EVENTS_FILE
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                out.append(json.loads(line))
        return out

    def clean_temporary(self) -> int:
        """Remove temporary files left by killed writers; returns how many."""
        count = 0
        for path in self.root.glob("*/.*.tmp*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                count += 1
        return count


def _atomic_write(path: Path, parts: Sequence[bytes]) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                     dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _parse(key: str, data: bytes) -> UnitResult:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LENGTH.size:
        raise CorruptEntry("not a unit entry (bad header)")
    (meta_len,) = _LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    try:
        meta = json.loads(data[start:start + meta_len])
        arrays_len, value_len = int(meta["arrays_bytes"]), int(meta["value_bytes"])
        expected = meta["sha256"]
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptEntry(f"unreadable metadata: {err}") from None
    if meta.get("key") != key:
        raise CorruptEntry(f"entry is for key {str(meta.get('key'))[:12]}")
    payload = data[start + meta_len:]
    if len(payload) != arrays_len + value_len:
        raise CorruptEntry(f"payload is {len(payload)} bytes, expected "
                           f"{arrays_len + value_len} (truncated?)")
    if hashlib.sha256(payload).hexdigest() != expected:
        raise CorruptEntry("sha256 of the payload does not match")
    try:
        with np.load(io.BytesIO(payload[:arrays_len]), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        value = json.loads(payload[arrays_len:])
    except (ValueError, OSError) as err:
        raise CorruptEntry(f"unreadable payload: {err}") from None
    return UnitResult(arrays, value, float(meta.get("seconds", 0.0)))


# --- units and their scheduling -------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One piece of work: `task` is (function, keyword arguments), the function defined at
    a module's top level (workers receive it by reference) and called as
    function(store, **arguments); it returns a UnitResult."""

    key: str
    kind: str
    label: str
    deps: tuple[str, ...]
    task: tuple[Callable[..., UnitResult], dict[str, Any]]


@dataclass
class RunSummary:
    """What `run_units` did."""

    total: int = 0
    reused: int = 0
    """Units already in the store when the run started."""
    computed: int = 0
    """Units computed by this run (in any process)."""
    waited: int = 0
    """Units another process computed while this run waited for their lock."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Compute seconds per unit kind, of the units computed by this run."""
    pending: list[str] = field(default_factory=list)
    """Labels of units left unfinished (after an interruption)."""

    def describe(self) -> str:
        done = self.reused + self.computed + self.waited
        text = (f"{done}/{self.total} units done ({self.computed} computed now, "
                f"{self.reused + self.waited} reused)")
        if self.pending:
            text += f"; {len(self.pending)} left, e.g. {', '.join(self.pending[:3])}"
        return text


def run_task(store_root: str, unit: Unit) -> tuple[str, bool, float]:
    """Run one unit in this process (the function workers execute): returns (key, whether
    it was computed here, seconds)."""
    store = UnitStore(store_root)
    function, arguments = unit.task
    result, computed = store.get_or_compute(
        unit.key, lambda: function(store, **arguments), kind=unit.kind, label=unit.label)
    return unit.key, computed, result.seconds


def check_graph(units: Sequence[Unit]) -> None:
    """Every dependency is a unit listed earlier; keys are unique."""
    seen: set[str] = set()
    for unit in units:
        if unit.key in seen:
            raise ValueError(f"unit {unit.label} ({unit.key[:12]}) listed twice")
        missing = [d for d in unit.deps if d not in seen]
        if missing:
            raise ValueError(f"unit {unit.label} needs {missing[0][:12]}, which is not listed "
                             "before it")
        seen.add(unit.key)


def unique_units(units: Sequence[Unit]) -> list[Unit]:
    """Units without repeats (the same key from two models or two stages), first kept."""
    out, seen = [], set()
    for unit in units:
        if unit.key not in seen:
            seen.add(unit.key)
            out.append(unit)
    return out


class StopFlag:
    """Set by SIGINT/SIGTERM while installed: the scheduler stops handing out units."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None

    def set(self, signum: int | None = None) -> None:
        self.signal = signum
        self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Handle SIGINT and SIGTERM by setting the flag (main thread only); a second
        SIGINT interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: Any) -> None:
            if self and signum == signal.SIGINT:
                raise KeyboardInterrupt
            log.warning("stopping after the units in progress (signal %d); again to abort",
                        signum)
            self.set(signum)

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


ProgressFn = Callable[[Unit, bool, int, int], None]
"""progress(unit, computed_here, done, total) after each unit."""
StartedFn = Callable[[Unit], None]
"""started(unit) when a unit is handed to a worker or begun in this process."""


def run_units(units: Sequence[Unit], store: UnitStore, *, executor: Any = None,
              workers: int = 0, progress: ProgressFn | None = None,
              stop: StopFlag | None = None, started: StartedFn | None = None) -> RunSummary:
    """Bring every unit into the store, dependencies first.

    Without `executor`, in this process, in list order. With an executor (an
    mpi4py.futures pool, or `local_pool`, of `workers` processes), ready units are handed
    to idle workers as they free up; this process computes too whenever every worker is
    busy, and alone when a unit is the only one that can run (its progress then shows
    here). A unit's result never depends on where or when it ran (its inputs are fixed by
    its key). Raises Interrupted (with the summary) when `stop` is set.
    """
    units = list(units)
    check_graph(units)
    stop = stop if stop is not None else StopFlag()
    summary = RunSummary(total=len(units))
    done: set[str] = set()
    todo: list[Unit] = []
    for unit in units:
        if store.has(unit.key) and store.load(unit.key) is not None:
            done.add(unit.key)
            summary.reused += 1
        else:
            todo.append(unit)
    store.clean_temporary()

    def finished(unit: Unit, computed: bool, seconds: float) -> None:
        done.add(unit.key)
        if computed:
            summary.computed += 1
            summary.seconds[unit.kind] = summary.seconds.get(unit.kind, 0.0) + seconds
        else:
            summary.waited += 1
        if progress:
            progress(unit, computed, len(done), len(units))

    def ready(unit: Unit) -> bool:
        return all(d in done for d in unit.deps)

    def stopped() -> Interrupted:
        summary.pending = [u.label for u in units if u.key not in done]
        return Interrupted(summary)

    if executor is None or workers < 1:
        for unit in todo:
            if stop:
                raise stopped()
            if started:
                started(unit)
            _, computed, seconds = run_task(str(store.root), unit)
            finished(unit, computed, seconds)
        return summary

    waiting = list(todo)
    # the workers' units, and at most one unit of this process's own, computed on a thread
    # so that this loop keeps handing units to workers that free up meanwhile
    running: dict[futures.Future, Unit] = {}
    here = futures.ThreadPoolExecutor(1, thread_name_prefix="unit")
    mine: futures.Future | None = None
    failure: BaseException | None = None

    def start(unit: Unit, pool: Any) -> futures.Future:
        waiting.remove(unit)
        if started:
            started(unit)
        future = pool.submit(run_task, str(store.root), unit)
        running[future] = unit
        return future

    try:
        while waiting or running:
            if not stop and failure is None:
                startable = [u for u in waiting if ready(u)]
                if not running and len(startable) == 1:
                    # the only unit that can run (the rollouts, say): here, where its
                    # progress shows; a worker would do nothing else meanwhile
                    mine = start(startable[0], here)
                while len(running) - (mine is not None) < workers:
                    unit = next((u for u in waiting if ready(u)), None)
                    if unit is None:
                        break
                    start(unit, executor)
                unit = next((u for u in waiting if ready(u)), None)
                if unit is not None and mine is None:
                    # every worker is busy: compute one here rather than wait idle
                    mine = start(unit, here)
            if not running:
                if waiting and not stop and failure is None:
                    raise RuntimeError("unit graph stalled: "
                                       + ", ".join(u.label for u in waiting[:3]))
                break
            complete = futures.wait(running, timeout=0.5,
                                    return_when=futures.FIRST_COMPLETED)[0]
            for future in complete:
                unit = running.pop(future)
                if future is mine:
                    mine = None
                try:
                    _, computed, seconds = future.result()
                except BaseException as err:  # keep the others' results, then report it
                    failure = failure or err
                    continue
                finished(unit, computed, seconds)
            if (stop or failure is not None) and not running:
                break
    finally:
        here.shutdown(wait=True)
    if failure is not None:
        raise failure
    if stop and len(done) < len(units):
        raise stopped()
    return summary


# --- a pool of local worker processes ---------------------------------------------------------

WORKERS_VARIABLE = "GALLERY_WORKERS"
"""Worker processes beside the main one in a single-process build (default: cores - 1)."""

_POOL: tuple[Any, int] | None = None


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def local_workers(requested: int | None = None) -> int:
    """Worker processes for a build without MPI: `requested`, else $GALLERY_WORKERS, else
    one per core beyond the first (the main process computes too)."""
    if requested is None:
        text = os.environ.get(WORKERS_VARIABLE, "").strip()
        if text:
            try:
                requested = int(text)
            except ValueError:
                raise ValueError(f"{WORKERS_VARIABLE} must be a whole number of worker "
                                 f"processes, not {text!r}") from None
    if requested is None:
        requested = available_cores() - 1
    if requested < 0:
        raise ValueError(f"workers must be >= 0, not {requested}")
    return requested


def _worker_init(threads: int) -> None:
    # the main process decides when to stop (StopFlag); a worker finishes its unit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def local_pool(workers: int | None = None) -> Iterator[tuple[Any, int]]:
    """Worker processes for `run_units` on this machine, for the duration of a command:
    yields (executor, workers) -- (None, 0) with no workers. Units that do not depend on
    each other then run at once, one per core (each process with cores // processes torch
    threads), and `current_pool` gives the pool to the builds inside the block."""
    global _POOL
    count = local_workers(workers)
    if count < 1:
        yield None, 0
        return
    import multiprocessing

    import torch

    threads = max(1, available_cores() // (count + 1))
    # spawn: a fork of a process that has started torch's thread pools can hang
    executor = futures.ProcessPoolExecutor(
        count, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
        initargs=(threads,))
    previous_pool, previous_threads = _POOL, torch.get_num_threads()
    _POOL = (executor, count)
    torch.set_num_threads(threads)
    try:
        yield executor, count
    finally:
        _POOL = previous_pool
        torch.set_num_threads(previous_threads)
        executor.shutdown(wait=True, cancel_futures=True)


def current_pool() -> tuple[Any, int]:
    """The pool of the innermost `local_pool` block: (executor, workers), or (None, 0)."""
    return _POOL if _POOL is not None else (None, 0)
