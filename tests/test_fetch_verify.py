"""Issue 17: M2M downloads verified with what USGS provides; credentials never follow a redirect away.

Everything runs against the real loopback servers of ``usgs_server.py``.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from usgs_server import TM_L2, RecordingServer, USGSServer, posix_cksum

from landcover.cli import main
from landcover.errors import FetchError
from landcover.fetch import Credentials, M2MClient, RetryPolicy, SceneQuery, Secret
from landcover.fetch.download import Checksum, archive_problem
from landcover.fetch.m2m import checksum_of

TARGET = "LT05_L2SP_090084_19980308_20200909_02_T1"
FAST = ["--attempts", "2", "--backoff", "0.01", "--read-timeout", "2", "--poll-interval", "0.01"]
RETRY = RetryPolicy(attempts=2, backoff=0.01, backoff_max=0.02, connect_timeout=2.0, read_timeout=2.0)


@pytest.fixture()
def creds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LANDCOVER_USGS_USERNAME", "tester")
    monkeypatch.setenv("LANDCOVER_USGS_TOKEN", "app-token-5ecr3t-0123456789abcdef")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _download(srv: USGSServer, out: Path, *extra: str) -> int:
    argv = ["fetch", "download", "--m2m-url", srv.m2m_url, "--path-row", "090/084", "--start", "1998-01-01"]
    return main([*argv, "--out", str(out), *FAST, *extra])


def test_posix_cksum_matches_coreutils() -> None:
    rng = __import__("random").Random(1)
    for n in (0, 1, 12, 255, 256, 70_001):
        data = bytes(rng.getrandbits(8) for _ in range(n))
        want = Checksum.from_cksum(posix_cksum(data))
        h = want.new()
        h.update(data[: n // 3])
        h.update(data[n // 3 :])
        assert h.hexdigest() == want.hexdigest, n
    assert checksum_of({"cksum": "3733384285 12"}) == Checksum("cksum", f"{3733384285:08x}")
    assert checksum_of({"md5": "0" * 32, "sha256sum": "a" * 64}) == Checksum("sha256", "a" * 64)
    assert checksum_of({"sha256sum": "not-hex", "md5": "b" * 32}) == Checksum("md5", "b" * 32)
    assert checksum_of({"filesize": 10}) is None


@pytest.mark.parametrize("field", ["sha256sum", "md5", "cksum"])
def test_same_size_corrupt_bundle_is_refused_by_the_usgs_checksum(
    shared_data: Path, creds: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    with USGSServer(shared_data, prepare_polls=0, checksum_fields=(field,)) as srv:
        srv.always[f"dds/{TARGET}.tar"] = "corrupt"
        out = tmp_path / "scenes"
        assert _download(srv, out) == 1
        err = capsys.readouterr().err
        assert "checksum mismatch" in err and TARGET in err
        assert not (out / f"{TARGET}.tar").exists() and not list(out.glob("*.part"))
        del srv.always[f"dds/{TARGET}.tar"]
        assert _download(srv, out) == 0
        assert (out / f"{TARGET}.tar").read_bytes() == srv.bundles[TARGET]


@pytest.mark.parametrize("send_filesize", [True, False])
def test_html_error_page_is_never_kept_as_a_bundle(
    shared_data: Path, creds: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], send_filesize: bool
) -> None:
    """With USGS's filesize the size catches it; without any size or checksum, the tar check does."""
    with USGSServer(shared_data, prepare_polls=0, send_filesize=send_filesize) as srv:
        srv.always[f"dds/{TARGET}.tar"] = "html"
        out = tmp_path / "scenes"
        assert _download(srv, out) == 1
        err = capsys.readouterr().err
        assert ("expected" in err) if send_filesize else ("not a complete tar archive" in err)
        assert not (out / f"{TARGET}.tar").exists()
        manifest = json.loads((out / "manifest.json").read_text())["scenes"]
        assert manifest[TARGET]["status"] == "failed" and not manifest[TARGET].get("files")


def test_truncated_tar_without_checksum_is_refused(tmp_path: Path, shared_data: Path) -> None:
    from usgs_server import make_bundle

    whole = make_bundle(shared_data, TARGET)
    (tmp_path / "ok.tar").write_bytes(whole)
    (tmp_path / "cut.tar").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.tar").write_bytes(b"\0" * 10240)
    assert archive_problem(tmp_path / "ok.tar") is None
    assert archive_problem(tmp_path / "cut.tar") is not None
    assert archive_problem(tmp_path / "empty.tar") == "no members"


def test_bundle_that_failed_extraction_is_downloaded_again(
    shared_data: Path, creds: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with USGSServer(shared_data, prepare_polls=0) as srv:
        good = srv.bundles[TARGET]
        srv.bundles[TARGET] = srv.files[f"dds/{TARGET}.tar"] = buf.getvalue()
        out = tmp_path / "scenes"
        assert _download(srv, out, "--extract") == 1
        assert "unsafe member" in capsys.readouterr().err
        srv.bundles[TARGET] = srv.files[f"dds/{TARGET}.tar"] = good  # USGS fixed the bundle
        n = len(srv.requests_to(f"/files/dds/{TARGET}.tar"))
        assert _download(srv, out, "--extract") == 0
        assert len(srv.requests_to(f"/files/dds/{TARGET}.tar")) == n + 1  # fetched again, not trusted
        assert (out / f"{TARGET}.tar").read_bytes() == good and (out / TARGET).is_dir()


@pytest.mark.parametrize("status", [307, 308])
def test_credentials_never_follow_a_redirect_to_another_origin(shared_data: Path, status: int) -> None:
    with USGSServer(shared_data) as srv, RecordingServer() as other:
        api = M2MClient(Credentials(srv.username, Secret(srv.token), "test"), url=srv.m2m_url, retry=RETRY)
        srv.m2m_faults["login-token"] = [f"REDIRECT{status}:{other.base}"]
        with pytest.raises(FetchError, match="another origin") as info:
            api.login()
        assert srv.token not in str(info.value)
        api.login()  # the fault was consumed: a normal login
        srv.m2m_faults["scene-search"] = [f"REDIRECT{status}:{other.base}"]
        with pytest.raises(FetchError, match="not followed"):
            api.scene_search(TM_L2, SceneQuery(path_rows=((90, 84),)))
        assert other.log == []  # neither the login body nor X-Auth-Token reached the other port
        # a redirect within the API's own origin is still followed, credentials and all
        srv.m2m_faults["scene-search"] = [f"REDIRECT{status}:{srv.base}"]
        assert [r.product_id for r in api.scene_search(TM_L2, SceneQuery(path_rows=((90, 84),)))]
        api.logout()


def test_download_urls_get_no_credentials(shared_data: Path, creds: None, tmp_path: Path) -> None:
    with USGSServer(shared_data, prepare_polls=0) as srv:
        assert _download(srv, tmp_path / "s") == 0
        for r in srv.requests_to("/files/"):
            assert "X-Auth-Token" not in r.headers and srv.token not in json.dumps(r.headers)
    assert os.environ["LANDCOVER_USGS_TOKEN"] == srv.token
