"""Result directories as one unit: swapped in whole, locked, cleaned up on every exit path, umask honoured."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from opd_dynamics.errors import OPDError
from opd_dynamics.outdir import MARKER, OutputError, check_out, claim, write_results
from opd_dynamics.table import _atomic_write


def _listing(d):
    return sorted(p.name for p in d.iterdir())


def _write(name, text):
    return {name: lambda p: p.write_text(text)}


def test_rerun_replaces_the_whole_directory(tmp_path):
    out = tmp_path / "res"
    write_results(out, {**_write("metrics.csv", "old"), **_write("manifest.json", "{}")})
    write_results(out, _write("manifest.json", '{"new": 1}'))
    assert _listing(out) == [MARKER, "manifest.json"]  # no metrics.csv left from the first run
    assert _listing(tmp_path) == ["res"]  # no temp directory, no lock file


def test_failure_while_writing_keeps_the_old_result(tmp_path):
    out = tmp_path / "res"
    write_results(out, _write("manifest.json", "old"))

    def boom(p):
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_results(out, {**_write("a.txt", "new"), "manifest.json": boom})
    assert (out / "manifest.json").read_text() == "old" and _listing(out) == [MARKER, "manifest.json"]
    assert _listing(tmp_path) == ["res"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_while_writing_leaves_old_result_and_no_temp(tmp_path, sig):
    out = tmp_path / "res"
    write_results(out, _write("manifest.json", "old"))
    script = textwrap.dedent(f"""
        import os, signal
        from opd_dynamics.outdir import write_results
        def killed(p):
            p.write_text("half")
            os.kill(os.getpid(), {int(sig)})
            raise AssertionError("the signal did not stop the writer")
        write_results({str(out)!r}, {{"metrics.parquet": lambda p: p.write_text("new"), "manifest.json": killed}})
    """)
    # SIG_DFL first: a shell that starts pytest in the background (`cmd &`) hands its children SIGINT ignored
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode != 0 and "AssertionError" not in r.stderr, r.stderr
    assert (out / "manifest.json").read_text() == "old" and _listing(out) == [MARKER, "manifest.json"]
    assert _listing(tmp_path) == ["res"]


def test_sigkilled_writer_leaves_temp_that_the_next_writer_removes(tmp_path):
    out = tmp_path / "res"
    stale = tmp_path / ".res.tmp-99999-abcdef"
    stale.mkdir()
    (stale / "metrics.parquet").write_text("half")
    write_results(out, _write("manifest.json", "new"))
    assert _listing(tmp_path) == ["res"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "res"
        write_results(out, {"figures/a.txt": lambda p: p.write_text("1"), "manifest.json": lambda p: p.write_text("{}")})
        _atomic_write(tmp_path / "single.txt", lambda p: open(p, "w").write("x"))
    finally:
        os.umask(old)
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (out / "figures" / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (out / "figures").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "single.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "res"
    script = f"from opd_dynamics.outdir import write_results; write_results({str(out)!r}, {{}})"
    with claim(out):
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert f"another opd-dynamics process (pid {os.getpid()}) is writing there" in r.stderr
    assert not out.exists()
    write_results(out, _write("manifest.json", "{}"))  # the lock went with the first writer
    assert _listing(tmp_path) == ["res"]


def test_claims_are_reentrant_and_commit_repeatedly(tmp_path):
    out = tmp_path / "res"
    with claim(out) as c:
        c.commit(_write("step1.txt", "1"))
        assert _listing(out) == [MARKER, "step1.txt"]
        write_results(out, _write("step2.txt", "2"))  # a library call inside a command that holds -o
        assert _listing(out) == [MARKER, "step2.txt"]
        assert (tmp_path / ".res.opd-lock").exists()
    assert _listing(tmp_path) == ["res"]


def test_check_out_refuses_before_anything_is_written(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        check_out(tmp_path / "file")
    with pytest.raises(OutputError, match="is a file, cannot create"):
        check_out(tmp_path / "file" / "sub" / "res")
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    with pytest.raises(OPDError, match="not an opd-dynamics report or result"):
        write_results(mine, _write("manifest.json", "{}"))
    assert _listing(mine) == ["thesis.tex"]
    write_results(tmp_path / "a" / "b" / "res", _write("x", "1"))  # missing parents are created at commit
    assert _listing(tmp_path / "a" / "b") == ["res"] and _listing(tmp_path / "a") == ["b"]


def test_unwritable_location_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match="not writable"):
        check_out(tmp_path / "res")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(OutputError, match="not writable"):
        check_out(ro / "res")
