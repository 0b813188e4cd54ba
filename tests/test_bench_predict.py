"""bench/bench_predict.py runs end to end on a small cube and prints its figures, the pipeline's own too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_predict_prints_ratios_and_the_pipelines_own_cost() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--size", "400", "--window", "128", "--overlap", "32", "--classes", "8", "--pipeline-only"]
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_predict.py"), *args],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    n_win = int(re.search(r"(\d+) windows of 128 px", text).group(1))
    assert n_win == 16  # origins 0, 96, 192, 272 in each direction
    ratio = float(re.search(r"predict windows/s / in-memory windows/s\s+([\d.]+)", text).group(1))
    assert ratio > 0
    m = re.search(
        r"CPU ms a window: main thread ([\d.]+), whole process ([\d.]+) \(bare model: ([\d.]+)\)", text
    )
    assert m is not None, text
    main, process, bare = (float(v) for v in m.groups())
    assert 0 < main <= process and bare > 0
