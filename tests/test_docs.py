"""Documentation that cannot go stale: the CLI reference, the README's links and the API docs build."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_matches_the_parsers(capsys):
    """docs/cli.md and the README command table are what docs/gen_cli.py writes from the parsers today."""
    gen = _gen_cli()
    rc = gen.main(["--check"])
    assert rc == 0, capsys.readouterr().err + "\n(run: .venv/bin/python docs/gen_cli.py)"


def test_cli_reference_covers_every_command():
    from landcover.cli import build_parser

    gen = _gen_cli()
    text = (ROOT / "docs" / "cli.md").read_text()
    commands = [c for c, _ in gen._walk(build_parser(), "landcover")]
    assert len(commands) > 10
    for command in commands:
        assert f"\n## {command}\n" in text, command
        assert f"usage: {command} " in text, command


def test_stale_reference_is_detected(tmp_path, monkeypatch, capsys):
    gen = _gen_cli()
    stale = tmp_path / "cli.md"
    stale.write_text((ROOT / "docs" / "cli.md").read_text().replace("--overwrite", "--overwrit"))
    monkeypatch.setattr(gen, "CLI_MD", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    monkeypatch.setattr(gen, "README", readme)
    assert gen.main(["--check"]) == 1
    assert "cli.md is out of date" in capsys.readouterr().err
    assert gen.main([]) == 0  # regenerates
    assert gen.main(["--check"]) == 0


def test_readme_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash")
    assert lines[start + 1].startswith("make demo ")
    assert lines[start + 2].startswith("make test ")


def test_readme_local_links_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not link.startswith(("http://", "https://", "mailto:"))]
    assert "docs/cli.md" in local and any(link.startswith("notebooks/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site as `make docs` builds it (mkdocs --strict, offline), built once for the tests below."""
    tmp_path = tmp_path_factory.mktemp("docs")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, "\n".join(warnings[:40]) or proc.stderr[-4000:]
    return tmp_path / "site"


def test_api_docs_build_strict(site):
    """mkdocs + mkdocstrings render every module page with --strict (offline): no broken docstring or link."""
    accessor = (site / "api" / "interactive.html").read_text()
    assert "LandcoverAccessor" in accessor and "plot_windows" in accessor
    cli = (site / "cli.html").read_text()
    assert "landcover cube build" in cli


def _pages(site):
    """The pages a reader opens (404.html is only served by a web server, with absolute links)."""
    return sorted(page for page in site.rglob("*.html") if page.name != "404.html")


def test_site_works_opened_from_disk(site):
    """Every local link and script of a page names a file that exists (file:// has no index.html lookup)."""
    broken = []
    for page in _pages(site):
        tags = r'<(?:a|link|script|img)\s[^>]*?(?:href|src)="([^"#?]+)[^"]*"'
        for ref in re.findall(tags, page.read_text()):
            if ref.startswith(("http://", "https://", "mailto:", "data:")):
                continue
            target = (page.parent / ref).resolve()
            if not target.is_file():
                broken.append(f"{page.relative_to(site)} -> {ref}")
    assert not broken, broken[:20]


def test_mermaid_renders_offline(site):
    """The diagram is a mermaid block and the page loads mermaid from the site itself, no CDN."""
    index = (site / "index.html").read_text()
    assert '<pre class="mermaid"><code>flowchart LR' in index
    scripts = re.findall(r'<script src="([^"]+)"', index)
    assert not [s for s in scripts if s.startswith(("http://", "https://", "//"))], scripts
    mermaid = [s for s in scripts if "mermaid" in s]
    assert mermaid, scripts
    js = (site / mermaid[0]).read_text()
    # Material uses a global `mermaid` when the page defines one and fetches it from a CDN otherwise.
    assert 'globalThis["mermaid"]' in js


