"""USGS Machine-to-Machine (M2M) API client.

Login is ``login-token`` (ERS user name plus an application token): USGS removed
password ``login`` in February 2025. The API key returned by ``login-token`` is
sent as ``X-Auth-Token``. Every response is an envelope
``{requestId, version, sessionId, data, errorCode, errorMessage}`` and is checked
for ``errorCode``, not only for the HTTP status. ``RATE_LIMIT`` sleeps and
retries; ``AUTH_EXPIRED``/``AUTH_KEY_INVALID`` log in again once with the token
and retry; other codes raise :class:`~landcover.errors.AuthError` or
:class:`~landcover.errors.FetchError` naming the code. Neither the token nor the
API key ever appears in a log line, an exception or a ``repr``, and neither is ever
sent to another origin: redirects are followed by hand, only within the API's own
scheme, host and port (``requests`` would re-POST the login body and keep the
``X-Auth-Token`` header across hosts on a 307/308).

Downloads are verified with what USGS provides: ``filesize`` and, where an entry of
``download-options``/``download-request``/``download-retrieve`` carries one, a checksum
(``sha256sum``/``sha256``, ``sha512sum``, ``md5sum``/``md5``, ``cksum``, or ``checksum``);
see :func:`checksum_of`. Without a checksum the bundle must be a tar archive readable
to its end (:func:`landcover.fetch.download.archive_problem`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import AuthError, FetchError
from .credentials import Credentials, Secret, redact
from .download import Checksum, RetryPolicy, new_session
from .query import SceneQuery, SceneRecord, parse_product_id

__all__ = [
    "M2M_URL",
    "DATASETS",
    "dataset_name",
    "M2MClient",
    "DownloadOption",
    "StagedDownload",
    "select_option",
    "checksum_of",
]

log = logging.getLogger(__name__)

M2M_URL = "https://m2m.cr.usgs.gov/api/api/json/stable/"

#: M2M dataset names of Landsat Collection 2, by (satellite, level). Landsat 4 and 5 TM
#: share the ``landsat_tm_*`` datasets; 8 and 9 OLI/TIRS share ``landsat_ot_*``.
DATASETS: dict[tuple[int, int], str] = {
    (4, 1): "landsat_tm_c2_l1",
    (4, 2): "landsat_tm_c2_l2",
    (5, 1): "landsat_tm_c2_l1",
    (5, 2): "landsat_tm_c2_l2",
    (7, 1): "landsat_etm_c2_l1",
    (7, 2): "landsat_etm_c2_l2",
    (8, 1): "landsat_ot_c2_l1",
    (8, 2): "landsat_ot_c2_l2",
    (9, 1): "landsat_ot_c2_l1",
    (9, 2): "landsat_ot_c2_l2",
}

_RELOGIN_CODES = frozenset({"AUTH_EXPIRED", "AUTH_KEY_INVALID"})
_AUTH_CODES = frozenset(
    {"AUTH_INVALID", "AUTH_UNAUTHROIZED", "AUTH_UNAUTHORIZED", "AUTH_ERROR", "DATASET_AUTH"}
)
_RATE_CODES = frozenset({"RATE_LIMIT"})
_DOWNLOAD_SYSTEMS = ("dds", "ls_zip", "dds_zip", "folder", "dds_ms")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
# checksum fields of M2M download entries, strongest first -> algorithm
_CHECKSUM_FIELDS: tuple[tuple[str, str], ...] = (
    ("sha512sum", "sha512"),
    ("sha512", "sha512"),
    ("sha256sum", "sha256"),
    ("sha256", "sha256"),
    ("checksum", "any"),
    ("md5sum", "md5"),
    ("md5", "md5"),
    ("cksum", "cksum"),
)


def checksum_of(entry: Mapping[str, Any]) -> Checksum | None:
    """The strongest checksum an M2M download entry carries, or ``None``.

    Reads ``sha512sum``/``sha512``, ``sha256sum``/``sha256``, ``checksum`` (md5, sha256 or
    sha512 by length, or ``algo:hex``), ``md5sum``/``md5`` and ``cksum`` (the POSIX CRC,
    ``"CRC"`` or ``"CRC SIZE"``). A value that is not a well-formed digest is logged and
    skipped (a weaker field may still be used).
    """
    for key, algo in _CHECKSUM_FIELDS:
        value = entry.get(key)
        if value in (None, "") or isinstance(value, bool):
            continue
        try:
            if algo == "cksum":
                return Checksum.from_cksum(value)
            text = str(value).strip()
            if algo == "any":
                return Checksum.parse(text)
            return Checksum(algo, text.partition(":")[2] if ":" in text else text)  # type: ignore[arg-type]
        except ValueError as exc:
            log.warning("M2M: ignoring malformed %s of %s (%s)", key, entry.get("displayId") or "?", exc)
    return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def dataset_name(satellite: int, level: Literal[1, 2] = 2) -> str:
    """The M2M dataset of Landsat ``satellite`` (4, 5, 7, 8, 9) Collection 2 Level ``level``.

    Examples
    --------
    >>> dataset_name(5, 2)
    'landsat_tm_c2_l2'
    """
    try:
        return DATASETS[(int(satellite), int(level))]
    except KeyError:
        known = sorted({s for s, _ in DATASETS})
        raise ValueError(
            f"no Collection 2 dataset for Landsat {satellite} level {level} (satellites {known}, levels 1-2)"
        ) from None


class DownloadOption:
    """One entry of ``download-options`` (a downloadable product of a scene)."""

    __slots__ = ("raw",)

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = dict(raw)

    @property
    def product_id(self) -> str:
        """The option ``id`` (``productId`` in ``download-request``)."""
        return str(self.raw.get("id"))

    @property
    def entity_id(self) -> str:
        """The scene's entity id."""
        return str(self.raw.get("entityId"))

    @property
    def display_id(self) -> str:
        """The scene's product id (``displayId``)."""
        return str(self.raw.get("displayId"))

    @property
    def available(self) -> bool:
        """Whether it can be downloaded now."""
        return bool(self.raw.get("available"))

    @property
    def filesize(self) -> int | None:
        """Size in bytes as reported by USGS (advisory)."""
        v = self.raw.get("filesize")
        return int(v) if isinstance(v, int | float) and v > 0 else None

    @property
    def download_system(self) -> str:
        """E.g. ``dds`` (bundles) or ``wms`` (browse images)."""
        return str(self.raw.get("downloadSystem") or "")

    @property
    def product_name(self) -> str:
        """Human-readable product name."""
        return str(self.raw.get("productName") or "")

    def __repr__(self) -> str:
        return (
            f"DownloadOption({self.display_id!r}, {self.product_name!r}, system={self.download_system!r}, "
            f"available={self.available}, filesize={self.filesize})"
        )


