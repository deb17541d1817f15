"""``analyze``: runs on disk -> the long table (and, with ``out=``, Parquet + manifest written atomically).

>>> import tempfile
>>> from opd_dynamics.synthetic import make_synthetic_runs
>>> runs = make_synthetic_runs(tempfile.mkdtemp(), steps=(1, 2, 4), layers=1, hidden=16)
>>> df = analyze([runs["opd"]], base=runs["base"], metrics=["spectral_norm"], progress=False)
>>> sorted(df["step"].unique().tolist()), df["metric"].unique().tolist()
([1, 2, 4], ['spectral_norm'])
"""
from __future__ import annotations

import os
from collections import Counter
from contextlib import nullcontext
from typing import TYPE_CHECKING, Sequence

from .device import resolve_device
from .errors import OPDError
from .presets import check, metric_specs

if TYPE_CHECKING:
    from concurrent.futures import Executor

    import pandas as pd
    import torch

    from .io.discovery import Run
    from .io.storage import StorageConfig
    from .metrics.registry import Spec
    from .select import Selector

# torch, pandas, the engine and discovery are imported inside the functions: ``import opd_dynamics`` imports this
# module eagerly (so ``opd_dynamics.analyze`` is always the function) and must stay cheap for the CLI's --help.
PathLike = str | os.PathLike

__all__ = ["analyze", "manifest", "open_runs", "resolve_device"]


def _device(device: str, executor) -> torch.device:
    """The device tasks use; on a Ray cluster ``cuda`` names the workers' GPUs, which this driver may lack."""
    if isinstance(executor, str) and executor.startswith("ray") and device.startswith("cuda"):
        import torch

        return torch.device(device)
    return resolve_device(device)


def _specs(metrics: Sequence[str | Spec] | None) -> list[Spec]:
    """Parsed, checked specs; one metric may appear with several settings (labelled apart in the table), an exact
    repeat is dropped."""
    from .metrics.registry import DEFAULT_METRICS, Spec, unique_specs

    specs = [m if isinstance(m, Spec) else Spec.parse(m) for m in (metrics or DEFAULT_METRICS)]
    for s in specs:
        s.check()
        s.build()  # unknown names and bad settings fail here, before any reading
    return unique_specs(specs)


def open_runs(paths: Sequence[PathLike], *, base: PathLike | Sequence[PathLike] | None = None,
              names: Sequence[str] | None = None, steps: Sequence[int] | None = None,
              allow_pickle: bool = False, lora_scaling: float | None = None,
              storage: StorageConfig | dict | None = None, skip_incomplete: bool = True,
              ds_weights: str = "fp32") -> list[Run]:
    """Discover several runs; ``base`` is one directory for all or one per run (paths or URLs).

    With ``skip_incomplete`` a checkpoint still being written (:func:`opd_dynamics.live.incomplete`) is left out
    with a warning; each run's ``skipped`` then maps its step to the reason. Remote runs are not checked: an object
    store shows an object only once its upload completed, and a shard still missing is a clear error.
    """
    from .io.discovery import open_run
    from .io.storage import as_path, is_remote
    from .live import complete_steps

    storage = _storage(storage)
    if not paths:
        raise OPDError("no run directories given", hint="opd-dynamics analyze RUN_DIR [RUN_DIR ...] --base BASE_DIR")
    bases = list(base) if isinstance(base, (list, tuple)) else [base] * len(paths)
    if len(bases) != len(paths):
        raise OPDError(f"{len(bases)} bases for {len(paths)} runs", hint="give one --base, or one per run")
    names = list(names) if names else [None] * len(paths)
    runs = []
    for p, b, n in zip(paths, bases, names):
        wanted, skipped = list(steps) if steps else None, {}
        if skip_incomplete and not is_remote(as_path(p, storage)):
            wanted, skipped = complete_steps(p, wanted)
        run = open_run(p, base=b, name=n, steps=wanted, allow_pickle=allow_pickle, lora_scaling=lora_scaling,
                       storage=storage, ds_weights=ds_weights)
        run.skipped = skipped
        runs.append(run)
    seen = Counter(r.name for r in runs)
    dup = [n for n, c in seen.items() if c > 1]
    if dup:
        raise OPDError(f"two runs are named {dup[0]!r}", hint="label them with --name, one per run")
    return runs


