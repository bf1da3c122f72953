"""tests/data/third_party/score.py: the precision/recall/verdict score of the third-party layers
is computed by one script, before and after a change (here on two quick rows)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCORE = Path(__file__).parents[1] / "data" / "third_party" / "score.py"


def _module():
    spec = importlib.util.spec_from_file_location("third_party_score", SCORE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_every_row_names_a_file_or_module_and_a_verdict():
    mod = _module()
    for row in mod.ROWS:
        file, _, name = row.spec.partition(":")
        assert name and row.verdict in ("pass", "fail"), row
        assert not file.endswith(".py") or (SCORE.parent / file).is_file(), row
        assert row.verdict == "fail" or not row.defects, row


def test_score_counts_reports_defects_and_verdicts():
    mod = _module()
    rows = [r for r in mod.ROWS if r.spec in ("cumulative_bn.py:CumulativeBN2d",
                                              "zero_init_bn.py:ZeroInitBN")]
    out = mod.score(rows, examples=3, seed=0)
    assert out.layers == 2 and out.defects == 2
    assert out.right == 2 and out.named >= 1, out.render()  # initial_state: 3 examples suffice
    assert f"recall    {out.named}/2" in out.render()
    assert ("missed: reduced_precision" in out.render()) == (out.named == 1)
