"""Run the CLI inside the test process and get back what a subprocess would: exit status, stdout, stderr.

A fresh ``python -m opd_dynamics_cli.app`` pays 2–3 s of imports (torch, transformers) before it does anything;
in-process the same command costs what the command itself costs. ``run_cli`` calls the console script's own
``main()`` (the one that turns every user error into one ``error:`` line and exit status 2), so a test of the
command's behaviour sees exactly what a user sees. What it cannot see is process start itself: that the module
runs as ``-m``, what importing the CLI loads, signals from outside. The few tests about those keep a real
subprocess (``tests/test_cli.py``'s ``run``, ``tests/test_layering.py``, ``tests/test_watch.py``).

An exception that escapes ``main()`` is printed as the interpreter would print it (a ``Traceback`` on stderr,
exit status 1), so "no traceback" assertions keep their teeth; warnings are shown on stderr under the
interpreter's default filters, not the test session's.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
import warnings

# What a fresh interpreter starts with (python -W unset): the list ``warnings.filters`` holds at start-up.
_DEFAULT_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                    ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                    ("ignore", ResourceWarning, None)]


def _show(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _process_like(argv: list[str], cwd, env):
    """argv, cwd, environment, warning filters and ``warnings.formatwarning`` as a fresh process has them; all
    restored afterwards (``main()`` replaces ``formatwarning``, which ``catch_warnings`` does not restore)."""
    old_argv, old_cwd, old_env, old_format = sys.argv, os.getcwd(), dict(os.environ), warnings.formatwarning
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(_DEFAULT_FILTERS):
                warnings.filterwarnings(action, category=category, module=module or "")
            warnings.showwarning = _show
            sys.argv = argv
            if cwd is not None:
                os.chdir(cwd)
            if env is not None:
                os.environ.clear()
                os.environ.update(env)
            yield
    finally:
        sys.argv, warnings.formatwarning = old_argv, old_format
        os.chdir(old_cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(old_env)


def run_cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``opd-dynamics ARGS...`` in this process; returns a ``CompletedProcess`` like ``subprocess.run(...,
    capture_output=True, text=True)`` would (``env`` replaces the environment, as ``subprocess.run``'s does)."""
    from opd_dynamics_cli.app import main

    argv = ["opd-dynamics", *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _process_like(argv, cwd, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:  # what the interpreter does with an uncaught exception
            traceback.print_exc(file=sys.stderr)
            code = 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