def select_option(options: Sequence[DownloadOption], *, product: str | None = None) -> DownloadOption | None:
    """Pick the product bundle of one scene among its download options.

    Parameters
    ----------
    options
        The options of one entity.
    product
        A case-insensitive substring of the wanted ``productName`` (e.g. ``"Level-2"``);
        ``None`` takes the largest available bundle (``downloadSystem`` dds/ls_zip),
        which is the full product, not a browse image.
    """
    cands = [o for o in options if o.available and o.download_system in _DOWNLOAD_SYSTEMS]
    if product is not None:
        cands = [o for o in cands if product.lower() in o.product_name.lower()]
    if not cands:
        return None
    return max(cands, key=lambda o: o.filesize or 0)


class StagedDownload:
    """A download prepared by USGS (from ``download-retrieve``): where to fetch one scene."""

    __slots__ = ("entity_id", "display_id", "url", "filesize", "download_id", "checksum")

    def __init__(
        self,
        entity_id: str,
        display_id: str | None,
        url: str,
        filesize: int | None,
        download_id: str | None,
        checksum: Checksum | None = None,
    ) -> None:
        self.entity_id = entity_id
        self.display_id = display_id
        self.url = url
        self.filesize = filesize
        self.download_id = download_id
        self.checksum = checksum

    def __repr__(self) -> str:
        return f"StagedDownload({self.entity_id!r}, {self.display_id!r}, {self.url!r})"


