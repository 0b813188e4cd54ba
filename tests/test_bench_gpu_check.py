"""bench/gpu_check.py stays runnable where there is no GPU (its dry run on the CPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the check makes its full-size run")
def test_gpu_check_dry_run_trains_through_the_loader_and_from_memory():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py")],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert text.startswith("no GPU: dry run")
    windows = int(re.search(r"and (\d+) training windows ready", text).group(1))
    per_pass = int(re.search(r"# (\d+) batches a pass", text).group(1))
    # warm-up and measured steps share one fit (one loader run): the measurement starts warm
    assert re.search(r"batches a pass: 1 warm-up \+ 3 measured steps span 1 passes of one loader run", text)
    assert per_pass == windows // 4  # batch 4, full batches only
    loader = float(re.search(r"through the loader:\s+([\d.]+) samples/s", text).group(1))
    memory = float(re.search(r"from device memory:\s+([\d.]+) samples/s", text).group(1))
    assert loader > 0 and memory > 0
    alone = float(re.search(r"loader alone, to the device:\s+([\d.]+) samples/s", text).group(1))
    assert alone > 0  # the loader's own ceiling (no model), the diagnosis when the figure is not met
    rows = [line for line in text.splitlines() if line.rstrip().endswith("dry run")]
    assert len(rows) == 3
