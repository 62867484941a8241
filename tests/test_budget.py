"""The budget guard for GitHub Pages (gallery.site.budget) with small limits: each model's
share of a built site, warnings and errors naming the models and what to change, and
`gallery deploy` refusing a site over the limits before anything is pushed."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from gallery.cli import main
from gallery.pipeline.build import BuildReport, format_summary
from gallery.site.budget import SITE_OWNER, measure_site, owner_of
from gallery.site.deploy import DeployError, deploy


def write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A built site's layout: two models, a comparison with their interfaces, the theme."""
    root = tmp_path / "site"
    write(root / "index.html", 1_000)
    write(root / "assets" / "bundle.js", 2_000)
    write(root / "models" / "small" / "index.html", 500)
    write(root / "models" / "big" / "index.html", 500)
    write(root / "models" / "big" / "interface" / "bundle" / "attr-2b.bin", 40_000)
    write(root / "compare" / "pair" / "index.html", 300)
    write(root / "compare" / "pair" / "interface" / "big" / "bundle" / "a.bin", 9_000)
    write(root / "compare" / "pair" / "interface" / "small" / "bundle" / "a.bin", 1_000)
    write(root / "compare" / "pair" / "matched" / "m.png", 200)
    return root


def test_owners_of_site_paths():
    assert owner_of("models/a/interface/bundle/x.bin") == "a"
    assert owner_of("compare/c/interface/b/bundle/x.bin") == "b"
    assert owner_of("compare/c/index.html") == "comparison c"
    assert owner_of("compare/c/matched/1.png") == "comparison c"
    assert owner_of("assets/javascripts/bundle.js") == SITE_OWNER
    assert owner_of("index.html") == SITE_OWNER


def test_shares_add_up_and_name_each_model(site):
    size = measure_site(site)
    assert size.files == 9 and size.total_bytes == 54_500
    assert size.shares == {"big": 49_500, SITE_OWNER: 3_000, "small": 1_500,
                           "comparison pair": 500}
    assert sum(size.shares.values()) == size.total_bytes
    assert size.models() == [("big", 49_500), ("small", 1_500)]
    assert size.largest_path == "models/big/interface/bundle/attr-2b.bin"
    assert size.problems() == ([], [])  # far below GitHub's limits
    lines = size.share_lines()
    assert lines[0].split()[0] == "big" and lines[0].rstrip().endswith("90.8%")


def test_over_the_limits_names_the_models_and_the_settings(site):
    size = measure_site(site, site_limit=50_000, file_limit=30_000)
    errors, warnings = size.problems()
    assert len(errors) == 2 and warnings == []
    whole, file = errors
    assert "will not deploy" in whole and "big (0.0 MB)" in whole and "small" in whole
    assert whole.index("big") < whole.index("small")  # the largest first
    for setting in ("layers.include", "attribution.policy", "trajectories.num_steps"):
        assert setting in whole and setting in file
    assert "models/big/interface/bundle/attr-2b.bin" in file and "belongs to big" in file


def test_near_the_limits_warns(site):
    size = measure_site(site, site_limit=60_000, file_limit=45_000)
    errors, warnings = size.problems()
    assert errors == [] and len(warnings) == 2
    assert all("over 80% of the limit" in w for w in warnings)
    assert "attr-2b.bin" in warnings[1]


def test_build_summary_reports_shares_and_problems(site):
    size = measure_site(site, site_limit=50_000, file_limit=1 << 30)
    report = BuildReport([], output=site, size=size)
    text = format_summary(report)
    assert "size by model" in text and "  big " in text
    assert "size: ERROR: the site is" in text
    assert report.exit_code == 1


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    path = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(path)], check=True)
    return path


def branches(remote: Path) -> str:
    return subprocess.run(["git", "--git-dir", str(remote), "branch", "--list"], check=True,
                          capture_output=True, text=True).stdout


def test_deploy_refuses_an_oversized_site_before_pushing(site, remote, tmp_path):
    with pytest.raises(DeployError) as err:
        deploy(site, str(remote), cache_dir=tmp_path / "cache", limits=(50_000, 1 << 30))
    assert "not published" in str(err.value) and "big" in str(err.value)
    assert "--allow-oversize" in str(err.value)
    assert branches(remote) == ""  # nothing pushed
    result = deploy(site, str(remote), cache_dir=tmp_path / "cache", limits=(50_000, 1 << 30),
                    allow_oversize=True)
    assert result.changed and result.size.total_bytes == 54_500
    assert "gh-pages" in branches(remote)


def test_deploy_warns_near_the_limits(site, remote, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gallery.site.deploy"):
        result = deploy(site, str(remote), cache_dir=tmp_path / "cache",
                        limits=(60_000, 1 << 30))
    assert result.changed
    assert any("over 80% of the limit" in r.getMessage() and "big" in r.getMessage()
               for r in caplog.records)


def test_deploy_command_prints_the_size(site, remote, tmp_path, capsys):
    code = main(["deploy", "-o", str(site), "--remote", str(remote), "--cache-dir",
                 str(tmp_path / "cache")])
    assert code == 0
    assert "site: 9 files, 0.1 MB" in capsys.readouterr().out
