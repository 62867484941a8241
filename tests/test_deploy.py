"""`gallery deploy` against a real local bare repository: the gh-pages branch's tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gallery.cli import main
from gallery.site.deploy import DeployError, deploy


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    path = tmp_path / "remote.git"
    git("init", "--quiet", "--bare", str(path))
    return path


@pytest.fixture
def site(tmp_path: Path) -> Path:
    path = tmp_path / "site"
    (path / "models" / "a").mkdir(parents=True)
    (path / "index.html").write_text("<h1>zoo</h1>")
    (path / "models" / "a" / "index.html").write_text("<h1>a</h1>")
    (path / "_private").mkdir()
    (path / "_private" / "x.js").write_text("1")
    (path / ".gitignore").write_text("*.html\n")  # must not hide files from the deploy
    return path


def tree(remote: Path, branch: str = "gh-pages") -> list[str]:
    return git("--git-dir", str(remote), "ls-tree", "-r", "--name-only", branch).split()


def test_first_deploy_creates_the_branch(remote, site, tmp_path):
    result = deploy(site, str(remote), cache_dir=tmp_path / "cache", message="first")
    assert result.changed and result.files == 5
    assert tree(remote) == sorted([".gitignore", ".nojekyll", "_private/x.js", "index.html",
                                   "models/a/index.html"])
    assert git("--git-dir", str(remote), "show", "gh-pages:index.html") == "<h1>zoo</h1>"
    assert git("--git-dir", str(remote), "log", "--format=%s", "gh-pages").split() == ["first"]


def test_redeploy_keeps_history_and_mirrors_the_folder(remote, site, tmp_path):
    cache = tmp_path / "cache"
    first = deploy(site, str(remote), cache_dir=cache, message="one")
    (site / "models" / "a" / "index.html").unlink()
    (site / "new.html").write_text("new")
    second = deploy(site, str(remote), cache_dir=cache, message="two")
    assert second.changed and second.commit != first.commit
    assert "models/a/index.html" not in tree(remote) and "new.html" in tree(remote)
    parents = git("--git-dir", str(remote), "log", "--format=%H %P", "-1", "gh-pages").split()
    assert parents == [second.commit, first.commit]
    same = deploy(site, str(remote), cache_dir=cache)
    assert not same.changed and same.commit == second.commit
    assert len(git("--git-dir", str(remote), "rev-list", "gh-pages").split()) == 2


def test_deploy_from_a_fresh_cache_continues_the_remote_history(remote, site, tmp_path):
    first = deploy(site, str(remote), cache_dir=tmp_path / "one")
    (site / "index.html").write_text("changed")
    second = deploy(site, str(remote), cache_dir=tmp_path / "two")
    assert git("--git-dir", str(remote), "rev-parse", "gh-pages^").strip() == first.commit
    assert second.changed


def test_remote_name_branch_and_cname(remote, site, tmp_path, monkeypatch):
    project = tmp_path / "project"
    git("init", "--quiet", str(project))
    git("remote", "add", "origin", str(remote), cwd=project)
    monkeypatch.chdir(project)
    result = deploy(site, "origin", "pages", cache_dir=tmp_path / "cache", cname="zoo.example")
    assert result.remote == str(remote)
    assert "CNAME" in tree(remote, "pages")
    assert git("--git-dir", str(remote), "show", "pages:CNAME") == "zoo.example\n"
    assert git("branch", "--list", cwd=project) == ""  # the user's repository is untouched
    with pytest.raises(DeployError, match="neither a remote"):
        deploy(site, "upstream", cache_dir=tmp_path / "cache")


def test_errors_are_clear(remote, tmp_path):
    with pytest.raises(DeployError, match="run `gallery build` first"):
        deploy(tmp_path / "nothing", str(remote), cache_dir=tmp_path / "cache")
    site = tmp_path / "s"
    site.mkdir()
    (site / "index.html").write_text("x")
    with pytest.raises(DeployError, match="git ls-remote"):
        deploy(site, str(tmp_path / "no-such-remote.git"), cache_dir=tmp_path / "cache")


def test_cli(remote, site, tmp_path, capsys):
    args = ["deploy", "-o", str(site), "--remote", str(remote), "--cache-dir",
            str(tmp_path / "cache")]
    assert main(args) == 0
    assert "published 5 files" in capsys.readouterr().out
    assert main(args) == 0
    assert "already holds this site" in capsys.readouterr().out
    assert main(["deploy", "-o", str(tmp_path / "none"), "--remote", str(remote)]) == 1
