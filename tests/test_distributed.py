"""Distributed, resumable, deterministic interface builds (gallery.pipeline.units,
gallery.pipeline.distributed).

A tiny interface of the demo checkpoint (2 trajectories x 16 steps, 64 extra observations,
layers 3a and 4a: 10 units) is built in subprocesses: under `mpiexec -n 1/2/3`, killed
with SIGKILL at random points and resumed, twice at once on one cache, stopped with SIGINT.
Every bundle must equal the single-process one byte for byte (SOURCE_DATE_EPOCH fixes the
date), and no finished unit may ever be computed twice (the store's events.jsonl).

mpiexec comes with the `mpich` wheel (installed by scripts/setup.sh); without it the MPI
cases skip, except under CI=true where they fail.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gallery.pipeline.units import EVENTS_FILE, UnitStore

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "gallery" / "demo" / "coinrun-clear.jd"
TINY = ["--num-envs", "2", "--num-steps", "16", "--obs-num-envs", "16", "--num-obs", "4",
        "--obs-every", "4", "--layer", "3a", "--layer", "4a", "--image-effort", "fast"]
UNITS = 15  # trajectories, 2 x observations (16 environments), outputs, 2 x frames, 2 x nmf,
#            2 x features, the extra observations' images, 2 layers x 2 trajectories
TIMEOUT = 300


def mpiexec() -> str:
    found = Path(sys.executable).with_name("mpiexec")
    path = str(found) if found.is_file() else shutil.which("mpiexec")
    if path is None:
        message = "mpiexec not found (bash scripts/setup.sh installs the mpich wheel)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def command(out: Path, cache: Path, ranks: int | None = None) -> list[str]:
    gallery = [sys.executable, "-m", "gallery", "interface", str(CHECKPOINT), "-o", str(out),
               *TINY, "--cache-dir", str(cache)]
    return gallery if ranks is None else [mpiexec(), "-n", str(ranks), *gallery]


def environment() -> dict[str, str]:
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", PYTHONUNBUFFERED="1")
    env.pop("GALLERY_MPI", None)
    return env


def build(out: Path, cache: Path, ranks: int | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(command(out, cache, ranks), env=environment(), cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def start(out: Path, cache: Path, ranks: int | None = None) -> subprocess.Popen:
    return subprocess.Popen(command(out, cache, ranks), env=environment(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def files(folder: Path) -> dict[str, bytes]:
    """Every file of an interface but index.html (which names its own folder)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "index.html"}


def same_bytes(a: Path, b: Path) -> None:
    fa, fb = files(a), files(b)
    assert sorted(fa) == sorted(fb)
    different = [name for name in fa if fa[name] != fb[name]]
    assert not different, f"files differ: {different[:5]}"


def computed(cache: Path) -> list[str]:
    return [e["key"] for e in UnitStore(cache / "units").events() if e["event"] == "computed"]


def wait_for_units(cache: Path, count: int, process: subprocess.Popen, limit: float = 240
                   ) -> None:
    deadline = time.monotonic() + limit
    while len(computed(cache)) < count:
        assert process.poll() is None, f"the build ended early: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The single-process build (no MPI) every other build is compared with."""
    root = tmp_path_factory.mktemp("reference")
    build(root / "out", root / "cache")
    keys = computed(root / "cache")
    assert len(keys) == UNITS and len(set(keys)) == UNITS
    index = json.loads((root / "out" / "bundle" / "bundle.json").read_text())
    assert index["provenance"]["created"] == "2023-11-14T22:13:20Z"
    assert "seconds" not in index["provenance"]  # timings vary from run to run
    return root / "out"


@pytest.mark.parametrize("ranks", [pytest.param(1, marks=pytest.mark.slow), 2, 3])
def test_mpi_ranks_give_the_same_bytes(reference, tmp_path, ranks):
    done = build(tmp_path / "out", tmp_path / "cache", ranks)
    same_bytes(reference, tmp_path / "out")
    if ranks > 1:
        assert f"on {ranks} MPI ranks" in done.stderr
        pids = {e["pid"] for e in UnitStore(tmp_path / "cache" / "units").events()}
        assert len(pids) >= 2, "the units should have been spread over the ranks"
    keys = computed(tmp_path / "cache")
    assert sorted(keys) == sorted(set(keys)) and len(keys) == UNITS


@pytest.mark.slow
def test_a_second_build_reuses_every_unit(reference, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference.parent / "cache", cache)
    before = len(computed(cache))
    done = build(tmp_path / "out", cache)
    assert len(computed(cache)) == before
    assert f"0 computed now, {UNITS} reused" in done.stderr
    same_bytes(reference, tmp_path / "out")


