"""gallery.pipeline.units: keys, the persisted store (atomic, checksummed, locked), scheduling."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gallery.pipeline import distributed
from gallery.pipeline.units import (
    EVENTS_FILE,
    Interrupted,
    RunSummary,
    StopFlag,
    Unit,
    UnitResult,
    UnitStore,
    check_graph,
    run_task,
    run_units,
    unique_units,
    unit_key,
)

# --- keys -------------------------------------------------------------------------------


def test_keys_depend_on_every_input_and_not_on_dict_order():
    a = unit_key("nmf", checkpoint="ab" * 32, settings={"k": 8, "steps": 10}, deps=["x"])
    assert a == unit_key("nmf", deps=["x"], settings={"steps": 10, "k": 8},
                         checkpoint="ab" * 32)
    assert len(a) == 64 and int(a, 16) >= 0
    others = {unit_key("features", checkpoint="ab" * 32, settings={"k": 8, "steps": 10},
                       deps=["x"]),
              unit_key("nmf", checkpoint="ac" * 32, settings={"k": 8, "steps": 10}, deps=["x"]),
              unit_key("nmf", checkpoint="ab" * 32, settings={"k": 7, "steps": 10}, deps=["x"]),
              unit_key("nmf", checkpoint="ab" * 32, settings={"k": 8, "steps": 10}, deps=["y"])}
    assert a not in others and len(others) == 4
    with pytest.raises(TypeError, match="not part of a unit key"):
        unit_key("nmf", policy=object())


# --- the store --------------------------------------------------------------------------


def _result(seed: int = 0) -> UnitResult:
    rng = np.random.default_rng(seed)
    return UnitResult({"a": rng.normal(size=(3, 4)).astype(np.float32),
                       "codes": np.arange(10, dtype=np.uint8)},
                      {"n_iter": 12, "bookmarks": [[0, 3, 0.25]]})


def test_store_round_trip(tmp_path):
    store = UnitStore(tmp_path)
    key = unit_key("x", n=1)
    assert store.load(key) is None and not store.has(key)
    original = _result()
    path = store.save(key, original, kind="x")
    assert path == store.path(key) and store.has(key)
    loaded = store.load(key)
    assert loaded is not None and loaded.value == original.value
    assert sorted(loaded.arrays) == ["a", "codes"]
    for name, array in original.arrays.items():
        assert loaded.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded.arrays[name], array)
    assert b"pickle" not in path.read_bytes()[:200]  # plain npz + JSON, nothing pickled
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage", "other-key",
                                    "extra-bytes"])
def test_corrupted_entries_are_detected_deleted_and_never_served(tmp_path, damage, caplog):
    store = UnitStore(tmp_path)
    key = unit_key("x", n=2)
    path = store.save(key, _result(), kind="x")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) - 40] ^= 0x01  # one bit of the arrays' bytes
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif damage == "other-key":
        other = unit_key("x", n=3)
        data = bytearray(store.save(other, _result()).read_bytes())
    else:
        data += b"\0"
    path.write_bytes(bytes(data))
    assert store.load(key) is None
    assert not path.exists(), "a corrupted entry must be deleted"
    assert "corrupted" in caplog.text
    assert [e["event"] for e in store.events()] == ["corrupt"]
    # and it is computed again through get_or_compute
    result, computed = store.get_or_compute(key, lambda: _result(1), kind="x")
    assert computed and store.load(key).value == result.value


def test_a_failed_write_leaves_no_entry_and_no_temporary(tmp_path, monkeypatch):
    store = UnitStore(tmp_path)
    key = unit_key("x", n=4)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.save(key, _result())
    monkeypatch.undo()
    assert store.load(key) is None
    assert list(store.path(key).parent.iterdir()) == []


def test_an_old_entry_survives_a_failed_rewrite(tmp_path, monkeypatch):
    store = UnitStore(tmp_path)
    key = unit_key("x", n=5)
    store.save(key, _result(0))
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("io error")))
    with pytest.raises(OSError):
        store.save(key, _result(1))
    monkeypatch.undo()
    np.testing.assert_array_equal(store.load(key).arrays["a"], _result(0).arrays["a"])


def test_leftover_temporaries_are_cleaned_and_never_read(tmp_path):
    store = UnitStore(tmp_path)
    key = unit_key("x", n=6)
    store.path(key).parent.mkdir(parents=True)
    leftover = store.path(key).parent / f".{key}.unit.abc.tmp"
    leftover.write_bytes(b"half an entry")
    assert store.load(key) is None
    assert store.clean_temporary() == 1 and not leftover.exists()


def _compute_slowly(root: str, key: str, delay: float) -> None:
    store = UnitStore(root)

    def compute() -> UnitResult:
        time.sleep(delay)
        return UnitResult({"pid": np.array([os.getpid()])}, {})

    store.get_or_compute(key, compute, kind="slow")


def test_two_processes_compute_a_unit_once(tmp_path):
    """The lock file: the second process waits for the first and reuses its entry."""
    key = unit_key("slow", n=1)
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_compute_slowly, args=(str(tmp_path), key, 1.0))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    events = UnitStore(tmp_path).events()
    assert [e["event"] for e in events] == ["computed"]
    assert UnitStore(tmp_path).load(key).arrays["pid"][0] == events[0]["pid"]


def test_the_lock_excludes_other_processes(tmp_path):
    store = UnitStore(tmp_path)
    key = unit_key("x", n=7)
    context = multiprocessing.get_context("fork")
    entered = context.Event()

    def hold() -> None:
        with UnitStore(tmp_path).lock(key):
            entered.set()
            time.sleep(1.0)

    holder = context.Process(target=hold)
    holder.start()
    assert entered.wait(10)
    start = time.perf_counter()
    with store.lock(key):
        waited = time.perf_counter() - start
    holder.join(10)
    assert waited > 0.5


def test_event_lines_from_many_threads_stay_whole(tmp_path):
    store = UnitStore(tmp_path)

    def write(i: int) -> None:
        for j in range(50):
            store.event("computed", f"{i}-{j}", label="x" * 200)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / EVENTS_FILE).read_text().splitlines()
    assert len(lines) == 200 and len(store.events()) == 200


# --- scheduling -------------------------------------------------------------------------

ORDER: list[str] = []
ORDER_LOCK = threading.Lock()


def record(store: UnitStore, *, name: str, deps: list[str], delay: float = 0.0) -> UnitResult:
    """A unit that checks its dependencies are stored and records when it ran."""
    for d in deps:
        assert store.load(d) is not None, f"{name} ran before its dependency"
    time.sleep(delay)
    with ORDER_LOCK:
        ORDER.append(name)
    return UnitResult({"x": np.array([len(name)])}, {"name": name})


def fails(store: UnitStore, **_: object) -> UnitResult:
    raise ValueError("this unit fails")


def _graph(delay: float = 0.0) -> list[Unit]:
    """a -> (b1..b4) -> c, and d independent."""
    task = record
    a = unit_key("t", name="a")
    bs = [unit_key("t", name=f"b{i}", dep=a) for i in range(4)]
    c = unit_key("t", name="c", deps=bs)
    d = unit_key("t", name="d")
    keys = {"a": a, **{f"b{i}": k for i, k in enumerate(bs)}, "c": c, "d": d}
    units = [Unit(a, "t", "a", (), (task, {"name": "a", "deps": [], "delay": delay}))]
    units += [Unit(k, "t", f"b{i}", (a,), (task, {"name": f"b{i}", "deps": [a],
                                                   "delay": delay}))
              for i, k in enumerate(bs)]
    units.append(Unit(c, "t", "c", tuple(bs), (task, {"name": "c", "deps": bs,
                                                      "delay": delay})))
    units.append(Unit(d, "t", "d", (), (task, {"name": "d", "deps": [], "delay": delay})))
    assert len(keys) == 7
    return units


def test_serial_run_follows_the_list_and_reuses_the_store(tmp_path):
    ORDER.clear()
    store = UnitStore(tmp_path)
    units = _graph()
    summary = run_units(units, store)
    assert ORDER == ["a", "b0", "b1", "b2", "b3", "c", "d"]
    assert (summary.total, summary.computed, summary.reused) == (7, 7, 0)
    ORDER.clear()
    store.delete(units[2].key)  # b1 lost: only it is computed again
    again = run_units(units, store)
    assert ORDER == ["b1"] and (again.computed, again.reused) == (1, 6)


def test_pooled_run_respects_dependencies(tmp_path):
    ORDER.clear()
    store = UnitStore(tmp_path)
    seen = []
    with ThreadPoolExecutor(3) as pool:
        summary = run_units(_graph(delay=0.05), store, executor=pool, workers=3,
                            progress=lambda u, computed, done, total: seen.append(
                                (u.label, done, total)))
    assert summary.computed == 7 and sorted(ORDER) == ["a", "b0", "b1", "b2", "b3", "c", "d"]
    assert ORDER.index("a") < min(ORDER.index(f"b{i}") for i in range(4))
    assert ORDER.index("c") > max(ORDER.index(f"b{i}") for i in range(4))
    assert [s[1] for s in seen] == list(range(1, 8)) and {s[2] for s in seen} == {7}


def test_a_failing_unit_keeps_the_others_results(tmp_path):
    store = UnitStore(tmp_path)
    units = _graph()
    bad = Unit(unit_key("t", name="bad"), "t", "bad", (), (fails, {}))
    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="this unit fails"):
        run_units([bad] + units, store, executor=pool, workers=2)
    assert not store.has(bad.key)
    assert store.has(units[-1].key) or store.has(units[0].key)


def test_stop_flag_interrupts_with_a_summary(tmp_path):
    store = UnitStore(tmp_path)
    stop = StopFlag()
    units = _graph()

    def progress(unit, computed, done, total):
        if done == 2:
            stop.set()

    with pytest.raises(Interrupted) as caught:
        run_units(units, store, progress=progress, stop=stop)
    summary = caught.value.summary
    assert isinstance(summary, RunSummary) and summary.computed == 2
    assert summary.pending == ["b1", "b2", "b3", "c", "d"]
    assert "2/7 units done" in summary.describe() and "5 left" in summary.describe()
    resumed = run_units(units, store)
    assert (resumed.reused, resumed.computed) == (2, 5)


def test_graph_checks():
    units = _graph()
    check_graph(units)
    with pytest.raises(ValueError, match="needs"):
        check_graph(units[1:])
    with pytest.raises(ValueError, match="listed twice"):
        check_graph(units + units[:1])
    assert unique_units(units + units) == units


def test_run_task_reports_whether_it_computed(tmp_path):
    unit = _graph()[0]
    assert run_task(str(tmp_path), unit)[1] is True
    assert run_task(str(tmp_path), unit)[1] is False
    events = UnitStore(tmp_path).events()
    assert [(e["event"], e["label"]) for e in events] == [("computed", "a")]


# --- distribution helpers -----------------------------------------------------------------


def test_threads_per_rank():
    assert distributed.threads_per_rank(1, cores=16) == 16
    assert distributed.threads_per_rank(4, cores=16) == 4
    assert distributed.threads_per_rank(3, cores=2) == 1
    assert distributed.threads_per_rank(0, cores=2) == 2


def test_single_process_without_a_launcher(monkeypatch):
    for name in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_mpi()
    with distributed.session(threads=1) as context:
        assert context is not None and context.size == 1 and context.workers == 0
    monkeypatch.setenv("PMI_RANK", "0")
    assert distributed.launched_by_mpi()
    monkeypatch.setenv(distributed.DISABLE_VARIABLE, "0")
    assert not distributed.launched_by_mpi()


def test_device_choice():
    from gallery.errors import UsageError

    assert distributed.resolve_device(None) == "cpu"
    with pytest.raises(UsageError, match="cpu, cuda or cuda:N"):
        distributed.resolve_device("tpu")


def test_policy_is_loaded_once_per_process(coinrun_path):
    first = distributed.cached_policy(str(coinrun_path))
    assert distributed.cached_policy(str(coinrun_path)) is first
    assert Path(str(coinrun_path)).is_file()


# --- local worker processes -------------------------------------------------------------

WHERE: list[tuple[str, bool]] = []


def where(store: UnitStore, *, name: str, deps: list[str], delay: float = 0.0) -> UnitResult:
    """A unit that records whether it ran in run_units' own process (its "unit" thread)."""
    time.sleep(delay)
    with ORDER_LOCK:
        WHERE.append((name, threading.current_thread().name.startswith("unit")))
    return UnitResult({}, {"pid": os.getpid()})


