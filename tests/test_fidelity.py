"""Fidelity to the papers and honest reports: chance levels beside similarities, nothing shown that is true by
construction, no duplicate column presented as a finding (docs/fidelity.md)."""
from __future__ import annotations

import pandas as pd
import pytest

from opd_dynamics.summary import format_table, informative, table1


def _long(rows):
    return pd.DataFrame(rows, columns=["run", "step", "ref_step", "module", "layer", "expert", "kind", "metric",
                                       "value"])


def _table(top1_equal=True):
    rows = []
    for step in (1, 2):
        for mod, kind in (("l0.q", "attn_q"), ("l0.up", "mlp_up")):
            rows += [("opd", step, 0, mod, 0, None, kind, "alignment_to_final", 0.5 if step == 1 else 1.0),
                     ("opd", step, 0, mod, 0, None, kind, "alignment_to_final_chance", 0.3125),
                     ("opd", step, 0, mod, 0, None, kind, "spectral_ratio", 0.4),
                     ("opd", step, 0, mod, 0, None, kind, "top1pct_ratio", 0.4 if top1_equal else 0.6),
                     ("opd", step, 0, mod, 0, None, kind, "numerical_rank", 64.0)]
    return _long(rows)


def test_alignment_is_not_shown_at_the_final_step():
    df = _table()
    final = table1(df, final_only=True)
    assert "alignment_to_final" not in final.columns and "alignment_to_final_chance" not in final.columns
    every = table1(df).set_index("step")
    assert every.loc[1, "alignment_to_final"] == 0.5 and every.loc[1, "alignment_to_final_chance"] == 0.3125
    assert pd.isna(every.loc[2, "alignment_to_final"])
    cols = list(every.columns)
    assert cols.index("alignment_to_final_chance") == cols.index("alignment_to_final") + 1


@pytest.mark.parametrize("equal", [True, False])
def test_top1pct_equal_to_sigma1_share_is_said_not_shown(equal):
    df = _table(top1_equal=equal)
    wide = table1(df, final_only=True)
    shown, notes = informative(wide, df)
    assert ("top1pct_ratio" in shown.columns) is (not equal)
    text = format_table(wide, df)
    if equal:
        assert notes and "⌈0.01·r⌉ = 1" in text and "largest numerical rank here: 64" in text
    else:
        assert not notes and "top1pct_ratio" in text


def test_html_table_scrolls_instead_of_running_off_the_page():
    from opd_dynamics.report.page import CSS
    from opd_dynamics.report.tables import _html_table

    html = _html_table(table1(_table(False), final_only=True))
    assert html.startswith('<div class="scroll">')
    assert ".scroll{overflow-x:auto" in CSS.replace(" ", "")
