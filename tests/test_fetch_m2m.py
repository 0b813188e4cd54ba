"""USGS M2M client against a loopback server speaking the real M2M envelopes; credentials and redaction."""

from __future__ import annotations

import logging
import pickle
from datetime import date
from pathlib import Path

import pytest
from usgs_server import OT_L2, TM_L2, USGSServer

from landcover.errors import AuthError, FetchError
from landcover.fetch import (
    Credentials,
    M2MClient,
    RetryPolicy,
    SceneQuery,
    Secret,
    dataset_name,
    load_credentials,
)
from landcover.fetch.credentials import redact
from landcover.fetch.m2m import build_scene_filter, record_from_m2m

FAST = RetryPolicy(attempts=3, backoff=0.01, backoff_max=0.02, connect_timeout=2.0, read_timeout=2.0)


@pytest.fixture()
def server(shared_data: Path):
    with USGSServer(shared_data, prepare_polls=2) as srv:
        yield srv


def _client(srv: USGSServer, token: str | None = None, **kw) -> M2MClient:
    creds = Credentials(srv.username, Secret(token or srv.token), source="test")
    return M2MClient(creds, url=srv.m2m_url, retry=FAST, rate_limit_wait=0.01, **kw)


def test_dataset_names() -> None:
    assert dataset_name(5, 2) == "landsat_tm_c2_l2"
    assert dataset_name(5, 1) == "landsat_tm_c2_l1"
    assert dataset_name(4, 2) == "landsat_tm_c2_l2"
    assert dataset_name(7, 2) == "landsat_etm_c2_l2"
    assert dataset_name(8, 2) == dataset_name(9, 2) == "landsat_ot_c2_l2"
    with pytest.raises(ValueError, match="Landsat 6"):
        dataset_name(6, 2)


def test_scene_filter_shape() -> None:
    q = SceneQuery(
        bbox=(4.3, 50.8, 4.4, 50.9), start=date(2018, 1, 1), end=date(2018, 1, 31), months=(1,), max_cloud=20
    )
    f = build_scene_filter(q)
    assert f["spatialFilter"] == {
        "filterType": "mbr",
        "lowerLeft": {"latitude": 50.8, "longitude": 4.3},
        "upperRight": {"latitude": 50.9, "longitude": 4.4},
    }
    assert f["acquisitionFilter"] == {"start": "2018-01-01", "end": "2018-01-31"}
    assert f["cloudCoverFilter"]["max"] == 20 and f["seasonalFilter"] == [1]
    g = {"type": "Polygon", "coordinates": [[[4, 50], [5, 50], [5, 51], [4, 50]]]}
    assert build_scene_filter(SceneQuery(geometry=g))["spatialFilter"] == {
        "filterType": "geoJson",
        "geoJson": g,
    }


def test_record_from_real_search_result(shared_data: Path) -> None:
    import json

    raw = json.loads(
        (
            shared_data / "api/m2m/landsatxplore_extracted_json/api_search_c2__0_scene-search.response.json"
        ).read_text()
    )["data"]["results"][1]
    rec = record_from_m2m(raw, OT_L2)
    assert rec is not None
    assert rec.product_id == "LC08_L2SP_199024_20180122_20200902_02_T2"
    assert rec.entity_id == "LC81990242018022LGN00"
    assert (rec.path, rec.row, rec.acquired, rec.cloud_cover) == (199, 24, date(2018, 1, 22), 86.52)


def test_login_search_and_paging(server: USGSServer) -> None:
    with _client(server) as api:
        q = SceneQuery(bbox=(2.0, 49.0, 6.0, 52.0), start=date(2018, 1, 1), end=date(2018, 1, 31))
        recs = api.scene_search(OT_L2, q, page_size=4)
    assert len(recs) == 6  # the six real recorded results, over two pages
    searches = [r for r in server.requests_to("/m2m/") if r.path.endswith("scene-search")]
    assert [s.body["startingNumber"] for s in searches] == [1, 5]
    assert all(s.body["maxResults"] == 4 for s in searches)
    assert all(
        s.headers["X-Auth-Token"] in {r.headers.get("X-Auth-Token") for r in searches} for s in searches
    )
    login = server.requests_to("/m2m/api/json/stable/login-token")[0]
    assert login.body == {"username": "tester", "token": server.token}
    assert server.requests_to("/m2m/api/json/stable/logout")  # context exit logs out
    assert not server.keys


