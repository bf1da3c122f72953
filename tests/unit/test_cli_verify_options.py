"""`bncheck verify` and `mutants` option errors that tests/unit/test_bad_input.py's table does
not hold (in-process; the subprocess runs are in tests/integration). Every other bad option is a
row of that table, checked there with its exit status, on stderr and without a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bncheck.cli import main


@pytest.mark.parametrize("args,match", [
    (["torch.nn:Sequential", "--dims", "2,x"], "--dims='2,x'"),  # an option error before TARGET
    (["--json", "no/such/dir/r.json"], "does not exist"),  # a missing folder two levels deep
])
def test_usage_errors_exit_2(args, match):
    r = CliRunner().invoke(main, ["verify", *args])
    assert r.exit_code == 2, r.output
    assert match in r.stderr
    assert "Traceback" not in r.output


def test_mutants_json_is_checked_before_any_work(tmp_path):
    r = CliRunner().invoke(main, ["mutants", "--json", str(tmp_path / "no" / "m.json")])
    assert r.exit_code == 2 and "does not exist" in r.output, r.output
    assert "Mutation score" not in r.output
