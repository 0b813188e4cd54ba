"""The notebooks: stored without outputs, and executed top to bottom on small data in a real kernel.

Each notebook's first code cell (tagged ``parameters``) reads its sizes from ``LANDCOVER_NB_*``
environment variables; the run below sets small values so that every notebook finishes in
well under a minute. Execution goes through nbclient with ``allow_errors=False``: any cell
that raises fails the test with that cell's traceback.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"01_get_started.ipynb", "02_compare_models.ipynb", "03_cluster.ipynb", "04_real_data.ipynb"}

# Small sizes for the test run (the notebooks' defaults are for people).
SMALL = {
    "LANDCOVER_NB_SIZE": "192",
    "LANDCOVER_NB_WINDOW": "32",
    "LANDCOVER_NB_EPOCHS": "2",
    "LANDCOVER_NB_SEEDS": "0",
    "LANDCOVER_NB_WORKERS": "2",
    "LANDCOVER_NB_LEG_SAMPLES": "32",
    "OMP_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore",
}
SMALL_FOR = {  # enough training windows in the split blocks (4 x window)
    "02": {"LANDCOVER_NB_SIZE": "256", "LANDCOVER_NB_WINDOW": "16"},
    "03": {"LANDCOVER_NB_SIZE": "256", "LANDCOVER_NB_WINDOW": "16"},
    "05": {
        "LANDCOVER_NB_SIZE": "256",
        "LANDCOVER_NB_WINDOW": "16",
        "LANDCOVER_NB_BUDGETS": "1",
        "LANDCOVER_NB_MIN_STEPS": "2",
    },
}


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_the_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path: Path):
    """Committed notebooks hold no outputs or execution counts (``nbstripout notebooks/*.ipynb``)."""
    for i, cell in enumerate(_code_cells(path)):
        assert cell.get("outputs") == [], f"{path.name}: code cell {i} has outputs"
        assert cell.get("execution_count") is None, f"{path.name}: code cell {i} has an execution count"
    meta = json.loads(path.read_text())["metadata"]
    assert "widgets" not in meta, f"{path.name}: widget state stored"


def test_nbstripout_would_change_nothing():
    """``nbstripout --verify``: the notebooks are exactly what ``nbstripout`` leaves (cell ids too)."""
    cmd = [sys.executable, "-m", "nbstripout", "--verify", *map(str, NOTEBOOKS)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\n(run: .venv/bin/nbstripout notebooks/*.ipynb)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_parameters_cell(path: Path):
    first = _code_cells(path)[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), path.name
    assert "os.environ.get(" in "".join(first["source"]), path.name


def _execute(nb, *, timeout: int = 240):
    from nbclient import NotebookClient

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # run where Jupyter would: notebooks/
    )
    return client.execute()


def _outputs(nb, output_type: str | None = None, mime: str | None = None) -> list[dict]:
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    if output_type is not None:
        outs = [o for o in outs if o["output_type"] == output_type]
    if mime is not None:
        outs = [o for o in outs if mime in o.get("data", {})]
    return outs


def _text(nb) -> str:
    parts = []
    for o in _outputs(nb):
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif "text/plain" in o.get("data", {}):
            parts.append(o["data"]["text/plain"])
    return "\n".join(parts)


def _check_conclusion(text: str) -> None:
    """Notebook 02 says only what its run shows: the claim follows the printed 95 % interval."""
    import re

    lines = [line for line in text.splitlines() if line.startswith("conclusion (")]
    assert lines, "notebook 02 printed no conclusion"
    for line in lines:
        if "nothing to compare" in line:
            continue
        m = re.search(r"= ([+-]\d\.\d+|[+-]?nan) \[([+-]\d\.\d+|[+-]?nan), ([+-]\d\.\d+|[+-]?nan)\]$", line)
        assert m, line
        low, high = float(m.group(2)), float(m.group(3))
        excludes = low > 0 or high < 0
        if low != low or high != high:  # NaN: no interval, no claim either way
            assert "no conclusion" in line and "better than" not in line, line
        elif excludes:
            assert "better than" in line and "no significant difference" not in line, line
        else:
            assert "no significant difference" in line and "better than" not in line, line


def test_notebook_02_text_claims_no_result_in_advance():
    """The prose of notebook 02 does not announce a winner: the run's printed conclusion decides."""
    cells = json.loads((NOTEBOOK_DIR / "02_compare_models.ipynb").read_text())["cells"]
    prose = " ".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown").lower()
    for claim in ("should win", "will win", "wins", "outperforms", "is better"):
        assert claim not in prose, claim
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "NO_DIFFERENCE" in code and 'c["verdict"]' in code  # the verdict comes from landcover.stats


def test_conclusion_check_rejects_a_claim_the_interval_does_not_support():
    numbers = "; test mIoU a - b = +0.010 [-0.020, +0.040]"
    _check_conclusion("conclusion (x): no significant difference between a and b" + numbers)
    bad = "conclusion (x): a better than b (the interval excludes 0)" + numbers
    with pytest.raises(AssertionError):
        _check_conclusion(bad)


def test_a_failing_cell_fails_the_run():
    """The harness is not lenient: an exception in any cell aborts with CellExecutionError."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('boom')")]
    )
    with pytest.raises(CellExecutionError, match="boom"):
        _execute(nb, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import nbformat

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' scratch folders (tempfile.mkdtemp)
    for key, value in {**SMALL, **SMALL_FOR.get(path.name[:2], {})}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    done = _execute(nb)
    seconds = time.perf_counter() - t0
    print(f"{path.name}: {seconds:.1f} s")
    assert not _outputs(done, "error")
    real = Path(os.environ.get("LANDCOVER_SHARED_DATA", NOTEBOOK_DIR / "../../shared/data/real"))
    have_real = (real / "SOURCES.md").is_file()
    for i, cell in enumerate(done.cells):  # every cell that draws shows its figure inline
        if cell.cell_type != "code" or not any(
            k in cell.source for k in ("plt.subplots", ".plot_", "Image(")
        ):
            continue
        if "if HAVE_REAL" in cell.source and not have_real:
            continue  # the optional real-data section is skipped without the samples
        pngs = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert pngs, f"{path.name}: cell {i} drew no inline figure"
    _check_text(path.name, _text(done), have_real, real)


def _require_real(name: str, have_real: bool, real: Path, what: str) -> bool:
    """True when the real samples are there; under CI their absence fails the test."""
    if not have_real and os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"real sample data not found at {real}: {name} {what}")
    return have_real


def _check_text(name: str, text: str, have_real: bool, real: Path) -> None:
    """What each notebook must have printed."""
    if name.startswith("01"):
        if _require_real(name, have_real, real, "- the real-data section did not run"):
            assert "LT05_L2SP_090084_19980308_20200909_02_T1" in text  # the real section ran
        assert "training windows" in text
    if name.startswith("02"):
        assert "native" in text and "rgb-scratch" in text
        _check_conclusion(text)
    if name.startswith("04") and _require_real(name, have_real, real, "showed nothing"):
        assert "classes present: 20" in text and "mean NDVI, forest" in text and "best model:" in text
        assert "pixels whose predicted class is the CORINE dominant class" in text
    if name.startswith("05"):  # phase 2: the leakage guard, a user-label problem, the real pair
        assert (
            "refusing to run:" in text and "split: inherit" in text and "within the phase-1 buffer: 0" in text
        )
        assert "classes: (7, 8, 9)" in text and "'sensor': 'new sensor'" in text
        if _require_real(name, have_real, real, "skipped the real pair"):
            assert "'place': 'new region'" in text and "zero-shot" in text
    if name.startswith("03"):
        assert "Dask dashboard: http" in text
        assert "round 0:" in text