def test_a_unit_that_runs_alone_runs_here_and_every_start_is_reported(tmp_path):
    WHERE.clear()
    task = where
    a = unit_key("w", name="a")
    bs = [unit_key("w", name=f"b{i}", dep=a) for i in range(3)]
    units = [Unit(a, "w", "a", (), (task, {"name": "a", "deps": []}))]
    units += [Unit(k, "w", f"b{i}", (a,), (task, {"name": f"b{i}", "deps": [a],
                                                   "delay": 0.05}))
              for i, k in enumerate(bs)]
    started = []
    with ThreadPoolExecutor(1) as pool:
        summary = run_units(units, UnitStore(tmp_path), executor=pool, workers=1,
                            started=lambda u: started.append(u.label))
    assert summary.computed == 4
    assert WHERE[0] == ("a", True)  # alone: computed here, where its progress shows
    assert sorted(started) == ["a", "b0", "b1", "b2"] and started[0] == "a"
    # with b0..b2 ready, one goes to the worker and one is computed here
    assert {here for name, here in WHERE[1:]} == {True, False}


def test_workers_are_fed_while_this_process_computes(tmp_path):
    """A long unit computed here does not hold back the units that a free worker can
    take meanwhile."""
    ORDER.clear()

    def unit(name: str, delay: float) -> Unit:
        return Unit(unit_key("f", name=name), "f", name, (),
                    (record, {"name": name, "deps": [], "delay": delay}))

    # y0 goes to the worker, x is computed here, y1 and y2 follow y0 on the worker
    units = [unit("y0", 0.05), unit("x", 1.5), unit("y1", 0.05), unit("y2", 0.05)]
    with ThreadPoolExecutor(1) as pool:
        summary = run_units(units, UnitStore(tmp_path), executor=pool, workers=1)
    assert summary.computed == 4
    assert ORDER == ["y0", "y1", "y2", "x"]


