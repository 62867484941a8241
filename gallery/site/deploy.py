"""`gallery deploy`: publish a built site to a branch (gh-pages) of any git remote.

The ghp-import flow, without touching the user's own repository or work tree: a private
git directory in the cache fetches the branch from the remote (if it exists), commits the
site folder's exact contents (plus `.nojekyll`, so GitHub Pages serves folders starting with
`_`) on top of it, and pushes. History is kept and the push is a fast-forward; a site that
did not change makes no commit. Before anything is pushed the site is measured against
GitHub Pages' limits (gallery.site.budget): near them it warns, over them it refuses, naming
the models to shrink and how (`allow_oversize` publishes anyway).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gallery.errors import GalleryError
from gallery.site.budget import PAGES_FILE_LIMIT, PAGES_SITE_LIMIT, SizeReport, measure_site

log = logging.getLogger(__name__)


class DeployError(GalleryError):
    """The site could not be published; the message says what git answered (exit code 1)."""

    exit_code = 1


@dataclass(frozen=True)
class DeployResult:
    remote: str
    branch: str
    commit: str
    changed: bool
    """False when the branch already held exactly this site (nothing was pushed)."""
    files: int
    size: SizeReport | None = None
    """The site's size, checked before publishing."""


def check_size(site_dir: Path, *, allow_oversize: bool = False,
               limits: tuple[int, int] = (PAGES_SITE_LIMIT, PAGES_FILE_LIMIT)) -> SizeReport:
    """Measure the site against GitHub Pages' (site, file) `limits`: warnings are logged;
    a site over them raises DeployError unless `allow_oversize`."""
    size = measure_site(site_dir, *limits)
    errors, warnings = size.problems()
    for text in warnings:
        log.warning("size: %s", text)
    if errors and not allow_oversize:
        raise DeployError("not published: GitHub Pages would refuse this site:\n"
                          + "\n".join(f"  {e}" for e in errors)
                          + "\nchange the manifest's settings and run `gallery build` again "
                          "(or publish anyway with --allow-oversize)")
    for text in errors:
        log.warning("size: %s (publishing anyway: --allow-oversize)", text)
    return size


def resolve_remote(remote: str, cwd: Path | None = None) -> str:
    """A remote name of the repository in `cwd` (e.g. origin) as its URL; a URL or path as
    it is."""
    if "/" in remote or ":" in remote or Path(remote).exists():
        return remote
    try:
        out = _git(["remote", "get-url", remote], cwd=cwd or Path.cwd())
    except DeployError:
        raise DeployError(f"{remote!r} is neither a remote of the repository here nor a URL "
                          "or path; pass --remote URL (e.g. git@github.com:USER/REPO.git)") \
            from None
    return out.strip()


def deploy(site_dir: Path, remote: str, branch: str = "gh-pages", *, cache_dir: Path,
           message: str | None = None, cname: str | None = None, push: bool = True,
           allow_oversize: bool = False,
           limits: tuple[int, int] = (PAGES_SITE_LIMIT, PAGES_FILE_LIMIT)) -> DeployResult:
    """Commit `site_dir` to `branch` of `remote` (a URL, path, or remote name) and push;
    first `check_size` (a site over GitHub Pages' `limits` is refused unless
    `allow_oversize`)."""
    site_dir = Path(site_dir)
    if not (site_dir / "index.html").is_file():
        raise DeployError(f"{site_dir} holds no built site (no index.html); run "
                          "`gallery build` first")
    size = check_size(site_dir, allow_oversize=allow_oversize, limits=limits)
    url = resolve_remote(remote)
    git_dir = _work_repository(cache_dir, url)
    parent = _fetch_branch(git_dir, url, branch)
    tree, files = _site_tree(git_dir, site_dir, cname)
    if parent and _git(["rev-parse", f"{parent}^{{tree}}"], git_dir=git_dir).strip() == tree:
        log.info("%s %s already holds this site; nothing to push", url, branch)
        return DeployResult(url, branch, parent, False, files, size)
    text = message or "Deploy the gallery site"
    commit = _git(["commit-tree", tree, *(["-p", parent] if parent else []), "-m", text],
                  git_dir=git_dir, env=_identity()).strip()
    if push:
        _git(["push", "--quiet", url, f"{commit}:refs/heads/{branch}"], git_dir=git_dir)
    return DeployResult(url, branch, commit, True, files, size)


def _work_repository(cache_dir: Path, url: str) -> Path:
    """A bare repository in the cache for this remote (created once, reused)."""
    git_dir = cache_dir / "deploy" / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".git")
    if not (git_dir / "HEAD").is_file():
        git_dir.mkdir(parents=True, exist_ok=True)
        _git(["init", "--quiet", "--bare", str(git_dir)], cwd=cache_dir)
    return git_dir


def _fetch_branch(git_dir: Path, url: str, branch: str) -> str | None:
    """The remote branch's commit, fetched; None when the branch does not exist yet."""
    heads = _git(["ls-remote", "--heads", url, f"refs/heads/{branch}"], git_dir=git_dir)
    if not heads.strip():
        return None
    ref = f"refs/remotes/deploy/{branch}"
    _git(["fetch", "--quiet", "--no-tags", url, f"+refs/heads/{branch}:{ref}"], git_dir=git_dir)
    return _git(["rev-parse", ref], git_dir=git_dir).strip()


def _site_tree(git_dir: Path, site_dir: Path, cname: str | None) -> tuple[str, int]:
    """Write the site (every file, .nojekyll, CNAME) as a tree object; (tree id, files)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        work = ["--work-tree", str(site_dir.resolve())]
        _git([*work, "add", "--all", "--force", "."], git_dir=git_dir, env=env,
             cwd=site_dir)
        extras = {".nojekyll": b""} | ({"CNAME": cname.encode() + b"\n"} if cname else {})
        for name, data in extras.items():
            blob = _git(["hash-object", "-w", "--stdin"], git_dir=git_dir, stdin=data).strip()
            _git(["update-index", "--add", "--cacheinfo", f"100644,{blob},{name}"],
                 git_dir=git_dir, env=env)
        tree = _git(["write-tree"], git_dir=git_dir, env=env).strip()
        files = len(_git(["ls-files"], git_dir=git_dir, env=env).splitlines())
    return tree, files


def _identity() -> dict[str, str]:
    """A committer for machines without a git identity (CI); the user's own wins."""
    env = {}
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", os.environ.get(f"GIT_{role}_NAME") or _config(
            "user.name") or "gallery")
        env.setdefault(f"GIT_{role}_EMAIL", os.environ.get(f"GIT_{role}_EMAIL") or _config(
            "user.email") or "gallery@localhost")
    return env


def _config(key: str) -> str:
    try:
        return subprocess.run(["git", "config", "--get", key], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return ""


def _git(args: list[str], *, git_dir: Path | None = None, cwd: Path | None = None,
         env: dict[str, str] | None = None, stdin: bytes | None = None) -> str:
    command = ["git", *(["--git-dir", str(git_dir)] if git_dir else []), *args]
    try:
        done = subprocess.run(command, cwd=cwd, input=stdin, capture_output=True,
                              env={**os.environ, **(env or {})}, check=False)
    except FileNotFoundError:
        raise DeployError("git is not installed; install git to deploy") from None
    if done.returncode != 0:
        shown = " ".join(args[:3])
        raise DeployError(f"git {shown} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode(errors="replace")
