"""HTTP downloads that resume, retry and verify: the annotation archive and single images."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A download that cannot succeed; the message names the URL."""


def md5sum(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(url: str, path: Path, size: int | None, md5: str | None) -> str | None:
    """None if ``path`` has the expected size and checksum, else what is wrong."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size {actual} bytes, expected {size}"
    if md5 is not None and (digest := md5sum(path)) != md5:
        return f"md5 {digest}, expected {md5}"
    return None


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (HTTP Range from its current size)."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "vlprobe"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to fetch: the part is complete
            return
        raise
    with response:
        resumed = response.status == 206
        with open(part, "ab" if resumed else "wb") as handle:
            shutil.copyfileobj(response, handle, CHUNK_BYTES)
        expected = response.headers.get("Content-Length")
        written = part.stat().st_size - (offset if resumed else 0)
        if expected is not None and written < int(expected):
            raise http.client.IncompleteRead(b"", int(expected) - written)


def download(
    url: str,
    dest: str | os.PathLike,
    size: int | None = None,
    md5: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial file and verifying size and md5.

    A file already complete is not fetched again. Interrupted transfers and server errors
    (5xx) are retried with exponential backoff, continuing from the bytes already on disk
    (``dest`` + ``.part``); a client error (404, ...) fails at once. The file appears at
    ``dest`` only when complete and verified.
    """
    dest = Path(dest)
    if dest.exists() and _verify(url, dest, size, md5) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout)
            break
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == retries:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
            reason = f"HTTP {err.code}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            if attempt == retries:
                raise DownloadError(f"{url}: {err}") from err
            reason = str(err) or type(err).__name__
        delay = backoff * 2**attempt
        log.warning(
            "%s: %s; retrying in %.1f s (attempt %d/%d)", url, reason, delay, attempt + 1, retries
        )
        time.sleep(delay)
    problem = _verify(url, part, size, md5)
    if problem is not None:
        part.unlink()
        raise DownloadError(f"{url}: downloaded file has {problem}")
    os.replace(part, dest)
    return dest
