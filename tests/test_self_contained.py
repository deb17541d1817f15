"""The project cites papers (arXiv id, section) and its own docs/ pages, never a design document outside it."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLACES = ["opd_dynamics", "cli", "docs", "notebooks", "bench", "README.md", "mkdocs.yml", "pyproject.toml"]
SUFFIXES = {".py", ".md", ".ipynb", ".yml", ".yaml", ".toml", ".txt", ".sh", ".html", ".cfg"}
FORBIDDEN = ("SPEC §", "../shared", "shared/SPEC", "shared/FORMATS", "FORMATS §", "STYLE.md")


def _files():
    for place in PLACES:
        p = ROOT / place
        yield from ([p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES))


def test_the_places_searched_exist_and_hold_files():
    files = list(_files())
    assert all((ROOT / place).exists() for place in PLACES)
    assert len(files) > 50 and any(f.suffix == ".ipynb" for f in files)


@pytest.mark.parametrize("needle", FORBIDDEN)
def test_no_citation_of_documents_outside_the_project(needle):
    hits = [f"{f.relative_to(ROOT)}:{i}" for f in _files()
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if needle in line]
    assert not hits, f"{needle!r} cited in {hits}: cite the paper (arXiv id, section) or a docs/ page instead"