def test_numpydoc_roles_render_as_links(site):
    """:func:/:class:/:mod: roles in docstrings are autorefs links, within a page and across pages."""
    leftover = {
        str(page.relative_to(site)): re.findall(r":(?:func|class|mod|meth|attr):`[^`]*`", page.read_text())
        for page in _pages(site)
    }
    assert not {page: roles for page, roles in leftover.items() if roles}
    inputs = (site / "api" / "inputs.html").read_text()
    # corine's module docstring: ":class:`ClassInfo` objects by :func:`legend`" and ":mod:`landcover.schema`"
    link = r'<a class="autorefs autorefs-internal"[^>]*href="#landcover\.corine\.legend"><code>legend\(\)'
    assert re.search(link, inputs)
    assert re.search(r'href="#landcover\.corine\.ClassInfo"><code>ClassInfo</code>', inputs)
    assert 'href="cubes.html#landcover.schema"' in inputs


def _xrefs():
    spec = importlib.util.spec_from_file_location("griffe_xrefs", ROOT / "docs" / "griffe_xrefs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_role_rewriting_resolves_in_scope(tmp_path):
    """Names resolve the way Python sees them in the docstring's scope; foreign targets stay code."""
    import griffe

    pkg = tmp_path / "landcover"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""Root."""\n')
    (pkg / "grid.py").write_text('"""Grids."""\n\n\nclass Grid:\n    """A grid."""\n')
    (pkg / "a.py").write_text(
        '"""Module a."""\n\nfrom .grid import Grid\n\n\ndef f():\n    """F."""\n\n\n'
        'def _g():\n    """G."""\n\n\nclass K:\n    """K."""\n\n    def m(self):\n        """M."""\n'
    )
    xrefs = _xrefs()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "api.md").write_text("# API\n\n::: landcover.a\n\n::: landcover.grid\n    options:\n      x: 1\n")
    xrefs.DOCS = docs
    loaded = griffe.load("landcover", search_paths=[tmp_path], try_relative_path=False)
    coll = loaded.modules_collection
    k = loaded["a.K"]
    assert xrefs.rewrite(":func:`f`", loaded["a"], coll) == "[`f()`][landcover.a.f]"
    assert xrefs.rewrite(":class:`Grid`", loaded["a"], coll) == "[`Grid`][landcover.grid.Grid]"
    assert xrefs.rewrite(":class:`~landcover.grid.Grid`", k, coll) == "[`Grid`][landcover.grid.Grid]"
    assert xrefs.rewrite(":meth:`.m`", k, coll) == "[`m()`][landcover.a.K.m]"
    assert xrefs.rewrite(":mod:`landcover.grid`", k, coll) == "[`landcover.grid`][landcover.grid]"
    assert xrefs.rewrite(":class:`xarray.Dataset`", k, coll) == "`xarray.Dataset`"
    assert "optional" in xrefs.rewrite(":func:`_g`", k, coll)
    (pkg / "b.py").write_text('"""Module b, on no page."""\n\n\ndef h():\n    """H."""\n')
    loaded = griffe.load("landcover", search_paths=[tmp_path], try_relative_path=False)
    assert "optional" in xrefs.rewrite(":func:`landcover.b.h`", loaded["a"], loaded.modules_collection)


def test_mermaid_is_fetched_from_a_registry_and_hash_checked(tmp_path):
    """docs/fetch_mermaid.py (run by `make setup`) against a real loopback registry: the pinned file is
    written; a tarball whose file differs is refused in one line and writes nothing."""
    import functools
    import http.server
    import io
    import tarfile
    import threading

    spec = importlib.util.spec_from_file_location("fetch_mermaid", ROOT / "docs" / "fetch_mermaid.py")
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    good = fetch.TARGET.read_bytes()  # present: `make setup` fetched it (CI fails here otherwise)

    def tarball(folder, data):
        path = folder / "mermaid" / "-" / f"mermaid-{fetch.VERSION}.tgz"
        path.parent.mkdir(parents=True)
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo("package/dist/mermaid.min.js")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    results = {}
    for name, data in (("good", good), ("bad", good + b"//")):
        root = tmp_path / name
        tarball(root, data)
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as srv:
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            out = tmp_path / f"{name}.js"
            rc = fetch.main(["--registry", f"http://127.0.0.1:{srv.server_address[1]}", "--out", str(out)])
            srv.shutdown()
        results[name] = (rc, out.read_bytes() if out.exists() else None)
    assert results["good"] == (0, good)
    assert results["bad"] == (1, None)