class M2MClient:
    """A session with the USGS M2M JSON API.

    Parameters
    ----------
    credentials
        User name and application token (see :func:`~landcover.fetch.credentials.load_credentials`).
    url
        Base URL of the API (ends with ``/``); tests point it at a loopback server.
    session
        ``requests`` session to use (a new one if ``None``).
    retry
        Retries on connection errors/timeouts/5xx and the request timeouts.
    rate_limit_wait
        Seconds to sleep after a ``RATE_LIMIT`` error before retrying.
    rate_limit_retries
        How many ``RATE_LIMIT`` errors in a row to tolerate per request.
    sleep
        Wait function (tests may replace it).

    Examples
    --------
    >>> with M2MClient(creds) as api:  # doctest: +SKIP
    ...     scenes = api.scene_search("landsat_tm_c2_l2", SceneQuery(bbox=(5.8, 50.4, 6.6, 51.1)))
    """

    def __init__(
        self,
        credentials: Credentials | None,
        *,
        url: str = M2M_URL,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
        rate_limit_wait: float = 3.0,
        rate_limit_retries: int = 10,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.credentials = credentials
        self.url = url if url.endswith("/") else url + "/"
        self._session = session or new_session()
        self.retry = retry or RetryPolicy(attempts=4, read_timeout=120.0)
        self.rate_limit_wait = rate_limit_wait
        self.rate_limit_retries = rate_limit_retries
        self._sleep = sleep
        self._key: Secret | None = None
        self._rng = random.Random()

    def __repr__(self) -> str:
        user = self.credentials.username if self.credentials else None
        return f"M2MClient(url={self.url!r}, username={user!r}, logged_in={self._key is not None})"

    def __enter__(self) -> M2MClient:
        self.login()
        return self

    def __exit__(self, *exc: object) -> None:
        self.logout()

    @property
    def logged_in(self) -> bool:
        """Whether an API key is held."""
        return self._key is not None

    # -- transport ----------------------------------------------------------------------------
    def _secrets(self) -> list[Secret | None]:
        return [self.credentials.token if self.credentials else None, self._key]

    def _clean(self, text: str) -> str:
        return redact(" ".join(str(text).split()), self._secrets())

    def _post(self, endpoint: str, payload: Mapping[str, Any], *, auth: bool) -> dict[str, Any]:
        """POST once (retrying transport errors/5xx) and return the decoded envelope."""
        headers = {"Content-Type": "application/json"}
        if auth:
            if self._key is None:
                raise AuthError(f"M2M {endpoint}: not logged in (call login() first)")
            headers["X-Auth-Token"] = self._key.reveal()
        body = json.dumps(payload, default=_json_default)
        last = ""
        for attempt in range(1, self.retry.attempts + 1):
            retry_after: float | None = None
            try:
                r = self._post_same_origin(endpoint, body, headers)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}: {self._clean(str(exc))[:200]}"
            else:
                if r.status_code == 429 or r.status_code >= 500:
                    last = f"HTTP {r.status_code}"
                    from .download import _retry_after

                    retry_after = _retry_after(r.headers.get("Retry-After"))
                else:
                    try:
                        env = r.json()
                    except ValueError:
                        raise FetchError(
                            f"M2M {endpoint}: HTTP {r.status_code} with a non-JSON body "
                            f"({self._clean(r.text[:120])!r}); is {self.url} the M2M JSON API?"
                        ) from None
                    if not isinstance(env, dict) or "errorCode" not in env:
                        raise FetchError(
                            f"M2M {endpoint}: HTTP {r.status_code}, response is not an M2M envelope"
                        )
                    return env
            if attempt < self.retry.attempts:
                wait = self.retry.delay(attempt, retry_after=retry_after, rng=self._rng)
                log.info("M2M %s: %s; retry %d in %.2fs", endpoint, last, attempt, wait)
                self._sleep(wait)
        raise FetchError(f"M2M {endpoint}: gave up after {self.retry.attempts} tries: {last}")

    def _post_same_origin(self, endpoint: str, body: str, headers: Mapping[str, str]) -> requests.Response:
        """POST, following redirects only within the API's origin (credentials never leave it)."""
        url = self.url + endpoint
        home = _origin(self.url)
        for _ in range(_MAX_REDIRECTS + 1):
            r = self._session.post(
                url, data=body, headers=dict(headers), timeout=self.retry.timeout, allow_redirects=False
            )
            if r.status_code not in _REDIRECTS or not r.headers.get("Location"):
                return r
            target = urljoin(url, r.headers["Location"])
            r.close()
            scheme, host, port = _origin(target)
            if (scheme, host, port) != home:
                raise FetchError(
                    f"M2M {endpoint}: HTTP {r.status_code} redirect to another origin "
                    f"({scheme}://{host}:{port}) not followed: the token and API key are only sent to "
                    f"{home[0]}://{home[1]}:{home[2]}"
                )
            url = target
        raise FetchError(f"M2M {endpoint}: more than {_MAX_REDIRECTS} redirects")

    def request(self, endpoint: str, payload: Mapping[str, Any] | None = None) -> Any:
        """Call an authenticated endpoint and return the envelope's ``data``.

        Handles ``RATE_LIMIT`` (sleep, retry) and an expired key (one re-login).

        Raises
        ------
        AuthError
            Bad or unauthorised credentials.
        FetchError
            Any other ``errorCode``, or transport failure after retries.
        """
        payload = payload or {}
        relogged = False
        rate_hits = 0
        while True:
            env = self._post(endpoint, payload, auth=True)
            code = env.get("errorCode")
            if not code:
                return env.get("data")
            msg = self._clean(str(env.get("errorMessage") or ""))
            if code in _RATE_CODES and rate_hits < self.rate_limit_retries:
                rate_hits += 1
                log.info("M2M %s: RATE_LIMIT; waiting %.1fs", endpoint, self.rate_limit_wait)
                self._sleep(self.rate_limit_wait)
                continue
            if code in _RELOGIN_CODES and not relogged and self.credentials is not None:
                log.info("M2M %s: %s; logging in again", endpoint, code)
                relogged = True
                self._key = None
                self.login()
                continue
            raise self._error(endpoint, code, msg)

    def _error(self, endpoint: str, code: str, msg: str) -> FetchError:
        text = f"M2M {endpoint}: {code}: {msg}" if msg else f"M2M {endpoint}: {code}"
        if code in _AUTH_CODES or code.startswith("AUTH_"):
            hint = (
                " (check the user name and application token; the account needs M2M 'MACHINE' access)"
                if code != "AUTH_EXPIRED"
                else ""
            )
            return AuthError(text + hint)
        return FetchError(text)

    # -- session ------------------------------------------------------------------------------
    def login(self) -> None:
        """``login-token`` with the user name and application token; keeps the API key.

        Raises
        ------
        AuthError
            When credentials are missing or rejected (the message never contains them).
        """
        if self.credentials is None:
            raise AuthError("M2M login: no credentials given")
        env = self._post(
            "login-token",
            {"username": self.credentials.username, "token": self.credentials.token.reveal()},
            auth=False,
        )
        code = env.get("errorCode")
        if code:
            msg = self._clean(str(env.get("errorMessage") or ""))
            err = self._error("login-token", code, msg)
            raise AuthError(f"{err} (user {self.credentials.username!r}, from {self.credentials.source})")
        key = env.get("data")
        if not isinstance(key, str) or not key:
            raise AuthError("M2M login-token: no API key in the response")
        self._key = Secret(key)
        log.info("M2M: logged in as %s", self.credentials.username)

    def logout(self) -> None:
        """End the session (errors are logged, not raised); safe to call twice."""
        if self._key is None:
            return
        try:
            env = self._post("logout", {}, auth=True)
            if env.get("errorCode"):
                log.debug("M2M logout: %s", env.get("errorCode"))
        except FetchError as exc:
            log.debug("M2M logout failed: %s", exc)
        finally:
            self._key = None

    # -- search -------------------------------------------------------------------------------
    def scene_search(
        self,
        dataset: str,
        query: SceneQuery,
        *,
        page_size: int = 500,
        metadata_type: Literal["summary", "full"] = "summary",
    ) -> list[SceneRecord]:
        """All scenes of ``dataset`` that match ``query``, paging through every result.

        WRS-2 path/row, months and cloud cover are sent as filters where M2M has them
        and applied again to each record (by its product id), so the result is exact
        even where the service is lenient.
        """
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        scene_filter = build_scene_filter(query)
        records: list[SceneRecord] = []
        seen: set[str] = set()
        start = 1
        while True:
            payload: dict[str, Any] = {
                "datasetName": dataset,
                "maxResults": page_size,
                "startingNumber": start,
                "metadataType": metadata_type,
                "sceneFilter": scene_filter,
            }
            data = self.request("scene-search", payload) or {}
            results = data.get("results") or []
            for raw in results:
                rec = record_from_m2m(raw, dataset)
                if rec is None or rec.entity_id in seen:
                    continue
                seen.add(rec.entity_id or rec.product_id)
                if query.accepts(rec):
                    records.append(rec)
                    if query.max_results is not None and len(records) >= query.max_results:
                        return records
            total = int(data.get("totalHits") or 0)
            returned = int(data.get("recordsReturned") or len(results))
            # ``nextRecord`` is not consistent across API versions (the recorded 2021 responses
            # give the last record's number); ``startingNumber + recordsReturned`` always is.
            if not results or returned == 0 or start + returned > total:
                break
            start += returned
        log.info("M2M %s: %d scene(s) match", dataset, len(records))
        return records

    def scenes_by_id(
        self, dataset: str, product_ids: Sequence[str]
    ) -> tuple[list[SceneRecord], dict[str, str]]:
        """Look scenes up by product id (``displayId``) with ``scene-metadata``.

        Returns
        -------
        records, missing
            The scenes found, and ``{product_id: reason}`` for those that were not.
        """
        records: list[SceneRecord] = []
        missing: dict[str, str] = {}
        for pid in product_ids:
            payload = {
                "datasetName": dataset,
                "entityId": pid,
                "idType": "displayId",
                "metadataType": "summary",
            }
            try:
                data = self.request("scene-metadata", payload)
            except AuthError:
                raise
            except FetchError as exc:
                missing[pid] = str(exc)
                continue
            rec = record_from_m2m(data, dataset) if isinstance(data, Mapping) else None
            if rec is None:
                missing[pid] = f"not found in {dataset}"
            else:
                records.append(rec)
        return records, missing

    # -- downloads ----------------------------------------------------------------------------
    def download_options(self, dataset: str, entity_ids: Sequence[str]) -> list[DownloadOption]:
        """``download-options`` for these scenes."""
        data = self.request("download-options", {"datasetName": dataset, "entityIds": list(entity_ids)}) or []
        return [DownloadOption(o) for o in data if isinstance(o, Mapping)]

    def download_request(self, downloads: Iterable[tuple[str, str]], *, label: str) -> dict[str, Any]:
        """``download-request`` for ``(entityId, productId)`` pairs under ``label``; returns ``data``."""
        payload = {"downloads": [{"entityId": e, "productId": p} for e, p in downloads], "label": label}
        return dict(self.request("download-request", payload) or {})

    def download_retrieve(self, *, label: str) -> dict[str, Any]:
        """``download-retrieve`` for ``label``; returns ``data`` (``available``, ``requested``)."""
        return dict(self.request("download-retrieve", {"label": label}) or {})

    def download_order_remove(self, *, label: str) -> None:
        """Remove the download order ``label`` on the USGS side (best effort)."""
        try:
            self.request("download-order-remove", {"label": label})
        except FetchError as exc:
            log.debug("M2M download-order-remove %s: %s", label, exc)

    def stage_downloads(
        self,
        dataset: str,
        records: Sequence[SceneRecord],
        *,
        label: str | None = None,
        product: str | None = None,
        poll_interval: float = 30.0,
        poll_timeout: float = 3600.0,
    ) -> tuple[dict[str, StagedDownload], dict[str, str]]:
        """Ask USGS to prepare the scenes' bundles and poll until each has a URL.

        Parameters
        ----------
        dataset
            The M2M dataset of the records.
        records
            Scenes from :meth:`scene_search` (with ``entity_id``).
        label
            Download label (default ``landcover-<timestamp>``).
        product
            Substring of the product name to pick (see :func:`select_option`).
        poll_interval
            Seconds between ``download-retrieve`` calls (the USGS sample uses 30).
        poll_timeout
            Give up on scenes not ready after this many seconds.

        Returns
        -------
        staged, failed
            ``{product_id: StagedDownload}`` for scenes with a URL, and
            ``{product_id: reason}`` for those that cannot be downloaded.
        """
        label = label or f"landcover-{datetime.now():%Y%m%d-%H%M%S}-{random.randrange(16**4):04x}"
        by_entity = {r.entity_id: r for r in records if r.entity_id}
        failed: dict[str, str] = {r.product_id: "no M2M entity id" for r in records if not r.entity_id}
        if not by_entity:
            return {}, failed
        options: dict[str, list[DownloadOption]] = {}
        for o in self.download_options(dataset, list(by_entity)):
            options.setdefault(o.entity_id, []).append(o)
        wanted, sizes, sums = _choose_bundles(by_entity, options, product, failed)
        if not wanted:
            return {}, failed
        data = self.download_request(wanted, label=label)
        by_download = _note_requested(data, by_entity, sizes, sums, failed)
        pending = {e for e, _ in wanted if by_entity[e].product_id not in failed}
        staged: dict[str, StagedDownload] = {}
        deadline = time.monotonic() + poll_timeout
        while pending:
            ret = self.download_retrieve(label=label)
            _take_ready(ret, pending, by_entity, by_download, sizes, sums, staged)
            if not pending:
                break
            if time.monotonic() >= deadline:
                for eid in pending:
                    failed[by_entity[eid].product_id] = f"not staged by USGS within {poll_timeout:g}s"
                break
            log.info(
                "M2M: %d download(s) still being prepared; polling again in %gs", len(pending), poll_interval
            )
            self._sleep(poll_interval)
        return staged, failed


