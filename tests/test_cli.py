"""`gallery inspect` on the real checkpoint, and exit codes on bad input."""

from __future__ import annotations

import json

from gallery.cli import main


def test_inspect_official_coinrun(coinrun_path, capsys):
    assert main(["inspect", str(coinrun_path)]) == 0
    out = capsys.readouterr().out
    assert "architecture clear" in out and "env_name=coinrun" in out
    assert "actions      15:" in out
    for line in ("1a               64 x 64 x 16", "2b               32 x 32 x 32",
                 "4a               8 x 8 x 32"):
        assert line in out


def test_inspect_json(coinrun_path, capsys):
    assert main(["inspect", str(coinrun_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in info["layers"]] == ["1a", "2a", "2b", "3a", "4a"]
    assert info["parameters"] == 363216


def test_inspect_bad_files_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing.jd"
    assert main(["inspect", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    text = tmp_path / "notes.jd"
    text.write_text("hello")
    assert main(["inspect", str(text)]) == 2
    assert "not a joblib/pickle file" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "inspect" in capsys.readouterr().out
