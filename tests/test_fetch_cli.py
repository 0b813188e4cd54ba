"""``landcover fetch`` and ``pipelines/fetch_scenes.py`` end to end against the loopback USGS server."""

from __future__ import annotations

import json
import logging
import sys
import tarfile
from pathlib import Path

import pytest
from usgs_server import TM_L2, USGSServer, sample_file

from landcover.cli import main

REPO = Path(__file__).resolve().parents[1]
TARGET = "LT05_L2SP_090084_19980308_20200909_02_T1"
OTHER = "LT05_L2SP_010067_19860424_20200918_02_T2"
FAILING = "LT05_L2SR_087017_20090621_20200827_02_T2"
FAST = ["--attempts", "3", "--backoff", "0.01", "--read-timeout", "2", "--poll-interval", "0.01"]


@pytest.fixture()
def server(shared_data: Path):
    with USGSServer(shared_data, prepare_polls=1) as srv:
        yield srv


@pytest.fixture()
def creds(server: USGSServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LANDCOVER_USGS_USERNAME", server.username)
    monkeypatch.setenv("LANDCOVER_USGS_TOKEN", server.token)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no real ~/.netrc is ever read


def _m2m(server: USGSServer) -> list[str]:
    return ["--m2m-url", server.m2m_url]


@pytest.fixture()
def fast_cfg(tmp_path: Path) -> list[str]:
    """Tiny chunks (so a dropped transfer keeps a prefix to resume) and no 3 s RATE_LIMIT wait."""
    cfg = tmp_path / "fast.toml"
    cfg.write_text("[fetch]\nchunk_size = 1024\nrate_limit_wait = 0.01\nattempts = 4\n")
    return ["--config", str(cfg)]


def test_search_table_and_json(server: USGSServer, creds: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "fetch",
                "search",
                *_m2m(server),
                "--start",
                "1980-01-01",
                "--end",
                "2020-12-31",
                "--max-cloud",
                "25",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert TARGET in out and OTHER in out and "090/084" in out and "3 scene(s)" in out
    assert "LT05_L2SP_010020" not in out  # 53 % cloud
    assert (
        main(["fetch", "search", *_m2m(server), "--path-row", "090/084", "--start", "1998-01-01", "--json"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert [d["product_id"] for d in data] == [TARGET]
    assert data[0]["entity_id"] == "LT50900841998067ASA00" and data[0]["cloud_cover"] == 12.0


def test_stac_search_cli(server: USGSServer, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fetch", "search", "--stac", server.stac_url, "--bbox", "148", "-36", "152", "-33", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["product_id"] for d in data] == [TARGET] and data[0]["source"] == "stac"
    assert any(a["key"] == "SR_B1.TIF" for a in data[0]["assets"])


def test_missing_credentials_one_clear_line(
    server: USGSServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LANDCOVER_USGS_USERNAME", raising=False)
    monkeypatch.delenv("LANDCOVER_USGS_TOKEN", raising=False)
    rc = main(["fetch", "search", *_m2m(server), "--start", "1990-01-01", "--netrc", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "LANDCOVER_USGS_TOKEN" in err and "ERS profile" in err
    monkeypatch.setenv("LANDCOVER_USGS_USERNAME", server.username)
    monkeypatch.setenv("LANDCOVER_USGS_TOKEN", "not-the-right-token-xyz")
    rc = main(["fetch", "search", *_m2m(server), "--start", "1990-01-01"])
    err = capsys.readouterr().err
    assert rc == 1 and "AUTH_INVALID" in err and "not-the-right-token-xyz" not in err


def test_download_m2m_with_faults_extract_and_rerun(
    server: USGSServer,
    creds: None,
    tmp_path: Path,
    shared_data: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    fast_cfg: list[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "scenes"
    server.fail_entities.add(server.scene(TM_L2, FAILING)["entityId"])  # USGS refuses this one
    server.faults[f"dds/{TARGET}.tar"] = ["reset", "429:0", "truncate"]
    server.faults[f"dds/{OTHER}.tar"] = ["500"]
    server.m2m_faults["scene-search"] = ["RATE_LIMIT", "AUTH_EXPIRED"]
    argv = [
        "fetch",
        "download",
        *_m2m(server),
        "--start",
        "1980-01-01",
        "--end",
        "2020-12-31",
        "--max-cloud",
        "25",
    ]
    argv += ["--out", str(out), "--workers", "2", "--extract", *fast_cfg, *FAST, "--attempts", "4"]

    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 1  # one scene could not be fetched ...
    assert f"landcover: {FAILING}: download-request failed" in cap.err
    assert "1 of 3 scene(s) failed" in cap.err
    assert "2 downloaded, 0 already complete, 1 failed" in cap.out
    for pid in (TARGET, OTHER):  # ... the others completed, exact and extracted
        assert (out / f"{pid}.tar").read_bytes() == server.bundles[pid]
        assert (out / pid / f"{pid}_SR_B3.TIF").read_bytes() == sample_file(shared_data, "SR_B3.TIF")
    assert not (out / f"{FAILING}.tar").exists()
    ranges = [r for r in server.requests_to(f"/files/dds/{TARGET}.tar") if "Range" in r.headers]
    assert ranges and all(r.status in (206, 429) for r in ranges)
    m = json.loads((out / "manifest.json").read_text())["scenes"]
    assert m[TARGET]["status"] == "complete" and m[TARGET]["extracted"] == f"{TARGET}/"
    assert m[FAILING]["status"] == "failed"
    assert server.logins == 2  # AUTH_EXPIRED -> one re-login
    for blob in (cap.out, cap.err, caplog.text):
        assert server.token not in blob

    # rerun: nothing already complete is requested or downloaded again
    server.fail_entities.clear()
    n = len(server.log)
    assert main(argv) == 0
    new = server.log[n:]
    assert not [r for r in new if r.path.startswith("/files/dds/") and FAILING not in r.path]
    req = [r.body for r in new if r.path.endswith("download-request")]
    assert [d["entityId"] for d in req[0]["downloads"]] == [server.scene(TM_L2, FAILING)["entityId"]]
    assert "1 downloaded, 2 already complete, 0 failed" in capsys.readouterr().out
    assert (out / FAILING / f"{FAILING}_MTL.txt").exists()


def test_download_dry_run_fetches_nothing(
    server: USGSServer, creds: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dry"
    argv = ["fetch", "download", *_m2m(server), "--path-row", "090/084", "--start", "1998-01-01"]
    assert main([*argv, "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"would fetch {TARGET}.tar" in text
    assert not out.exists()
    assert not server.requests_to("/m2m/api/json/stable/download-request")
    assert not server.requests_to("/files/")


def test_stac_download_cli(server: USGSServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stac"
    argv = ["fetch", "download", "--stac", server.stac_url, "--path-row", "90/84", "--start", "1998-01-01"]
    argv += ["--asset", "SR_B1.TIF", "--asset", "MTL.txt", "--out", str(out), "--json", *FAST]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"] == [TARGET]
    assert sorted(p.name for p in (out / TARGET).iterdir()) == [f"{TARGET}_MTL.txt", f"{TARGET}_SR_B1.TIF"]


def test_malicious_bundle_is_rejected_and_reported(
    server: USGSServer, creds: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    server.bundles[TARGET] = buf.getvalue()
    server.files[f"dds/{TARGET}.tar"] = buf.getvalue()
    out = tmp_path / "mal"
    argv = ["fetch", "download", *_m2m(server), "--path-row", "090/084", "--start", "1998-01-01"]
    rc = main([*argv, "--out", str(out), "--extract", *FAST])
    err = capsys.readouterr().err
    assert rc == 1 and "unsafe member '../../escaped.txt'" in err
    assert not (tmp_path / "escaped.txt").exists() and not (out.parent.parent / "escaped.txt").exists()
    assert not (out / TARGET).exists()


def test_pipeline_with_toml_config(server: USGSServer, creds: None, tmp_path: Path) -> None:
    import subprocess

    cfg = tmp_path / "fetch.toml"
    cfg.write_text(
        "[fetch]\n"
        f'source = "stac"\nstac_url = "{server.stac_url}"\n'
        'start = "1980-01-01"\nend = "2020-12-31"\nmax_cloud = 25.0\nmonths = [3]\n'
        f'assets = ["SR_B3.TIF"]\nout = "{tmp_path / "pipe"}"\nattempts = 2\nbackoff = 0.01\n'
    )
    r = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "fetch_scenes.py"), "-q", "download", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pipe" / TARGET / f"{TARGET}_SR_B3.TIF").exists()
    cfg.write_text("[fetch]\nmax_cloud = 250.0\n")
    r = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "fetch_scenes.py"), "search", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        r.returncode == 1
        and r.stderr.count("\n") == 1
        and "fetch.toml" in r.stderr
        and "max_cloud" in r.stderr
    )