def build_scene_filter(query: SceneQuery) -> dict[str, Any]:
    """The M2M ``sceneFilter`` of a query (spatial, acquisition, cloud, seasonal)."""
    f: dict[str, Any] = {}
    if query.geometry is not None:
        f["spatialFilter"] = {"filterType": "geoJson", "geoJson": dict(query.geometry)}
    elif query.bbox is not None:
        w, s, e, n = query.bbox
        f["spatialFilter"] = {
            "filterType": "mbr",
            "lowerLeft": {"latitude": s, "longitude": w},
            "upperRight": {"latitude": n, "longitude": e},
        }
    if query.start is not None or query.end is not None:
        f["acquisitionFilter"] = {
            "start": (query.start or date(1972, 7, 23)).isoformat(),
            "end": (query.end or date.today()).isoformat(),
        }
    if query.max_cloud is not None:
        f["cloudCoverFilter"] = {"min": 0, "max": int(query.max_cloud + 0.999), "includeUnknown": False}
    if query.months:
        f["seasonalFilter"] = list(query.months)
    return f


def record_from_m2m(raw: Mapping[str, Any], dataset: str) -> SceneRecord | None:
    """A :class:`SceneRecord` from one ``scene-search`` result (``None`` without ids)."""
    display = raw.get("displayId")
    entity = raw.get("entityId")
    if not display or not entity:
        return None
    parts = parse_product_id(str(display)) or {}
    acquired = parts.get("acquired")
    tc = raw.get("temporalCoverage") or {}
    if acquired is None and tc.get("startDate"):
        try:
            acquired = datetime.fromisoformat(str(tc["startDate"]).replace(" ", "T")).date()
        except ValueError:
            acquired = None
    cloud = raw.get("cloudCover")
    try:
        cloud_f = float(cloud) if cloud not in (None, "") else None
    except (TypeError, ValueError):
        cloud_f = None
    if cloud_f is not None and cloud_f < 0:  # -1 = unknown
        cloud_f = None
    return SceneRecord(
        product_id=str(display),
        source="m2m",
        dataset=dataset,
        entity_id=str(entity),
        acquired=acquired,
        cloud_cover=cloud_f,
        path=parts.get("path"),
        row=parts.get("row"),
        item_id=str(display),
    )


