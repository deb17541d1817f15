"""The machine description and the once-per-machine BLAS choice (opd_dynamics.machine)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from opd_dynamics import machine
from opd_dynamics.errors import OPDError


def test_describe_names_cpu_blas_and_load():
    line = machine.describe()
    assert machine.cpu_model() in line and "torch" in line and "numpy" in line and "load average" in line
    assert machine.usable_cpus() >= 1


def test_choice_is_measured_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("OPD_DYNAMICS_CACHE", str(tmp_path))
    monkeypatch.delenv("OPD_DYNAMICS_BLAS", raising=False)
    machine._chosen.cache_clear()
    calls = []
    monkeypatch.setattr(machine, "calibrate", lambda: calls.append(1) or {"torch": 2.0, "numpy": 1.0})
    assert machine.blas_backend() == "numpy" and calls == [1]
    cached = json.loads((tmp_path / "blas.json").read_text())
    assert list(cached.values()) == ["numpy"] and machine.cpu_model() in next(iter(cached))
    machine._chosen.cache_clear()  # a new process: reads the file, measures nothing
    assert machine.blas_backend() == "numpy" and calls == [1]
    machine._chosen.cache_clear()


def test_override_and_bad_value(monkeypatch):
    monkeypatch.setenv("OPD_DYNAMICS_BLAS", "torch")
    assert machine.blas_backend() == "torch"
    monkeypatch.setenv("OPD_DYNAMICS_BLAS", "eigen")
    with pytest.raises(OPDError, match="OPD_DYNAMICS_BLAS"):
        machine.blas_backend()


def test_calibration_times_both_backends():
    times = machine.calibrate()
    assert set(times) == set(machine.BACKENDS) and all(t > 0 for t in times.values())


def test_others_running_counts_runnable_tasks_minus_our_own(monkeypatch):
    real = machine.Path.read_text
    monkeypatch.setattr(machine.Path, "read_text",
                        lambda self, *a, **k: "9.50 7.00 3.00 5/812 4242\n" if str(self) == "/proc/loadavg"
                        else real(self, *a, **k))
    monkeypatch.setattr(machine, "_own_running", lambda: 2)
    assert machine.others_running(gap=0) == 3.0  # 5 runnable now, 2 of them ours; the stale 9.5 average is ignored
    monkeypatch.setattr(machine, "_own_running", lambda: 7)
    assert machine.others_running(gap=0) == 0.0  # never negative


def test_own_running_sees_the_calling_thread():
    assert machine._own_running() >= 1  # the thread asking is running


def test_threads_follow_what_others_use_now_not_the_load_average(monkeypatch):
    from opd_dynamics import executors

    monkeypatch.delenv("OPD_DYNAMICS_THREADS", raising=False)
    cpus = executors.cpu_budget()
    monkeypatch.setattr(machine, "others_running", lambda: 0.0)
    monkeypatch.setattr(executors.os, "getloadavg", lambda: (50.0, 50.0, 50.0), raising=False)
    assert executors.default_threads() == min(cpus, torch.get_num_threads())  # an idle machine after a busy minute
    monkeypatch.setattr(machine, "others_running", lambda: float(os.cpu_count()))
    assert executors.default_threads() == 1  # every CPU taken by others now
