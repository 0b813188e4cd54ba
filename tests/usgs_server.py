"""A real HTTP server on 127.0.0.1 that plays USGS: the M2M JSON API, a STAC API and file downloads.

Responses are built from the real recorded USGS responses and STAC items in
``../shared/data/real/api/`` (envelopes, scene-search results, download-options,
download-request, LandsatLook and Planetary-Computer-style items), with their
URLs rewritten to this server, and files are real bytes (the shared Landsat 5
sample files, or tar bundles of them). Faults are injected per file path or per
M2M endpoint, consumed in order:

files (``server.faults[path] = [...]``, or ``server.always[path] = fault``)
    ``"reset"`` (half the body, then a TCP RST), ``"truncate"`` (Content-Length of
    the whole file, half the body, clean close), ``"500"``/``"503"``,
    ``"429:SECONDS"`` (with ``Retry-After``), ``"slow:SECONDS"`` (half the body, then a
    stall), ``"corrupt"`` (right size, one byte flipped), ``"404"``, ``"norange"``
    (ignore the Range header and send 200 with everything), ``"html"`` (200 with a
    1 KB HTML error page instead of the file).
M2M (``server.m2m_faults[endpoint] = [...]``)
    an error code such as ``"AUTH_EXPIRED"`` (also invalidates the API key),
    ``"RATE_LIMIT"``, ``"HTTP500"``, ``"HTML"`` (a non-JSON page), or
    ``"ERROR:CODE:message"`` where ``{token}``/``{key}`` in the message are replaced by
    the secrets (to check they are redacted), ``"REDIRECT307:BASE"``/``"REDIRECT308:BASE"``
    (that status with ``Location: BASE + the request path``, e.g. another server's base URL).

What USGS tells about a bundle is configurable: ``send_filesize`` (``filesize`` in
download-options and download-retrieve) and ``checksum_fields`` (any of ``sha256sum``,
``md5``, ``cksum``: digests of the true bundle in the dds download-options entry and the
download-retrieve entry). :class:`RecordingServer` is a second loopback server (another
port, so another origin) that records every request with its headers and body.
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import json
import re
import socket
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

TM_L2 = "landsat_tm_c2_l2"
OT_L2 = "landsat_ot_c2_l2"
SAMPLE = "LT05_L2SP_090084_19980308_20200909_02_T1"

# asset key (LandsatLook 1.0 items) -> suffix of the real sample file served for it
ASSET_FILES = {
    "blue": "SR_B1.TIF",
    "green": "SR_B2.TIF",
    "red": "SR_B3.TIF",
    "nir08": "SR_B4.TIF",
    "swir16": "SR_B5.TIF",
    "swir22": "SR_B7.TIF",
    "atmos_opacity": "SR_ATMOS_OPACITY.TIF",
    "cloud_qa": "SR_CLOUD_QA.TIF",
    "qa_pixel": "QA_PIXEL.TIF",
    "qa_radsat": "QA_RADSAT.TIF",
    "ANG.txt": "ANG.txt",
    "MTL.txt": "MTL.txt",
    "MTL.xml": "MTL.xml",
    "MTL.json": "MTL.json",
}


def multihash_sha512(data: bytes) -> str:
    """The STAC ``file:checksum`` of ``data`` in the form USGS uses (multihash sha2-512)."""
    return "1340" + hashlib.sha512(data).hexdigest()


def sample_file(shared: Path, suffix: str) -> bytes:
    """Bytes of one real file of the shared Landsat 5 C2 L2 sample scene."""
    return (shared / "landsat" / SAMPLE / f"{SAMPLE}_{suffix}").read_bytes()


def make_bundle(
    shared: Path, product_id: str, *, suffixes: tuple[str, ...] = ("SR_B3.TIF", "MTL.txt")
) -> bytes:
    """A Collection-2-style ``.tar`` bundle of real sample files renamed after ``product_id``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for suf in suffixes:
            data = sample_file(shared, suf)
            info = tarfile.TarInfo(f"{product_id}_{suf}")
            info.size = len(data)
            info.mtime = 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _load(shared: Path, rel: str) -> Any:
    return json.loads((shared / "api" / rel).read_text())


