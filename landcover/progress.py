"""Progress reports on stderr, the same for every command and library loop.

On a terminal, :func:`progress_bar` draws a live ``tqdm`` bar. When stderr is not a
terminal (a log file, CI, ``nohup``, a pipe), carriage-return redraws would pile up as
one endless line, so it writes a plain line instead each time the work passes another
``every_percent`` percent, or ``every_seconds`` seconds went by without one (work of
unknown size: only the latter), and a last line when it ends::

    predict: 40% (1200/3000 win, 12 s)

A transient report (``leave=False``: one training epoch, the tasks of one computation)
writes only its time-based lines and its last line, so a log gets one line per epoch.

:func:`dask_progress` reports the tasks of a computation on Dask's local schedulers and
:func:`wait_with_progress` the tasks behind a future of a ``distributed`` cluster; both
go through :func:`progress_bar`. Nothing is written to stdout, which stays for results.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from typing import IO, Any, Protocol

__all__ = ["Progress", "progress_bar", "dask_progress", "wait_with_progress"]

EVERY_PERCENT = 10.0
"""Default step (percent of the total) between two lines when stderr is not a terminal."""
EVERY_SECONDS = 30.0
"""Default longest silence (seconds) between two lines when stderr is not a terminal."""


class Progress(Protocol):
    """What loops use of a progress report (a subset of ``tqdm``'s interface)."""

    total: float | None
    n: float

    def update(self, n: float = 1) -> Any:
        """Count ``n`` more units of work done."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        """Values shown after the count (e.g. ``loss=0.41``)."""

    def close(self) -> None:
        """End the report (idempotent)."""


def progress_bar(
    total: float | None = None,
    *,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    file: IO[str] | None = None,
    every_percent: float = EVERY_PERCENT,
    every_seconds: float = EVERY_SECONDS,
    **tqdm_kwargs: Any,
) -> Progress:
    """A progress report for ``total`` units of work on ``file`` (default ``sys.stderr``).

    Parameters
    ----------
    total
        Units of work; None when unknown (lines then come every ``every_seconds``).
    desc, unit
        Label before the count and name of one unit (``"win"``, ``"region"``, ``"B"``...).
    enabled
        False: report nothing (``-q``).
    file
        The stream; a terminal gets a live bar, anything else plain lines.
    every_percent, every_seconds
        Line cadence off a terminal.
    **tqdm_kwargs
        Passed to ``tqdm`` on a terminal (``leave``, ``position``, ``unit_scale``...).
    """
    stream = file if file is not None else sys.stderr
    if not enabled:
        return _Silent(total)
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        tqdm_kwargs.setdefault("dynamic_ncols", True)
        bar: Progress = tqdm(total=total, desc=desc, unit=unit, file=stream, **tqdm_kwargs)
        return bar
    scale = bool(tqdm_kwargs.get("unit_scale"))
    transient = tqdm_kwargs.get("leave") is False  # a part of longer work (an epoch, a batch of tasks)
    return _Lines(total, desc, unit, stream, every_percent, every_seconds, scale=scale, transient=transient)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Silent:
    """Counts, shows nothing (``enabled=False``)."""

    def __init__(self, total: float | None) -> None:
        self.total = total
        self.n: float = 0

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lines:
    """A line per ``every_percent`` of ``total`` (or per ``every_seconds``), and one at the end.

    A ``transient`` report (``leave=False``: one epoch of a run, the tasks of one step) is a
    part of longer work; off a terminal it writes no percent lines, only the time-based
    ones and its last line, so that a 20-epoch log has a line per epoch, not ten.
    """

    def __init__(
        self,
        total: float | None,
        desc: str,
        unit: str,
        stream: IO[str],
        every_percent: float,
        every_seconds: float,
        *,
        scale: bool = False,
        transient: bool = False,
    ) -> None:
        self.total = total
        self.transient = transient
        self.n: float = 0
        self.desc = desc
        self.unit = unit
        self.stream = stream
        self.every_percent = max(float(every_percent), 0.1)
        self.every_seconds = float(every_seconds)
        self.scale = scale
        self.postfix = ""
        self.t0 = self.last_time = time.monotonic()
        self.last_step = 0  # index of the last percent step reported
        self.shown_n: float = 0
        self.closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.total and not self.transient:
            step = math.floor(100.0 * self.n / self.total / self.every_percent)
            if step > self.last_step and self.n < self.total:
                self.last_step = step
                self._line(now)
                return
        if now - self.last_time >= self.every_seconds and self.n != self.shown_n:
            self._line(now)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n and self.n != self.shown_n:
            self._line(time.monotonic())

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _amount(self, value: float) -> str:
        """``value`` (``"12"``), or with prefix and unit under ``unit_scale`` (``"3.0MB"``; bytes: 1024)."""
        if not self.scale:
            return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
        base = 1024.0 if self.unit == "B" else 1000.0
        for prefix in ("", "k", "M", "G"):
            if abs(value) < base:
                return f"{value:.0f}{self.unit}" if not prefix else f"{value:.1f}{prefix}{self.unit}"
            value /= base
        return f"{value:.1f}T{self.unit}"

    def _line(self, now: float) -> None:
        self.last_time = now
        self.shown_n = self.n
        label = f"{self.desc}: " if self.desc else ""
        extra = ", ".join([f"{now - self.t0:.0f} s", *([self.postfix] if self.postfix else [])])
        unit = "" if self.scale else f" {self.unit}"
        if self.total:
            pct = 100.0 * self.n / self.total
            count = f"{self._amount(self.n)}/{self._amount(self.total)}{unit}"
            text = f"{label}{pct:.0f}% ({count}, {extra})"
        else:
            text = f"{label}{self._amount(self.n)}{unit} ({extra})"
        with contextlib.suppress(ValueError):  # a closed stream
            print(text, file=self.stream, flush=True)


@contextlib.contextmanager
def dask_progress(desc: str = "dask", *, enabled: bool = True, file: IO[str] | None = None) -> Iterator[None]:
    """Report the tasks of computations on Dask's local schedulers run inside the block."""
    if not enabled:
        yield
        return
    from dask.callbacks import Callback

    bars: list[Progress] = []

    def start_state(dsk: Any, state: Any) -> None:
        done = len(state["finished"])
        total = sum(len(state[k]) for k in ("ready", "waiting", "running")) + done
        bar = progress_bar(total, desc=desc, unit="task", file=file, leave=False)
        bar.update(done)
        bars.append(bar)

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if bars:
            bars[-1].update(1)

    try:
        with Callback(start_state=start_state, posttask=posttask):
            yield
    finally:
        for bar in bars:
            bar.close()


def wait_with_progress(
    futures: Any, desc: str = "dask", *, enabled: bool = True, file: IO[str] | None = None
) -> None:
    """Wait for ``futures`` (one ``distributed`` future or a list), reporting the tasks behind them."""
    from distributed import wait

    if not enabled:
        wait(futures)
        return
    from distributed.diagnostics.progressbar import TextProgressBar

    bar = progress_bar(None, desc=desc, unit="task", file=file, leave=False)

    class _Bar(TextProgressBar):  # type: ignore[misc]  # distributed's tracker, drawn by progress_bar
        def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:  # noqa: A002 - its name
            bar.total = all
            done = all - remaining
            if done > bar.n:
                bar.update(done - bar.n)

        def _draw_stop(self, **kwargs: Any) -> None:
            bar.close()

    keys = list(futures) if isinstance(futures, list | tuple) else [futures]
    try:
        _Bar(keys, complete=True)
    finally:
        bar.close()
    wait(futures)