def test_filters_months_cloud_and_path_row(server: USGSServer) -> None:
    with _client(server) as api:
        all_tm = api.scene_search(TM_L2, SceneQuery(start=date(1980, 1, 1), end=date(2020, 1, 1)))
        assert len(all_tm) == 6
        cloudy = api.scene_search(
            TM_L2, SceneQuery(start=date(1980, 1, 1), end=date(2020, 1, 1), max_cloud=25)
        )
        assert {r.product_id[:25] for r in cloudy} == {
            "LT05_L2SP_010067_19860424",
            "LT05_L2SR_087017_20090621",
            "LT05_L2SP_090084_19980308",
        }
        spring = api.scene_search(
            TM_L2, SceneQuery(start=date(1980, 1, 1), end=date(2020, 1, 1), months=(4, 5))
        )
        assert {r.acquired.month for r in spring} == {4, 5} and len(spring) == 2
        pr = api.scene_search(
            TM_L2, SceneQuery(start=date(1980, 1, 1), end=date(2020, 1, 1), path_rows=((90, 84),))
        )
        assert [r.product_id for r in pr] == ["LT05_L2SP_090084_19980308_20200909_02_T1"]
        spain = api.scene_search(TM_L2, SceneQuery(bbox=(-5.0, 37.0, -4.0, 38.0)))
        assert [r.path for r in spain] == [201]


def test_scenes_by_product_id(server: USGSServer) -> None:
    with _client(server) as api:
        recs, missing = api.scenes_by_id(TM_L2, ["LT05_L2SP_090084_19980308_20200909_02_T1", "LT05_NOPE"])
    assert [r.entity_id for r in recs] == ["LT50900841998067ASA00"]
    assert list(missing) == ["LT05_NOPE"]


def test_rate_limit_sleeps_and_retries(server: USGSServer) -> None:
    waits: list[float] = []
    server.m2m_faults["scene-search"] = ["RATE_LIMIT", "RATE_LIMIT"]
    with _client(server, sleep=waits.append) as api:
        api.rate_limit_wait = 3.0
        recs = api.scene_search(OT_L2, SceneQuery(bbox=(2.0, 49.0, 6.0, 52.0)))
    assert len(recs) == 6 and waits == [3.0, 3.0]


def test_expired_key_relogs_in_once(server: USGSServer) -> None:
    server.m2m_faults["scene-search"] = ["AUTH_EXPIRED"]
    with _client(server) as api:
        recs = api.scene_search(OT_L2, SceneQuery(bbox=(2.0, 49.0, 6.0, 52.0)))
    assert len(recs) == 6 and server.logins == 2
    tokens = [r.headers.get("X-Auth-Token") for r in server.requests_to("/m2m/api/json/stable/scene-search")]
    assert len(tokens) == 2 and tokens[0] != tokens[1]


def test_expired_twice_is_an_auth_error(server: USGSServer) -> None:
    server.m2m_faults["scene-search"] = ["AUTH_EXPIRED", "AUTH_EXPIRED"]
    with _client(server) as api, pytest.raises(AuthError, match="AUTH_EXPIRED"):
        api.scene_search(OT_L2, SceneQuery(bbox=(2.0, 49.0, 6.0, 52.0)))
    assert server.logins == 2


def test_error_codes_and_http_failures(server: USGSServer) -> None:
    with _client(server) as api:
        with pytest.raises(FetchError, match="DATASET_INVALID"):
            api.scene_search("landsat_nope", SceneQuery(bbox=(2.0, 49.0, 6.0, 52.0)))
        server.m2m_faults["scene-search"] = ["HTTP500"]  # retried
        assert len(api.scene_search(OT_L2, SceneQuery(bbox=(2.0, 49.0, 6.0, 52.0)))) == 6
        server.m2m_faults["scene-search"] = ["HTTP500"] * 3
        with pytest.raises(FetchError, match="gave up after 3 tries: HTTP 500"):
            api.scene_search(OT_L2, SceneQuery(bbox=(2.0, 49.0, 6.0, 52.0)))
        server.m2m_faults["download-options"] = ["HTML"]  # HTTP 200 but not an envelope
        with pytest.raises(FetchError, match="non-JSON"):
            api.download_options(OT_L2, ["LC81990242018022LGN00"])


