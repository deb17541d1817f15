"""``od.watch``: a live run's metrics against step in a notebook, redrawn in place as checkpoints arrive.

>>> import opd_dynamics as od
>>> # od.watch("runs/opd", base="models/base", metrics=["spectral_ratio", "effective_rank"], until_step=500)
>>> # od.watch("results/live")   # a results directory `analyze --watch` writes from another process

The figure is :func:`opd_dynamics.plots.metric_vs_step` (mean over attention + MLP matrices, interquartile band),
shown once with an IPython display handle and updated in that same output cell after each new checkpoint.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from .table import MANIFEST_NAME

DEFAULT = ("spectral_ratio", "effective_rank", "spectral_norm")


class _Figure:
    """Draws the table and shows it in one display slot (a display handle; ``handle=`` for tests)."""

    def __init__(self, metrics: Sequence[str], x: str, handle=None):
        self.metrics, self.x, self.handle, self.df = list(metrics), x, handle, None

    def __call__(self, df: pd.DataFrame) -> None:
        from .plots import metric_vs_step
        from .plots._style import pyplot

        fig = metric_vs_step(df, self.metrics, x=self.x)
        if self.handle is None:
            from IPython.display import display

            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        pyplot().close(fig)
        self.df = df


def watch(source: str | os.PathLike, *, base: str | os.PathLike | None = None, metrics: Sequence[str] = DEFAULT,
          out: str | os.PathLike | None = None, interval: float = 10.0, until_step: int | None = None,
          timeout: float | None = None, x: str = "step", handle=None,
          sleep: Callable[[float], None] = time.sleep, **analyze_kw) -> pd.DataFrame | None:
    """Plot ``metrics`` of a live run against step, redrawing in place until ``until_step``, ``timeout`` or Ctrl-C.

    Args:
        source: a run directory (analysed here, incrementally, into ``out`` — default a temporary directory), or a
            results directory that ``opd-dynamics analyze --watch -o`` writes from another process (re-read when its
            manifest changes).
        base: W₀ of the run (as for ``analyze``).
        metrics: metric names to draw (and, for a run directory, to compute).
        interval: seconds between looks.
        until_step: stop once a step ≥ this is drawn.
        timeout: stop after this many seconds.
        x: ``"step"`` or ``"progress"``.
        handle: where to draw (default: a new IPython display handle).
        analyze_kw: passed to :func:`opd_dynamics.analyze` (``select``, ``against``, ``device`` …).

    Returns:
        The last table drawn (None if nothing was).
    """
    draw = _Figure(metrics, x, handle)
    src = Path(source)
    if (src / MANIFEST_NAME).exists() or (src / "metrics.parquet").exists():
        _poll_results(src, draw, interval, until_step, timeout, sleep)
        return draw.df
    from .analyze import analyze
    from .live import follow

    where = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="opd-watch-"))
    analyze_kw.setdefault("metrics", list(metrics))
    follow(src, lambda steps: draw(analyze([src], base=base, steps=steps, out=where, progress=False, **analyze_kw)),
           interval=interval, until_step=until_step, timeout=timeout, echo=lambda m: None, sleep=sleep)
    return draw.df


def _poll_results(src: Path, draw: _Figure, interval, until_step, timeout, sleep) -> None:
    from .table import load

    last, start = None, time.monotonic()
    try:
        while True:
            try:
                stamp = (src / MANIFEST_NAME).stat().st_mtime_ns
            except OSError:
                stamp = None
            if stamp is not None and stamp != last:
                last = stamp
                draw(load(src))
            if until_step is not None and draw.df is not None and len(draw.df) and draw.df["step"].max() >= until_step:
                return
            if timeout is not None and time.monotonic() - start > timeout:
                return
            sleep(interval)
    except KeyboardInterrupt:
        return
