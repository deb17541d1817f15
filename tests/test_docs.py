"""The docs site builds with ``mkdocs build --strict`` (warnings are errors) and its generated pages are complete."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # builds the whole site with mkdocstrings

# looked up, not imported: the build runs in its own process, and importing mkdocstrings here would cost the fast tier
# (`-m "not slow"` still collects this module)
if any(importlib.util.find_spec(m) is None for m in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers")) or \
        importlib.util.find_spec("mkdocstrings_handlers.python") is None:
    pytest.skip('pip install -e ".[docs]"', allow_module_level=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_every_nav_page_is_built(site):
    for page in ("getting-started", "concepts", "figures", "metrics", "reference-runs", "interventions", "effopd",
                 "performance", "extending", "cli", "api", "live-runs"):
        assert (site / page / "index.html").exists(), page


def test_cli_reference_lists_every_command(site):
    import typer.main

    from opd_dynamics_cli.app import app

    group = typer.main.get_command(app)
    html = (site / "cli" / "index.html").read_text()
    commands = group.list_commands(group.context_class(group, info_name="opd-dynamics"))
    assert "report" in commands
    for name in commands:
        assert f'id="{name}"' in html, f"{name} missing from the CLI reference"
    assert "--formats" in html and "<table" in html


def test_api_reference_renders_docstrings(site):
    html = (site / "api" / "index.html").read_text()
    for name in ("build_report", "table1_bars", "alignment_curves", "from_records", "analyze", "pivot"):
        assert name in html
    assert "Compute update-geometry metrics" in html
