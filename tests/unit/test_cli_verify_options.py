"""`bncheck verify` option errors, in-process (the subprocess runs are in tests/integration)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from bncheck.cli import main


@pytest.mark.parametrize("args,match", [
    (["nope.py:BN"], "does not exist"),
    (["torch.nn:NoSuchNorm"], "has no attribute 'NoSuchNorm'; no name close to it"),
    (["torch.nn:BatchNorm2D"], "has no attribute 'BatchNorm2D'; did you mean BatchNorm2d"),
    (["no_colon"], "Expected TARGET in the form"),
    (["torch.nn:Sequential", "--dims", "2,x"], "--dims='2,x'"),
    (["--dims", "7"], "dims=(7,)"),
    (["--dtypes", "float8"], "Expected dtypes from"),
    (["--property", "nope"], "Unknown property='nope'"),
    (["--momentum", "fast"], "--momentum='fast'"),
    (["--momentum", "1.5"], "momentum=1.5"),
    (["--eps", "-1"], "eps=-1.0"),
    (["--eps", "nan"], "eps=nan"),
    (["--channel-axis", "0"], "channel_axis=0"),
    (["--names", "weight"], "--names='weight'"),
    (["--names", "gain=scale"], "'gain' is not one of them"),
    (["--fixed", "affine=yes"], "--fixed affine=true or affine=false"),
    (["--fixed", "eps=true"], "Expected fixed keys from"),
    (["--json", "no/such/dir/r.json"], "does not exist"),
    (["--convention", "caffe"], "Invalid value for '--convention'"),
    (["--running-var", "sample"], "Invalid value for '--running-var'"),
    (["--examples", "0"], "Invalid value for '--examples'"),
    (["--profile", "fast"], "Invalid value for '--profile'"),
])
def test_usage_errors_exit_2(args, match):
    r = CliRunner().invoke(main, ["verify", *args])
    assert r.exit_code == 2, r.output
    assert match in r.stderr
    assert "Traceback" not in r.output


def test_mutants_unknown_name_exits_2():
    r = CliRunner().invoke(main, ["mutants", "--mutant", "nope"])
    assert r.exit_code == 2
    assert "Unknown mutant='nope'; available: seed_bata_typo" in r.output


def test_mutants_json_is_checked_before_any_work(tmp_path):
    r = CliRunner().invoke(main, ["mutants", "--json", str(tmp_path / "no" / "m.json")])
    assert r.exit_code == 2 and "does not exist" in r.output, r.output
    assert "Mutation score" not in r.output
