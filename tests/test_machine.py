"""The machine description and the once-per-machine BLAS choice (opd_dynamics.machine)."""
from __future__ import annotations

import json

import pytest

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