def test_local_pool_spreads_units_over_processes(tmp_path, monkeypatch):
    from gallery.pipeline.units import current_pool, local_pool, local_workers

    monkeypatch.setenv("GALLERY_WORKERS", "1")
    assert local_workers() == 1 and local_workers(0) == 0
    monkeypatch.setenv("GALLERY_WORKERS", "two")
    with pytest.raises(ValueError, match="GALLERY_WORKERS must be a whole number"):
        local_workers()
    with local_pool(0) as (executor, workers):
        assert executor is None and workers == 0 and current_pool() == (None, 0)
    store = UnitStore(tmp_path)
    with local_pool(1) as (executor, workers):
        assert current_pool() == (executor, 1)
        summary = run_units(_graph(delay=0.3), store, executor=executor, workers=workers)
    assert current_pool() == (None, 0)
    assert summary.computed == 7
    pids = {e["pid"] for e in store.events() if e["event"] == "computed"}
    assert len(pids) == 2


TINY = ["--num-envs", "2", "--num-steps", "16", "--obs-num-envs", "16", "--num-obs", "4",
        "--obs-every", "4", "--layer", "3a", "--layer", "4a", "--image-effort", "fast"]


def _interface(out: Path, cache: Path, workers: int) -> str:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", PYTHONUNBUFFERED="1")
    env.pop("GALLERY_MPI", None)
    done = subprocess.run(
        [sys.executable, "-m", "gallery", "interface",
         str(root / "gallery" / "demo" / "coinrun-clear.jd"), "-o", str(out), *TINY,
         "--cache-dir", str(cache), "--workers", str(workers)],
        env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_one_and_two_processes_write_the_same_bytes_and_show_each_stage(tmp_path):
    one = _interface(tmp_path / "one", tmp_path / "cache1", 0)
    two = _interface(tmp_path / "two", tmp_path / "cache2", 1)
    assert "on this process;" in one and "on this process and 1 worker(s)" in two

    def files(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "index.html"}

    a, b = files(tmp_path / "one"), files(tmp_path / "two")
    assert sorted(a) == sorted(b) and len(a) > 10
    assert [name for name in a if a[name] != b[name]] == []
    pids = {e["pid"] for e in UnitStore(tmp_path / "cache2" / "units").events()
            if e["event"] == "computed"}
    assert len(pids) == 2, "the units should have been spread over both processes"
    # stderr is not a terminal: plain lines per stage, with counts
    for text in (one, two):
        lines = text.splitlines()
        # the trajectories and two groups of 8 environments' extra observations
        for expected in ("rollouts: 3/3 units", "NMF: 2/2 units", "feature views: 2/2 units",
                         "attribution: 4/4 units", "writing: 10/10 parts") + (
                ("rollouts: trajectories: 32/32 steps",
                 "rollouts: observations: 128/128 policy steps") if text is one else ()):
            assert any(line.startswith(expected) for line in lines), expected
        assert "\r" not in text and "\x1b[" not in text
