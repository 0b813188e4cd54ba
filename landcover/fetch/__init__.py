"""Scripted Landsat search and download from USGS (M2M API or STAC), verified and resumable.

Typical use::

    from landcover.fetch import FetchConfig, fetch, load_credentials
    creds = load_credentials(env=os.environ, netrc_path="~/.netrc")
    summary = fetch(FetchConfig(bbox=(5.8, 50.4, 6.6, 51.1), start="1990-01-01", end="1995-12-31",
                                max_cloud=20, out=Path("scenes")), credentials=creds)
"""

from __future__ import annotations

from .archive import safe_extract
from .credentials import Credentials, Secret, load_credentials, redact
from .download import (
    Checksum,
    DownloadError,
    DownloadReport,
    DownloadTask,
    RetryPolicy,
    download_all,
    download_file,
    tasks_for_records,
)
from .job import FetchConfig, FetchSummary, fetch, search
from .m2m import DATASETS, M2M_URL, M2MClient, dataset_name
from .manifest import Manifest
from .query import AssetRef, SceneQuery, SceneRecord
from .stac import STAC_URL, record_from_item, stac_search

__all__ = [
    "AssetRef",
    "Checksum",
    "Credentials",
    "DATASETS",
    "DownloadError",
    "DownloadReport",
    "DownloadTask",
    "FetchConfig",
    "FetchSummary",
    "M2MClient",
    "M2M_URL",
    "Manifest",
    "RetryPolicy",
    "STAC_URL",
    "SceneQuery",
    "SceneRecord",
    "Secret",
    "dataset_name",
    "download_all",
    "download_file",
    "fetch",
    "load_credentials",
    "record_from_item",
    "redact",
    "safe_extract",
    "search",
    "stac_search",
    "tasks_for_records",
]
