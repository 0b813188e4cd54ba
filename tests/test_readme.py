"""Every shell snippet of the README runs verbatim (issue 17), and ``make demo``'s command can run twice.

The ```bash blocks of README.md are extracted and run with ``bash -e``: by default in a
fresh temporary folder holding a ``.venv`` link to this interpreter's environment (the
walkthrough creates its own data there); a block preceded by ``<!-- readme-test: repo -->``
runs in the repository root (it reads ``../shared``); a block preceded by
``<!-- readme-test: skip (REASON) -->`` is not run and must say why (a cluster address,
the network, the test suite itself).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_MARK = re.compile(r"<!--\s*readme-test:\s*(?P<kind>skip|repo)\s*(?:\((?P<why>.*)\))?\s*-->")


@dataclass(frozen=True)
class Snippet:
    line: int
    code: str
    kind: str  # "tmp", "repo" or "skip"
    why: str


def snippets(text: str) -> list[Snippet]:
    """The ```bash blocks of a markdown text with their readme-test markers."""
    lines = text.splitlines()
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            m = _MARK.fullmatch(lines[i - 1].strip()) if i else None
            kind = m.group("kind") if m else "tmp"
            out.append(Snippet(i + 1, "\n".join(lines[i + 1 : j]), kind, (m.group("why") or "") if m else ""))
            i = j
        i += 1
    return out


SNIPPETS = snippets((REPO / "README.md").read_text())


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    env["TORCH_HOME"] = env.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))
    return env


def test_every_snippet_is_run_or_says_why_not() -> None:
    assert len(SNIPPETS) >= 5
    for s in SNIPPETS:
        if s.kind == "skip":
            assert len(s.why) > 10, f"README line {s.line}: a skipped snippet must say why"
    walkthrough = [s for s in SNIPPETS if "landcover synth try/" in s.code]
    assert len(walkthrough) == 1 and walkthrough[0].kind == "tmp"


@pytest.mark.slow
@pytest.mark.parametrize(
    "snippet", [s for s in SNIPPETS if s.kind != "skip"], ids=lambda s: f"README-line-{s.line}"
)
def test_readme_snippet_runs_verbatim(
    snippet: Snippet, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if snippet.kind == "repo":
        request.getfixturevalue("shared_data")  # the real samples (fails under CI=true when missing)
        cwd = REPO
    else:
        cwd = tmp_path
        (tmp_path / ".venv").mkdir()
        (tmp_path / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    r = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", snippet.code],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, f"README line {snippet.line} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    if "landcover synth try/" in snippet.code:
        assert (tmp_path / "report" / "report.md").is_file()
        assert (tmp_path / "map" / "class_map.tif").is_file()


@pytest.mark.slow
def test_demo_command_runs_twice(tmp_path: Path) -> None:
    """`make demo` is `landcover demo --out demo-output`: a second run reuses or replaces its own output."""
    cmd = [str(Path(sys.executable).parent / "landcover"), "-q", "demo", "--out", "demo-output"]
    cmd += ["--size", "320", "--epochs", "1", "--seeds", "0"]
    for attempt in (1, 2):
        r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"run {attempt}:\n{r.stderr[-3000:]}"
        assert (tmp_path / "demo-output" / "report" / "report.md").is_file()
