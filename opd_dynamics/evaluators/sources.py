"""Where a user keeps a benchmark: rows (dicts) from JSONL, CSV, Parquet, a saved ``datasets`` directory or a
``load_dataset`` name.

- ``read_file(path)``: ``.jsonl``/``.json`` (one object per line, or one JSON list), ``.csv``, ``.parquet``;
- ``read_dataset(name, split)``: a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
  (``load_from_disk``; a ``DatasetDict`` needs the split), else ``datasets.load_dataset(name, split=split)`` (a hub
  name from the local cache, or a directory of data files).

Every reader returns a list of plain dicts in the source's order; nested columns (TRL's ``messages``, a ``prompt``
given as a list of ``{"role", "content"}`` turns) come back as lists of dicts.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"; _ = p.write_text("question,answer\\n1+1=,2\\n")
>>> read_file(p)
[{'question': '1+1=', 'answer': '2'}]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import OPDError

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL / JSON / CSV / Parquet file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        text = path.read_text()
        if suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for i, line in enumerate(text.splitlines()):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise OPDError(f"{path}:{i + 1}: not valid JSON ({e.msg})",
                                       hint="one JSON object per line") from None
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise OPDError(f"{path}: row {bad + 1} is not a JSON object", hint="one object per row, e.g. "
                           '{"prompt": "...", "answer": "..."}')
        return rows
    if suffix in (".csv", ".parquet"):
        import pandas as pd

        df = pd.read_csv(path, dtype=str, keep_default_na=False) if suffix == ".csv" else pd.read_parquet(path)
        return [_plain(r) for r in df.to_dict("records")]
    raise OPDError(f"{path}: unknown task file type {suffix!r}", hint=f"use one of {', '.join(FILE_SUFFIXES)}, "
                   "or dataset:PATH_OR_NAME:split")


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet's numpy arrays of structs -> lists of dicts (what JSON gives for the same rows)."""
    out = {}
    for k, v in row.items():
        if hasattr(v, "tolist") and not isinstance(v, str):
            v = v.tolist()
        out[k] = v
    return out


def _saved(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("state.json", "dataset_dict.json"))


def read_dataset(name: str, split: str | None) -> list[dict[str, Any]]:
    """Rows of a ``datasets`` dataset: a ``save_to_disk`` directory, or anything ``load_dataset`` opens offline."""
    try:
        import datasets
    except ImportError:
        raise OPDError("--task dataset:...: the `datasets` package is not installed",
                       hint="pip install datasets, or export the rows to JSONL") from None
    path = Path(name)
    try:
        if _saved(path):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split is None or split not in ds:
                    raise OPDError(f"{path}: a DatasetDict with splits {sorted(ds)}; no split {split!r} chosen",
                                   hint=f"use --task dataset:{name}:{sorted(ds)[0]}")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split or "train")
    except OPDError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError)
        raise OPDError(f"--task dataset:{name}: cannot load ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                       hint="give a directory written by save_to_disk, a data-file directory, or a cached hub name "
                       "with :split") from None
    return [dict(r) for r in ds]
