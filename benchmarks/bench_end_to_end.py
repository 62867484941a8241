"""End to end: `gallery interface` of a checkpoint from empty caches, timed stage by stage.

    .venv/bin/python benchmarks/bench_end_to_end.py [--quick] [--checkpoint PATH]
        [--device cuda] [--policy-layer 2b] [--workers N] [--commit REV] [--site [MANIFEST]]

Runs `python -m gallery interface CHECKPOINT` in a subprocess, with a new, empty cache
folder, exactly as a user would, and prints: the wall time, the stage timings the command
reports (`load`, per kind of unit the compute seconds summed over units -- which overlap
when units run at once --, `compute` and `write` as wall time), the CPU use (CPU time of
the process and its children over the wall time, in %: 200% is two cores busy) and the
peak memory (the largest resident set of the process tree, sampled every 0.5 s, and the
largest single process as the kernel counts it).

`--quick` uses the demo's reduced settings (checkpoints.yaml `defaults:` -- 2 x 256
trajectory frames, 16 x 16 extra observations every 16 steps, layers 2b, 3a, 4a), which
finish in minutes on a 2-core machine; without it, the method's defaults (method.md 8:
8 x 512 frames, 32 x 128 extra observations every 128 steps, every layer), about an hour
there. `--policy-layer L` attributes every action and action group too, at layer L (every
layer keeps its value attribution): the interface to compare with the value-only one.

`--site [MANIFEST]` measures `gallery build -m MANIFEST` instead (default: the demo
manifest of commit 18a1591, two models of gallery/demo/coinrun-clear.jd with a comparison,
which every version of the gallery since reads), from empty caches; the stage timings are
then not reported, and the sites are compared page by page.

`--commit REV` builds the same interface from a `git worktree` of REV too (the built
viewer is copied in), in a subprocess with the same settings, one after the other in this
session, and prints the ratio of the wall times; `--first REV|HEAD` chooses which runs
first. The numbers depend on the machine's load: the load average is printed with each
run, and, where the tree logs when its units finish, the time from the command's start
to its first unit's start and to its last unit's end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT.parent / "shared" / "checkpoints" / "coinrun.jd"
QUICK = ["--num-envs", "2", "--num-steps", "256", "--bookmarks", "8", "--obs-num-envs", "16",
         "--num-obs", "16", "--obs-every", "16", "--layer", "2b", "--layer", "3a",
         "--layer", "4a"]


class TreeMemory:
    """The peak of the summed resident memory of a process and its descendants."""

    def __init__(self, pid: int, every: float = 0.5):
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(self.every):
            parents: dict[int, int] = {}
            rss: dict[int, int] = {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    fields = stat[stat.rindex(")") + 2:].split()
                    parents[int(entry)] = int(fields[1])
                    rss[int(entry)] = int(fields[21]) * page
                except (OSError, ValueError, IndexError):
                    continue
            tree, frontier = {self.pid}, [self.pid]
            while frontier:
                parent = frontier.pop()
                children = [p for p, pp in parents.items() if pp == parent and p not in tree]
                tree.update(children)
                frontier += children
            self.peak = max(self.peak, sum(rss.get(p, 0) for p in tree))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@contextlib.contextmanager
def worktree(rev: str, scratch: Path) -> Iterator[Path]:
    """A detached `git worktree` of `rev`, with this tree's built viewer copied in."""
    path = scratch / f"tree-{rev.replace('/', '_')}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path),
                    rev], check=True, capture_output=True, text=True)
    try:
        viewer = ROOT / "gallery" / "viewer_dist"
        if viewer.is_dir():
            shutil.copytree(viewer, path / "gallery" / "viewer_dist", dirs_exist_ok=True)
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                       check=False, capture_output=True)


def build(tree: Path, checkpoint: Path, options: list[str], scratch: Path, name: str,
          workers: int | None, quiet: bool, site: Path | None = None) -> dict:
    """Run `gallery interface` (or with `site`, `gallery build -m site`) from `tree` with an
    empty cache; measure it."""
    out, cache = scratch / f"out-{name}", scratch / f"cache-{name}"
    env = dict(os.environ, PYTHONPATH=str(tree), SOURCE_DATE_EPOCH="1700000000",
               PYTHONUNBUFFERED="1", GALLERY_CACHE=str(cache))
    env.pop("GALLERY_MPI", None)
    if workers is not None:
        env["GALLERY_WORKERS"] = str(workers)
    if site is not None:
        command = [sys.executable, "-m", "gallery", "build", "-m", str(site), "-o", str(out)]
    else:
        command = [sys.executable, "-m", "gallery", "interface", str(checkpoint), "-o",
                   str(out), "--cache-dir", str(cache), *options]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, epoch = time.perf_counter(), time.time()
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE,
                               stderr=None if not quiet else subprocess.DEVNULL, text=True)
    memory = TreeMemory(process.pid)
    stdout, _ = process.communicate()
    wall = time.perf_counter() - start
    peak_tree = memory.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"{name}: `{' '.join(command)}` failed ({process.returncode}):\n"
                         f"{stdout}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    seconds_line = next((line for line in stdout.splitlines()
                         if line.startswith("seconds")), "")
    stages = {k: float(v) for k, v in re.findall(r"(\w+) (\d+(?:\.\d+)?)", seconds_line)}
    bundle = re.search(r"bundle\s+([\d.]+) MB", stdout)
    return {"name": name, "wall_s": wall, "cpu_s": cpu, "cpu_percent": 100 * cpu / wall,
            "peak_tree_bytes": peak_tree, "peak_process_bytes": after.ru_maxrss * 1024,
            "stages_s": stages, "bundle_mb": float(bundle.group(1)) if bundle else None,
            "load_before": load, "load_after": os.getloadavg()[0], "output": str(out),
            "units_span_s": units_span(cache / "units", epoch)}