@dataclass
class Logged:
    """One request seen by the server."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0


@dataclass
class _Order:
    download_id: int
    entity_id: str
    display_id: str
    polls_left: int


@dataclass
class USGSServer:
    """The fake USGS. Use as a context manager; ``base``/``m2m_url``/``stac_url`` point at it."""

    shared: Path
    username: str = "tester"
    token: str = "app-token-5ecr3t-0123456789abcdef"
    prepare_polls: int = 1
    fail_entities: set[str] = field(default_factory=set)
    page_limit: int | None = None
    send_filesize: bool = True
    checksum_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}
        self.m2m_faults: dict[str, list[str]] = {}
        self.log: list[Logged] = []
        self.keys: set[str] = set()
        self.logins = 0
        self._key_counter = itertools.count(1)
        self._req_counter = itertools.count(300_000_000)
        self._dl_counter = itertools.count(26_107_136)
        self.orders: dict[str, list[_Order]] = {}
        self.lock = threading.Lock()
        self.datasets: dict[str, list[dict[str, Any]]] = {}
        self.stac_items: dict[str, list[dict[str, Any]]] = {}
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> USGSServer:
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.m2m_url = f"{self.base}/m2m/api/json/stable/"
        self.stac_url = f"{self.base}/stac"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        self._build_m2m()
        self._build_stac()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- helpers for tests ----------------------------------------------------------------------
    def requests_to(self, path_prefix: str) -> list[Logged]:
        """Logged requests whose path starts with ``path_prefix``."""
        with self.lock:
            return [r for r in self.log if r.path.startswith(path_prefix)]

    def file_url(self, path: str) -> str:
        """URL of a served file."""
        return f"{self.base}/files/{path}"

    def add_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``/files/<path>``; returns the URL."""
        self.files[path] = data
        return self.file_url(path)

    def bundle_facts(self, display_id: str) -> dict[str, Any]:
        """What this USGS says about a bundle: ``filesize`` and the configured checksum fields."""
        data = self.bundles.get(display_id, b"")
        out: dict[str, Any] = {"filesize": len(data)} if self.send_filesize else {}
        for name in self.checksum_fields:
            if name == "sha256sum":
                out[name] = hashlib.sha256(data).hexdigest()
            elif name == "md5":
                out[name] = hashlib.md5(data).hexdigest()
            elif name == "cksum":
                out[name] = posix_cksum(data)
            else:
                raise ValueError(f"unknown checksum field {name!r}")
        return out

    # -- M2M data -------------------------------------------------------------------------------
    def _build_m2m(self) -> None:
        real = _load(
            self.shared, "m2m/landsatxplore_extracted_json/api_search_c2__0_scene-search.response.json"
        )
        self.datasets[OT_L2] = real["data"]["results"]
        template = real["data"]["results"][0]
        tm: list[dict[str, Any]] = []
        meta = _load(
            self.shared,
            "m2m/landsatxplore_extracted_json/api_scene_metadata_c2__0_scene-metadata.response.json",
        )["data"]
        for item in self._landsatlook_items(raw=True):
            props = item["properties"]
            pid = re.sub(r"_(SR|ST)$", "", item["id"])
            if not pid.startswith("LT05_L2"):
                continue
            if any(r["displayId"] == pid for r in tm):
                continue
            r = copy.deepcopy(template)
            w, s, e, n = item["bbox"]
            r.update(
                entityId=props["landsat:scene_id"],
                displayId=pid,
                cloudCover=f"{float(props['eo:cloud_cover']):.2f}",
                spatialBounds={"type": "Polygon", "coordinates": [[[w, s], [w, n], [e, n], [e, s], [w, s]]]},
                spatialCoverage=item["geometry"],
                temporalCoverage={
                    "startDate": f"{props['datetime'][:10]} 00:00:00",
                    "endDate": f"{props['datetime'][:10]} 00:00:00",
                },
            )
            for b in r["browse"]:
                for k in ("browsePath", "overlayPath", "thumbnailPath"):
                    b[k] = b[k].replace(template["displayId"].replace("L2SP", "L1GT"), pid)
            tm.append(r)
        # the recorded LT05 scene-metadata result, with its L2 product id
        m = {k: v for k, v in meta.items() if k != "metadata"}
        m["displayId"] = m["displayId"].replace("L1TP", "L2SP")
        tm.append(m)
        tm.sort(key=lambda r: r["temporalCoverage"]["startDate"])
        self.datasets[TM_L2] = tm
        self.bundles: dict[str, bytes] = {}
        for r in tm:
            self.bundles[r["displayId"]] = make_bundle(self.shared, r["displayId"])
            self.files[f"dds/{r['displayId']}.tar"] = self.bundles[r["displayId"]]

    def scene(self, dataset: str, display_id: str) -> dict[str, Any]:
        """The scene-search result of one scene."""
        return next(r for r in self.datasets[dataset] if r["displayId"] == display_id)

    def _options(self, dataset: str, entity_ids: list[str]) -> list[dict[str, Any]]:
        real = _load(self.shared, "m2m/kapadia_usgs/download-options.json")["data"]
        out = []
        for r in self.datasets.get(dataset, []):
            if r["entityId"] not in entity_ids:
                continue
            for o in real:
                o = copy.deepcopy(o)
                o.update(entityId=r["entityId"], displayId=r["displayId"])
                o["id"] = hashlib.md5(f"{r['entityId']}{o['productCode']}".encode()).hexdigest()[:16]
                if o["downloadSystem"] == "dds":
                    o["productName"] = "Landsat Collection 2 Level-2 Product Bundle"
                    o.pop("filesize", None)
                    o.update(self.bundle_facts(r["displayId"]))
                out.append(o)
        return out

    # -- STAC data ------------------------------------------------------------------------------
    def _landsatlook_items(self, *, raw: bool = False) -> Iterator[dict[str, Any]]:
        d = self.shared / "api" / "stac" / "usgs_landsatlook"
        for p in sorted(d.glob("*_SR_stac.json")):
            yield json.loads(p.read_text())
        yield json.loads((self.shared / "landsat" / SAMPLE / f"{SAMPLE}_SR_stac.json").read_text())

    def _build_stac(self) -> None:
        real_prefix = "https://landsatlook.usgs.gov/data/"
        ll: list[dict[str, Any]] = []
        for item in self._landsatlook_items():
            for key, a in item["assets"].items():
                if not a["href"].startswith(real_prefix):
                    continue
                rel = "landsatlook/" + a["href"][len(real_prefix) :]
                a["href"] = self.file_url(rel)
                if "alternate" in a:
                    a["alternate"]["s3"]["href"] = a["alternate"]["s3"][
                        "href"
                    ]  # unchanged: s3:// stays s3://
                suffix = ASSET_FILES.get(key) or (
                    key if key.endswith((".TIF", ".txt", ".xml", ".json")) else None
                )
                if suffix is None:
                    continue
                data = sample_file(self.shared, suffix)
                self.files[rel] = data
                if "file:checksum" in a:
                    a["file:checksum"] = multihash_sha512(data)
            for ln in item["links"]:
                if ln["rel"] == "self":
                    ln["href"] = f"{self.stac_url}/collections/landsat-c2l2-sr/items/{item['id']}"
            item["collection"] = "landsat-c2l2-sr"
            ll.append(item)
        self.stac_items["landsat-c2l2-sr"] = ll
        pc = _load(self.shared, "stac/planetary_computer_style/LT05_L2SP_010067_19860424_02_T2.json")
        for key, a in pc["assets"].items():
            name = a["href"].rsplit("/", 1)[-1]
            a["href"] = self.file_url(f"pc/{name}")
            suffix = ASSET_FILES.get(key)
            if suffix:
                self.files[f"pc/{name}"] = sample_file(self.shared, suffix)
        pc["links"] = [ln for ln in pc["links"] if ln["rel"] in ("cite-as", "via")]
        pc["links"].append(
            {"rel": "self", "href": f"{self.stac_url}/collections/landsat-c2-l2/items/{pc['id']}"}
        )
        self.stac_items["landsat-c2-l2"] = [pc]

    def stac_item(self, item_id: str) -> dict[str, Any]:
        """One served STAC item (mutable: tests may change it)."""
        return next(i for items in self.stac_items.values() for i in items if i["id"] == item_id)

    # -- M2M behaviour --------------------------------------------------------------------------
    def envelope(
        self, data: Any = None, code: str | None = None, message: str | None = None
    ) -> dict[str, Any]:
        """An M2M response envelope (the real field set)."""
        return {
            "requestId": next(self._req_counter),
            "version": "stable",
            "sessionId": 44801471,
            "data": data,
            "errorCode": code,
            "errorMessage": message,
        }

    def m2m(self, endpoint: str, body: dict[str, Any], key: str | None) -> tuple[int, Any]:
        """Answer one M2M call: ``(http status, json body or str for HTML)``."""
        with self.lock:
            queue = self.m2m_faults.get(endpoint) or []
            fault = queue.pop(0) if queue else None
        if fault == "HTTP500":
            return 500, "<html><body>Internal Server Error</body></html>"
        if fault == "HTML":
            return 200, "<html><body>Maintenance</body></html>"
        if fault and fault.startswith("REDIRECT"):
            status, _, base = fault.partition(":")
            return int(status[len("REDIRECT") :]), _Redirect(base)
        if fault and fault.startswith("ERROR:"):
            _, code, msg = fault.split(":", 2)
            return 200, self.envelope(None, code, msg.format(token=self.token, key=key or ""))
        if endpoint == "login-token":
            if body.get("username") != self.username or body.get("token") != self.token:
                return 200, self.envelope(None, "AUTH_INVALID", "User credential verification failed")
            new = f"eyJrZXkiOi{next(self._key_counter):04d}ZmFrZS1hcGkta2V5LXNlY3JldA=="
            with self.lock:
                self.keys.add(new)
                self.logins += 1
            return 200, self.envelope(new)
        if fault == "AUTH_EXPIRED":
            with self.lock:
                self.keys.discard(key or "")
            return 200, self.envelope(None, "AUTH_EXPIRED", "API key has expired")
        if fault == "RATE_LIMIT":
            return 200, self.envelope(None, "RATE_LIMIT", "Rate limit exceeded")
        if fault:
            return 200, self.envelope(None, fault, f"injected {fault}")
        if key not in self.keys:
            return 200, self.envelope(None, "AUTH_UNAUTHROIZED", "User does not have access")
        handler = getattr(self, "_ep_" + endpoint.replace("-", "_"), None)
        if handler is None:
            return 404, self.envelope(None, "UNKNOWN", f"unknown endpoint {endpoint}")
        return 200, handler(body, key)

    def _ep_logout(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        with self.lock:
            self.keys.discard(key)
        return self.envelope(None)

    def _ep_scene_search(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        ds = body.get("datasetName")
        if ds not in self.datasets:
            return self.envelope(None, "DATASET_INVALID", f"Invalid dataset name {ds}")
        f = body.get("sceneFilter") or {}
        hits = [r for r in self.datasets[ds] if _scene_matches(r, f)]
        start = int(body.get("startingNumber") or 1)
        n = int(body.get("maxResults") or 100)
        page = hits[start - 1 : start - 1 + n]
        real = _load(
            self.shared, "m2m/landsatxplore_extracted_json/api_search_c2__0_scene-search.response.json"
        )
        data = dict(real["data"])
        data.update(
            results=page,
            recordsReturned=len(page),
            totalHits=len(hits),
            startingNumber=start,
            nextRecord=start + len(page) if page else start,
        )
        return self.envelope(data)

    def _ep_scene_metadata(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        ds = body.get("datasetName")
        field_name = "displayId" if body.get("idType") == "displayId" else "entityId"
        for r in self.datasets.get(ds, []):
            if r[field_name] == body.get("entityId"):
                return self.envelope(r)
        return self.envelope(None, "ENTITY_INVALID", f"Entity {body.get('entityId')} not found")

    def _ep_download_options(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        return self.envelope(self._options(body.get("datasetName", ""), list(body.get("entityIds") or [])))

    def _ep_download_request(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        real = _load(self.shared, "m2m/kapadia_usgs/download-request.json")["data"]
        data = copy.deepcopy(real)
        data["preparingDownloads"], data["failed"], data["newRecords"] = [], [], {}
        label = str(body.get("label"))
        all_opts = {
            o["id"]: o
            for ds in self.datasets
            for o in self._options(ds, [r["entityId"] for r in self.datasets[ds]])
        }
        for d in body.get("downloads") or []:
            eid, prod = d.get("entityId"), d.get("productId")
            opt = all_opts.get(prod)
            if eid in self.fail_entities or opt is None or opt["entityId"] != eid:
                data["failed"].append(
                    {"entityId": eid, "productId": prod, "errorMessage": "Product not available"}
                )
                continue
            dl = next(self._dl_counter)
            with self.lock:
                self.orders.setdefault(label, []).append(
                    _Order(dl, eid, opt["displayId"], self.prepare_polls)
                )
            data["preparingDownloads"].append(
                {"downloadId": dl, "eulaCode": None, "url": f"{self.base}/staging/{dl}"}
            )
            data["newRecords"][str(dl)] = label
        return self.envelope(data)

    def _ep_download_retrieve(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        label = str(body.get("label"))
        available, requested = [], []
        with self.lock:
            for o in self.orders.get(label, []):
                entry = {
                    "downloadId": o.download_id,
                    "entityId": o.entity_id,
                    "displayId": o.display_id,
                    "label": label,
                    "eulaCode": None,
                    "statusCode": "P" if o.polls_left else "A",
                    "statusText": "Preparing" if o.polls_left else "Available",
                    "url": None,
                }
                if o.polls_left:
                    o.polls_left -= 1
                    requested.append(entry)
                else:
                    entry["url"] = self.file_url(f"dds/{o.display_id}.tar")
                    entry.update(self.bundle_facts(o.display_id))
                    available.append(entry)
        return self.envelope({"available": available, "requested": requested, "eulas": []})

    def _ep_download_order_remove(self, body: dict[str, Any], key: str) -> dict[str, Any]:
        with self.lock:
            self.orders.pop(str(body.get("label")), None)
        return self.envelope(None)

    # -- STAC behaviour -------------------------------------------------------------------------
    def stac_landing(self) -> dict[str, Any]:
        """The API landing page."""
        s = self.stac_url
        return {
            "type": "Catalog",
            "id": "fake-landsatlook",
            "stac_version": "1.0.0",
            "description": "loopback STAC API",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core",
                "https://api.stacspec.org/v1.0.0/item-search",
                "https://api.stacspec.org/v1.0.0/item-search#query",
                "https://api.stacspec.org/v1.0.0/collections",
                "https://api.stacspec.org/v1.0.0/ogcapi-features",
                "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
                "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
            ],
            "links": [
                {"rel": "self", "href": s, "type": "application/json"},
                {"rel": "root", "href": s, "type": "application/json"},
                {"rel": "conformance", "href": f"{s}/conformance"},
                {"rel": "data", "href": f"{s}/collections"},
                {"rel": "search", "href": f"{s}/search", "method": "GET", "type": "application/geo+json"},
                {"rel": "search", "href": f"{s}/search", "method": "POST", "type": "application/geo+json"},
            ],
        }

    def stac_collection(self, cid: str) -> dict[str, Any]:
        """A minimal collection document."""
        return {
            "type": "Collection",
            "id": cid,
            "stac_version": "1.0.0",
            "description": cid,
            "license": "proprietary",
            "extent": {
                "spatial": {"bbox": [[-180, -90, 180, 90]]},
                "temporal": {"interval": [["1982-08-22T00:00:00Z", None]]},
            },
            "links": [{"rel": "self", "href": f"{self.stac_url}/collections/{cid}"}],
        }

    def stac_search(self, params: dict[str, Any]) -> dict[str, Any]:
        """An ItemCollection page for the search parameters (bbox, datetime, query, ids, paging)."""
        cols = params.get("collections") or list(self.stac_items)
        if isinstance(cols, str):
            cols = cols.split(",")
        items = [i for c in cols for i in self.stac_items.get(c, [])]
        bbox = params.get("bbox")
        if isinstance(bbox, str):
            bbox = [float(v) for v in bbox.split(",")]
        if bbox is None and params.get("intersects"):
            bbox = _geom_bbox(params["intersects"])
        ids = params.get("ids")
        if isinstance(ids, str):
            ids = ids.split(",")
        out = []
        for it in items:
            if ids and it["id"] not in ids:
                continue
            if bbox and not _bbox_overlap(bbox, it["bbox"]):
                continue
            if params.get("datetime") and not _in_interval(it["properties"]["datetime"], params["datetime"]):
                continue
            if not _query_ok(it["properties"], params.get("query") or {}):
                continue
            out.append(it)
        limit = int(params.get("limit") or 10)
        if self.page_limit:
            limit = min(limit, self.page_limit)
        start = int(params.get("token") or 0)
        page = out[start : start + limit]
        links = []
        if start + limit < len(out):
            nxt = dict(params)
            nxt["token"] = str(start + limit)
            links.append({"rel": "next", "href": f"{self.stac_url}/search", "method": "POST", "body": nxt})
        return {"type": "FeatureCollection", "features": page, "links": links, "numberMatched": len(out)}


def _geom_bbox(g: dict[str, Any]) -> list[float]:
    xs: list[float] = []
    ys: list[float] = []

    def walk(c: Any) -> None:
        if c and isinstance(c[0], int | float):
            xs.append(c[0])
            ys.append(c[1])
        else:
            for s in c:
                walk(s)

    walk(g["coordinates"])
    return [min(xs), min(ys), max(xs), max(ys)]


def _bbox_overlap(a: list[float], b: list[float]) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def _in_interval(dt: str, interval: str) -> bool:
    d = dt[:10]
    s, _, e = interval.partition("/")
    return (s in ("", "..") or d >= s[:10]) and (e in ("", "..") or d <= e[:10])


def _query_ok(props: dict[str, Any], q: dict[str, Any]) -> bool:
    for k, ops in q.items():
        v = props.get(k)
        for op, x in ops.items():
            if v is None:
                return False
            if (
                (op == "lte" and not v <= x)
                or (op == "gte" and not v >= x)
                or (op == "eq" and v != x)
                or (op == "in" and v not in x)
            ):
                return False
    return True


def _scene_matches(r: dict[str, Any], f: dict[str, Any]) -> bool:
    d = r["temporalCoverage"]["startDate"][:10]
    acq = f.get("acquisitionFilter")
    if acq and not (acq["start"] <= d <= acq["end"]):
        return False
    cc = f.get("cloudCoverFilter")
    if cc and not (cc.get("min", 0) <= float(r["cloudCover"]) <= cc.get("max", 100)):
        return False
    months = f.get("seasonalFilter")
    if months and date.fromisoformat(d).month not in months:
        return False
    sp = f.get("spatialFilter")
    if sp:
        if sp["filterType"] == "mbr":
            ll, ur = sp["lowerLeft"], sp["upperRight"]
            box = [ll["longitude"], ll["latitude"], ur["longitude"], ur["latitude"]]
        else:
            box = _geom_bbox(sp["geoJson"])
        if not _bbox_overlap(box, _geom_bbox(r["spatialBounds"])):
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    server_state: USGSServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    def _record(self, body: Any) -> Logged:
        entry = Logged(self.command, urlsplit(self.path).path, dict(self.headers.items()), body)
        with self.server_state.lock:
            self.server_state.log.append(entry)
        return entry

    def _json(self, status: int, payload: Any, entry: Logged, ctype: str = "application/json") -> None:
        raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        if isinstance(payload, str):
            ctype = "text/html"
        entry.status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return raw

    def do_POST(self) -> None:  # noqa: N802
        st = self.server_state
        body = self._body()
        path = urlsplit(self.path).path
        entry = self._record(body)
        if path.startswith("/m2m/api/json/stable/"):
            endpoint = path.rsplit("/", 1)[-1]
            status, payload = st.m2m(
                endpoint, body if isinstance(body, dict) else {}, self.headers.get("X-Auth-Token")
            )
            if isinstance(payload, _Redirect):
                entry.status = status
                self.send_response(status)
                self.send_header("Location", payload.base.rstrip("/") + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._json(status, payload, entry)
        elif path == "/stac/search":
            self._json(200, st.stac_search(body), entry, "application/geo+json")
        else:
            self._json(404, {"error": "not found"}, entry)

    def do_GET(self) -> None:  # noqa: N802
        st = self.server_state
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        entry = self._record(None)
        try:
            if path.startswith("/files/"):
                self._file(path[len("/files/") :], entry)
            elif path == "/stac":
                self._json(200, st.stac_landing(), entry)
            elif path == "/stac/conformance":
                self._json(200, {"conformsTo": st.stac_landing()["conformsTo"]}, entry)
            elif path == "/stac/collections":
                cols = [st.stac_collection(c) for c in st.stac_items]
                self._json(200, {"collections": cols, "links": []}, entry)
            elif m := re.fullmatch(r"/stac/collections/([^/]+)/items/([^/]+)", path):
                self._json(200, st.stac_item(m.group(2)), entry, "application/geo+json")
            elif m := re.fullmatch(r"/stac/collections/([^/]+)", path):
                self._json(200, st.stac_collection(m.group(1)), entry)
            elif path == "/stac/search":
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if "query" in q:
                    q["query"] = json.loads(q["query"])
                if "intersects" in q:
                    q["intersects"] = json.loads(q["intersects"])
                self._json(200, st.stac_search(q), entry, "application/geo+json")
            else:
                self._json(404, {"error": "not found"}, entry)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except StopIteration:
            self._json(404, {"error": "no such item"}, entry)

    def _file(self, rel: str, entry: Logged) -> None:
        st = self.server_state
        data = st.files.get(rel)
        if data is None:
            self._json(404, {"error": f"no file {rel}"}, entry)
            return
        with st.lock:
            queue = st.faults.get(rel) or []
            fault = queue.pop(0) if queue else st.always.get(rel)
        if fault in ("500", "503", "404"):
            self._json(int(fault), {"error": f"injected {fault}"}, entry)
            return
        if fault and fault.startswith("429"):
            entry.status = 429
            self.send_response(429)
            self.send_header("Retry-After", fault.split(":", 1)[1] if ":" in fault else "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault == "html":
            page = "<html><head><title>Error</title></head><body><h1>Download unavailable</h1>"
            page += "<p>" + "The requested file could not be delivered. " * 22 + "</p></body></html>"
            self._json(200, page, entry)
            return
        if fault == "corrupt":
            i = len(data) // 3
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        start = 0
        rng = self.headers.get("Range")
        if rng and fault != "norange":
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            start = int(m.group(1)) if m else 0
            if start >= len(data):
                entry.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        entry.status = 206 if start else 200
        self.send_response(entry.status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if fault in ("reset", "truncate") or (fault or "").startswith("slow"):
            half = len(body) // 2
            self.wfile.write(body[:half])
            self.wfile.flush()
            if fault == "reset":
                time.sleep(0.05)  # let the client read what was sent before the RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            elif fault == "truncate":
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                time.sleep(float(fault.split(":", 1)[1]))
                self.wfile.write(body[half:])
            return
        self.wfile.write(body)


@dataclass(frozen=True)
class _Redirect:
    base: str


def posix_cksum(data: bytes) -> str:
    """``cksum``'s output for ``data`` (``"CRC SIZE"``), from the coreutils program itself."""
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        out = subprocess.run(["cksum", f.name], capture_output=True, text=True, check=True).stdout
    crc, size, _ = out.split(maxsplit=2)
    return f"{crc} {size}"


class RecordingServer:
    """A second loopback HTTP server (its own port: another origin) that records what it receives.

    It answers every request with a successful M2M envelope holding a fake API key, as a
    hostile host would, so a client that followed a redirect here would carry on.
    """

    def __init__(self) -> None:
        self.log: list[Logged] = []
        self.lock = threading.Lock()

    def __enter__(self) -> RecordingServer:
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with state.lock:
                    state.log.append(Logged(self.command, self.path, dict(self.headers.items()), body, 200))
                raw = json.dumps({"data": "stolen-key", "errorCode": None, "errorMessage": None}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _answer  # noqa: N815

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def now_iso() -> str:
    """Current time, for logs."""
    return datetime.now().isoformat(timespec="seconds")
