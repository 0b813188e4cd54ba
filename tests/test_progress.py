"""landcover.progress: a live bar on a terminal, a plain line every few percent elsewhere."""

from __future__ import annotations

import io
import os
import time

import pytest

from landcover.progress import dask_progress, progress_bar, wait_with_progress


def test_off_a_terminal_a_line_every_few_percent_and_no_carriage_returns() -> None:
    buf = io.StringIO()
    bar = progress_bar(200, desc="predict", unit="win", file=buf, every_percent=10, every_seconds=3600)
    for _ in range(200):
        bar.update(1)
    bar.close()
    bar.close()  # idempotent
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines] == ["predict"] * 10
    assert lines[0].startswith("predict: 10% (20/200 win, ")
    assert lines[-1].startswith("predict: 100% (200/200 win, ")


def test_a_transient_report_off_a_terminal_is_one_line_per_run() -> None:
    # one training epoch (leave=False) used to write ten lines to a log; 20 epochs gave 200
    buf = io.StringIO()
    for epoch in range(3):
        bar = progress_bar(50, desc=f"epoch {epoch + 1}/3", file=buf, leave=False, every_seconds=3600)
        for _ in range(50):
            bar.update(1)
            bar.set_postfix(loss="0.4100")
        bar.close()
    lines = buf.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all(line.split(": ")[1].startswith("100% (50/50 it, ") and "loss=0.4100" in line for line in lines)


def test_unknown_total_and_time_cadence_and_postfix() -> None:
    buf = io.StringIO()
    bar = progress_bar(None, desc="epoch 1/2", unit="it", file=buf, every_seconds=0.05)
    bar.update(3)
    time.sleep(0.06)
    bar.set_postfix(loss="0.4100")
    bar.update(2)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 1/2: 5 it (") and "loss=0.4100" in lines[0]


def test_bytes_scaled_and_disabled() -> None:
    buf = io.StringIO()
    bar = progress_bar(3 * 1024**2, desc="files", unit="B", unit_scale=True, file=buf)
    bar.update(3 * 1024**2)
    bar.close()
    assert buf.getvalue().startswith("files: 100% (3.0MB/3.0MB, ")
    quiet = io.StringIO()
    off = progress_bar(10, desc="x", file=quiet, enabled=False)
    off.update(10)
    off.close()
    assert quiet.getvalue() == "" and off.n == 10


def test_on_a_terminal_the_bar_redraws_in_place() -> None:
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    with os.fdopen(slave, "w") as tty:
        bar = progress_bar(5, desc="regions", unit="region", file=tty, mininterval=0)
        for _ in range(5):
            bar.update(1)
        bar.close()
        tty.flush()
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    out = b"".join(chunks).decode()
    assert "\r" in out and "regions" in out and "5/5" in out


def test_dask_local_scheduler_tasks_are_reported() -> None:
    import dask

    buf = io.StringIO()
    parts = [dask.delayed(lambda i: i)(i) for i in range(20)]
    with dask_progress("labels", file=buf):
        total = dask.delayed(sum)(parts).compute(scheduler="threads")
    assert total == sum(range(20))
    lines = buf.getvalue().splitlines()
    assert lines and lines[-1].startswith("labels: 100% (21/21 task")
    assert "\r" not in buf.getvalue()


@pytest.mark.timeout(60)
def test_distributed_futures_are_reported() -> None:
    import dask
    from distributed import Client, LocalCluster

    buf = io.StringIO()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            fut = client.compute(dask.delayed(time.sleep)(0.3))
            wait_with_progress(fut, "labels", file=buf)
            assert fut.done()
    text = buf.getvalue()
    assert "labels: 100% (1/1 task" in text and "\r" not in text
