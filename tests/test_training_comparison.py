"""Training comparisons (`kind: training`): checkpoints of one run, in checkpoint order."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from gallery.cli import main
from gallery.pipeline.manifest import ManifestError, load_manifest
from gallery.site.matching import match_training
from gallery.training import TrainConfig, train
from tests.test_build import TINY_DEFAULTS


def test_match_training_anchors_on_the_last_checkpoint():
    rng = np.random.default_rng(0)
    final = rng.random((20, 4, 4, 3))
    # the early checkpoint holds the last one's features 0 and 2 (permuted, noisy) and
    # noise in place of feature 1; the untrained one holds only noise
    early = np.stack([final[..., 2] * 2 + 0.01 * rng.random((20, 4, 4)),
                      rng.random((20, 4, 4)),
                      final[..., 0] + 0.01 * rng.random((20, 4, 4)),
                      rng.random((20, 4, 4))], axis=-1)
    untrained = rng.random((20, 4, 4, 2))
    rows = match_training([untrained, early, final])
    assert sorted(r["feature"] for r in rows) == [0, 1, 2]  # the LAST checkpoint's features
    by_feature = {r["feature"]: r["matches"] for r in rows}
    assert all(len(m) == 2 for m in by_feature.values())  # untrained, then early
    assert by_feature[0][1]["feature"] == 2 and by_feature[0][1]["similarity"] > 0.99
    assert by_feature[2][1]["feature"] == 0 and by_feature[2][1]["similarity"] > 0.99
    assert by_feature[1][1]["similarity"] < 0.5
    assert all(m[0]["similarity"] < 0.5 for m in by_feature.values())
    assert rows[-1]["feature"] == 1  # best-matched rows first


def _manifest(folder: Path, kind: str) -> Path:
    path = folder / "checkpoints.yaml"
    path.write_text(json.dumps({
        "site": {"name": "Runs"}, "defaults": TINY_DEFAULTS,
        "models": [{"id": "untrained", "title": "Untrained", "checkpoint": "checkpoint-0.jd"},
                   {"id": "early", "title": "Early", "checkpoint": "checkpoint-64.jd"},
                   {"id": "final", "title": "Final", "checkpoint": "checkpoint-128.jd"}],
        "comparisons": [{"id": "training", "title": "Over training", "kind": kind,
                         "models": ["untrained", "early", "final"]}]}))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Three checkpoints of one tiny run: untrained, after 1 update, after 2 updates."""
    folder = tmp_path_factory.mktemp("run")
    train(TrainConfig(env_name="coinrun", total_steps=2 * 4 * 16, num_envs=4, num_steps=16,
                      minibatches=1, epochs=1, keep_every=1, seed=4), folder)
    return folder


def test_manifest_kinds(run):
    assert load_manifest(_manifest(run, "training")).comparisons[0].kind == "training"
    assert load_manifest(_manifest(run, "models")).comparisons[0].kind == "models"
    with pytest.raises(ManifestError) as caught:
        load_manifest(_manifest(run, "ordered"))
    assert "comparisons[0].kind" in str(caught.value) and "'training'" in str(caught.value)


def test_training_comparison_page(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "site"
    assert main(["build", "-m", str(_manifest(run, "training")), "-o", str(out)]) == 0
    capsys.readouterr()
    folder = out / "compare" / "training"
    page = (folder / "index.html").read_text()
    # the shared trajectories are the LAST checkpoint's: its interface on the comparison
    # page shows the frames of its own model page
    bundles = {i: json.loads((folder / "interface" / i / "bundle" / "bundle.json")
                             .read_text()) for i in ("untrained", "early", "final")}
    own = json.loads((out / "models" / "final" / "interface" / "bundle" / "bundle.json")
                     .read_text())
    frames = {i: {k: v["sha256"] for k, v in b["files"].items() if k.startswith("frames/")}
              for i, b in bundles.items()}
    assert frames["final"] and frames["untrained"] == frames["early"] == frames["final"]
    assert frames["final"] == {k: v["sha256"] for k, v in own["files"].items()
                               if k.startswith("frames/")}
    assert "recorded once by Final" in page
    # viewers and matched features in checkpoint order, the last checkpoint as the anchor
    assert re.findall(r'data-gallery-viewer data-group="[^"]+" data-model="([a-z]+)"',
                      page) == ["untrained", "early", "final"]
    rows = re.findall(r'<tr class="gallery-matched__row">(.*?)</tr>', page)
    assert len(rows) == 4  # the last checkpoint's K = 4 features of layer 4a
    for row in rows:
        cells = re.findall(r'<td>(.*?)</td>', row)
        assert [re.search(r'src="matched/([a-z]+)-', c).group(1) for c in cells] == [
            "untrained", "early", "final"]
        assert "similarity" in cells[0] and "similarity" in cells[1]
        assert "similarity" not in cells[2]
    assert "Features matched over training" in page and "(the last checkpoint, right)" in page
    # the charts over training, on the checkpoints' own step counts
    for title in ("Mean episode return over training", "Mean value on the shared observations",
                  "Features of the last checkpoint, found earlier"):
        assert title in page
    assert "training steps" in page
    feature_chart = page[page.index("Features of the last checkpoint, found earlier"):]
    assert "layer 4a" in feature_chart[:4000]


def test_comparison_interfaces_join_the_pool_with_the_same_bytes(run, tmp_path, monkeypatch,
                                                                 capsys):
    """With a worker pool, the comparison's interfaces on the last checkpoint's trajectories
    are computed in the pool beside the models' own units (they depend on its rollouts unit,
    not on the finished model); the bundles equal a one-process build's, and the frames
    of the shared trajectories are encoded once for all three interfaces."""
    from gallery.pipeline.units import UnitStore
    from tests.test_distributed import same_bytes

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    computed, sites = {}, {}
    for workers in (0, 1):
        cache = tmp_path / f"cache{workers}"
        monkeypatch.setenv("GALLERY_CACHE", str(cache))
        sites[workers] = tmp_path / f"site{workers}"
        assert main(["build", "-m", str(_manifest(run, "training")), "-o",
                     str(sites[workers]), "--workers", str(workers)]) == 0
        err = capsys.readouterr().err
        computed[workers] = [e["key"] for e in UnitStore(cache / "units").events()
                             if e["event"] == "computed"]
        # per model: trajectories, observations, outputs, 2 frames, NMF, features, extra
        # observations' images, 2 attribution; each other checkpoint on the shared
        # trajectories: outputs, NMF, features, extra observations' images, 2 attribution
        assert len(computed[workers]) == len(set(computed[workers])) == 3 * 10 + 2 * 6
        if workers:
            assert "42 interface units of 3 model(s) and 1 comparison(s) on this process " \
                   "and 1 worker(s)" in err
    assert sorted(computed[0]) == sorted(computed[1])
    for model in ("untrained", "early", "final"):
        same_bytes(sites[0] / "compare" / "training" / "interface" / model,
                   sites[1] / "compare" / "training" / "interface" / model)
