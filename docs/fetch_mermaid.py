"""Put Mermaid (MIT, docs/javascripts/mermaid-LICENSE.txt) where the docs site loads it from, offline-ready.

The docs render ```` ```mermaid ```` blocks with ``docs/javascripts/mermaid-<version>.min.js`` from the
site itself (no CDN at view time). The file (3.6 MB) is not kept in git: ``make setup`` runs this
script, which takes ``package/dist/mermaid.min.js`` from the npm registry's tarball of that
version (a package registry, like pip's), checks its sha256 and writes it atomically. A file
already there with the right hash is left alone, so it runs once per checkout.

Usage: ``.venv/bin/python docs/fetch_mermaid.py [--registry URL] [--out FILE]``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "11.17.2"
SHA256 = "581ed7d74bd9048d0e3a91363927d72ef22942d7722546b27f7cc29e35390eb8"  # dist/mermaid.min.js
TARGET = Path(__file__).resolve().parent / "javascripts" / f"mermaid-{VERSION}.min.js"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Fetch, check and write the file unless it is already there; 0, or 1 with one line on stderr."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry", default="https://registry.npmjs.org", help="npm registry (a mirror)")
    p.add_argument("--out", type=Path, default=TARGET, help="where the file goes (default: the docs')")
    args = p.parse_args(argv)
    target: Path = args.out
    if target.is_file() and _sha256(target.read_bytes()) == SHA256:
        return 0
    url = f"{args.registry.rstrip('/')}/mermaid/-/mermaid-{VERSION}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:  # noqa: S310 - a fixed https URL
            tgz = resp.read()
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
            member = tar.extractfile("package/dist/mermaid.min.js")
            data = member.read() if member is not None else b""
    except (OSError, tarfile.TarError, KeyError) as exc:
        print(f"{url}: cannot fetch Mermaid for the docs ({exc})", file=sys.stderr)
        return 1
    if _sha256(data) != SHA256:
        print(f"{url}: package/dist/mermaid.min.js does not match the pinned sha256", file=sys.stderr)
        return 1
    tmp = target.with_name(target.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
