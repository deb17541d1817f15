"""The one long table every stage reads and writes, its validation, and its Parquet + manifest I/O.

Columns: ``run, step, ref_step, module, layer, expert, kind, metric, value``. ``ref_step`` is the step the
update is measured against (0 = the base W₀). ``layer`` is 0-based and missing (<NA>) for modules outside
the transformer blocks; ``expert`` is the mixture-of-experts expert index, missing for dense modules (tables
written before the column existed load with it missing). Wide views are derived for plots (see :func:`pivot`), never stored.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from .kinds import ATTN_KINDS, BODY_KINDS, KINDS, MLP_KINDS  # noqa: F401  (re-exported)

RUN, STEP, REF_STEP, MODULE, LAYER, EXPERT, KIND, METRIC, VALUE = (
    "run", "step", "ref_step", "module", "layer", "expert", "kind", "metric", "value")
COLUMNS = (RUN, STEP, REF_STEP, MODULE, LAYER, EXPERT, KIND, METRIC, VALUE)
DTYPES = {RUN: "string", STEP: "int64", REF_STEP: "int64", MODULE: "string", LAYER: "Int64", EXPERT: "Int64",
          KIND: "string", METRIC: "string", VALUE: "float64"}
MANIFEST_NAME = "manifest.json"


def from_rows(rows: list[tuple] | list[dict]) -> pd.DataFrame:
    """Build a validated long table from row tuples in ``COLUMNS`` order (or dicts keyed by column).

    >>> df = from_rows([("opd", 8, 0, "model.layers.0.mlp.up_proj.weight", 0, None, "mlp_up", "frobenius", 1.5)])
    >>> list(df.columns) == list(COLUMNS), float(df.loc[0, "value"])
    (True, 1.5)
    """
    df = pd.DataFrame(rows, columns=None if rows and isinstance(rows[0], dict) else list(COLUMNS))
    if df.empty:
        df = pd.DataFrame({c: pd.Series(dtype=t) for c, t in DTYPES.items()})
    return validate(df[list(COLUMNS)].astype(DTYPES))


def validate(df: pd.DataFrame) -> pd.DataFrame:
    """Check columns, dtypes, kinds and key uniqueness; return ``df`` unchanged or raise ``ValueError``."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"long table lacks columns {missing}; expected {list(COLUMNS)}")
    for col, dtype in DTYPES.items():
        if str(df[col].dtype) != dtype:
            raise ValueError(f"column {col!r} has dtype {df[col].dtype}, expected {dtype}")
    bad = set(df[KIND].dropna().unique()) - set(KINDS)
    if bad:
        raise ValueError(f"unknown kinds {sorted(bad)}; allowed: {KINDS}")
    key = [RUN, STEP, REF_STEP, MODULE, EXPERT, METRIC]
    dup = df.duplicated(key)
    if dup.any():
        raise ValueError(f"duplicate rows for key {key}: first {df.loc[dup, key].iloc[0].tolist()}")
    return df


def _atomic_write(path: Path, write) -> None:
    """Write one file through a temporary name in the same directory and rename (mode from the umask, not 0600).

    For a whole result directory use :func:`opd_dynamics.outdir.write_results` (what :func:`save` does).
    """
    from .outdir import files_mode

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, files_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def table_files(df: pd.DataFrame, manifest: dict[str, Any], *, csv: bool = False) -> dict[str, Any]:
    """The files of a results directory (name -> writer): ``metrics.parquet`` [+ ``metrics.csv``] + the manifest.

    What :func:`save` writes; pass it (plus any files of your own) to :func:`opd_dynamics.outdir.write_results`
    or a held claim's ``commit``.
    """
    validate(df)
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    files: dict[str, Any] = {"metrics.parquet": lambda p: df.to_parquet(p, index=False)}
    if csv:
        files["metrics.csv"] = lambda p: df.to_csv(p, index=False)
    files[MANIFEST_NAME] = lambda p: Path(p).write_text(text, encoding="utf-8")
    return files


def save(df: pd.DataFrame, out_dir: str | os.PathLike, manifest: dict[str, Any], *, csv: bool = False) -> Path:
    """Replace ``out_dir`` by ``metrics.parquet`` (and ``metrics.csv``) plus ``manifest.json``, as one unit.

    The directory is filled beside ``out_dir`` and swapped in (:mod:`opd_dynamics.outdir`): readers see the old
    result or the new one, never a mix, and files of an earlier run (an old ``metrics.csv``) do not survive.
    Returns the Parquet path.
    """
    from .outdir import write_results

    write_results(out_dir, table_files(df, manifest, csv=csv))
    return Path(out_dir) / "metrics.parquet"


def load(path: str | os.PathLike) -> pd.DataFrame:
    """Read a long table from a Parquet/CSV file or a results directory holding ``metrics.parquet``."""
    from .errors import OPDError

    p = Path(path)
    if p.is_dir():
        p = p / "metrics.parquet"
    if not p.exists():
        raise OPDError(f"{p}: no results table here", hint="point at the directory `opd-dynamics analyze -o` wrote")
    try:
        df = pd.read_csv(p) if p.suffix == ".csv" else pd.read_parquet(p)
        return validate(with_expert(df)[list(COLUMNS)].astype(DTYPES))
    except Exception as e:  # unreadable, not Parquet, not a long table: one line naming the file
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise OPDError(f"{p}: not a readable results table ({why})",
                       hint="point at the directory `opd-dynamics analyze -o` wrote, or re-run analyze") from None


def with_expert(df: pd.DataFrame) -> pd.DataFrame:
    """A table written before the ``expert`` column existed gains it, missing everywhere (every module dense)."""
    if EXPERT in df.columns:
        return df
    return df.assign(**{EXPERT: pd.Series(pd.NA, index=df.index, dtype="Int64")})


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read the manifest beside a results table (directory or table path)."""
    from .errors import read_json

    p = Path(path)
    return read_json((p if p.is_dir() else p.parent) / MANIFEST_NAME, hint="re-run the command that wrote it")


def pivot(df: pd.DataFrame, index=(RUN, STEP, MODULE, LAYER, EXPERT, KIND), columns=METRIC) -> pd.DataFrame:
    """Wide view: one row per (run, step, module), one column per metric — for plots and notebooks."""
    return df.pivot_table(index=list(index), columns=columns, values=VALUE, dropna=False,
                          observed=True).reset_index()
