"""Parallel, resumable, verified downloads.

Each file is written to ``<name>.part``; an interrupted transfer is resumed with
an HTTP ``Range`` request; the result is accepted only when its size matches
(``Content-Length``/``Content-Range`` and any known size) and its checksum matches
when one is known (md5, sha1, sha256, sha512 or the POSIX ``cksum`` CRC), a tar
archive without a known checksum is readable to its end, and only then is it
renamed atomically to its final name. Connection
errors, timeouts, HTTP 429 (``Retry-After`` honoured) and 5xx are retried with
exponential backoff and jitter. A :class:`~landcover.fetch.manifest.Manifest`
records every verified file so that a rerun skips finished scenes.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import random
import re
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import requests

from ..errors import FetchError
from .manifest import Manifest, sha256_file

__all__ = [
    "RetryPolicy",
    "Checksum",
    "DownloadTask",
    "DownloadError",
    "FileResult",
    "DownloadReport",
    "archive_problem",
    "download_file",
    "download_all",
    "new_session",
    "tasks_for_records",
    "safe_name",
]

log = logging.getLogger(__name__)

Algorithm = Literal["md5", "sha1", "sha256", "sha512", "cksum"]
_DIGEST_SIZE: dict[str, int] = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64, "cksum": 4}
# multicodec codes (https://github.com/multiformats/multicodec): used by STAC file:checksum.
_MULTIHASH: dict[int, Algorithm] = {0x11: "sha1", 0x12: "sha256", 0x13: "sha512", 0xD5: "md5"}
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(FetchError):
    """One file could not be downloaded and verified (the message names the URL and why)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try, and how long to wait.

    Parameters
    ----------
    attempts
        Total tries per file (or per API request), >= 1.
    backoff
        Delay before the 2nd try, seconds; doubles each try (exponential backoff).
    backoff_max
        Upper bound of one delay, seconds.
    jitter
        Random fraction added to or removed from each delay (0 disables; 0.5 = +-50 %).
    connect_timeout, read_timeout
        ``requests`` timeouts, seconds (read = the longest silence between bytes).
    max_retry_after
        Longest ``Retry-After`` the client is willing to honour, seconds.
    """

    attempts: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0
    jitter: float = 0.5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.backoff < 0 or self.backoff_max < 0 or self.max_retry_after < 0:
            raise ValueError("backoff, backoff_max and max_retry_after must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be > 0")

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` for ``requests``."""
        return (self.connect_timeout, self.read_timeout)

    def delay(
        self, attempt: int, *, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based).

        A server's ``Retry-After`` wins over the backoff (capped at ``max_retry_after``).
        """
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        base = min(self.backoff * 2 ** (attempt - 1), self.backoff_max)
        r: float = (rng or random.Random()).uniform(-self.jitter, self.jitter)
        return max(0.0, float(base * (1 + r)))


@dataclass(frozen=True)
class Checksum:
    """An expected digest.

    Parameters
    ----------
    algorithm
        ``"md5"``, ``"sha1"``, ``"sha256"``, ``"sha512"`` or ``"cksum"`` (the POSIX
        ``cksum`` CRC, 32 bits; see :meth:`from_cksum`).
    hexdigest
        Lower-case hex digest.
    """

    algorithm: Algorithm
    hexdigest: str

    def __post_init__(self) -> None:
        if self.algorithm not in _DIGEST_SIZE:
            raise ValueError(f"unsupported checksum algorithm {self.algorithm!r}")
        hexd = self.hexdigest.lower()
        if len(hexd) != 2 * _DIGEST_SIZE[self.algorithm] or any(c not in "0123456789abcdef" for c in hexd):
            raise ValueError(f"{self.algorithm} digest must be {2 * _DIGEST_SIZE[self.algorithm]} hex digits")
        object.__setattr__(self, "hexdigest", hexd)

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """Parse ``"sha256:<hex>"``, a STAC ``file:checksum`` multihash, or a bare md5/sha256/sha512 hex.

        Raises
        ------
        ValueError
            When the text is none of these.
        """
        t = text.strip()
        if ":" in t:
            algo, _, hexd = t.partition(":")
            algo = algo.lower().replace("-", "")
            algo = {"sha2256": "sha256", "sha2512": "sha512"}.get(algo, algo)
            return cls(algo, hexd)  # type: ignore[arg-type]
        try:
            raw = bytes.fromhex(t)
        except ValueError:
            raise ValueError(f"checksum {text!r} is not hex") from None
        code, i = _read_varint(raw, 0)
        if code in _MULTIHASH and i < len(raw):
            length, j = _read_varint(raw, i)
            algo = _MULTIHASH[code]
            if length == _DIGEST_SIZE[algo] and len(raw) - j == length:
                return cls(algo, raw[j:].hex())
        by_len = {16: "md5", 32: "sha256", 64: "sha512"}
        if len(raw) in by_len:
            return cls(by_len[len(raw)], t)  # type: ignore[arg-type]
        raise ValueError(f"checksum {text!r} is neither a multihash nor an md5/sha256/sha512 digest")

    @classmethod
    def from_cksum(cls, value: int | str) -> Checksum:
        """The POSIX ``cksum`` CRC as printed by ``cksum`` (decimal; ``"CRC SIZE [NAME]"`` accepted).

        Raises
        ------
        ValueError
            When the text does not start with a 32-bit decimal number.
        """
        first = str(value).split()[0] if str(value).split() else ""
        if not first.isdigit() or int(first) >= 1 << 32:
            raise ValueError(f"cksum {value!r} is not a 32-bit decimal CRC")
        return cls("cksum", f"{int(first):08x}")

    def new(self) -> Any:
        """A fresh hash object (``update``/``hexdigest``) for this algorithm."""
        if self.algorithm == "cksum":
            return _PosixCksum()
        return hashlib.new(self.algorithm)

    def multihash(self) -> str:
        """Return the digest as a multihash hex string (the STAC ``file:checksum`` form)."""
        if self.algorithm == "cksum":
            raise ValueError("a cksum CRC has no multihash form")
        code = {v: k for k, v in _MULTIHASH.items()}[self.algorithm]
        return (_varint(code) + _varint(_DIGEST_SIZE[self.algorithm])).hex() + self.hexdigest

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


class _PosixCksum:
    """The CRC of POSIX ``cksum`` (polynomial 0x04C11DB7, MSB first, length appended, inverted).

    Computed with zlib's (reflected) CRC-32 on bit-reversed bytes, which is the same
    polynomial read the other way round: C speed instead of a Python loop per byte.
    """

    def __init__(self) -> None:
        self._value = 0xFFFFFFFF  # zlib's running value for a register starting at 0
        self._length = 0

    def update(self, data: bytes) -> None:
        self._value = zlib.crc32(bytes(data).translate(_BIT_REVERSED), self._value)
        self._length += len(data)

    def hexdigest(self) -> str:
        n, tail = self._length, bytearray()
        while n:
            tail.append(n & 0xFF)
            n >>= 8
        reflected = ~zlib.crc32(bytes(tail).translate(_BIT_REVERSED), self._value) & 0xFFFFFFFF
        crc = ~int(f"{reflected:032b}"[::-1], 2) & 0xFFFFFFFF
        return f"{crc:08x}"


def _read_varint(raw: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while i < len(raw):
        b = raw[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
    return -1, i


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


@dataclass(frozen=True)
class DownloadTask:
    """One file to fetch.

    Parameters
    ----------
    url
        ``https://``/``http://`` URL, or ``s3://bucket/key`` (requester pays; needs boto3).
    dest
        Destination path, relative to the output directory (or absolute).
    scene_id
        The scene (product id) the file belongs to; scenes complete as a whole.
    size
        Exact size in bytes, if known (checked in addition to ``Content-Length``).
    checksum
        Expected digest, if known.
    archive
        The file is a tar archive (``.tar``, ``.tar.gz``): without a ``checksum`` it is
        accepted only when every member can be read to the end of the archive (an HTML
        error page or a truncated bundle is refused and fetched again).
    """

    url: str
    dest: Path
    scene_id: str
    size: int | None = None
    checksum: Checksum | None = None
    archive: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dest", Path(self.dest))
        if not self.url.startswith(("http://", "https://", "s3://")):
            raise ValueError(f"unsupported URL scheme: {self.url!r} (use https:// or s3://)")
        if self.size is not None and self.size < 0:
            raise ValueError("size must be >= 0")
        if ".." in self.dest.parts:
            raise ValueError(f"destination {self.dest} must not contain '..'")


@dataclass(frozen=True)
class FileResult:
    """A verified file on disk."""

    path: Path
    size: int
    sha256: str
    attempts: int
    resumed: bool


@dataclass
class DownloadReport:
    """Outcome of :func:`download_all`, per scene."""

    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no scene failed."""
        return not self.failed


