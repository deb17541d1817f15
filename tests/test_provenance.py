"""One manifest builder: analyze, the intervention studies and the EffOPD replay all start with tool/created/versions."""
from __future__ import annotations

import datetime as dt

from opd_dynamics import provenance
from opd_dynamics.analyze import manifest as analyze_manifest
from opd_dynamics.io.discovery import open_run
from opd_dynamics.metrics.registry import Spec


def test_manifest_head_and_fields():
    m = provenance.manifest("opd-dynamics x", settings={"a": 1}, runs=[])
    assert list(m)[:3] == ["tool", "created", "versions"] and m["tool"] == "opd-dynamics x"
    assert m["settings"] == {"a": 1} and m["runs"] == []
    assert dt.datetime.fromisoformat(m["created"]).tzinfo is not None
    assert set(m["versions"]) == {"python", *provenance.PACKAGES}
    import torch

    assert m["versions"]["torch"] == torch.__version__.split("+")[0] or m["versions"]["torch"] == torch.__version__
    assert provenance.package_version("surely-not-installed-pkg", "unknown") == "unknown"


def test_analyze_manifest_is_built_by_provenance(synthetic_runs):
    run = open_run(synthetic_runs["opd"], base=synthetic_runs["base"])
    m = analyze_manifest([run], [Spec("frobenius")], against="base")
    assert list(m)[:3] == ["tool", "created", "versions"] and m["tool"] == "opd-dynamics analyze"
    assert m["versions"].keys() == provenance.versions().keys()
    assert m["metrics"] == [Spec("frobenius").to_json()] and m["settings"] == {"against": "base"}
    assert m["runs"][0]["steps"].keys() == {"1", "2", "4", "8"}