def _json_default(o: object) -> Any:
    if isinstance(o, date):
        return o.isoformat()
    raise TypeError(f"cannot serialise {type(o).__name__}")


def _choose_bundles(
    by_entity: Mapping[str, SceneRecord],
    options: Mapping[str, list[DownloadOption]],
    product: str | None,
    failed: dict[str, str],
) -> tuple[list[tuple[str, str]], dict[str, int | None], dict[str, Checksum | None]]:
    """The bundle to request per scene: ``(entity, product)`` pairs, sizes, checksums; misses: ``failed``."""
    wanted: list[tuple[str, str]] = []
    sizes: dict[str, int | None] = {}
    sums: dict[str, Checksum | None] = {}
    for eid, rec in by_entity.items():
        choice = select_option(options.get(eid, []), product=product)
        if choice is None:
            names = (
                ", ".join(f"{o.product_name} ({o.download_system})" for o in options.get(eid, [])) or "none"
            )
            failed[rec.product_id] = f"no available product bundle (options: {names})"
        else:
            wanted.append((eid, choice.product_id))
            sizes[eid] = choice.filesize
            sums[eid] = checksum_of(choice.raw)
    return wanted, sizes, sums


def _take_ready(
    ret: Mapping[str, Any],
    pending: set[str],
    by_entity: Mapping[str, SceneRecord],
    by_download: Mapping[str, Mapping[str, Any]],
    sizes: Mapping[str, int | None],
    sums: Mapping[str, Checksum | None],
    staged: dict[str, StagedDownload],
) -> None:
    """Move the ``pending`` entities that a ``download-retrieve`` answer gives a URL into ``staged``."""
    for a in list(ret.get("available") or []) + list(ret.get("requested") or []):
        eid = str(a.get("entityId", ""))
        url = a.get("url")
        if eid in pending and isinstance(url, str) and url.startswith(("http://", "https://")):
            rec = by_entity[eid]
            staged[rec.product_id] = _staged_download(a, rec, url, by_download, sizes, sums)
            pending.discard(eid)


