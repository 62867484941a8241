"""Bad models in a manifest: each fails on its own with an error naming the model, the file
and the fix, while the rest of the site builds (exit code 1); what a manifest can tell is
refused before any work (exit code 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gallery.cli import main
from tests.test_build import TINY_DEFAULTS

DEMO = Path(__file__).resolve().parents[1] / "gallery" / "demo" / "coinrun-clear.jd"


def _manifest(folder: Path, models: list[dict]) -> Path:
    path = folder / "checkpoints.yaml"
    path.write_text(json.dumps({"site": {"name": "Bad models"}, "defaults": TINY_DEFAULTS,
                                "models": models}))
    return path


def test_each_bad_model_fails_alone_and_the_site_still_builds(tmp_path, monkeypatch, capsys):
    shutil.copy(DEMO, tmp_path / "good.jd")
    (tmp_path / "damaged.zip").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "weights.pt").write_bytes(b"\x80\x04 not torch")
    manifest = _manifest(tmp_path, [
        {"id": "good", "title": "Good", "checkpoint": "good.jd"},
        {"id": "damaged", "title": "Damaged zip", "checkpoint": "damaged.zip",
         "env": {"env_kind": "procgen", "env_name": "coinrun"}},
        {"id": "missing-module", "title": "Adapter that does not import",
         "checkpoint": "weights.pt", "adapter": "no_such_package.agents:make"},
        {"id": "raising", "title": "Adapter that raises", "checkpoint": "weights.pt",
         "adapter": "examples.adapters.cleanrl_procgen:make"}])
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "site"
    assert main(["build", "-m", str(manifest), "-o", str(out)]) == 1
    printed = capsys.readouterr()
    assert "models: 1 built, 0 cached, 3 failed" in printed.out
    rows = {line.split()[0]: line for line in printed.out.splitlines() if "FAILED" in line
            and line.split()[0] in ("damaged", "missing-module", "raising")}
    assert "damaged.zip: damaged zip" in rows["damaged"] and "save the model again" in rows[
        "damaged"]
    assert "cannot import no_such_package.agents" in rows["missing-module"]
    assert "PYTHONPATH" in rows["missing-module"]
    assert "cleanrl_procgen:make on" in rows["raising"] and "weights.pt" in rows["raising"]
    assert "state_dict()" in rows["raising"]
    # the good model is on the site; each failure is shown on its own page
    assert (out / "models" / "good" / "interface" / "bundle" / "bundle.json").is_file()
    for model_id in ("damaged", "missing-module", "raising"):
        page = (out / "models" / model_id / "index.html").read_text()
        assert "failed" in page.lower() or "error" in page.lower()


def test_what_the_manifest_tells_is_refused_before_any_work(tmp_path, capsys):
    shutil.copy(DEMO, tmp_path / "good.jd")
    manifest = _manifest(tmp_path, [
        {"id": "good", "title": "Good", "checkpoint": "good.jd"},
        {"id": "no-game", "title": "Unknown game", "checkpoint": "good.jd",
         "env": {"env_kind": "atari", "env_id": "NoSuchGameNoFrameskip-v4"}},
        {"id": "bad-adapter", "title": "Bad adapter name", "checkpoint": "good.jd",
         "adapter": "not a module path"}])
    assert main(["build", "-m", str(manifest), "-o", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert "models[1].env.env_id" in err and "NoSuchGame" in err
    assert "models[2].adapter" in err and "module.path:function" in err
    assert not (tmp_path / "site").exists()