def _storage(storage: StorageConfig | dict | None) -> StorageConfig | None:
    from .io.storage import StorageConfig

    return StorageConfig(options=dict(storage)) if isinstance(storage, dict) else storage


def manifest(runs: list[Run], specs: list[Spec], **settings) -> dict:
    """Provenance written beside the table: inputs, versions, metric specs and settings."""
    from . import provenance

    def dtypes(ck):
        return dict(Counter(str(ck.dtype(k)).replace("torch.", "") for k in ck.keys()))

    return provenance.manifest(
        "opd-dynamics analyze",
        runs=[{"name": r.name, "root": str(r.root.resolve()), "base": str(r.base.path.resolve()),
               "base_dtypes": dtypes(r.base), "steps": {str(s): str(c.path.resolve()) for s, c in r.steps.items()},
               "checkpoint_format": r.steps[r.final_step].format,
               "checkpoint_dtypes": dtypes(r.steps[r.final_step])} for r in runs],
        metrics=[s.to_json() for s in specs],
        settings=settings)


def analyze(paths: Sequence[PathLike], *, base: PathLike | Sequence[PathLike] | None = None,
            names: Sequence[str] | None = None, metrics: str | Sequence[str | Spec] | None = None,
            select: str | Sequence[str] | Selector | None = None, against: str | int = "base",
            steps: Sequence[int] | None = None, device: str = "auto", spectrum_method: str = "gram",
            allow_pickle: bool = False, nonfinite: str = "error", lora_scaling: float | None = None,
            storage: StorageConfig | dict | None = None, out: PathLike | None = None, csv: bool = False,
            progress: bool = True, cache: bool = True, skip_incomplete: bool = True,
            executor: str | Executor | None = None, ds_weights: str = "fp32",
            preset: str | None = None) -> pd.DataFrame:
    """Compute update-geometry metrics for every module at every saved step of one or more runs.

    Args:
        paths: run directories (``checkpoint-N/``, ``global_step_N/``, ``step_N/`` layouts) or single checkpoints,
            local or as fsspec URLs (``s3://bucket/run/``, ``gs://``, ``az://``, ``hf://org/repo@step-*``), read by
            byte range (docs/remote.md).
        base: the model training started from (W₀): one directory for all runs, or one per run.
            Default: each run's step-0 checkpoint.
        names: labels for the ``run`` column (default: directory names).
        metrics: metric names or specs like ``"alignment_to_final:k=10,side=right"`` (default: the
            EffOPD arXiv 2605.11739 App. B / Table 1 / Fig. 4b set, docs/metrics.md).
        select: ``--select`` clauses (``kind=mlp_*``, ``layer=0-11``, ``name=REGEX``, ``matrix``).
        against: ``"base"`` (ΔW_t = W_t − W₀), ``"prev"`` (W_t − W_{t'}) or a fixed step number.
        steps: analyse only these steps.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        spectrum_method: ``gram`` (float64 Gram + eigvalsh, default), ``svd`` (float32) or ``svd64``.
        nonfinite: ``error`` (default) stops at a NaN/Inf weight; ``nan`` records NaN rows with a warning.
            Why error by default: a NaN weight means a diverged or corrupt checkpoint, and every spectral
            number computed beside it would be meaningless.
        lora_scaling: for runs of PEFT adapters, the s in ΔW = s·B·A (overrides adapter_config.json's α/r;
            needed when an exporter wrote ``lora_alpha: 0``).
        ds_weights: for DeepSpeed ZeRO runs, ``fp32`` (the optimizer's fp32 master weights, default) or ``module``
            (the 16-bit model copy; it rounds small RL updates away). See ``docs/layouts.md``.
        storage: for URLs: a :class:`~opd_dynamics.io.storage.StorageConfig` (fsspec options, retries, cache), or
            just the fsspec options as a dict (``{"endpoint_url": "http://127.0.0.1:9000"}``).
        out: directory to write ``metrics.parquet`` + ``manifest.json`` (+ ``cache/``) into, as one unit (checked
            and locked before any reading; nothing written on error; an earlier result there is replaced whole,
            :mod:`opd_dynamics.outdir`).
        csv: also write ``metrics.csv``.
        cache: with ``out``, reuse the cells an earlier analysis kept in ``out/cache/`` and compute only the new
            ones (:mod:`opd_dynamics.cache`); False computes everything afresh (and rewrites the cache).
        skip_incomplete: leave out (with a warning) checkpoints still being written instead of failing;
            ``df.attrs["skipped"]`` then lists them as ``run/step: reason``.
        executor: where the work runs (:mod:`opd_dynamics.executors`): ``"local"`` (default, this process),
            ``"processes[:N]"`` (N worker processes; one per GPU with ``device="cuda"``), ``"ray[:ADDRESS]"``
            (``auto``, ``ray://host:port``, or a local cluster started for the call; ``,num_gpus=0.25`` etc.),
            or any ``concurrent.futures.Executor``. Every one gives the same table.
        preset: ``"paper"`` (default: the papers' text) or ``"authors"`` (the released code's conventions: top-1 % with
            ⌊0.01·r⌋, Hill α on λ = σ², standardised rank-1 PCA), filled into each metric spec that does not set
            that setting itself (:mod:`opd_dynamics.presets`, docs/fidelity.md).

    Returns:
        The long table ``run, step, ref_step, module, layer, expert, kind, metric, value``.
    """
    from .engine import run_metrics
    from .metrics.registry import DEFAULT_METRICS, Spec
    from .outdir import claim
    from .select import Selector

    with claim(out) if out is not None else nullcontext() as claimed:  # -o checked and locked before any reading
        metrics = [metrics] if isinstance(metrics, (str, Spec)) else metrics  # one metric may come bare
        specs = _specs(metric_specs([m if isinstance(m, Spec) else Spec.parse(m) for m in (metrics or DEFAULT_METRICS)],
                                    preset))
        selector = select if isinstance(select, Selector) else Selector.parse(
            [select] if isinstance(select, str) else list(select or []))  # one clause may come as a plain string
        dev = _device(device, executor)
        runs = open_runs(paths, base=base, names=names, steps=steps, allow_pickle=allow_pickle,
                         lora_scaling=lora_scaling, storage=storage, skip_incomplete=skip_incomplete,
                         ds_weights=ds_weights)
        memo = None
        if out is not None:
            from . import provenance
            from .cache import CACHE_DIR, Memo

            version = provenance.package_version("opd-dynamics", "unknown")
            memo = Memo(out, runs, specs, {"version": version, "spectrum_method": spectrum_method,
                                           "nonfinite": nonfinite, "device": dev.type, "lora_scaling": lora_scaling,
                                           "ds_weights": ds_weights},
                        reuse=cache)
        try:
            rows = run_metrics(runs, specs, selector=selector, against=against, device=dev,
                               spectrum_method=spectrum_method, nonfinite=nonfinite, progress=progress, memo=memo,
                               executor=executor)
        except BaseException:
            if memo is not None:
                memo.discard()
            raise
        from .table import from_rows, table_files  # pandas and pyarrow (~70 MB) only after the peak of the loop

        df = from_rows(rows)
        skipped = [f"{r.name}/{s}: {why}" for r in runs for s, why in getattr(r, "skipped", {}).items()]
        if claimed is not None:
            files = table_files(df, manifest(runs, specs, select=selector.to_json(), against=against,
                                             device=str(dev), spectrum_method=spectrum_method, nonfinite=nonfinite,
                                             lora_scaling=lora_scaling, ds_weights=ds_weights, rows=len(df),
                                             preset=check(preset),
                                             skipped=skipped,
                                             executor=executor if isinstance(executor, (str, type(None)))
                                             else type(executor).__name__,
                                             cells={"computed": memo.computed, "reused": memo.reused}), csv=csv)
            try:
                claimed.commit({**files, CACHE_DIR: lambda p: memo.save(into=p)})  # the cache travels with the table
            finally:
                memo.discard()
    df.attrs["skipped"] = skipped
    return df
