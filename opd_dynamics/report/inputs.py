"""The report's inputs: long tables (``analyze -o``) and study frames, recognised by their columns.

A long table whose ``manifest.json`` names another tool (an intervention study's or the EffOPD replay's raw scores)
is skipped: the study frame written beside it carries the same scores. A run defined by two inputs is refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import OPDError, read_json
from ..io.storage import StorageConfig, as_path, is_remote
from ..table import COLUMNS, DTYPES, EXPERT, MANIFEST_NAME, RUN, validate, with_expert

PathLike = str | os.PathLike
ANALYZE_TOOL = "opd-dynamics analyze"  # the manifest "tool" of long tables drawn as analysis results


@dataclass
class Inputs:
    """Everything read from the results paths."""

    table: pd.DataFrame
    studies: pd.DataFrame | None
    sources: list[dict] = field(default_factory=list)

    @property
    def preset(self) -> str:
        """The preset the analyses recorded (docs/fidelity.md); ``paper`` unless every analysis recorded the same."""
        recorded = {((s.get("manifest") or {}).get("settings") or {}).get("preset") or "paper"
                    for s in self.sources if s.get("kind") == "analysis"}
        return recorded.pop() if len(recorded) == 1 else "paper"


def _read(path: Path) -> pd.DataFrame:
    if is_remote(path):  # results are small: one ranged read of the whole file
        import io

        data = io.BytesIO(bytes(path.storage.read_range(path.key, 0, path.stat().st_size)))
        return pd.read_parquet(data) if path.suffix == ".parquet" else pd.read_csv(data)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _table_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".csv") and not p.name.startswith("."))
    parquet = {p.stem for p in files if p.suffix == ".parquet"}
    return [p for p in files if not (p.suffix == ".csv" and p.stem in parquet)]  # metrics.csv mirrors the Parquet


def load_inputs(paths: Sequence[PathLike], storage: StorageConfig | None = None) -> Inputs:
    """Read every long table and study frame under ``paths`` (local or URLs); refuse a run that two inputs both define."""
    from ..frames import is_study_frame, validate_study

    if not paths:
        raise OPDError("no results given", hint="opd-dynamics report RESULTS_DIR [RESULTS_DIR ...] -o report/")
    tables, studies, sources, owner, seen = [], [], [], {}, set()
    for raw in paths:
        path = as_path(raw, storage)
        if not path.exists():
            raise OPDError(f"{path}: no such file or directory", hint="pass a directory written by analyze -o")
        found = False
        for f in _table_files(path):
            if f.resolve() in seen:  # the same file named twice (directory and file)
                found = True
                continue
            seen.add(f.resolve())
            try:
                df = _read(f)
            except Exception as e:  # unreadable file: say which one
                raise OPDError(f"{f}: cannot read ({e})", hint="re-run the command that wrote it") from None
            manifest = f.parent / MANIFEST_NAME
            meta = read_json(manifest, hint="re-run the command that wrote it") if manifest.exists() else None
            tool = (meta or {}).get("tool") if isinstance(meta, dict) else None
            is_long = set(COLUMNS) - {EXPERT} <= set(df.columns)  # tables from before the expert column too
            if is_long and tool not in (None, ANALYZE_TOOL):
                # e.g. an intervention study's raw scores: drawn from the study frame written beside them
                sources.append({"path": str(f), "kind": f"skipped ({tool} table; its study frame is drawn)"})
                continue
            if is_long:
                df = validate(with_expert(df)[list(COLUMNS)].astype(DTYPES))
                for run in df[RUN].unique():
                    if run in owner and owner[run] != f:
                        raise OPDError(f"run {run!r} is in both {owner[run]} and {f}",
                                       hint="label runs apart with `analyze --name`")
                    owner[run] = f
                tables.append(df)
                sources.append({"path": str(f), "kind": "analysis", "runs": sorted(df[RUN].unique()), "manifest": meta})
                found = True
            elif is_study_frame(df):
                df = validate_study(df)
                studies.append(df)
                sources.append({"path": str(f), "kind": "study", "studies": sorted(df["study"].unique())})
                found = True
        if not found:
            raise OPDError(f"{path}: no analysis table or study frame here",
                           hint="expected metrics.parquet (from analyze -o) or a Parquet/CSV with columns "
                                "study, run, variant, x, metric, value")
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        {c: pd.Series(dtype=t) for c, t in DTYPES.items()})
    return Inputs(table, pd.concat(studies, ignore_index=True) if studies else None, sources)