def new_session(*, pool_size: int = 8) -> requests.Session:
    """A ``requests`` session with a User-Agent and a connection pool of ``pool_size``."""
    from .._version import __version__

    s = requests.Session()
    s.headers["User-Agent"] = f"landcover/{__version__} (+python-requests)"
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


class _Retry(Exception):
    """Internal: a retryable failure (optionally with a server-requested delay)."""

    def __init__(self, reason: str, retry_after: float | None = None, *, discard: bool = False) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.discard = discard


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` -> (start, total); ``bytes */TOTAL`` -> (None, total)."""
    if not value or not value.startswith("bytes"):
        return None, None
    spec = value[5:].strip()
    rng, _, total = spec.partition("/")
    tot = int(total) if total.strip().isdigit() else None
    start = int(rng.split("-", 1)[0]) if rng and rng[0].isdigit() else None
    return start, tot


@dataclass
class _Stream:
    status: int
    content_length: int | None
    content_range: str | None
    retry_after: str | None
    chunks: Iterator[bytes]


def _open_http(
    session: requests.Session, url: str, offset: int, retry: RetryPolicy, chunk_size: int
) -> AbstractContextManager[_Stream]:
    from contextlib import contextmanager

    @contextmanager
    def cm() -> Iterator[_Stream]:
        headers = {"Range": f"bytes={offset}-", "Accept-Encoding": "identity"} if offset else {}
        headers.setdefault("Accept-Encoding", "identity")
        with session.get(url, headers=headers, stream=True, timeout=retry.timeout) as r:
            cl = r.headers.get("Content-Length")
            yield _Stream(
                status=r.status_code,
                content_length=int(cl) if cl and cl.isdigit() else None,
                content_range=r.headers.get("Content-Range"),
                retry_after=r.headers.get("Retry-After"),
                chunks=r.iter_content(chunk_size),
            )

    return cm()


def _open_s3(url: str, offset: int, retry: RetryPolicy, chunk_size: int) -> AbstractContextManager[_Stream]:
    """Stream an ``s3://`` object with boto3 (requester pays)."""
    from contextlib import contextmanager

    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise DownloadError(
            f"{url}: s3:// downloads need boto3, which is not installed (pip install boto3) plus AWS "
            "credentials; or download the asset's https:// href instead"
        ) from None
    bucket, _, key = url[5:].partition("/")

    @contextmanager
    def cm() -> Iterator[_Stream]:
        cfg = botocore.config.Config(connect_timeout=retry.connect_timeout, read_timeout=retry.read_timeout)
        client = boto3.client("s3", config=cfg)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "RequestPayer": "requester"}
        if offset:
            kwargs["Range"] = f"bytes={offset}-"
        try:
            resp = client.get_object(**kwargs)
        except botocore.exceptions.NoCredentialsError:
            raise DownloadError(f"{url}: no AWS credentials configured for requester-pays S3") from None
        except botocore.exceptions.ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500))
            yield _Stream(status, None, None, None, iter(()))
            return
        body = resp["Body"]
        try:
            yield _Stream(
                status=206 if offset else 200,
                content_length=resp.get("ContentLength"),
                content_range=resp.get("ContentRange"),
                retry_after=None,
                chunks=body.iter_chunks(chunk_size),
            )
        finally:
            body.close()

    return cm()


def _transport_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ]
    errs += [ConnectionError, TimeoutError]
    try:
        import urllib3.exceptions

        errs += [urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import botocore.exceptions

        errs += [botocore.exceptions.ConnectionError, botocore.exceptions.ReadTimeoutError]  # type: ignore[list-item]
    except ImportError:
        pass
    return tuple(errs)


_TRANSPORT_ERRORS = _transport_errors()


def download_file(
    task: DownloadTask,
    path: str | Path,
    *,
    session: requests.Session | None = None,
    retry: RetryPolicy | None = None,
    on_bytes: Callable[[int], None] | None = None,
    chunk_size: int = 1 << 20,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> FileResult:
    """Download one file to ``path`` (via ``path.part``), resuming, verifying and retrying.

    Parameters
    ----------
    task
        What to fetch and what to expect.
    path
        The final file; it only ever appears complete and verified.
    session
        ``requests`` session (a new one if ``None``).
    retry
        Retry/backoff/timeout policy.
    on_bytes
        Called with the number of bytes of each chunk written (progress); negative
        values undo progress when a bad partial file is discarded.
    chunk_size
        Bytes per read.
    rng
        Random source of the jitter (seed it for reproducible waits).
    sleep
        Wait function (tests may count waits).

    Returns
    -------
    FileResult

    Raises
    ------
    DownloadError
        Permanent HTTP errors (e.g. 404/403), or still failing after ``retry.attempts``;
        no final file and no corrupt data is left behind in that case (a ``.part``
        whose bytes so far are consistent is kept for a later resume).
    """
    retry = retry or RetryPolicy()
    session = session or new_session()
    rng = rng or random.Random()
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    progress = on_bytes or (lambda n: None)
    resumed = False
    last = "no attempt made"

    def discard() -> None:
        if part.exists():
            progress(-part.stat().st_size)
            part.unlink()

    for attempt in range(1, retry.attempts + 1):
        offset = part.stat().st_size if part.exists() else 0
        if task.size is not None and offset > task.size:
            discard()
            offset = 0
        try:
            opener = (
                _open_s3(task.url, offset, retry, chunk_size)
                if task.url.startswith("s3://")
                else _open_http(session, task.url, offset, retry, chunk_size)
            )
            with opener as st:
                mode, total, start = _response_plan(st, offset, task)
                if mode == "wb" and offset:
                    progress(-offset)  # the server sends the whole file again
                resumed = resumed or mode == "ab"
                if mode == "ab":
                    log.debug("%s: resuming at byte %d", task.url, start)
                if mode is not None:
                    _write_body(part, mode, st.chunks, progress)
            got, sha256 = _verify_part(part, task, total, chunk_size)
            os.replace(part, final)
            return FileResult(final, got, sha256, attempt, resumed)
        except _Retry as exc:
            last = str(exc)
            if exc.discard:
                discard()
            wait = retry.delay(attempt, retry_after=exc.retry_after, rng=rng)
        except _TRANSPORT_ERRORS as exc:
            last = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            wait = retry.delay(attempt, rng=rng)
        if attempt < retry.attempts:
            log.info(
                "%s: try %d/%d failed (%s); retrying in %.2fs", task.url, attempt, retry.attempts, last, wait
            )
            sleep(wait)
    raise DownloadError(f"{task.url}: gave up after {retry.attempts} tries: {last}")


def _response_plan(st: Any, offset: int, task: DownloadTask) -> tuple[str | None, int | None, int]:
    """How to take a response: ``(file mode or None when the part is complete, total bytes, start)``.

    Raises :class:`_Retry` for answers worth another try, :class:`DownloadError` for the others.
    """
    total: int | None
    start = 0
    if st.status == 416 and offset:
        _, total = _content_range(st.content_range)
        if total is None or total != offset:
            raise _Retry(f"HTTP 416 for a resume at byte {offset}", discard=True)
        mode = None  # the part already holds every byte: on to verification
    elif st.status in _RETRY_STATUS or st.status >= 500:
        raise _Retry(f"HTTP {st.status}", _retry_after(st.retry_after))
    elif st.status >= 400 or st.status < 200:
        raise DownloadError(f"{task.url}: HTTP {st.status} (not retried)")
    elif st.status == 206 and offset:
        start, total = _content_range(st.content_range)  # type: ignore[assignment]
        if start != offset:
            raise _Retry(f"server resumed at byte {start}, not {offset}", discard=True)
        mode = "ab"
    else:
        total = st.content_length
        mode = "wb"
    if total is not None and task.size is not None and total != task.size:
        raise _Retry(f"server reports {total} bytes, expected {task.size}", discard=True)
    return mode, total, start


def _write_body(part: Path, mode: str, chunks: Iterable[bytes], progress: Callable[[int], None]) -> None:
    """Append (``"ab"``) or write (``"wb"``) the response body to ``part``, flushed to disk."""
    with open(part, mode) as f:
        for chunk in chunks:
            if chunk:
                f.write(chunk)
                progress(len(chunk))
        f.flush()
        os.fsync(f.fileno())


def _verify_part(part: Path, task: DownloadTask, total: int | None, chunk_size: int) -> tuple[int, str]:
    """``(size, sha256)`` of a complete, verified part file; :class:`_Retry` otherwise."""
    got = part.stat().st_size if part.exists() else 0
    expected = total if total is not None else task.size
    if expected is not None and got != expected:
        if got > expected:
            raise _Retry(f"received {got} bytes, more than the expected {expected}", discard=True)
        raise _Retry(f"transfer ended after {got} of {expected} bytes")
    sha256, other = _hash_file(part, task.checksum, chunk_size)
    if task.checksum is not None and other != task.checksum.hexdigest:
        raise _Retry(
            f"{task.checksum.algorithm} checksum mismatch (got {(other or '')[:16]}..., "
            f"expected {task.checksum.hexdigest[:16]}...)",
            discard=True,
        )
    if task.archive and task.checksum is None:
        problem = archive_problem(part, chunk_size=chunk_size)
        if problem is not None:
            raise _Retry(f"not a complete tar archive ({problem})", discard=True)
    return got, sha256


def archive_problem(path: str | Path, *, chunk_size: int = 1 << 20) -> str | None:
    """Why ``path`` is not a complete tar archive (every member read to the end), or ``None``.

    A tar archive carries no checksum of its data, so this catches what a transfer
    gets wrong in practice: an HTML or JSON error page instead of the bundle, a body
    cut short, garbage in a member header, an empty archive.
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            n = 0
            for m in tar:
                n += 1
                if m.isfile():
                    f = tar.extractfile(m)
                    if f is None:
                        return f"member {m.name!r} cannot be read"
                    with f:
                        while f.read(chunk_size):
                            pass
            if n == 0:
                return "no members"
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def _hash_file(path: Path, checksum: Checksum | None, chunk_size: int) -> tuple[str, str | None]:
    sha = hashlib.sha256()
    other = checksum.new() if checksum is not None and checksum.algorithm != "sha256" else None
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            sha.update(block)
            if other is not None:
                other.update(block)
    digest = sha.hexdigest()
    if checksum is None:
        return digest, None
    return digest, (other.hexdigest() if other is not None else digest)


def _progress_bar(enabled: bool, **kwargs: Any) -> Any:
    from ..progress import progress_bar

    return progress_bar(enabled=enabled, unit="B", unit_scale=True, unit_divisor=1024, **kwargs)


def download_all(
    tasks: Iterable[DownloadTask],
    *,
    out_dir: str | Path,
    manifest: Manifest | None = None,
    workers: int = 4,
    retry: RetryPolicy | None = None,
    progress: bool | None = None,
    session_factory: Callable[[], requests.Session] | None = None,
    seed: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    verify_existing: bool = False,
    chunk_size: int = 1 << 20,
) -> DownloadReport:
    """Download many files in parallel, scene by scene, skipping scenes the manifest has as complete.

    Parameters
    ----------
    tasks
        Files to fetch; files sharing a ``scene_id`` complete (or fail) together.
    out_dir
        Output directory; relative task destinations are resolved inside it.
    manifest
        Where to record verified files (default ``out_dir/manifest.json``).
    workers
        Concurrent downloads (bounded thread pool), >= 1.
    retry
        Retry/backoff/timeout policy per file.
    progress
        Report progress on stderr (:mod:`landcover.progress`): on a terminal one bar overall
        and one per file, elsewhere a line every few percent overall. ``None``: True.
    session_factory
        Makes one ``requests`` session per worker thread.
    seed
        Seed of the backoff jitter.
    sleep
        Wait function between retries.
    verify_existing
        Re-hash files of scenes the manifest lists as complete before skipping them.
    chunk_size
        Bytes per read (a dropped connection loses at most one chunk before the resume).

    Returns
    -------
    DownloadReport
        Completed, skipped and failed scenes (failures carry the reason); one failing
        scene never stops the others.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = manifest or Manifest.in_dir(out)
    retry = retry or RetryPolicy()
    factory = session_factory or (lambda: new_session(pool_size=workers))
    show = True if progress is None else progress

    by_scene: dict[str, list[DownloadTask]] = {}
    for t in tasks:
        by_scene.setdefault(t.scene_id, []).append(t)
    report = DownloadReport()
    todo: list[DownloadTask] = []
    for scene, items in by_scene.items():
        if manifest.is_complete(scene, verify=verify_existing):
            report.skipped.append(scene)
            report.files[scene] = [_resolve(out, t.dest) for t in items]
            log.info("%s: already complete (manifest), skipped", scene)
        else:
            todo.extend(items)
    if not todo:
        return report
    total_bytes = sum(t.size or 0 for t in todo)
    overall = _progress_bar(show, total=total_bytes or None, desc=f"{len(todo)} files", position=0)
    job = _FileJob(
        out=out, manifest=manifest, retry=retry, factory=factory, overall=overall, show=show,
        rng=random.Random(seed), sleep=sleep, chunk_size=chunk_size,
    )  # fmt: skip
    try:
        done, errors = _run_pool(job, todo, workers)
    finally:
        overall.close()
    for scene in dict.fromkeys(t.scene_id for t in todo):
        if scene in errors:
            msg = "; ".join(errors[scene])
            report.failed[scene] = msg
            manifest.set_status(scene, "failed", error=msg)
        else:
            report.completed.append(scene)
            report.files[scene] = [_resolve(out, t.dest) for t in by_scene[scene]]
            manifest.set_status(scene, "complete")
    return report


def _run_pool(
    job: _FileJob, todo: list[DownloadTask], workers: int
) -> tuple[dict[str, list[Path]], dict[str, list[str]]]:
    """Run ``job`` over ``todo`` in a bounded thread pool: ``(done paths, errors)`` per scene."""
    errors: dict[str, list[str]] = {}
    done: dict[str, list[Path]] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="landcover-fetch") as pool:
        futures = {pool.submit(job, t): t for t in todo}
        for fut in as_completed(futures):
            t = futures[fut]
            try:
                done.setdefault(t.scene_id, []).append(fut.result().path)
            except FetchError as exc:
                errors.setdefault(t.scene_id, []).append(str(exc))
                log.warning("%s: %s", t.scene_id, exc)
            except OSError as exc:
                errors.setdefault(t.scene_id, []).append(f"{t.dest}: {exc}")
                log.warning("%s: %s", t.scene_id, exc)
    return done, errors


class _FileJob:
    """Download one file of :func:`download_all` (called in its worker threads) and record it."""

    def __init__(
        self,
        *,
        out: Path,
        manifest: Manifest,
        retry: RetryPolicy,
        factory: Callable[[], requests.Session],
        overall: Any,
        show: bool,
        rng: random.Random,
        sleep: Callable[[float], None],
        chunk_size: int,
    ) -> None:
        self.out, self.manifest, self.retry, self.factory = out, manifest, retry, factory
        self.overall, self.show, self.rng, self.sleep, self.chunk_size = overall, show, rng, sleep, chunk_size
        self.lock = threading.Lock()
        self.local = threading.local()

    def session(self) -> requests.Session:
        """The session of the calling thread (one per worker thread)."""
        if not hasattr(self.local, "s"):
            self.local.s = self.factory()
        return self.local.s  # type: ignore[no-any-return]

    def _tick(self, n: int) -> None:
        with self.lock:
            self.overall.update(n)

    def __call__(self, task: DownloadTask) -> FileResult:
        dest = _resolve(self.out, task.dest)
        rel = os.path.relpath(dest, self.out)
        info = self.manifest.file_info(task.scene_id, rel)
        if (
            info
            and dest.is_file()
            and dest.stat().st_size == info.get("size")
            and sha256_file(dest, chunk_size=self.chunk_size) == info.get("sha256")
        ):  # verified earlier and unchanged since (a failed extraction forgets the record)
            self._tick(info["size"])
            return FileResult(dest, info["size"], info["sha256"], 0, False)
        per_file = self.show and sys.stderr.isatty()  # off a terminal, lines for the whole download only
        bar = _progress_bar(per_file, total=task.size, desc=dest.name[-40:], leave=False)

        def tick(n: int) -> None:
            bar.update(n)
            self._tick(n)

        try:
            with self.lock:
                wrng = random.Random(self.rng.random())
            res = download_file(
                task,
                dest,
                session=self.session(),
                retry=self.retry,
                on_bytes=tick,
                rng=wrng,
                sleep=self.sleep,
                chunk_size=self.chunk_size,
            )
        finally:
            bar.close()
        record = {
            "url": task.url,
            "size": res.size,
            "sha256": res.sha256,
            "checksum": str(task.checksum) if task.checksum else None,
        }
        self.manifest.record_file(task.scene_id, rel, record)
        return res


def _resolve(out: Path, dest: Path) -> Path:
    return dest if dest.is_absolute() else out / dest


def tasks_for_records(
    records: Sequence[Any],
    *,
    asset_keys: Sequence[str] | None = None,
    include_browse: bool = False,
    prefer_s3: bool = False,
) -> list[DownloadTask]:
    """Download tasks for STAC-style records: one per asset, into ``<product_id>/<file name>``.

    Parameters
    ----------
    records
        :class:`~landcover.fetch.query.SceneRecord` objects with assets.
    asset_keys
        Only these asset keys (``None``: every asset with an http(s) href).
    include_browse
        Also fetch thumbnails, browse images and HTML index pages.
    prefer_s3
        Use the asset's ``s3://`` alternate (requester pays, needs boto3) when it has one.
    """
    out: list[DownloadTask] = []
    for rec in records:
        for a in rec.assets:
            if asset_keys is not None:
                if a.key not in asset_keys:
                    continue
            elif a.is_browse and not include_browse:
                continue
            href = a.alternate_s3 if prefer_s3 and a.alternate_s3 else a.href
            if not href.startswith(("http://", "https://", "s3://")):
                continue
            chk = None
            if a.checksum:
                try:
                    chk = Checksum.parse(a.checksum)
                except ValueError:
                    log.warning("%s: ignoring unparseable checksum of asset %s", rec.product_id, a.key)
            if not (safe_name(rec.product_id) and safe_name(a.filename)):
                log.warning(
                    "%s: skipping asset %s with an unsafe file name %r", rec.product_id, a.key, a.filename
                )
                continue
            out.append(DownloadTask(href, Path(rec.product_id) / a.filename, rec.product_id, a.size, chk))
    return out


def safe_name(name: str) -> bool:
    """Whether a remote-supplied name is a plain file name (no separators, no leading dot, no ``..``)."""
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,200}", name)) and ".." not in name