def _staged_download(
    a: Mapping[str, Any],
    rec: SceneRecord,
    url: str,
    by_download: Mapping[str, Mapping[str, Any]],
    sizes: Mapping[str, int | None],
    sums: Mapping[str, Checksum | None],
) -> StagedDownload:
    """A ``download-retrieve`` entry with a URL as a :class:`StagedDownload` (size/checksum: any answer)."""
    eid = str(a.get("entityId", ""))
    fs = a.get("filesize")
    dl_id = str(a.get("downloadId")) if a.get("downloadId") is not None else None
    requested = by_download.get(dl_id or "", {})
    return StagedDownload(
        eid,
        a.get("displayId") or rec.product_id,
        url,
        int(fs) if isinstance(fs, int) and fs > 0 else sizes.get(eid),
        dl_id,
        checksum_of(a) or checksum_of(requested) or sums.get(eid),
    )


def _note_requested(
    data: Mapping[str, Any],
    by_entity: Mapping[str, SceneRecord],
    sizes: dict[str, int | None],
    sums: dict[str, Checksum | None],
    failed: dict[str, str],
) -> dict[str, Mapping[str, Any]]:
    """Read a ``download-request`` answer: sizes/checksums it knows, failures; entries by downloadId."""
    by_download: dict[str, Mapping[str, Any]] = {}
    for d in list(data.get("availableDownloads") or []) + list(data.get("preparingDownloads") or []):
        if isinstance(d, Mapping):
            eid = str(d.get("entityId") or "")
            if eid in by_entity:
                sums[eid] = checksum_of(d) or sums.get(eid)
                fs = d.get("filesize")
                if isinstance(fs, int) and fs > 0:
                    sizes[eid] = fs
            if d.get("downloadId") is not None:
                by_download[str(d["downloadId"])] = d
    for f in data.get("failed") or []:
        eid = str(f.get("entityId", ""))
        if eid in by_entity:
            failed[by_entity[eid].product_id] = f"download-request failed: {f.get('errorMessage') or f}"
    return by_download
