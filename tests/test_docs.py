"""Documentation that cannot go stale: the CLI reference, the README's links and the API docs build."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

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


def test_api_docs_build_strict(tmp_path):
    """mkdocs + mkdocstrings render every module page with --strict (offline): no broken docstring or link."""
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
    accessor = (tmp_path / "site" / "api" / "interactive" / "index.html").read_text()
    assert "LandcoverAccessor" in accessor and "plot_windows" in accessor
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "landcover cube build" in cli
