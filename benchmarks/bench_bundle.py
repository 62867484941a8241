"""Bundle budget: the interface of coinrun.jd at the default settings, measured.

    .venv/bin/python benchmarks/bench_bundle.py [--checkpoint PATH] [--work DIR]
                                                [--policy] [--reencode] [--json OUT]

Builds the interface with the defaults of method.md section 8 (8 x 512 frames, five
layers, value attribution, single-feature views; `--policy` adds every action and action
group) into WORK/interface-value (or -policy), then reports the bundle's total size, the
size per kind of file, the largest file, the first load of a model page, and the ratio to
the reference tool's output for the same interface (its PNG strips, estimated from the
numbers of images it wrote and their measured average size here: see `reference_bytes`).

The reduced attribution arrays are kept in WORK/arrays-*/ (float32 .npy, about 1 GB for
the value build), so `--reencode` measures a changed encoding without recomputing the
analysis (about an hour on two CPU cores). Budgets (the issue): whole bundle <= 30 MB
(value), <= 200 MB (policy); no file over 20 MB; first load <= 3 MB. `--reencode` also
re-encodes the extra observation atlases from the recorded rollouts in WORK/cache, and
turns bundle format 1's feature views into format 2's.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np

from gallery import bundle as bundles
from gallery.bundle import codec as attribution_codec
from gallery.pipeline.interface import BUNDLE_DIR, generate_interface, viewer_assets

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "coinrun.jd"
MB = 1e6
BUDGETS = {"value": 30 * MB, "policy": 200 * MB}


@contextlib.contextmanager
def recording(found: dict) -> Iterator[None]:
    """Catch every reduced attribution as the units encode it, by the sha256 of the file
    it becomes (the units run in this process: no worker pool is opened here)."""
    encode = attribution_codec.encode

    def keeping(features, residual, **kwargs):
        data = encode(features, residual, **kwargs)
        found[hashlib.sha256(data).hexdigest()] = (np.asarray(features, np.float32),
                                                   np.asarray(residual, np.float32))
        return data

    with mock.patch.object(attribution_codec, "encode", keeping):
        yield


def save_arrays(interface: Path, arrays: Path, found: dict) -> None:
    """The caught arrays, named by (layer, trajectory, output) as the bundle names them."""
    index = json.loads((interface / BUNDLE_DIR / bundles.INDEX_FILE).read_text())
    for layer in index["layers"]:
        folder = arrays / layer["name"].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for output, files in layer["attribution"].items():
            for e, name in enumerate(files):
                features, residual = found[index["files"][name]["sha256"]]
                np.save(folder / f"T{e}-{output}-features.npy", features)
                np.save(folder / f"T{e}-{output}-residual.npy", residual)


def reencode(interface: Path, arrays: Path) -> None:
    """Re-encode the saved arrays into the bundle's attribution files (same names).

    A file is encoded again only if its arrays or gallery/bundle/codec.py changed
    since it was last encoded here (the key is kept next to the arrays): re-encoding all
    of them takes about 20 minutes on one core."""
    root = interface / BUNDLE_DIR
    index = json.loads((root / bundles.INDEX_FILE).read_text())
    import hashlib

    from gallery.bundle import codec as attribution_codec
    source = hashlib.sha256(Path(attribution_codec.__file__).read_bytes()).hexdigest()
    for layer in index["layers"]:
        folder = arrays / layer["name"].replace("/", "_")
        for output, files in layer["attribution"].items():
            for e, name in enumerate(files):
                paths = [folder / f"T{e}-{output}-{part}.npy" for part in ("features", "residual")]
                key = hashlib.sha256(source.encode() + b"".join(
                    p.read_bytes() for p in paths)).hexdigest()
                done = folder / f"T{e}-{output}.encoded"
                if done.exists() and (root / name).exists() and \
                        done.read_text() == key + hashlib.sha256((root / name).read_bytes()
                                                                  ).hexdigest():
                    data = (root / name).read_bytes()
                    print(f"  {name}: {len(data) / MB:.2f} MB (unchanged)", file=sys.stderr)
                else:
                    f, r = (np.load(p) for p in paths)
                    data = attribution_codec.encode(f, r,
                                                    single_features=index["single_features"])
                    (root / name).write_bytes(data)
                    done.write_text(key + hashlib.sha256(data).hexdigest())
                index["files"][name] = {"bytes": len(data),
                                        "sha256": hashlib.sha256(data).hexdigest()}
                print(f"  {name}: {len(data) / MB:.2f} MB", file=sys.stderr)
    index["codec_version"] = attribution_codec.CODEC_VERSION
    reencode_extra(root, index, interface.parent / "cache" / "rollouts")
    upgrade_feature_views(root, index)
    index["format_version"] = bundles.FORMAT_VERSION
    (root / bundles.INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")


def upgrade_feature_views(root: Path, index: dict) -> None:
    """Bundle format 1's feature views (gzip JSON) as format 2's .gfv files. Format 1 kept
    8 digits of the centres: centres that close to the resampling rule's are the rule's."""
    import hashlib

    def centres(values: list, size: int) -> np.ndarray:
        rule = bundles.resampled_centres(size, len(values))
        return rule if np.allclose(values, rule, rtol=0, atol=1e-6) else np.array(values)

    old_bytes = new_bytes = 0
    for layer in index["layers"]:
        for k, name in enumerate(layer.get("feature_views") or []):
            if not name or not name.endswith(".json.gz"):
                continue
            detail = bundles.read_json(root / name)
            h, w = detail["layer_shape"]
            grids = [bundles.FeatureGrid(
                g["subdiv_mult"], np.reshape(g["indices"], g["shape"]),
                np.reshape(g["acts"], g["shape"]), centres(g["centre_rows"], h),
                centres(g["centre_cols"], w), (h, w)) for g in detail["grids"]]
            data = bundles.encode_feature_views(k, (h, w), tuple(detail["observation_shape"]),
                                                detail["expand_mults"], grids)
            new = name.removesuffix(".json.gz") + ".gfv"
            (root / new).write_bytes(data)
            old_bytes += index["files"].pop(name)["bytes"]
            (root / name).unlink()
            index["files"][new] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            new_bytes += len(data)
            layer["feature_views"][k] = new
    if old_bytes:
        print(f"  feature views: {old_bytes / MB:.2f} MB -> {new_bytes / MB:.2f} MB",
              file=sys.stderr)
    index["files"] = dict(sorted(index["files"].items()))


def reencode_extra(root: Path, index: dict, rollouts: Path) -> None:
    """Re-encode the extra observation atlases (`bundle.encode_extra`) from the recorded
    rollouts the interface was built from (checked against the atlases there now)."""
    import hashlib
    import io

    from PIL import Image

    extra = index.get("extra_observations")
    saved = sorted(rollouts.glob("*.npz"))
    if not extra or len(saved) != 1:
        print(f"  extra observations not re-encoded ({len(saved)} rollouts in {rollouts})",
              file=sys.stderr)
        return
    frames = bundles.display_frames(np.load(saved[0])["observations"][extra["indices"]])
    for atlas in extra["atlases"]:
        image = bundles.tile(frames[atlas["start"]:atlas["start"] + atlas["count"]],
                             extra["columns"])
        with Image.open(root / atlas["file"]) as old:
            before = np.asarray(old.convert("RGB"), np.float64)
        if before.shape != image.shape or np.abs(before - image).mean() > 10:
            raise SystemExit(f"{atlas['file']} is not of these rollouts' observations")
        data, extension = bundles.encode_extra(image)
        name = f"{atlas['file'].rsplit('.', 1)[0]}.{extension}"
        if name != atlas["file"]:  # bundle format 1's WebP
            index["files"].pop(atlas["file"])
            (root / atlas["file"]).unlink()
            atlas["file"] = name
        (root / atlas["file"]).write_bytes(data)
        index["files"][atlas["file"]] = {"bytes": len(data),
                                         "sha256": hashlib.sha256(data).hexdigest()}
        error = np.abs(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), float)
                       - image).mean()
        print(f"  {atlas['file']}: {len(data) / MB:.2f} MB, mean error {error:.2f}/255",
              file=sys.stderr)


def reference_bytes(index: dict, arrays: Path, trajectories: int = 1) -> dict:
    """What the reference tool wrote for the same interface, measured on this one.

    Per (layer, trajectory, output) it saved one PNG strip of all frames per (direction,
    view) -- 3 x (K + 3) of them with single-feature views -- and one of the scrubber
    columns; per trajectory an observation strip and its scrubber. We render those strips
    with gallery.method.rendering from the saved arrays of the first `trajectories` trajectories,
    encode them as PNG (Pillow's defaults, as lucid's `save` did) and scale to all of them.
    """
    import io

    from PIL import Image

    from gallery.method import rendering

    measured = 0
    for layer in index["layers"]:
        folder = arrays / layer["name"].replace("/", "_")
        for e in range(trajectories):
            f = np.load(folder / f"T{e}-value-features.npy")
            r = np.load(folder / f"T{e}-value-residual.npy")
            scale = rendering.attribution_scale(f)
            for direction in rendering.DIRECTIONS:
                for view in rendering.views(f.shape[-1], index["single_features"]):
                    rgba = rendering.render_attribution(f, r, scale=scale, direction=direction,
                                                        view=view)
                    for strip in (rendering.side_by_side(rgba),
                                  rendering.side_by_side(rendering.scrub_strip(rgba))):
                        out = io.BytesIO()
                        Image.fromarray(rendering.to_uint8(strip), "RGBA").save(out, "PNG")
                        measured += len(out.getvalue())
    scale_up = len(index["trajectories"]) / trajectories
    total = measured * scale_up
    return {"attribution_png_bytes": round(total), "measured_trajectories": trajectories,
            "note": "value attribution strips only (observation strips excluded)"}


def measure(interface: Path) -> dict:
    viewer = sum(p.stat().st_size for p in viewer_assets())
    sizes = bundles.bundle_sizes(interface / BUNDLE_DIR, viewer_bytes=viewer)
    sizes["viewer_bytes"] = viewer
    sizes["directory_bytes"] = bundles.directory_bytes(interface)
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--work", default=".cache/bench-bundle", help="working folder")
    parser.add_argument("--policy", action="store_true", help="attribute every action too")
    parser.add_argument("--reencode", action="store_true",
                        help="re-encode saved arrays instead of recomputing the analysis")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--reference", action="store_true",
                        help="also measure the reference tool's PNG output (slow)")
    args = parser.parse_args()
    kind = "policy" if args.policy else "value"
    work = Path(args.work).resolve()
    interface = work / f"interface-{kind}"
    arrays = work / f"arrays-{kind}"
    start = time.perf_counter()
    if args.reencode:
        reencode(interface, arrays)
        summary = {}
    else:
        found: dict = {}
        with recording(found):  # every unit computed again, so that each array is caught
            summary = generate_interface(
                args.checkpoint, interface, policy=args.policy, cache_dir=work / "cache",
                resample=True,
                progress=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
        save_arrays(interface, arrays, found)
    sizes = measure(interface)
    index = bundles.validate_bundle(interface / BUNDLE_DIR, decode_frames=0)
    fidelity = [r for r in summary.get("fidelity", [])]
    figures = {
        "kind": kind,
        "seconds": round(time.perf_counter() - start, 1),
        "stage_seconds": summary.get("seconds"),
        "sizes": sizes,
        "budget_bytes": BUDGETS[kind],
        "within_budget": sizes["total_bytes"] <= BUDGETS[kind],
        "largest_file_ok": sizes["largest_file"]["bytes"] <= bundles.MAX_FILE_BYTES,
        "first_load_ok": sizes["first_load_bytes"] <= 3 * MB,
        "layers": [la["name"] for la in index["layers"]],
        "trajectories": len(index["trajectories"]),
        "frames": sum(t["length"] for t in index["trajectories"]),
        "worst_checked_mae_255": max((r["checked_mae"] * 255 for r in fidelity), default=None),
        "min_checked_psnr": min((r["checked_psnr"] for r in fidelity), default=None),
    }
    if args.reference:
        figures["reference"] = reference_bytes(index, arrays)
        figures["reference"]["ratio"] = round(
            figures["reference"]["attribution_png_bytes"] / sizes["total_bytes"], 1)
    report(figures, args.json)
    return 0


def report(figures: dict, path: str | None) -> None:
    """Print the figures as JSON, and write them to `path` if given."""
    print(json.dumps(figures, indent=1))
    if path:
        Path(path).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