def test_killed_builds_resume_without_recomputing(reference, tmp_path):
    """SIGKILL after a random number of finished units, then at a random moment (perhaps
    mid-write); the third build finishes. Same bytes, and no unit that had finished is
    computed again. GALLERY_KILLS=n kills n times after random unit counts (default 1)."""
    rng = random.Random(int(os.environ.get("GALLERY_KILL_SEED", "7")))
    cache, out = tmp_path / "cache", tmp_path / "out"
    kills = int(os.environ.get("GALLERY_KILLS", "1"))
    targets = sorted(rng.sample(range(1, UNITS - 1), kills))
    finished_before_kill = []
    for round_, target in enumerate([*targets, None]):
        process = start(out, cache)
        try:
            if target is not None:
                wait_for_units(cache, target, process)
            else:  # a random moment after the start
                wait_for_units(cache, len(computed(cache)) + 1, process)
                time.sleep(rng.uniform(0.0, 1.5))
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            process.stdout.close()
            process.stderr.close()
        finished_before_kill.append(set(computed(cache)))
        assert len(finished_before_kill[-1]) >= (target or 1), round_
    done = build(out, cache)
    keys = computed(cache)
    counts = Counter(keys)
    assert max(counts.values()) == 1, "a finished unit was computed again"
    assert set(keys) <= {e["key"] for e in UnitStore(cache / "units").events()}
    recomputed_now = set(keys) - finished_before_kill[-1]
    assert not recomputed_now & finished_before_kill[-1]
    assert len(set(keys)) == UNITS
    assert f"{UNITS - len(recomputed_now)} reused" in done.stderr
    assert not list((cache / "units").glob("*/.*.tmp")), "temporary files are cleaned"
    same_bytes(reference, out)


@pytest.mark.slow
def test_a_corrupted_unit_is_recomputed_never_served(reference, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference.parent / "cache", cache)
    store = UnitStore(cache / "units")
    attribution = [e["key"] for e in store.events() if e.get("kind") == "attribution"]
    path = store.path(attribution[0])
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    done = build(tmp_path / "out", cache)
    assert "corrupted" in done.stderr
    events = store.events()
    assert [e["event"] for e in events[-2:]] == ["corrupt", "computed"]
    assert events[-1]["key"] == attribution[0]
    same_bytes(reference, tmp_path / "out")


def test_two_builds_at_once_share_the_cache(reference, tmp_path):
    cache = tmp_path / "cache"
    processes = [start(tmp_path / f"out{i}", cache) for i in range(2)]
    for p in processes:
        out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err[-3000:]
    keys = computed(cache)
    assert sorted(keys) == sorted(set(keys)) and len(keys) == UNITS, \
        "each unit is computed by exactly one of the two builds"
    for i in range(2):
        same_bytes(reference, tmp_path / f"out{i}")


@pytest.mark.parametrize("ranks", [None, pytest.param(2, marks=pytest.mark.slow)])
def test_ctrl_c_stops_cleanly_with_a_summary(reference, tmp_path, ranks):
    """SIGINT to the command (or to mpiexec, which forwards it to every rank: workers
    finish their unit, rank 0 waits for them and reports)."""
    cache = tmp_path / "cache"
    process = start(tmp_path / "out", cache, ranks)
    try:
        wait_for_units(cache, 2, process)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err[-2000:]
    assert "stopped" in err and "units done" in err and "Run the same command again" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "bundle" / "bundle.json").exists()
    finished = computed(cache)
    assert 2 <= len(finished) < UNITS
    assert f"{len(finished)}/{UNITS} units done" in err
    store = UnitStore(cache / "units")
    assert all(store.load(k) is not None for k in finished)  # intact; resuming: see above


def test_events_file_is_in_the_store(reference):
    assert (reference.parent / "cache" / "units" / EVENTS_FILE).is_file()


ZOO = """
site: {name: Tiny zoo}
defaults:
  trajectories: {num_envs: 2, num_steps: 16, seed: 0, bookmarks: 4}
  observations: {num_envs: 16, num_obs: 4, obs_every: 4}
  layers: {include: [4a]}
models:
  - {id: easy, title: Easy, checkpoint: CHECKPOINT}
  - {id: hard, title: Hard, checkpoint: CHECKPOINT, env: {distribution_mode: hard}}
"""


@pytest.mark.slow
def test_gallery_build_pools_the_units_of_every_model(tmp_path):
    """`mpiexec -n 3 gallery build`: both models' units computed by several ranks in one
    pool, then rank 0 assembles the bundles and builds the site; bundles equal those of a
    single-process build."""
    manifest = tmp_path / "zoo.yaml"
    manifest.write_text(ZOO.replace("CHECKPOINT", str(CHECKPOINT)))
    outputs = {}
    for ranks in (None, 3):
        cache, site = tmp_path / f"cache{ranks}", tmp_path / f"site{ranks}"
        gallery = [sys.executable, "-m", "gallery", "build", "-m", str(manifest), "-o",
                   str(site), "--cache-dir", str(cache), "--no-strict"]
        if ranks:
            gallery = [mpiexec(), "-n", str(ranks), *gallery]
        done = subprocess.run(gallery, env=dict(environment(), GALLERY_CACHE=str(cache)),
                              cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        events = UnitStore(cache / "units").events()
        keys = [e["key"] for e in events if e["event"] == "computed"]
        # per model: trajectories, 2 observations, outputs, 2 frames, nmf, features,
        # the extra observations' images, 2 attribution
        assert len(keys) == len(set(keys)) == 2 * 11
        if ranks:
            assert "interface units of 2 model(s) and 0 comparison(s) on 3 MPI ranks" \
                in done.stderr
            assert len({e["pid"] for e in events}) >= 2
        bundles = sorted(cache.glob("models/*/interface/bundle"))
        assert len(bundles) == 2 and (site / "index.html").is_file()
        outputs[ranks] = {b.parent.parent.name: b for b in bundles}
    assert sorted(outputs[None]) == sorted(outputs[3])
    for key, folder in outputs[None].items():
        same_bytes(folder, outputs[3][key])
