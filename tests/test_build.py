"""The build orchestrator: cache keys, incremental rebuilds, isolated failures, progress,
summary, size check; the per-model step on a synthetic checkpoint; the real CoinRun model
built offline from a pre-seeded cache."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gallery.cli import main
from gallery.models.fetch import FetchPolicy
from gallery.pipeline import build as build_module
from gallery.pipeline.build import (
    PAGES_FILE_LIMIT,
    PAGES_SITE_LIMIT,
    BuildConfig,
    ModelSettings,
    Reporter,
    SizeReport,
    build_gallery,
    build_model,
    format_summary,
    model_key,
)
from gallery.pipeline.manifest import load_manifest
from gallery.pipeline.options import InterfaceOptions
from gallery.site.stats import discounted_returns, gae_advantages
from tests.reference.checkpoints import make_checkpoint, write_checkpoint
from tests.test_site import fake_result

OFFICIAL_URL = ("https://openaipublic.blob.core.windows.net/rl-clarity/attribution/models/"
                "procgen/coinrun.jd")
OFFICIAL_SHA = "18818904a32842cc177dd3c666b0229a657d0e96b9a7f2be197d6c7f4431a1ac"


class FakeBuilder:
    """A per-model step that records its calls and fails for the ids in `failing`."""

    def __init__(self, failing: tuple[str, ...] = ()):
        self.calls: list[str] = []
        self.failing = failing

    def __call__(self, spec, checkpoint_path, settings, out_dir, *, progress=None,
                 interfaces=False):
        self.calls.append(spec.id)
        if progress:
            progress("pretending to work")
        if spec.id in self.failing:
            (out_dir / "half-written").write_text("x")
            raise RuntimeError(f"boom in {spec.id}")
        result = fake_result(spec.id, mean_return=float(len(self.calls)))
        Image.new("RGB", (256, 256)).save(out_dir / result.thumbnail)
        return replace(result, settings=settings.options.model_dump())


#: Tiny analysis settings: every manifest of the tests uses them (interfaces are on by
#: default), so that a model's interface takes seconds.
TINY_DEFAULTS = {"trajectories": {"num_envs": 2, "num_steps": 16, "bookmarks": 2},
                 "observations": {"num_envs": 4, "num_obs": 16, "obs_every": 4},
                 "layers": {"include": ["4a"]},
                 "attribution": {"integrate_steps": 2},
                 "nmf": {"features": 4, "integrate_steps": 2}}


def write_manifest(folder: Path, models: list[dict], **extra) -> Path:
    text = {"site": {"name": "Test zoo"}, "defaults": TINY_DEFAULTS,
            "models": models, **extra}
    path = folder / "checkpoints.yaml"
    path.write_text(json.dumps(text, indent=1))  # JSON is YAML
    return path


@pytest.fixture
def zoo(tmp_path: Path) -> dict:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.jd").write_bytes(name.encode())
    models = [{"id": n, "title": n.upper(), "checkpoint": f"{n}.jd", "tags": ["t"]}
              for n in ("a", "b", "c")]
    config = BuildConfig(output=tmp_path / "site", cache_dir=tmp_path / "cache",
                         fetch=FetchPolicy(retries=0))
    return {"dir": tmp_path, "models": models, "config": config}


def build(zoo: dict, builder: FakeBuilder, **extra):
    manifest = load_manifest(write_manifest(zoo["dir"], zoo["models"], **extra))
    stream = io.StringIO()
    report = build_gallery(manifest, zoo["config"], builder=builder,
                           reporter=Reporter(len(manifest.models), stream))
    return report, stream.getvalue()


def test_unchanged_models_are_not_recomputed(zoo):
    builder = FakeBuilder()
    report, _ = build(zoo, builder)
    assert report.exit_code == 0 and builder.calls == ["a", "b", "c"]
    assert [m.status for m in report.models] == ["built"] * 3
    assert (zoo["config"].output / "models" / "b" / "index.html").is_file()
    again = FakeBuilder()
    report, log = build(zoo, again)
    assert again.calls == [] and [m.status for m in report.models] == ["cached"] * 3
    assert "0 project file(s) changed" in log


def test_changing_one_models_options_recomputes_only_it(zoo):
    build(zoo, FakeBuilder())
    zoo["models"][1]["options"] = {"nmf": {"features": 3}}
    builder = FakeBuilder()
    report, _ = build(zoo, builder)
    assert builder.calls == ["b"]
    assert [m.status for m in report.models] == ["cached", "built", "cached"]
    zoo["models"][2]["env"] = {"distribution_mode": "easy"}
    builder = FakeBuilder()
    build(zoo, builder)
    assert builder.calls == ["c"]


def test_presentation_changes_rebuild_pages_only(zoo):
    build(zoo, FakeBuilder())
    zoo["models"][0].update(title="A renamed", description="*New* words", tags=["u"],
                            features={"2b": {"0": "coin"}})
    builder = FakeBuilder()
    report, _ = build(zoo, builder)
    assert builder.calls == [] and report.exit_code == 0
    page = (zoo["config"].output / "models" / "a" / "index.html").read_text()
    assert "A renamed" in page and "<em>New</em> words" in page and "0: coin" in page


def test_a_failing_model_is_isolated(zoo):
    report, log = build(zoo, FakeBuilder(failing=("b",)))
    assert report.exit_code == 1
    assert [m.status for m in report.models] == ["built", "failed", "built"]
    assert report.models[1].stage == "model" and "boom in b" in report.models[1].error
    out = zoo["config"].output
    assert "boom in b" in (out / "models" / "b" / "index.html").read_text()
    assert "gallery-card--failed" in (out / "index.html").read_text()
    assert (out / "models" / "c" / "index.html").is_file()
    assert "[2/3] b" in log and "FAILED: RuntimeError: boom in b" in log
    cache = zoo["config"].cache_dir
    assert "Traceback" in (cache / "logs" / "b.txt").read_text()
    assert not list((cache / "models").glob(".*partial*"))  # nothing half-built is kept
    summary = format_summary(report)
    assert "FAILED" in summary and "models: 2 built, 0 cached, 1 failed" in summary
    builder = FakeBuilder()
    report, _ = build(zoo, builder)  # the failure is retried, the rest is reused
    assert builder.calls == ["b"] and report.exit_code == 0


def test_a_failing_fetch_is_isolated(zoo):
    zoo["models"].append({"id": "remote", "title": "Remote", "sha256": "0" * 64,
                          "checkpoint": "http://127.0.0.1:9/remote.jd"})
    report, _ = build(zoo, FakeBuilder())
    assert report.exit_code == 1 and report.models[3].stage == "fetch"
    assert "127.0.0.1:9/remote.jd" in report.models[3].error
    page = (zoo["config"].output / "models" / "remote" / "index.html").read_text()
    assert "This model failed to build" in page


def test_progress_names_model_and_stage(zoo):
    _, log = build(zoo, FakeBuilder(), comparisons=[
        {"id": "ab", "title": "A and B", "models": ["a", "b"]}])
    lines = log.splitlines()
    assert lines[0].split()[:4] == ["[1/3]", "a", "fetch", "local:"]
    assert any(line.split()[:3] == ["[2/3]", "b", "model"] and "pretending" in line
               for line in lines)
    assert any(line.split()[:2] == ["ab", "compare"] for line in lines)
    assert lines[-1].split()[:2] == ["site", "site"] and "built in" in lines[-1]


def test_model_key_covers_checkpoint_settings_and_format():
    settings = ModelSettings(InterfaceOptions(), {})
    key = model_key("a" * 64, settings)
    assert key == model_key("a" * 64, ModelSettings(InterfaceOptions(), {}))
    assert key != model_key("b" * 64, settings)
    assert key != model_key("a" * 64, ModelSettings(InterfaceOptions(), {"num_levels": 1}))
    changed = InterfaceOptions.model_validate({"attribution": {"integrate_steps": 20}})
    assert key != model_key("a" * 64, ModelSettings(changed, {}))


def test_size_check_against_github_pages_limits():
    fine = SizeReport(10 << 20, 100, "a.js", 1 << 20)
    assert fine.problems() == ([], [])
    near = SizeReport(int(PAGES_SITE_LIMIT * 0.85), 100, "big.bin", int(PAGES_FILE_LIMIT * 0.9))
    errors, warnings = near.problems()
    assert errors == [] and len(warnings) == 2 and "big.bin" in warnings[1]
    over = SizeReport(PAGES_SITE_LIMIT + 1, 100, "huge.bin", PAGES_FILE_LIMIT + 1)
    errors, _ = over.problems()
    assert len(errors) == 2 and "will not deploy" in errors[0]
    report = build_module.BuildReport([], size=over)
    assert report.exit_code == 1


def test_discounted_returns_by_hand():
    rewards = np.array([[1.0, 0.0, 2.0, 0.0]])
    dones = np.array([[False, False, True, False]])
    returns, complete = discounted_returns(rewards, dones, gamma=0.5)
    # episode 1 = steps 0..2: G2 = 2, G1 = 0 + 0.5 * 2 = 1, G0 = 1 + 0.5 * 1 = 1.5
    np.testing.assert_allclose(returns, [[1.5, 1.0, 2.0, 0.0]])
    assert complete.tolist() == [[True, True, True, False]]


def test_gae_by_hand():
    rewards = np.array([[1.0, 0.0, 1.0]])
    values = np.array([[0.5, 1.0, 2.0]])
    dones = np.array([[False, True, False]])
    adv = gae_advantages(rewards, values, dones, gamma=0.5, lam=0.5)
    # A2 = 0; A1 = 0 + 0 - 1.0 = -1.0 (done); A0 = (1 + 0.5 * 1.0 - 0.5) + 0.25 * -1 = 0.75
    np.testing.assert_allclose(adv, [[0.75, -1.0, 0.0]])


def test_build_model_records_and_evaluates_the_trajectories_once(tmp_path, monkeypatch):
    """With interfaces, the model card's statistics are those of the interface's own
    trajectories and values: one rollouts unit, one outputs unit, no second recording."""
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "cache"))
    path = write_checkpoint(tmp_path / "c.jd", make_checkpoint("clear", seed=3))
    manifest = load_manifest(write_manifest(tmp_path, [
        {"id": "c", "title": "C", "checkpoint": "c.jd",
         "options": {"layers": {"include": ["4a"]}}}]))
    settings = ModelSettings.of(manifest, manifest.models[0])
    out = tmp_path / "out"
    out.mkdir()
    result = build_model(manifest.models[0], path, settings, out, interfaces=True)
    events = [json.loads(line) for line in
              (tmp_path / "cache" / "units" / "events.jsonl").read_text().splitlines()]
    kinds, labels = [e["kind"] for e in events], [e["label"] for e in events]
    assert labels.count("C: trajectories") == 1 and kinds.count("outputs") == 1
    assert kinds.count("rollouts") == 2  # the trajectories, one group of extra observations
    assert result.interface == build_module.INTERFACE_DIR
    bundle = json.loads((out / "interface" / "bundle" / "bundle.json").read_text())
    assert [len(t := bundle["trajectories"]), t[0]["length"]] == result.steps_recorded
    assert result.settings["layers"]["include"] == ["4a"]


def test_build_model_on_a_synthetic_checkpoint(tmp_path):
    path = write_checkpoint(tmp_path / "c.jd", make_checkpoint("clear", seed=3))
    manifest = load_manifest(write_manifest(tmp_path, [
        {"id": "c", "title": "C", "checkpoint": "c.jd", "env": {"distribution_mode": "easy"}}]))
    out = tmp_path / "out"
    out.mkdir()
    messages = []
    result = build_model(manifest.models[0], path, ModelSettings.of(manifest, manifest.models[0]),
                         out, progress=messages.append)
    assert result.architecture == "clear" and result.parameters == 363216
    assert [layer["name"] for layer in result.layers] == ["1a", "2a", "2b", "3a", "4a"]
    assert result.environment["options"]["distribution_mode"] == "easy"
    assert result.steps_recorded == [2, 16] and len(result.actions) == 15
    assert len(result.advantages) == 2 * 15  # every step but the last of each trajectory
    assert Image.open(out / result.thumbnail).size == (256, 256)
    assert result.training_args["cnn"] == "clear" and result.settings["trajectories"][
        "num_steps"] == 16
    assert any("rollouts 2 x 16 steps" in m for m in messages)


def test_cli_build_end_to_end(tmp_path, monkeypatch, capsys):
    for seed in (1, 2):
        write_checkpoint(tmp_path / f"m{seed}.jd", make_checkpoint("clear", seed=seed))
    manifest = write_manifest(tmp_path, [
        {"id": "one", "title": "One", "checkpoint": "m1.jd", "tags": ["x"]},
        {"id": "two", "title": "Two", "checkpoint": "m2.jd", "tags": ["y"],
         "features": {"2b": {"0": "coin"}, "4a": {"1": "ledge <b>"}}}],
        comparisons=[{"id": "pair", "title": "Pair", "models": ["one", "two"]}])
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "site"
    assert main(["build", "-m", str(manifest), "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "models: 2 built, 0 cached, 0 failed" in printed.out
    compare = (out / "compare" / "pair" / "index.html").read_text()
    assert 'src="frames.png"' in compare and (out / "compare" / "pair" / "frames.png").is_file()
    assert "Value on shared observations" in compare
    # interfaces (the default): the model page mounts its viewer; the comparison shows
    # both models on the SAME trajectories, their features matched in layer 4a
    assert 'data-bundle="interface/bundle/bundle.json"' in (
        out / "models" / "one" / "index.html").read_text()
    model_bundle = json.loads((out / "models" / "two" / "interface" / "bundle" /
                               "bundle.json").read_text())
    assert model_bundle["model"]["id"] == "two" and model_bundle["model"]["title"] == "Two"
    # the manifest's feature labels reach the site's copy of the bundle (the viewer's
    # legend shows them as text), not the cached one
    labelled = {la["name"]: la.get("labels") for la in model_bundle["layers"]}
    assert labelled["4a"] == {"1": "ledge <b>"}
    cached = next((tmp_path / "cache").rglob("interface/bundle/bundle.json"))
    assert all("labels" not in la for la in json.loads(cached.read_text())["layers"])
    bundles = {i: json.loads((out / "compare" / "pair" / "interface" / i / "bundle" /
                              "bundle.json").read_text()) for i in ("one", "two")}
    frames = {i: {k: v["sha256"] for k, v in b["files"].items() if k.startswith("frames/")}
              for i, b in bundles.items()}
    assert frames["one"] and frames["one"] == frames["two"]
    assert bundles["two"]["model"]["id"] == "two"
    assert compare.count('class="gallery-matched__row"') == 4  # K = 4 features of 4a
    assert compare.count("data-gallery-viewer") == 2 and "similarity" in compare
    assert len(list((out / "models" / "two" / "features").glob("*.png"))) == 4
    assert main(["build", "-m", str(manifest), "-o", str(out)]) == 0
    again = capsys.readouterr()
    assert "models: 0 built, 2 cached, 0 failed" in again.out
    assert "matching features" not in again.err  # the comparison is cached too


def test_official_model_offline_from_a_seeded_cache(coinrun_path, tmp_path, monkeypatch,
                                                    capsys):
    manifest = write_manifest(tmp_path, [
        {"id": "coinrun", "title": "CoinRun", "checkpoint": OFFICIAL_URL,
         "sha256": OFFICIAL_SHA}])
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "site"
    # an unreachable network: any download attempt would fail the model
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("network used"))
    assert main(["build", "-m", str(manifest), "-o", str(out), "--seed-cache",
                 str(coinrun_path)]) == 0
    assert "cache" in capsys.readouterr().out
    page = (out / "models" / "coinrun" / "index.html").read_text()
    assert OFFICIAL_URL in page and OFFICIAL_SHA in page and "363,216" in page


def test_serve_hook_refreshes_the_project_then_settles(zoo, monkeypatch):
    from gallery.pipeline.build import project_dir_for
    from gallery.site import serve_hook

    build(zoo, FakeBuilder())  # results cached: refreshing builds nothing
    path = zoo["dir"] / "checkpoints.yaml"
    project = project_dir_for(load_manifest(path), zoo["config"].cache_dir)
    monkeypatch.setenv("GALLERY_SERVE", json.dumps({
        "manifest": str(path), "cache_dir": str(zoo["config"].cache_dir),
        "project": str(project), "retries": 0}))
    zoo["models"][0]["title"] = "Edited while serving"
    write_manifest(zoo["dir"], zoo["models"])
    serve_hook.on_pre_build(config=None)
    assert "Edited while serving" in (project / "docs/models/a/index.md").read_text()
    assert build_module.refresh_project(str(path), str(zoo["config"].cache_dir),
                                        str(project), 0) == 0
    path.write_text("models: [")  # a half-edited manifest: reported, the pages stay
    serve_hook.on_pre_build(config=None)
    assert "Edited while serving" in (project / "docs/models/a/index.md").read_text()


def test_interfaces_are_on_by_default_and_part_of_the_cache_key(tmp_path, monkeypatch):
    from gallery.commands.build import add_build_arguments

    parser = __import__("argparse").ArgumentParser()
    add_build_arguments(parser)
    assert parser.parse_args([]).interfaces is True
    assert parser.parse_args(["--no-interfaces"]).interfaces is False
    assert BuildConfig(output=tmp_path, cache_dir=tmp_path).interfaces is True
    calls = []

    def fake_interface(*args, **kw):
        calls.append(args)
        raise RuntimeError("interface called")

    monkeypatch.setattr(build_module, "build_interface", fake_interface)
    path = write_checkpoint(tmp_path / "c.jd", make_checkpoint("clear", seed=3))
    manifest = load_manifest(write_manifest(tmp_path, [
        {"id": "c", "title": "C", "checkpoint": "c.jd"}]))
    settings = ModelSettings.of(manifest, manifest.models[0])
    out = tmp_path / "out"
    out.mkdir()
    build_model(manifest.models[0], path, settings, out)
    assert calls == []
    with pytest.raises(RuntimeError, match="interface called"):
        build_model(manifest.models[0], path, settings, out, interfaces=True)
    assert len(calls) == 1
    sha = "0" * 64
    assert build_module.model_key(sha, settings) != build_module.model_key(sha, settings, True)


def test_no_interfaces_builds_statistics_only(tmp_path, monkeypatch, capsys):
    write_checkpoint(tmp_path / "m1.jd", make_checkpoint("clear", seed=1))
    manifest = write_manifest(tmp_path, [{"id": "one", "title": "One", "checkpoint": "m1.jd"}])
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "site"
    assert main(["build", "-m", str(manifest), "-o", str(out), "--no-interfaces"]) == 0
    page = (out / "models" / "one" / "index.html").read_text()
    assert "data-gallery-viewer" not in page and 'src="thumbnail.png"' in page
    assert not (out / "viewer").exists()


def test_stats_gae_is_the_analysis_gae():
    from gallery.method.advantages import gae_advantages as analysis_gae

    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(3, 40)), rng.normal(size=(3, 40))
    dones = rng.random((3, 40)) < 0.1
    np.testing.assert_array_equal(gae_advantages(rewards, values, dones, 0.99, 0.95),
                                  analysis_gae(values, rewards, dones, gamma=0.99, lam=0.95))


def test_load_policy_from_a_url_through_the_cache(tmp_path, caplog):
    import functools
    import http.server
    import threading

    from gallery import load_policy
    from gallery.errors import GalleryError
    from gallery.models.fetch import sha256_file

    folder = tmp_path / "served"
    folder.mkdir()
    path = write_checkpoint(folder / "m.jd", make_checkpoint("clear", seed=4))
    sha = sha256_file(path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/m.jd"
    cache = tmp_path / "cache"
    try:
        policy = load_policy(url, sha256=sha, cache_dir=cache)
        assert policy.sha256 == sha and (cache / "checkpoints" / "sha256" / sha).is_file()
        with pytest.raises(GalleryError, match="sha256"):
            load_policy(url, sha256="0" * 64, cache_dir=cache)
        assert load_policy(url, cache_dir=tmp_path / "other").sha256 == sha  # unverified
        assert "not verified" in caplog.text
        with pytest.raises(GalleryError, match="HTTP 404"):
            load_policy(url + "x", sha256=sha.replace(sha[0], "f", 1), cache_dir=cache)
    finally:
        server.shutdown()
        server.server_close()
    assert load_policy(url, sha256=sha, cache_dir=cache).sha256 == sha  # offline: cached
    with pytest.raises(GalleryError, match="sha256"):
        load_policy(path, sha256="1" * 64)
