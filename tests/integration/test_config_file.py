"""``[[tool.bncheck.targets]]`` in pyproject.toml (issue 16, item 2): found as pytest finds its
rootdir, every declared target verified without TARGET, TARGET's table under the flags,
``--config FILE.toml``, and bad tables refused naming the key, the table and the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from bncheck.cli import main
from bncheck.engine.config import declaration_for, declared_targets, find_config, read_config
from bncheck.engine.declaration import Declaration
from bncheck.errors import InvalidArgument

LAYERS = textwrap.dedent('''
    import torch
    from torch import nn


    class RenamedBN(nn.Module):
        """A correct BatchNorm (torch's rule) with its own attribute names, (N, C) and
        (N, C, H, W) input, and eps 1e-3 whatever it is given."""

        def __init__(self, num_features):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(num_features))
            self.shift = nn.Parameter(torch.zeros(num_features))
            self.register_buffer("exp_mean", torch.zeros(num_features))
            self.register_buffer("exp_var", torch.ones(num_features))

        def forward(self, x):
            if x.dim() not in (2, 4):
                raise ValueError(f"expected 2D or 4D input, got {x.dim()}D")
            return nn.functional.batch_norm(x, self.exp_mean, self.exp_var, self.scale,
                                            self.shift, self.training, 0.1, 1e-3)
''')
TABLE = textwrap.dedent('''
    [[tool.bncheck.targets]]
    target = "layers.py:RenamedBN"
    names = { weight = "scale", bias = "shift", running_mean = "exp_mean", running_var = "exp_var" }
    dims = [2, 4]
    eps = 1e-3
''')
FAST = ["--property", "train_forward", "--property", "running_stats_update", "--examples", "3"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder holding only layers.py and the issue's pyproject.toml; the current directory."""
    (tmp_path / "layers.py").write_text(LAYERS)
    (tmp_path / "pyproject.toml").write_text(TABLE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli(*args: str):
    return CliRunner().invoke(main, ["verify", *args])


def test_bncheck_verify_in_the_issues_folder_verifies_the_declared_target(project):
    # A real process, as a user runs it: no TARGET, the table's declarations.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "bncheck", "verify", *FAST], cwd=project,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bncheck verify layers.py:RenamedBN" in r.stdout
    assert "declared: eps=0.001, dims=2,4, names=" in r.stdout


def test_a_misspelled_key_exits_2_naming_it_the_table_and_the_file(project):
    (project / "pyproject.toml").write_text(TABLE.replace("eps = 1e-3", "epss = 1e-3"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "bncheck", "verify"], cwd=project,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Unknown key 'epss' in [[tool.bncheck.targets]] #1 (target='layers.py:RenamedBN')" \
        f" of {project / 'pyproject.toml'}; did you mean eps?" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("line,named", [
    ("eps = 'small'", "Key 'eps' in [[tool.bncheck.targets]] #1"),
    ("dims = '2,4'", "Key 'dims' in"),
    ("dims = [2, 7]", "Key 'dims' in"),
    ("names = { gain = 'scale' }", "'gain' is not one of them"),
    ("fixed = { affine = 'yes' }", "fixed['affine']"),
    ("empty_batches = 1", "Key 'empty_batches' in"),
    ("convention = 'caffe'", "Key 'convention' in"),  # flax is a preset since the JAX work
    ("momentum = 'fast'", "Key 'momentum' in"),
])
def test_a_wrong_type_or_value_exits_2_naming_the_key_and_the_file(project, line, named):
    key = line.split(" = ")[0]
    kept = [t for t in TABLE.splitlines() if not t.startswith(f"{key} = ")]
    (project / "pyproject.toml").write_text("\n".join([*kept, line, ""]))
    r = _cli(*FAST)
    assert r.exit_code == 2, r.output
    assert named in r.stderr and str(project / "pyproject.toml") in r.stderr


@pytest.mark.parametrize("text,message", [
    ("[[tool.bncheck.targets]]\neps = 1e-3\n", "Expected key 'target'"),
    ("[tool.bncheck]\ntarget = 'x.py:A'\n", "Unknown key 'target' in [tool.bncheck]"),
    ("[tool.bncheck]\ntargets = 3\n", "Expected tool.bncheck.targets"),
    ("[tool.bncheck\n", "is not valid TOML"),
    ("[[tool.bncheck.targets]]\ntarget = 'a.py:A'\neps = 1\neps = 2\n", "is not valid TOML"),
])
def test_a_malformed_file_is_refused_naming_it(tmp_path, text, message):
    path = tmp_path / "bn.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument) as e:
        read_config(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_the_file_is_found_here_or_in_a_parent_with_a_bncheck_table(project):
    inner = project / "a" / "b"
    inner.mkdir(parents=True)
    (project / "a" / "pyproject.toml").write_text("[project]\nname = 'other'\n")  # not ours
    assert find_config(inner) == project / "pyproject.toml"
    assert [t.target for t in declared_targets(start=inner)] == ["layers.py:RenamedBN"]
    # the table's file path is taken from the file's folder, whatever the current directory
    assert declared_targets(start=inner)[0].spec == "layers.py:RenamedBN"
    os.chdir(inner)
    assert declared_targets()[0].spec == os.path.join("..", "..", "layers.py") + ":RenamedBN"


def test_without_tables_the_reference_is_verified(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(tmp_path)
    r = _cli("--property", "train_forward", "--examples", "2")
    assert r.exit_code == 0, r.output
    assert "bncheck verify bncheck reference BatchNorm" in r.output


def test_every_declared_target_gets_a_report_and_one_failure_exits_1(project):
    # The same layer declared twice; the second table leaves out its names and eps: it fails.
    (project / "pyproject.toml").write_text(
        TABLE + "\n[[tool.bncheck.targets]]\ntarget = 'layers.py:RenamedBN'\ndims = [2, 4]\n")
    r = _cli(*FAST, "--json", "all.json")
    assert r.exit_code == 1, r.output
    assert r.output.splitlines().count("bncheck verify layers.py:RenamedBN") == 2
    assert "2 declared targets: 1 passed, 1 failed" in r.output
    data = json.loads((project / "all.json").read_text())
    assert [rep["ok"] for rep in data["reports"]] == [True, False]
    assert data["reports"][0]["declaration"]["names"]["weight"] == "scale"


def test_target_takes_its_table_and_flags_override_it(project):
    r = _cli("layers.py:RenamedBN", *FAST, "--eps", "1e-2", "--json", "r.json")
    assert r.exit_code == 1, r.output  # the layer computes with 1e-3: the flag won
    declared = json.loads((project / "r.json").read_text())["declaration"]
    assert declared["eps"] == 0.01 and declared["names"]["running_var"] == "exp_var"
    assert "--eps 0.01 --dims 2,4 --names" in r.output  # the replay repeats it whole


def test_config_reads_another_file(project, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere") / "bn.toml"
    other.write_text(TABLE.replace("layers.py", str(project / "layers.py")))
    (project / "pyproject.toml").unlink()
    assert _cli(*FAST, "--config", str(other)).exit_code == 0
    empty = other.with_name("empty.toml")
    empty.write_text("")
    r = _cli("--config", str(empty))
    assert r.exit_code == 2 and "declares no targets" in r.stderr


def test_check_batchnorm_and_the_fixture_take_the_files_declaration(project, bncheck_verify):
    from bncheck.engine.target import load_target

    layer = load_target(str(project / "layers.py") + ":RenamedBN")
    declaration = declaration_for("layers.py:RenamedBN")
    assert declaration == Declaration(eps=1e-3, dims=(2, 4), names={
        "weight": "scale", "bias": "shift", "running_mean": "exp_mean",
        "running_var": "exp_var"})
    assert declaration_for(layer) == declaration  # by the class: its file and name
    report = bncheck_verify(layer, declaration=declaration, properties=["train_forward"],
                            examples=3)
    assert report.ok
    with pytest.raises(InvalidArgument, match="its tables declare layers.py:RenamedBN"):
        declaration_for("other.py:BN")