def test_staging_polls_until_urls_and_reports_failures(server: USGSServer) -> None:
    waits: list[float] = []
    target = "LT05_L2SP_090084_19980308_20200909_02_T1"
    other = "LT05_L2SP_010067_19860424_20200918_02_T2"
    server.fail_entities.add(server.scene(TM_L2, other)["entityId"])
    with _client(server, sleep=waits.append) as api:
        recs, _ = api.scenes_by_id(TM_L2, [target, other])
        staged, failed = api.stage_downloads(TM_L2, recs, label="lbl-1", poll_interval=0.5)
    assert list(staged) == [target] and list(failed) == [other]
    assert "download-request failed" in failed[other]
    assert staged[target].url == server.file_url(f"dds/{target}.tar")
    assert waits == [0.5, 0.5]  # two polls "preparing", then available
    req = server.requests_to("/m2m/api/json/stable/download-request")[0].body
    assert req["label"] == "lbl-1"
    opts = server._options(TM_L2, [server.scene(TM_L2, target)["entityId"]])
    bundle = max((o for o in opts if o["downloadSystem"] == "dds"), key=lambda o: o["filesize"])
    assert req["downloads"][0]["productId"] == bundle["id"]  # the bundle, not a browse image (wms)


def test_bad_token_is_auth_error_and_never_leaks(server: USGSServer, caplog, capsys) -> None:
    bad = "wrong-token-" + "Z" * 20
    caplog.set_level(logging.DEBUG)
    api = _client(server, token=bad)
    with pytest.raises(AuthError) as ei:
        api.login()
    text = f"{ei.value} {ei.value!r} {api!r} {api.credentials!r} {api.credentials}"
    assert "AUTH_INVALID" in str(ei.value) and "application token" in str(ei.value)
    out = capsys.readouterr()
    for blob in (text, caplog.text, out.out, out.err):
        assert bad not in blob


def test_secrets_redacted_everywhere(server: USGSServer, caplog, capsys) -> None:
    """Force errors whose server messages echo the token and the API key: neither may show."""
    caplog.set_level(logging.DEBUG)
    server.m2m_faults["scene-search"] = ["ERROR:SERVER_ERROR:token {token} key {key} rejected"]
    server.m2m_faults["download-options"] = ["HTTP500"] * 5
    errors: list[str] = []
    with _client(server) as api:
        key = api._key.reveal()  # the API key is a secret too
        assert repr(api._key) == "Secret('***')" and f"{api._key}" == "***"
        with pytest.raises(FetchError) as e1:
            api.scene_search(OT_L2, SceneQuery(bbox=(2.0, 49.0, 6.0, 52.0)))
        errors += [str(e1.value), repr(e1.value)]
        with pytest.raises(FetchError) as e2:
            api.download_options(OT_L2, ["x"])
        errors += [str(e2.value), repr(e2.value), repr(api)]
    assert "SERVER_ERROR" in errors[0] and "***" in errors[0]
    out = capsys.readouterr()
    blobs = [*errors, caplog.text, out.out, out.err]
    for blob in blobs:
        assert server.token not in blob
        assert key not in blob
    with pytest.raises(TypeError):
        pickle.dumps(Secret("abc-secret"))


def test_credentials_from_env_and_netrc(tmp_path: Path) -> None:
    env = {"LANDCOVER_USGS_USERNAME": "alice", "LANDCOVER_USGS_TOKEN": "tok-123456"}
    c = load_credentials(env=env)
    assert c.username == "alice" and c.token.reveal() == "tok-123456" and "tok-123456" not in repr(c)
    c2 = load_credentials(env={"U": "bob", "T": "tok-999999"}, username_var="U", token_var="T")
    assert c2.username == "bob"
    with pytest.raises(AuthError, match=r"\$LANDCOVER_USGS_TOKEN is not set"):
        load_credentials(env={"LANDCOVER_USGS_USERNAME": "alice"})
    netrc = tmp_path / "netrc"
    netrc.write_text("machine m2m.cr.usgs.gov login carol password tok-netrc-777\n")
    netrc.chmod(0o600)
    c3 = load_credentials(env={}, netrc_path=netrc)
    assert (c3.username, c3.token.reveal(), c3.source) == ("carol", "tok-netrc-777", str(netrc))
    with pytest.raises(AuthError, match="no USGS M2M credentials") as ei:
        load_credentials(env={}, netrc_path=tmp_path / "absent")
    assert "ERS profile" in str(ei.value)
    bad = tmp_path / "badnetrc"
    bad.write_text("machine m2m.cr.usgs.gov login dave password tok-leak-4242 bogus\n")
    bad.chmod(0o600)
    try:
        load_credentials(env={}, netrc_path=bad)
    except AuthError as exc:
        assert "tok-leak-4242" not in str(exc)


def test_redact() -> None:
    assert redact("a secret-value-x b", [Secret("secret-value-x"), None]) == "a *** b"
