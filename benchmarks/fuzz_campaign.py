"""A long fuzzing campaign of the readers of untrusted input (docs/reliability.md).

    .venv/bin/python benchmarks/fuzz_campaign.py [--examples N] [--only SUBSTRING]
                                                 [--json OUT]

Runs every property of tests/test_fuzz.py with hypothesis (the numbers of examples in PLAN,
at least 20,000 inputs per reader in about ten minutes on two cores; --examples N gives
every property N instead) and does not stop at the first crash: it prints, per reader (manifest, checkpoint,
bundle) and per property, how many inputs were tried, how many the reader accepted, how
many distinct clear errors (class: message, with numbers masked) and error classes it saw,
the slowest input, and every crash (any other exception, a forbidden audit event, or an
input slower than GALLERY_FUZZ_MAX_SECONDS). Exit code 1 when there was a crash.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: Examples per property: the cheap properties get more, so that each reader gets at least
#: 20,000 inputs (the bundle properties copy and validate a whole bundle per input).
PLAN = {
    "test_manifest_arbitrary_text": 8000, "test_manifest_arbitrary_bytes": 6000,
    "test_manifest_mutated_text": 6000, "test_manifest_wrong_documents": 1500,
    "test_checkpoint_random_bytes": 4000, "test_checkpoint_mutated_files": 4000,
    "test_checkpoint_mutated_streams_recompressed": 4000,
    "test_checkpoint_random_pickle_programs": 6000, "test_payloads_never_run": 3000,
    "test_attribution_mutated_bytes": 8000, "test_attribution_mutated_headers": 8000,
    "test_bundle_mutated_index": 2500, "test_bundle_mutated_files": 2000,
}


def _mask(message: str) -> str:
    """An error message with numbers, quoted values and paths masked, so that 'distinct'
    counts kinds of messages rather than inputs (for a message listing problems, its first
    problem)."""
    message = " ".join(message.split("\n")[:2])
    message = re.sub(r"/[^\s:'\"]+", "<path>", message)
    message = re.sub(r"'[^']*'|\"[^\"]*\"|b'[^']*'", "<value>", message)
    return re.sub(r"\d+", "N", message)[:160]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int,
                        help="hypothesis examples per property (default: PLAN)")
    parser.add_argument("--only", default="", help="run the properties whose name has this")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from hypothesis import settings

    from tests import test_fuzz as fuzz

    properties = [name for name in dir(fuzz) if name.startswith("test_")
                  and hasattr(getattr(fuzz, name), "hypothesis") and args.only in name]
    stats: dict[str, dict] = {}
    current: dict = {}

    def record(result: str, seconds: float) -> None:
        current["inputs"] += 1
        current["slowest"] = max(current["slowest"], seconds)
        if result == "ok":
            current["accepted"] += 1
        elif result.startswith("CRASH"):
            current["crashes"][_mask(result)] += 1
            current["crash_examples"].setdefault(_mask(result), result[:500])
        else:
            current["classes"][result.split(":")[0]] += 1
            current["messages"][_mask(result)] += 1

    fuzz.RECORDER, fuzz.KEEP_GOING = record, True
    started = time.perf_counter()
    for name in properties:
        current.clear()
        current.update(inputs=0, accepted=0, slowest=0.0, crashes=Counter(), classes=Counter(),
                       messages=Counter(), crash_examples={})
        t0 = time.perf_counter()
        test = getattr(fuzz, name)
        examples = args.examples or PLAN.get(name, 2000)
        test._hypothesis_internal_use_settings = settings(fuzz.FUZZ, max_examples=examples)
        try:
            test()
        except Exception as err:  # a property's own assertion (e.g. a payload was accepted)
            current["crashes"][f"property failed: {type(err).__name__}"] += 1
            current["crash_examples"].setdefault(f"property failed: {type(err).__name__}",
                                                 str(err)[:500])
        current["seconds"] = time.perf_counter() - t0
        stats[name] = dict(current)
        print(f"{name}: {current['inputs']} inputs in {current['seconds']:.0f} s, "
              f"{current['accepted']} accepted, {len(current['classes'])} error classes, "
              f"{len(current['messages'])} distinct messages, "
              f"{sum(current['crashes'].values())} crashes, slowest "
              f"{current['slowest'] * 1000:.0f} ms", flush=True)
        for kind, example in current["crash_examples"].items():
            print(f"    CRASH x{current['crashes'][kind]}: {example}", flush=True)

    readers: dict[str, dict] = defaultdict(lambda: {"inputs": 0, "accepted": 0, "crashes": 0,
                                                     "classes": set(), "messages": set()})
    for name, s in stats.items():
        reader = ("manifest" if "manifest" in name else
                  "bundle" if "bundle" in name or "attribution" in name else "checkpoint")
        r = readers[reader]
        r["inputs"] += s["inputs"]
        r["accepted"] += s["accepted"]
        r["crashes"] += sum(s["crashes"].values())
        r["classes"] |= set(s["classes"])
        r["messages"] |= set(s["messages"])
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    print(f"{'reader':12} {'inputs':>8} {'accepted':>9} {'classes':>8} {'messages':>9} "
          f"{'crashes':>8}")
    for reader, r in readers.items():
        print(f"{reader:12} {r['inputs']:>8} {r['accepted']:>9} {len(r['classes']):>8} "
              f"{len(r['messages']):>9} {r['crashes']:>8}   {', '.join(sorted(r['classes']))}")
    if args.json:
        args.json.write_text(json.dumps({
            "examples_per_property": args.examples or PLAN,
            "properties": {n: {k: (dict(v) if isinstance(v, Counter) else v)
                               for k, v in s.items()} for n, s in stats.items()},
            "readers": {n: {**r, "classes": sorted(r["classes"]),
                            "messages": len(r["messages"])} for n, r in readers.items()},
        }, indent=1, default=str))
    return 1 if any(r["crashes"] for r in readers.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
