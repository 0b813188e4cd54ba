"""Downloads against a real loopback HTTP server with injected faults; manifest; safe tar extraction."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from usgs_server import SAMPLE, USGSServer, multihash_sha512, sample_file

from landcover.errors import InputFileError
from landcover.fetch import (
    Checksum,
    DownloadTask,
    Manifest,
    RetryPolicy,
    download_all,
    download_file,
    safe_extract,
)
from landcover.fetch.download import DownloadError

FAST = RetryPolicy(
    attempts=4, backoff=0.01, backoff_max=0.05, jitter=0.5, connect_timeout=2.0, read_timeout=1.0
)
CHUNK = 1024


@pytest.fixture()
def server(shared_data: Path):
    with USGSServer(shared_data) as srv:
        yield srv


@pytest.fixture()
def b1(shared_data: Path) -> bytes:
    return sample_file(shared_data, "SR_B1.TIF")


def _task(
    srv: USGSServer, name: str, data: bytes, *, scene: str = "S1", checksum: bool = True, size: bool = True
):
    url = srv.add_file(name, data)
    chk = Checksum("sha256", hashlib.sha256(data).hexdigest()) if checksum else None
    return DownloadTask(url, Path(scene) / name, scene, len(data) if size else None, chk)


def _gets(srv: USGSServer, name: str):
    return [r for r in srv.requests_to(f"/files/{name}") if r.method == "GET"]


# -- checksums -------------------------------------------------------------------------------


def test_checksum_parses_usgs_multihash_and_prefixed_forms(b1: bytes) -> None:
    mh = multihash_sha512(b1)
    c = Checksum.parse(mh)
    assert c.algorithm == "sha512" and c.hexdigest == hashlib.sha512(b1).hexdigest()
    assert c.multihash() == mh
    s256 = Checksum.parse("1220" + hashlib.sha256(b1).hexdigest())
    assert s256.algorithm == "sha256"
    assert Checksum.parse("md5:" + hashlib.md5(b1).hexdigest()).algorithm == "md5"
    assert Checksum.parse("d50110" + hashlib.md5(b1).hexdigest()).algorithm == "md5"
    assert Checksum.parse(hashlib.sha256(b1).hexdigest()).algorithm == "sha256"
    with pytest.raises(ValueError):
        Checksum.parse("zz-not-hex")
    with pytest.raises(ValueError):
        Checksum("sha256", "abc")


def test_real_usgs_item_checksums_parse(shared_data: Path) -> None:
    """Every file:checksum in the real LandsatLook items is a sha2-512 multihash we understand."""
    n = 0
    for p in (shared_data / "api/stac/usgs_landsatlook").glob("*.json"):
        for a in json.loads(p.read_text())["assets"].values():
            if "file:checksum" in a:
                assert Checksum.parse(a["file:checksum"]).algorithm == "sha512"
                n += 1
    assert n > 20


# -- single file -------------------------------------------------------------------------------


def test_clean_download_is_exact_and_atomic(server: USGSServer, b1: bytes, tmp_path: Path) -> None:
    task = _task(server, "b1.tif", b1)
    res = download_file(task, tmp_path / "b1.tif", retry=FAST, chunk_size=CHUNK)
    assert (tmp_path / "b1.tif").read_bytes() == b1
    assert res.sha256 == hashlib.sha256(b1).hexdigest() and res.attempts == 1 and not res.resumed
    assert not (tmp_path / "b1.tif.part").exists()


@pytest.mark.parametrize("fault", ["reset", "truncate"])
def test_mid_body_failure_resumes_with_range(
    server: USGSServer, b1: bytes, tmp_path: Path, fault: str
) -> None:
    task = _task(server, "b1.tif", b1)
    server.faults["b1.tif"] = [fault]
    res = download_file(task, tmp_path / "b1.tif", retry=FAST, chunk_size=CHUNK)
    assert (tmp_path / "b1.tif").read_bytes() == b1
    gets = _gets(server, "b1.tif")
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    assert gets[1].headers["Range"].startswith("bytes=") and gets[1].status == 206
    offset = int(gets[1].headers["Range"][6:-1])
    assert 0 < offset < len(b1)
    assert res.resumed and res.attempts == 2


def test_server_ignoring_range_restarts_cleanly(server: USGSServer, b1: bytes, tmp_path: Path) -> None:
    task = _task(server, "b1.tif", b1)
    server.faults["b1.tif"] = ["truncate", "norange"]
    download_file(task, tmp_path / "b1.tif", retry=FAST, chunk_size=CHUNK)
    assert (tmp_path / "b1.tif").read_bytes() == b1  # not the prefix twice


@pytest.mark.parametrize("fault", ["500", "503", "slow:3"])
def test_transient_errors_are_retried(server: USGSServer, b1: bytes, tmp_path: Path, fault: str) -> None:
    task = _task(server, "b1.tif", b1)
    server.faults["b1.tif"] = [fault, fault]
    res = download_file(task, tmp_path / "b1.tif", retry=FAST, chunk_size=CHUNK)
    assert (tmp_path / "b1.tif").read_bytes() == b1
    assert res.attempts == 3


def test_429_honours_retry_after(server: USGSServer, b1: bytes, tmp_path: Path) -> None:
    task = _task(server, "b1.tif", b1)
    server.faults["b1.tif"] = ["429:7"]
    waits: list[float] = []
    download_file(task, tmp_path / "b1.tif", retry=FAST, chunk_size=CHUNK, sleep=waits.append)
    assert waits == [7.0]  # the server's delay, not the tiny backoff
    assert (tmp_path / "b1.tif").read_bytes() == b1


def test_backoff_grows_exponentially_with_jitter() -> None:
    import random

    pol = RetryPolicy(backoff=1.0, backoff_max=10.0, jitter=0.25)
    rng = random.Random(0)
    d = [pol.delay(i, rng=rng) for i in range(1, 7)]
    for i, v in enumerate(d, start=1):
        base = min(2 ** (i - 1), 10.0)
        assert 0.75 * base <= v <= 1.25 * base
    assert len({round(v, 6) for v in d}) == len(d)
    assert pol.delay(3, retry_after=4000.0) == pol.max_retry_after


def test_wrong_checksum_is_never_accepted(server: USGSServer, b1: bytes, tmp_path: Path) -> None:
    task = _task(server, "b1.tif", b1)
    server.always["b1.tif"] = "corrupt"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_file(task, tmp_path / "b1.tif", retry=FAST, chunk_size=CHUNK)
    assert not (tmp_path / "b1.tif").exists()
    assert not (tmp_path / "b1.tif.part").exists()
    assert len(_gets(server, "b1.tif")) == FAST.attempts


def test_one_corrupt_transfer_then_good(server: USGSServer, b1: bytes, tmp_path: Path) -> None:
    task = _task(server, "b1.tif", b1)
    server.faults["b1.tif"] = ["corrupt"]
    res = download_file(task, tmp_path / "b1.tif", retry=FAST, chunk_size=CHUNK)
    assert (tmp_path / "b1.tif").read_bytes() == b1 and res.attempts == 2


def test_size_mismatch_with_known_size_rejected(server: USGSServer, b1: bytes, tmp_path: Path) -> None:
    url = server.add_file("b1.tif", b1)
    task = DownloadTask(url, Path("b1.tif"), "S", size=len(b1) + 10)
    with pytest.raises(DownloadError, match="expected"):
        download_file(task, tmp_path / "b1.tif", retry=FAST, chunk_size=CHUNK)
    assert not (tmp_path / "b1.tif").exists()


def test_truncation_without_known_size_still_caught(server: USGSServer, b1: bytes, tmp_path: Path) -> None:
    """No size/checksum known: Content-Length alone must catch a short body (then resume)."""
    task = _task(server, "b1.tif", b1, checksum=False, size=False)
    server.always["b1.tif"] = "truncate"
    with pytest.raises(DownloadError):
        download_file(task, tmp_path / "b1.tif", retry=FAST, chunk_size=CHUNK)
    assert not (tmp_path / "b1.tif").exists()
    part = tmp_path / "b1.tif.part"
    assert part.exists() and b1.startswith(part.read_bytes())  # a consistent prefix, kept for resume


def test_404_is_permanent(server: USGSServer, tmp_path: Path) -> None:
    task = DownloadTask(server.file_url("missing.tif"), Path("m.tif"), "S")
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(task, tmp_path / "m.tif", retry=FAST)
    assert len(_gets(server, "missing.tif")) == 1


def test_complete_part_file_gets_416_and_is_verified(server: USGSServer, b1: bytes, tmp_path: Path) -> None:
    task = _task(server, "b1.tif", b1)
    (tmp_path / "b1.tif.part").write_bytes(b1)
    download_file(task, tmp_path / "b1.tif", retry=FAST)
    assert (tmp_path / "b1.tif").read_bytes() == b1
    assert _gets(server, "b1.tif")[0].status == 416


def test_stale_corrupt_part_is_not_trusted(server: USGSServer, b1: bytes, tmp_path: Path) -> None:
    task = _task(server, "b1.tif", b1)
    (tmp_path / "b1.tif.part").write_bytes(b"\0" * 100)  # garbage prefix from elsewhere
    download_file(task, tmp_path / "b1.tif", retry=FAST, chunk_size=CHUNK)
    assert (tmp_path / "b1.tif").read_bytes() == b1


def test_s3_url_without_boto3_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "boto3", None)  # as if boto3 were not installed
    task = DownloadTask("s3://usgs-landsat/collection02/x.TIF", Path("x.TIF"), "S")
    with pytest.raises(DownloadError, match="boto3.*not installed"):
        download_file(task, tmp_path / "x.TIF", retry=FAST)
    assert not (tmp_path / "x.TIF").exists()


# -- many files, manifest ------------------------------------------------------------------------


def test_parallel_batch_with_faults_one_scene_fails_others_complete(
    server: USGSServer, shared_data: Path, tmp_path: Path
) -> None:
    files = {suf: sample_file(shared_data, suf) for suf in ("SR_B1.TIF", "SR_B2.TIF", "SR_B3.TIF", "MTL.txt")}
    tasks = []
    for scene in ("A", "B", "C"):
        for suf, data in files.items():
            tasks.append(_task(server, f"{scene}_{suf}", data, scene=scene))
    server.faults["A_SR_B1.TIF"] = ["reset"]
    server.faults["A_SR_B2.TIF"] = ["503", "429:0"]
    server.faults["B_MTL.txt"] = ["truncate", "slow:3"]
    server.always["C_SR_B3.TIF"] = "corrupt"
    out = tmp_path / "out"
    report = download_all(tasks, out_dir=out, workers=4, retry=FAST, progress=False, chunk_size=CHUNK, seed=1)
    assert sorted(report.completed) == ["A", "B"]
    assert list(report.failed) == ["C"] and "checksum mismatch" in report.failed["C"]
    for scene in ("A", "B"):
        for suf, data in files.items():
            assert (out / scene / f"{scene}_{suf}").read_bytes() == data
    assert not (out / "C" / "C_SR_B3.TIF").exists()
    for p in out.rglob("*"):
        if p.is_file() and p.suffix != ".part" and p.name != "manifest.json":
            assert p.read_bytes() == files[p.name.split("_", 1)[1]]  # nothing corrupt on disk
    m = json.loads((out / "manifest.json").read_text())
    assert m["scenes"]["A"]["status"] == "complete" and m["scenes"]["C"]["status"] == "failed"
    assert (
        m["scenes"]["A"]["files"]["A/A_SR_B1.TIF"]["sha256"] == hashlib.sha256(files["SR_B1.TIF"]).hexdigest()
    )

    # rerun: A and B are skipped without a request; C is retried (and now succeeds)
    n_before = len(server.log)
    del server.always["C_SR_B3.TIF"]
    report2 = download_all(tasks, out_dir=out, workers=2, retry=FAST, progress=False, chunk_size=CHUNK)
    assert sorted(report2.skipped) == ["A", "B"] and report2.completed == ["C"]
    new = [r.path for r in server.log[n_before:]]
    assert all(p.startswith("/files/C_") for p in new)
    # files of C verified in the first run are not fetched again either
    assert new == ["/files/C_SR_B3.TIF"]
    assert Manifest.in_dir(out).is_complete("C", verify=True)


def test_manifest_detects_missing_or_changed_files(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "manifest.json")
    (tmp_path / "S").mkdir()
    f = tmp_path / "S" / "x.bin"
    f.write_bytes(b"hello world")
    m.record_file("S", "S/x.bin", {"size": 11, "sha256": hashlib.sha256(b"hello world").hexdigest()})
    m.set_status("S", "complete")
    m2 = Manifest(tmp_path / "manifest.json")  # reread from disk
    assert m2.is_complete("S", verify=True)
    f.write_bytes(b"hello wOrld")
    assert m2.is_complete("S") and not m2.is_complete("S", verify=True)
    f.unlink()
    assert not m2.is_complete("S")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputFileError, match="manifest.json"):
        Manifest(tmp_path / "manifest.json")


# -- safe extraction -----------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, **kw: object) -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(i, k, v)
    return i


def test_safe_extract_real_bundle(shared_data: Path, tmp_path: Path) -> None:
    from usgs_server import make_bundle

    pid = SAMPLE
    tar = tmp_path / f"{pid}.tar"
    tar.write_bytes(make_bundle(shared_data, pid, suffixes=("SR_B1.TIF", "QA_PIXEL.TIF", "MTL.txt")))
    files = safe_extract(tar, tmp_path / pid)
    assert sorted(p.name for p in files) == sorted(
        f"{pid}_{s}" for s in ("SR_B1.TIF", "QA_PIXEL.TIF", "MTL.txt")
    )
    assert (tmp_path / pid / f"{pid}_SR_B1.TIF").read_bytes() == sample_file(shared_data, "SR_B1.TIF")
    import rasterio

    with rasterio.open(tmp_path / pid / f"{pid}_SR_B1.TIF") as ds:
        assert ds.shape == (60, 60)


@pytest.mark.parametrize(
    ("member", "data"),
    [
        (_info("../evil.txt"), b"x"),
        (_info("/etc/evil.txt"), b"x"),
        (_info("ok/../../evil.txt"), b"x"),
        (_info("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), None),
        (_info("link", type=tarfile.SYMTYPE, linkname="../../outside"), None),
        (_info("hard", type=tarfile.LNKTYPE, linkname="../outside"), None),
        (_info("dev", type=tarfile.CHRTYPE), None),
        (_info("fifo", type=tarfile.FIFOTYPE), None),
    ],
    ids=[
        "dotdot",
        "absolute",
        "nested-dotdot",
        "symlink-abs",
        "symlink-out",
        "hardlink-out",
        "chardev",
        "fifo",
    ],
)
def test_safe_extract_rejects_traversal(tmp_path: Path, member: tarfile.TarInfo, data: bytes | None) -> None:
    tar = _tar(tmp_path / "bad.tar", [(_info("good.txt"), b"fine"), (member, data)])
    with pytest.raises(InputFileError, match="unsafe member"):
        safe_extract(tar, tmp_path / "out" / "scene")
    assert not (tmp_path / "out" / "scene").exists()
    assert not list((tmp_path / "out").glob("*"))  # no partial directory left behind
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_safe_extract_allows_internal_symlink(tmp_path: Path) -> None:
    tar = _tar(
        tmp_path / "ok.tar",
        [(_info("d/a.txt"), b"A"), (_info("d/b.txt", type=tarfile.SYMTYPE, linkname="a.txt"), None)],
    )
    safe_extract(tar, tmp_path / "x")
    assert (tmp_path / "x" / "d" / "a.txt").read_bytes() == b"A"


def test_safe_extract_garbage_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "junk.tar"
    bad.write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(InputFileError, match="junk.tar"):
        safe_extract(bad, tmp_path / "x")


def test_safe_extract_never_replaces_a_folder_landcover_did_not_extract(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "p.tar", [(_info("a.txt"), b"A")])
    user = tmp_path / "scene"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(InputFileError, match="not extracted by landcover"):
        safe_extract(tar, user, overwrite=True)
    assert (user / "notes.txt").read_text() == "mine" and not (user / "a.txt").exists()
    # a folder landcover extracted earlier is replaced
    safe_extract(tar, tmp_path / "ours")
    (tmp_path / "ours" / "a.txt").write_bytes(b"stale")
    safe_extract(tar, tmp_path / "ours", overwrite=True)
    assert (tmp_path / "ours" / "a.txt").read_bytes() == b"A"
