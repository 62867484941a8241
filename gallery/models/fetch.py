"""Fetching checkpoints: http(s), file:// and local paths, into a content-addressed cache.

- A remote checkpoint is stored under `<cache>/checkpoints/sha256/<digest>`: once there,
  a build needs no network (an offline machine builds a manifest of real URLs when the
  files are in the cache; `Cache.add` pre-seeds it from a local copy).
- Downloads go to a temporary file in the same folder, are hashed while they stream, and
  are renamed into place only when complete and matching the manifest's sha256: the cache
  never holds a partial or wrong file.
- Transient failures (connection errors, timeouts, 5xx, 429, interrupted transfers) are
  retried with exponential backoff; 4xx errors and hash mismatches are not (they would
  fail again).
- Local files are used where they are (not copied); their sha256 is checked when the
  manifest gives one, and computed otherwise (it keys the model's cached results).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from gallery import __version__
from gallery.errors import GalleryError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}

Progress = Callable[[int, int | None], None]
"""Called as progress(bytes_done, bytes_total or None) while downloading."""


class FetchError(GalleryError):
    """A checkpoint could not be fetched or verified; the message says which and why.

    During a build this fails one model (exit code 1), not the whole build."""

    exit_code = 1


@dataclass(frozen=True)
class FetchPolicy:
    """How downloads behave."""

    retries: int = 3
    """Attempts after the first one, for transient failures."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each next one."""
    timeout: float = 60.0
    """Seconds a connection may stay silent."""
    max_bytes: int = 2 << 30
    """Largest file accepted (2 GiB); a larger one is refused before it fills the disk."""


@dataclass(frozen=True)
class Fetched:
    """A checkpoint available locally."""

    path: Path | None
    """None for an adapter that builds its network without weights."""
    sha256: str
    """The file's digest; for an adapter without weights, that of its module's source."""
    origin: str
    """'cache' (already there), 'download' (fetched now), 'local' (a local file) or
    'adapter' (no file)."""