def units_span(store: Path, epoch: float) -> list[float] | None:
    """[first unit's start, last unit's end] in seconds from the command's start, from the
    unit store's event log (None where its events carry no finishing time: older trees).
    Before the first: loading and planning; after the last: writing the bundle."""
    path = store / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()] \
        if path.is_file() else []
    spans = [(e["finished"] - e["seconds"], e["finished"]) for e in events
             if e.get("event") == "computed" and "finished" in e]
    if not spans:
        return None
    return [min(s for s, _ in spans) - epoch, max(f for _, f in spans) - epoch]


def same_bundle(a: str, b: str) -> bool:
    def files(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "index.html"}

    return files(Path(a)) == files(Path(b))


def same_pages(a: str, b: str) -> bool:
    """Whether two built sites have the same pages (paths of their index.html files)."""
    def pages(folder: Path) -> list[str]:
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("index.html"))

    return pages(Path(a)) == pages(Path(b))


def old_demo_manifest(scratch: Path, rev: str = "18a1591") -> Path:
    """The demo manifest of `rev`, its checkpoint paths made absolute (this tree's files)."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:checkpoints.yaml"],
                          check=True, capture_output=True, text=True).stdout
    path = scratch / "checkpoints.yaml"
    path.write_text(text.replace("checkpoint: gallery/demo/",
                                 f"checkpoint: {ROOT}/gallery/demo/"))
    return path


def report(result: dict) -> str:
    stages = ", ".join(f"{k} {v:.0f}" for k, v in result["stages_s"].items())
    return (f"{result['name']:>10}: {result['wall_s']:7.1f} s wall, CPU "
            f"{result['cpu_percent']:4.0f}%, peak memory {result['peak_tree_bytes'] / 1e9:.2f} GB "
            f"(largest process {result['peak_process_bytes'] / 1e9:.2f} GB), bundle "
            f"{result['bundle_mb']} MB, load {result['load_before']:.1f}->"
            f"{result['load_after']:.1f}\n{'':>12}stages (s): {stages}" + (
                f"\n{'':>12}units from {result['units_span_s'][0]:.1f} s to "
                f"{result['units_span_s'][1]:.1f} s" if result.get("units_span_s") else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--quick", action="store_true",
                        help="the demo's reduced settings (minutes instead of an hour)")
    parser.add_argument("--device", default=None, help="passed to `gallery interface`")
    parser.add_argument("--policy-layer", metavar="LAYER",
                        help="attribute every action and group too, at this layer only")
    parser.add_argument("--workers", default=None, metavar="N[,M..]",
                        help="GALLERY_WORKERS for the builds (default: the command's own); "
                        "several values: HEAD is built once with each")
    parser.add_argument("--commit", metavar="REV",
                        help="also build from a git worktree of REV and compare")
    parser.add_argument("--first", choices=["HEAD", "REV"], default="REV",
                        help="with --commit: which build runs first (default REV)")
    parser.add_argument("--site", nargs="?", const="", metavar="MANIFEST",
                        help="measure `gallery build -m MANIFEST` instead (default: the "
                        "demo manifest of 18a1591)")
    parser.add_argument("--quiet", action="store_true", help="hide the builds' progress")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    if args.site is None and not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint}: no such checkpoint (give --checkpoint PATH)")

    options = list(QUICK) if args.quick else []
    if args.policy_layer:  # the same interface, with policy attribution at that layer too
        options += ["--policy", "--policy-layer", args.policy_layer]
    if args.device:
        options += ["--device", args.device]
    scratch = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    site = None
    if args.site is not None:
        site = Path(args.site).resolve() if args.site else old_demo_manifest(scratch)
    what = (f"gallery build -m {site}" if site else
            f"gallery interface {args.checkpoint.name} {' '.join(options)}")
    print(f"{what}\nscratch {scratch}; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    results = []
    try:
        with contextlib.ExitStack() as stack:
            counts = ([None] if args.workers is None
                      else [int(w) for w in args.workers.split(",")])
            runs = [("HEAD" if len(counts) == 1 else f"HEAD-w{w}", ROOT, w) for w in counts]
            if args.commit:
                other = stack.enter_context(worktree(args.commit, scratch))
                # (a name of its own: each run's cache folder is named after it)
                runs.insert(0 if args.first == "REV" else len(runs),
                            (args.commit if args.commit != "HEAD" else "HEAD-worktree", other,
                             counts[0]))
            for name, tree, workers in runs:
                print(f"--- {name} ({tree})", flush=True)
                results.append(build(tree, args.checkpoint.resolve(), options, scratch, name,
                                     workers, args.quiet, site))
                print(report(results[-1]), flush=True)
        print("--- summary")
        for result in results:
            print(report(result))
        head = results[-1] if args.first == "REV" or not args.commit else results[-2]
        for other in results:
            if other is not head:
                if site:
                    same = same_pages(head["output"], other["output"])
                    kind = "sites have the same pages" if same else "sites' pages differ"
                else:
                    same = same_bundle(head["output"], other["output"])
                    kind = f"bundles {'identical' if same else 'differ'}"
                print(f"{other['name']} / {head['name']} wall time: "
                      f"{other['wall_s'] / head['wall_s']:.2f}x; {kind}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
