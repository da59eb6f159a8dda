"""download / download_many against a local HTTP server that can cut, refuse, stall and ignore Range."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from marn.data import download as download_module
from marn.data.download import DownloadError, download, download_many, part_path

REVIEWS_HEAD = "amazon2014-digital-music-head/reviews_Digital_Music_5.head6908.json.gz"
FAST = {"backoff": 0.01, "timeout": 2, "progress": False}


@dataclass
class Route:
    """How the server answers one path."""

    data: bytes
    fail_first: int = 0  # the first N requests get HTTP 500
    cut_first: int = 0  # the first N bodies stop after `cut_bytes` bytes
    cut_bytes: int = 0
    ignore_range: bool = False
    delay: float = 0.0  # seconds before answering


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that time out leave broken pipes behind; they are expected here


class _Handler(BaseHTTPRequestHandler):
    server: "LocalServer"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests.append((self.path, dict(self.headers)))
            seen = sum(1 for path, _ in server.requests if path == self.path)
        route = server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        if route.delay:
            time.sleep(route.delay)
        if seen <= route.fail_first:
            self.send_error(500)
            return
        data, start = route.data, 0
        range_header = self.headers.get("Range")
        if range_header and not route.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: route.cut_bytes] if seen <= route.cut_first else body)


class LocalServer(_QuietServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict]] = []

    def serve(self, path: str, data: bytes, **behaviour) -> str:
        self.routes[path] = Route(data, **behaviour)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"

    def requests_for(self, path: str) -> list[dict]:
        return [headers for p, headers in self.requests if p == path]


@pytest.fixture
def server():
    local = LocalServer()
    thread = threading.Thread(target=local.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield local
    local.shutdown()
    local.server_close()


@pytest.fixture(scope="module")
def reviews_bytes(shared_data: Path) -> bytes:
    return (shared_data / REVIEWS_HEAD).read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_full_download_with_size_and_checksum(server, reviews_bytes, tmp_path):
    url = server.serve("/reviews.json.gz", reviews_bytes)
    dest = tmp_path / "out" / "reviews.json.gz"
    got = download(url, dest, expected_size=len(reviews_bytes), sha256=sha(reviews_bytes), **FAST)
    assert got == dest
    assert dest.read_bytes() == reviews_bytes
    assert not part_path(dest).exists()
    assert "Range" not in server.requests_for("/reviews.json.gz")[0]


def test_cut_transfer_resumes_with_range(server, reviews_bytes, tmp_path):
    half = len(reviews_bytes) // 2
    url = server.serve("/cut.gz", reviews_bytes, cut_first=1, cut_bytes=half)
    dest = tmp_path / "cut.gz"
    download(url, dest, sha256=sha(reviews_bytes), retries=2, **FAST)
    first, second = server.requests_for("/cut.gz")
    assert "Range" not in first
    assert second["Range"] == f"bytes={half}-"
    assert dest.read_bytes() == reviews_bytes


def test_partial_file_from_an_earlier_run_is_resumed(server, reviews_bytes, tmp_path):
    url = server.serve("/resume.gz", reviews_bytes)
    dest = tmp_path / "resume.gz"
    part_path(dest).write_bytes(reviews_bytes[:1000])
    download(url, dest, expected_size=len(reviews_bytes), **FAST)
    assert server.requests_for("/resume.gz")[0]["Range"] == "bytes=1000-"
    assert dest.read_bytes() == reviews_bytes


def test_server_ignoring_range_restarts_from_zero(server, reviews_bytes, tmp_path):
    url = server.serve("/norange.gz", reviews_bytes, ignore_range=True)
    dest = tmp_path / "norange.gz"
    stale = b"stale bytes that must not stay in front"
    part_path(dest).write_bytes(stale)
    download(url, dest, sha256=sha(reviews_bytes), **FAST)
    assert server.requests_for("/norange.gz")[0]["Range"] == f"bytes={len(stale)}-"
    assert dest.read_bytes() == reviews_bytes


def test_complete_part_answered_416_is_kept(server, reviews_bytes, tmp_path):
    url = server.serve("/done.gz", reviews_bytes)
    dest = tmp_path / "done.gz"
    part_path(dest).write_bytes(reviews_bytes)
    download(url, dest, sha256=sha(reviews_bytes), **FAST)
    assert len(server.requests_for("/done.gz")) == 1
    assert dest.read_bytes() == reviews_bytes


def test_stale_part_of_another_version_is_redownloaded(server, reviews_bytes, tmp_path):
    url = server.serve("/changed.gz", reviews_bytes)
    dest = tmp_path / "changed.gz"
    part_path(dest).write_bytes(b"x" * 500)
    download(url, dest, sha256=sha(reviews_bytes), retries=1, **FAST)
    ranges = [headers.get("Range") for headers in server.requests_for("/changed.gz")]
    assert ranges == ["bytes=500-", None]
    assert dest.read_bytes() == reviews_bytes


def test_404_fails_at_once_naming_url_and_status(server, tmp_path):
    url = server.url("/missing.gz")
    with pytest.raises(DownloadError, match="404") as caught:
        download(url, tmp_path / "missing.gz", retries=3, **FAST)
    assert caught.value.reason == "not_found" and caught.value.status == 404
    assert url in str(caught.value)
    assert len(server.requests_for("/missing.gz")) == 1
    assert not (tmp_path / "missing.gz").exists()


def test_flaky_server_is_retried_with_exponential_backoff(server, reviews_bytes, tmp_path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(download_module.time, "sleep", waits.append)
    url = server.serve("/flaky.gz", reviews_bytes, fail_first=3)
    download(url, tmp_path / "flaky.gz", retries=3, backoff=0.5, timeout=2, progress=False)
    assert len(server.requests_for("/flaky.gz")) == 4
    assert waits == [0.5, 1.0, 2.0]
    assert (tmp_path / "flaky.gz").read_bytes() == reviews_bytes


def test_retries_run_out_on_a_broken_server(server, reviews_bytes, tmp_path):
    url = server.serve("/broken.gz", reviews_bytes, fail_first=100)
    with pytest.raises(DownloadError, match="3 attempts.*HTTP 500") as caught:
        download(url, tmp_path / "broken.gz", retries=2, **FAST)
    assert caught.value.reason == "http_error" and caught.value.status == 500
    assert len(server.requests_for("/broken.gz")) == 3


def test_wrong_checksum_leaves_no_file(server, reviews_bytes, tmp_path):
    url = server.serve("/bad.gz", reviews_bytes)
    dest = tmp_path / "bad.gz"
    with pytest.raises(DownloadError, match="sha256") as caught:
        download(url, dest, sha256="0" * 64, **FAST)
    assert caught.value.reason == "checksum_mismatch"
    assert not dest.exists() and not part_path(dest).exists()
    assert len(server.requests_for("/bad.gz")) == 1


def test_wrong_expected_size_is_an_error(server, reviews_bytes, tmp_path):
    url = server.serve("/size.gz", reviews_bytes)
    with pytest.raises(DownloadError, match="expected 10") as caught:
        download(url, tmp_path / "size.gz", expected_size=10, **FAST)
    assert caught.value.reason == "size_mismatch"


def test_complete_dest_is_not_downloaded_again(server, reviews_bytes, tmp_path):
    url = server.serve("/again.gz", reviews_bytes)
    dest = tmp_path / "again.gz"
    dest.write_bytes(reviews_bytes)
    download(url, dest, sha256=sha(reviews_bytes), **FAST)
    assert server.requests == []


def test_dest_with_wrong_checksum_is_replaced(server, reviews_bytes, tmp_path):
    url = server.serve("/replace.gz", reviews_bytes)
    dest = tmp_path / "replace.gz"
    dest.write_bytes(b"old")
    download(url, dest, sha256=sha(reviews_bytes), **FAST)
    assert dest.read_bytes() == reviews_bytes


def test_stalled_server_times_out(server, tmp_path):
    url = server.serve("/slow.gz", b"late", delay=1.0)
    with pytest.raises(DownloadError, match="timed out") as caught:
        download(url, tmp_path / "slow.gz", retries=0, backoff=0.01, timeout=0.2, progress=False)
    assert caught.value.reason == "timeout"


def test_file_url_and_plain_path(shared_data, reviews_bytes, tmp_path):
    source = shared_data / REVIEWS_HEAD
    from_url = download(source.as_uri(), tmp_path / "a" / source.name, sha256=sha(reviews_bytes), progress=False)
    from_path = download(str(source), tmp_path / "b" / source.name, expected_size=len(reviews_bytes), progress=False)
    assert from_url.read_bytes() == reviews_bytes
    assert from_path.read_bytes() == reviews_bytes


def test_missing_local_file_and_unknown_scheme(tmp_path):
    with pytest.raises(DownloadError, match="no such file") as caught:
        download(str(tmp_path / "nope.gz"), tmp_path / "out.gz", progress=False)
    assert caught.value.reason == "not_found"
    with pytest.raises(DownloadError, match="unsupported scheme 'ftp'"):
        download("ftp://example.org/x.gz", tmp_path / "x.gz", progress=False)


def test_download_many_reports_a_reason_per_item(server, reviews_bytes, tmp_path):
    good = server.serve("/good.gz", reviews_bytes)
    slow = server.serve("/slow.jpg", b"late", delay=1.0)
    missing = server.url("/missing.jpg")
    pairs = [(good, tmp_path / "good.gz"), (missing, tmp_path / "missing.jpg"), (slow, tmp_path / "slow.jpg"),
             (good, tmp_path / "good.gz")]
    results = download_many(pairs, workers=3, retries=0, timeout=0.3, progress=False)
    assert [r.url for r in results] == [good, missing, slow, good]
    assert [r.error for r in results] == [None, "not_found", "timeout", None]
    assert len(server.requests_for("/good.gz")) == 1
    assert results[0].ok and (tmp_path / "good.gz").read_bytes() == reviews_bytes
    assert "404" in results[1].message
    assert not (tmp_path / "missing.jpg").exists() and not (tmp_path / "slow.jpg").exists()


def test_body_cut_every_time_gives_up_as_truncated(server, reviews_bytes, tmp_path):
    url = server.serve("/cut_always.gz", reviews_bytes, cut_first=100, cut_bytes=0)
    with pytest.raises(DownloadError, match=f"closed after 0 of {len(reviews_bytes)} bytes") as caught:
        download(url, tmp_path / "cut_always.gz", retries=1, **FAST)
    assert caught.value.reason == "truncated"
    assert len(server.requests_for("/cut_always.gz")) == 2
