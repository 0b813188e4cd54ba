"""Published weights: hash checks, honest labels, downloads from a real loopback HTTP server."""

import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from landcover.errors import LandcoverError
from landcover.weights import (
    SSL4EO_TM_BANDS,
    WEIGHTS,
    PublishedWeights,
    check_weights,
    download_weights,
    find_weights,
    weights_for,
)


@pytest.fixture()
def served(tmp_path):
    """A ThreadingHTTPServer serving tmp_path/www on 127.0.0.1; yields (folder, base URL, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format, *args):  # noqa: A002 - the stdlib signature
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/models", requests
    finally:
        server.shutdown()
        server.server_close()


def _state_bytes(path):
    torch.save({"conv1.weight": torch.randn(8, 7, 7, 7)}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_table_holds_the_published_names_and_prefixes():
    tm = weights_for("ssl4eo", "resnet18", "moco")
    assert tm.filename == "resnet18_landsat_tm_toa_moco-1c691b4f.pth"
    assert tm.sha256_prefix == "1c691b4f"
    assert tm.in_chans == 7 and tm.bands == SSL4EO_TM_BANDS
    assert weights_for("imagenet", "resnet18").filename == "resnet18-f37072fd.pth"
    assert WEIGHTS["ssl4eo-oli-tirs-toa-simclr-resnet50"].in_chans == 11
    with pytest.raises(LandcoverError, match="no published ssl4eo weights"):
        weights_for("ssl4eo", "resnet34")


def test_a_file_that_does_not_match_is_named_unverified(tmp_path):
    f = tmp_path / "resnet18-f37072fd.pth"
    digest = _state_bytes(f)
    check = check_weights(f, weights_for("imagenet", "resnet18"))
    assert check.sha256 == digest
    assert not check.verified
    assert check.label.startswith("unverified weights (sha256 ")
    assert "imagenet:" not in check.label
    assert "not called imagenet" in check.describe()


def test_a_matching_file_is_verified(tmp_path):
    f = tmp_path / "x.pth"
    digest = _state_bytes(f)
    entry = PublishedWeights("t", "ssl4eo", "resnet18", f"https://h/a/w-{digest[:8]}.pth", SSL4EO_TM_BANDS, 7)
    check = check_weights(f, entry)
    assert check.verified and check.label == f"ssl4eo:w-{digest[:8]}.pth"
    assert find_weights(entry, f) == f
    assert find_weights(entry, tmp_path) is None  # the directory lacks the published name


def test_download_is_verified_cached_and_not_repeated(served, tmp_path):
    root, base, log = served
    payload = tmp_path / "payload.pth"
    digest = _state_bytes(payload)
    entry = PublishedWeights("t", "ssl4eo", "resnet18", f"https://example.invalid/w-{digest[:8]}.pth", (), 7)
    (root / "models").mkdir()
    (root / "models" / entry.filename).write_bytes(payload.read_bytes())
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    got = download_weights(entry, dest_dir=cache, base_url=base)
    assert got.verified and got.path == cache / entry.filename
    assert got.sha256 == digest
    assert sorted(p.name for p in cache.iterdir()) == [entry.filename]  # no staging file left
    n = len(log)
    again = download_weights(entry, dest_dir=cache, base_url=base)
    assert again.verified and len(log) == n  # served from the cache, no request


def test_download_with_the_wrong_bytes_keeps_nothing(served, tmp_path):
    root, base, _ = served
    entry = weights_for("ssl4eo", "resnet18", "moco")
    (root / "models").mkdir()
    _state_bytes(root / "models" / entry.filename)  # right name, wrong content
    cache = tmp_path / "cache"
    with pytest.raises(LandcoverError, match="not the published prefix 1c691b4f"):
        download_weights(entry, dest_dir=cache, base_url=base)
    assert list(cache.iterdir()) == []


def test_download_of_a_missing_file_fails_in_one_line(served, tmp_path):
    _, base, _ = served
    with pytest.raises(LandcoverError, match="HTTP 404"):
        download_weights(weights_for("imagenet", "resnet18"), dest_dir=tmp_path / "c", base_url=base)


def test_an_existing_bad_cache_file_is_not_overwritten(tmp_path):
    entry = weights_for("imagenet", "resnet18")
    cache = tmp_path / "c"
    cache.mkdir()
    bad = cache / entry.filename
    bad.write_bytes(b"not weights")
    with pytest.raises(LandcoverError, match="move it away"):
        download_weights(entry, dest_dir=cache, base_url="http://127.0.0.1:9")
    assert bad.read_bytes() == b"not weights"
