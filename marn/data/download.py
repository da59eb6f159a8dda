"""Resumable, checksummed downloads over HTTP(S), file:// URLs and plain local paths (standard library only).

A transfer streams into `<dest>.part`, resumes that file with an HTTP Range request after a dropped
connection, and lands on `dest` by an atomic rename only once its size and checksum are right, so a
`dest` that exists is always a complete file.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from marn.files import file_sha256

log = logging.getLogger(__name__)

USER_AGENT = "marn/0.1 (research data download; python-urllib)"
# Statuses worth asking again: the server is busy, throttling or broken for a moment.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A download that failed for good. `reason` is a short machine-readable word:
    not_found, forbidden, http_error, timeout, connection_error, truncated, size_mismatch,
    checksum_mismatch or bad_url; `status` is the HTTP status where there was one."""

    def __init__(self, url: str, reason: str, message: str, status: int | None = None):
        super().__init__(f"{url}: {message}")
        self.url = url
        self.reason = reason
        self.status = status


class _TransientError(Exception):
    """A failure that another attempt may not meet (timeouts, resets, 5xx, cut-off bodies)."""

    def __init__(self, reason: str, message: str, status: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class DownloadResult:
    """One item of `download_many`: `error` is None on success, else the DownloadError reason."""

    url: str
    dest: Path
    error: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def part_path(dest: Path) -> Path:
    """Where an unfinished transfer to `dest` is kept."""
    return dest.with_suffix(dest.suffix + ".part")


def download(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60,
    progress: bool = True,
    chunk_size: int = 1 << 20,
) -> Path:
    """Fetch `url` (http(s)://, file:// or a local path) to `dest` and return `dest`.

    An existing `dest` is kept when it passes the given checks (size, sha256); for a remote URL with
    no checks given it is kept as is, since only complete transfers are ever renamed onto `dest`.
    A local source is copied again unless its sha256 is given and `dest` already matches it.
    HTTP failures that may pass (timeouts, resets, 5xx, bodies shorter than their Content-Length) are
    retried `retries` times, waiting `backoff * 2**k` seconds, each retry resuming the `.part` file;
    404/403 and other client errors fail at once. Raises `DownloadError`.
    """
    dest = Path(dest)
    local_source = _local_source(url)
    remote = local_source is None
    if dest.is_file() and (remote or sha256 is not None) and _matches(dest, expected_size, sha256):
        log.info("%s already complete, not downloading %s again", dest, url)
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    if remote:
        _download_http(url, part, expected_size, sha256, retries, backoff, timeout, progress, chunk_size)
    else:
        _copy_local(url, local_source, part, progress, chunk_size)
        _verify(url, part, expected_size, sha256)
    os.replace(part, dest)
    return dest


def download_many(
    urls_and_dests: Iterable[tuple[str, Path]],
    workers: int = 8,
    *,
    progress: bool = True,
    **download_options,
) -> list[DownloadResult]:
    """Download many (url, dest) pairs on a bounded thread pool; never raises for one bad item.

    Returns one `DownloadResult` per pair, in input order; a pair given twice is fetched once.
    Distinct pairs must name distinct dests. `download_options` go to `download`.
    """
    pairs = [(url, Path(dest)) for url, dest in urls_and_dests]
    unique_pairs = list(dict.fromkeys(pairs))

    def download_one(pair: tuple[str, Path]) -> DownloadResult:
        url, dest = pair
        try:
            download(url, dest, progress=False, **download_options)
        except DownloadError as err:
            return DownloadResult(url, dest, err.reason, str(err))
        return DownloadResult(url, dest)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(download_one, unique_pairs)
        done = list(tqdm(results, total=len(unique_pairs), desc="downloads", unit="file", disable=not progress))
    by_pair = dict(zip(unique_pairs, done))
    return [by_pair[pair] for pair in pairs]


def _local_source(url: str) -> Path | None:
    """The file a file:// URL or plain path names; None for http(s) URLs."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(url, "bad_url", f"file:// URL with a remote host {parsed.netloc!r}")
        return Path(urllib.request.url2pathname(parsed.path))
    if scheme == "":
        return Path(url)
    raise DownloadError(url, "bad_url", f"unsupported scheme {scheme!r} (use http://, https://, file:// or a path)")


def _matches(path: Path, expected_size: int | None, sha256: str | None) -> bool:
    if expected_size is not None and path.stat().st_size != expected_size:
        return False
    return sha256 is None or file_sha256(path) == sha256.lower()


def _verify(url: str, part: Path, expected_size: int | None, sha256: str | None) -> None:
    """Check a finished `.part`; a bad one is deleted so the next try starts clean."""
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DownloadError(url, "size_mismatch", f"got {size} bytes, expected {expected_size}")
    if sha256 is not None:
        actual = file_sha256(part)
        if actual != sha256.lower():
            part.unlink()
            raise DownloadError(url, "checksum_mismatch", f"sha256 {actual}, expected {sha256.lower()}")


def _copy_local(url: str, source: Path, part: Path, progress: bool, chunk_size: int) -> None:
    try:
        src = open(source, "rb")
    except FileNotFoundError as err:
        raise DownloadError(url, "not_found", f"no such file {source}") from err
    except IsADirectoryError as err:
        raise DownloadError(url, "bad_url", f"{source} is a folder, not a file") from err
    except PermissionError as err:
        raise DownloadError(url, "forbidden", f"cannot read {source}: {err.strerror}") from err
    with src:
        _stream(src, part, "wb", 0, os.fstat(src.fileno()).st_size, progress, chunk_size)


def _download_http(
    url: str,
    part: Path,
    expected_size: int | None,
    sha256: str | None,
    retries: int,
    backoff: float,
    timeout: float,
    progress: bool,
    chunk_size: int,
) -> None:
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        resumed_from = part.stat().st_size if part.exists() else 0
        try:
            _http_attempt(url, part, expected_size, timeout, progress, chunk_size)
            try:
                _verify(url, part, expected_size, sha256)
            except DownloadError as err:
                # A kept .part may hold the start of an older version of the file: try once from byte 0.
                if resumed_from == 0 or err.reason not in ("size_mismatch", "checksum_mismatch"):
                    raise
                raise _TransientError(err.reason, f"{err} after resuming at byte {resumed_from}") from err
            return
        except _TransientError as err:
            if attempt == attempts:
                raise DownloadError(url, err.reason, f"gave up after {attempts} attempts: {err}", err.status) from err
            delay = backoff * 2 ** (attempt - 1)
            log.warning("%s: %s; retry %d/%d in %.1fs", url, err, attempt, retries, delay)
            time.sleep(delay)


def _http_attempt(
    url: str, part: Path, expected_size: int | None, timeout: float, progress: bool, chunk_size: int
) -> None:
    """One request; on return `part` holds the whole body as far as the server's headers tell."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    if expected_size is not None and 0 < offset == expected_size:
        return
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        with err:
            _raise_for_status(url, err, part, offset)
        return  # 416 on a .part that already holds the whole file
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _transient(err) from err

    with response:
        if response.status == 206:
            start, _, _ = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _TransientError("http_error", f"asked for byte {offset}, server sent from {start}")
            mode = "ab"
        else:
            if offset:
                log.info("%s: server ignored the Range request, restarting from byte 0", url)
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(url, "size_mismatch", f"server announces {total} bytes, expected {expected_size}")
        try:
            received = _stream(response, part, mode, offset, total, progress, chunk_size)
        except (TimeoutError, ConnectionError, ssl.SSLError, http.client.HTTPException) as err:
            raise _transient(err) from err
    if total is not None and offset + received != total:
        raise _TransientError("truncated", f"connection closed after {offset + received} of {total} bytes")


def _raise_for_status(url: str, err: urllib.error.HTTPError, part: Path, offset: int) -> None:
    """Turn an HTTP error status into the right exception; returns only for a 416 on a complete .part."""
    status = err.code
    if status == 416 and offset:
        _, _, total = _parse_content_range(err.headers.get("Content-Range"))
        if total == offset:
            return
        part.unlink()
        raise _TransientError("http_error", f"server refused to resume at byte {offset} (HTTP 416)", status)
    if status in (404, 410):
        raise DownloadError(url, "not_found", f"HTTP {status} {err.reason}", status)
    if status in (401, 403):
        raise DownloadError(url, "forbidden", f"HTTP {status} {err.reason}", status)
    if status in RETRYABLE_STATUSES:
        raise _TransientError("http_error", f"HTTP {status} {err.reason}", status)
    raise DownloadError(url, "http_error", f"HTTP {status} {err.reason}", status)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """(first byte, last byte, total) of a Content-Range header; None for what it leaves out."""
    match = _CONTENT_RANGE.match(value or "")
    if match is None:
        return None, None, None
    first, last, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(last) if last is not None else None,
        int(total) if total not in (None, "*") else None,
    )


def _transient(err: BaseException) -> _TransientError:
    cause = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(cause, TimeoutError):
        return _TransientError("timeout", "timed out")
    return _TransientError("connection_error", f"{type(cause).__name__}: {cause}")


def _stream(
    source: BinaryIO,
    part: Path,
    mode: str,
    offset: int,
    total: int | None,
    progress: bool,
    chunk_size: int,
) -> int:
    """Copy `source` into `part` (mode "wb" or "ab"); returns the bytes written."""
    written = 0
    with open(part, mode) as out, tqdm(
        total=total, initial=offset, desc=part.name.removesuffix(".part"), unit="B", unit_scale=True, unit_divisor=1024,
        disable=not progress, leave=False,
    ) as bar:
        while chunk := source.read(chunk_size):
            out.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    return written