def default_cache_dir() -> Path:
    """The user's cache folder for the gallery (XDG on Linux, Library/Caches on macOS,
    LOCALAPPDATA on Windows)."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gallery"


def resolve_cache_dir(option: str | Path | None = None) -> Path:
    """--cache-dir, else $GALLERY_CACHE, else `default_cache_dir()`."""
    chosen = option or os.environ.get("GALLERY_CACHE") or default_cache_dir()
    return Path(chosen).expanduser().resolve()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Cache:
    """Files addressed by their sha256 under `<root>/checkpoints/sha256/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.folder = self.root / "checkpoints" / "sha256"

    def path(self, sha256: str) -> Path:
        return self.folder / sha256

    def get(self, sha256: str) -> Path | None:
        """The cached file with this digest, verified; a corrupt one is removed."""
        path = self.path(sha256)
        if not path.is_file():
            return None
        if sha256_file(path) != sha256:
            log.warning("%s does not match its sha256 (corrupt cache entry); removing it", path)
            path.unlink(missing_ok=True)
            return None
        return path

    def add(self, source: str | Path, sha256: str | None = None) -> str:
        """Copy a local file into the cache (pre-seeding it); returns its sha256.

        With `sha256`, a file that does not match is refused."""
        source = Path(source)
        if not source.is_file():
            raise FetchError(f"{source}: no such file to add to the cache")
        actual = sha256_file(source)
        if sha256 and actual != sha256.lower():
            raise FetchError(f"{source}: sha256 is {actual}, expected {sha256}")
        if self.get(actual) is None:
            with self._temporary() as tmp:
                shutil.copyfile(source, tmp)
                os.replace(tmp, self.path(actual))
        return actual

    def _temporary(self) -> _TempFile:
        self.folder.mkdir(parents=True, exist_ok=True)
        return _TempFile(self.folder)


class _TempFile:
    """A temporary file name in `folder`, removed on exit unless it was renamed away."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=".partial-", dir=self.folder)
        os.close(fd)
        self.path = Path(name)
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


# --- fetching ----------------------------------------------------------------------------


def is_remote(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def fetch_checkpoint(source: str, sha256: str | None, cache: Cache, *,
                     root: Path = Path("."), policy: FetchPolicy = FetchPolicy(),
                     progress: Progress | None = None) -> Fetched:
    """Make the checkpoint `source` (a URL, file:// URL, or path relative to `root`)
    available locally, verified against `sha256` (required for http(s))."""
    if is_remote(source):
        if not sha256:
            raise FetchError(f"{source}: a remote checkpoint needs its sha256 in the manifest")
        cached = cache.get(sha256)
        if cached is not None:
            return Fetched(cached, sha256, "cache")
        return Fetched(download(source, sha256, cache, policy, progress), sha256, "download")
    from gallery.pipeline.manifest import local_checkpoint_path

    path = local_checkpoint_path(source, root)
    if not path.is_file():
        raise FetchError(f"{path}: checkpoint file not found")
    actual = sha256_file(path)
    if sha256 and actual != sha256:
        raise FetchError(f"{path}: sha256 is {actual} but the manifest says {sha256}; "
                         "fix the manifest's sha256 or use the right file")
    return Fetched(path, actual, "local")


class _Transient(Exception):
    """A failure worth retrying."""


def download(url: str, sha256: str, cache: Cache, policy: FetchPolicy = FetchPolicy(),
             progress: Progress | None = None) -> Path:
    """Download `url` into the cache, verified; retried with backoff on transient errors."""
    delay = policy.backoff
    for attempt in range(policy.retries + 1):
        try:
            return _download_once(url, sha256, cache, policy, progress)
        except _Transient as err:
            if attempt == policy.retries:
                raise FetchError(
                    f"{url}: download failed after {attempt + 1} attempts ({err}); check the "
                    "URL and the network, or pre-seed the cache with the file "
                    "(gallery build --seed-cache FILE)") from None
            log.warning("%s: %s; retrying in %.1f s (%d/%d)", url, err, delay, attempt + 1,
                        policy.retries)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _download_once(url: str, sha256: str, cache: Cache, policy: FetchPolicy,
                   progress: Progress | None) -> Path:
    request = urllib.request.Request(url, headers={"User-Agent": f"gallery/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=policy.timeout)
    except urllib.error.HTTPError as err:
        if err.code in RETRY_STATUS:
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise FetchError(f"{url}: HTTP {err.code} {err.reason}; check the checkpoint URL "
                         "in the manifest") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Transient(str(getattr(err, "reason", err))) from None
    with response, cache._temporary() as tmp:
        total = _content_length(response)
        if total is not None and total > policy.max_bytes:
            raise FetchError(f"{url}: the file is {total:,} bytes, more than the limit of "
                             f"{policy.max_bytes:,}; is this the right URL?")
        digest, size = _stream(response, tmp, url, total, policy, progress)
        if total is not None and size != total:
            raise _Transient(f"transfer interrupted after {size:,} of {total:,} bytes")
        if digest != sha256:
            raise FetchError(f"{url}: sha256 mismatch: the manifest says {sha256}, the "
                             f"downloaded file ({size:,} bytes) has {digest}; fix the manifest "
                             "or the URL (the file was not kept)")
        final = cache.path(sha256)
        os.replace(tmp, final)
        return final


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _stream(response: http.client.HTTPResponse, tmp: Path, url: str, total: int | None,
            policy: FetchPolicy, progress: Progress | None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > policy.max_bytes:
                    raise FetchError(f"{url}: more than {policy.max_bytes:,} bytes; refusing "
                                     "the rest (is this the right URL?)")
                digest.update(chunk)
                out.write(chunk)
                if progress:
                    progress(size, total)
    except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as err:
        raise _Transient(f"transfer interrupted after {size:,} bytes ({type(err).__name__})") \
            from None
    return digest.hexdigest(), size
