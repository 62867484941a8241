"""Fetching against a real HTTP server on 127.0.0.1: cache, sha256, retries, atomic files."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gallery.models.fetch import (
    Cache,
    FetchError,
    FetchPolicy,
    default_cache_dir,
    fetch_checkpoint,
    resolve_cache_dir,
)

DATA = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()
FAST = FetchPolicy(retries=2, backoff=0.01, timeout=5)


class Server:
    """A real HTTP server in a thread; `script[path]` lists what each request gets, in turn:
    'ok', 'cut' (Content-Length promised, half sent, connection closed), or an HTTP status."""

    def __init__(self) -> None:
        self.script: dict[str, list[str | int]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                plan = outer.script.get(self.path, [404])
                action = plan.pop(0) if len(plan) > 1 else plan[0]
                if isinstance(action, int):
                    self.send_error(action)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(DATA)))
                self.end_headers()
                self.wfile.write(DATA if action == "ok" else DATA[: len(DATA) // 2])
                if action == "cut":
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def leftovers(cache: Cache) -> list[str]:
    return sorted(p.name for p in cache.folder.glob("*")) if cache.folder.exists() else []


def test_download_verifies_and_caches_by_sha256(server, cache):
    server.script["/m.jd"] = ["ok"]
    got = fetch_checkpoint(f"{server.url}/m.jd", SHA, cache, policy=FAST)
    assert got.origin == "download" and got.sha256 == SHA
    assert got.path == cache.path(SHA) and got.path.read_bytes() == DATA
    again = fetch_checkpoint(f"{server.url}/m.jd", SHA, cache, policy=FAST)
    assert again.origin == "cache" and server.requests == ["/m.jd"]
    assert leftovers(cache) == [SHA]


def test_cache_works_offline(server, cache):
    server.script["/m.jd"] = ["ok"]
    fetch_checkpoint(f"{server.url}/m.jd", SHA, cache, policy=FAST)
    server.close()
    got = fetch_checkpoint(f"{server.url}/m.jd", SHA, cache, policy=FAST)
    assert got.origin == "cache"


def test_pre_seeded_cache_needs_no_server(tmp_path, cache):
    copy = tmp_path / "copy.jd"
    copy.write_bytes(DATA)
    assert cache.add(copy) == SHA
    got = fetch_checkpoint("https://unreachable.invalid/m.jd", SHA, cache, policy=FAST)
    assert got.origin == "cache" and got.path.read_bytes() == DATA
    with pytest.raises(FetchError, match="expected"):
        cache.add(copy, sha256="0" * 64)


def test_404_fails_at_once_with_the_url(server, cache):
    with pytest.raises(FetchError) as caught:
        fetch_checkpoint(f"{server.url}/missing.jd", SHA, cache, policy=FAST)
    assert "HTTP 404" in str(caught.value) and f"{server.url}/missing.jd" in str(caught.value)
    assert caught.value.exit_code == 1
    assert server.requests == ["/missing.jd"]  # not retried
    assert leftovers(cache) == []


def test_hash_mismatch_keeps_nothing(server, cache):
    server.script["/m.jd"] = ["ok"]
    wrong = "f" * 64
    with pytest.raises(FetchError) as caught:
        fetch_checkpoint(f"{server.url}/m.jd", wrong, cache, policy=FAST)
    assert "sha256 mismatch" in str(caught.value) and SHA in str(caught.value)
    assert server.requests == ["/m.jd"]
    assert leftovers(cache) == []


def test_interrupted_transfer_is_retried(server, cache):
    server.script["/m.jd"] = ["cut", "ok"]
    got = fetch_checkpoint(f"{server.url}/m.jd", SHA, cache, policy=FAST)
    assert got.path.read_bytes() == DATA and server.requests == ["/m.jd", "/m.jd"]
    assert leftovers(cache) == [SHA]


def test_server_errors_are_retried_with_backoff(server, cache, caplog):
    server.script["/m.jd"] = [503, 500, "ok"]
    got = fetch_checkpoint(f"{server.url}/m.jd", SHA, cache, policy=FAST)
    assert got.origin == "download" and len(server.requests) == 3
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


def test_retries_run_out(server, cache):
    server.script["/m.jd"] = ["cut"]
    with pytest.raises(FetchError) as caught:
        fetch_checkpoint(f"{server.url}/m.jd", SHA, cache, policy=FAST)
    assert "after 3 attempts" in str(caught.value) and "interrupted" in str(caught.value)
    assert "--seed-cache" in str(caught.value)
    assert len(server.requests) == 3 and leftovers(cache) == []


def test_size_limit(server, cache):
    server.script["/m.jd"] = ["ok"]
    small = FetchPolicy(retries=0, max_bytes=1000)
    with pytest.raises(FetchError, match="limit"):
        fetch_checkpoint(f"{server.url}/m.jd", SHA, cache, policy=small)
    assert leftovers(cache) == []


def test_connection_refused_is_retried_then_fails(cache):
    with pytest.raises(FetchError, match="after 2 attempts"):
        fetch_checkpoint("http://127.0.0.1:9/m.jd", SHA, cache,
                         policy=FetchPolicy(retries=1, backoff=0.01, timeout=2))


def test_corrupt_cache_entry_is_replaced(server, cache):
    cache.folder.mkdir(parents=True)
    cache.path(SHA).write_bytes(b"not it")
    server.script["/m.jd"] = ["ok"]
    got = fetch_checkpoint(f"{server.url}/m.jd", SHA, cache, policy=FAST)
    assert got.origin == "download" and got.path.read_bytes() == DATA


def test_local_files_relative_and_file_urls(tmp_path, cache):
    (tmp_path / "m.jd").write_bytes(DATA)
    got = fetch_checkpoint("m.jd", None, cache, root=tmp_path)
    assert (got.origin, got.sha256, got.path) == ("local", SHA, tmp_path / "m.jd")
    assert fetch_checkpoint(f"file://{tmp_path / 'm.jd'}", SHA, cache).sha256 == SHA
    with pytest.raises(FetchError, match="manifest says"):
        fetch_checkpoint("m.jd", "0" * 64, cache, root=tmp_path)
    with pytest.raises(FetchError, match="not found"):
        fetch_checkpoint("gone.jd", None, cache, root=tmp_path)
    assert not cache.folder.exists()  # local files are used in place


def test_remote_needs_sha256(cache):
    with pytest.raises(FetchError, match="needs its sha256"):
        fetch_checkpoint("https://example.org/m.jd", None, cache)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir(str(tmp_path / "opt")) == tmp_path / "opt"
    assert resolve_cache_dir(None) == tmp_path / "env"
    monkeypatch.delenv("GALLERY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir(None) == default_cache_dir().resolve()
