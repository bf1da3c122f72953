"""TARGET loading: file and module targets, both construction styles, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from bncheck.engine.target import bn_factory, load_target, takes_num_dims
from bncheck.errors import TargetError

DATA = Path(__file__).parents[1] / "data"


def test_module_target():
    assert load_target("torch.nn:BatchNorm1d") is nn.BatchNorm1d


def test_file_target_with_num_dims():
    cls = load_target(f"{DATA / 'seed_bn_fixed.py'}:BatchNorm")
    assert takes_num_dims(cls)
    bn = bn_factory(cls)(6, 4)
    assert tuple(bn.gamma.shape) == (1, 6, 1, 1)


def test_factory_wraps_constructor_errors(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("def Make(n):\n    raise RuntimeError('boom')\n\n"
                 "def NotAModule(n):\n    return 3\n")
    with pytest.raises(TargetError, match=r"building the target as Make\(6\) raised "
                                          r"RuntimeError: boom"):
        bn_factory(load_target(f"{f}:Make"))(6, 4)
    with pytest.raises(TargetError, match="returned int, expected a torch.nn.Module"):
        bn_factory(load_target(f"{f}:NotAModule"))(6, 4)


@pytest.mark.parametrize("spec,match", [
    ("no_colon", r"Expected TARGET in the form .* received TARGET='no_colon'"),
    ("torch.nn:", r"Expected TARGET in the form"),
    ("does/not/exist.py:X", r"file 'does/not/exist.py' does not exist"),
    ("no_such_module_xyz:X", r"no module named 'no_such_module_xyz'"),
    ("torch.nn:NoSuchThing", r"has no attribute 'NoSuchThing'; no name close to it"),
    ("torch.nn:BatchNorm2D", r"has no attribute 'BatchNorm2D'; did you mean BatchNorm2d"),
    ("math:pi", r"'pi' is a float, expected a Module class or a factory"),
])
def test_bad_targets(spec, match):
    with pytest.raises(TargetError, match=match):
        load_target(spec)


def test_import_error_in_target_file_is_reported(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("import torch\nraise SystemExit('nope')\n")
    with pytest.raises(TargetError, match=r"raised SystemExit: nope"):
        load_target(f"{f}:X")
    g = tmp_path / "syntax.py"
    g.write_text("def f(:\n")
    with pytest.raises(TargetError, match=r"raised SyntaxError"):
        load_target(f"{g}:f")


def test_missing_name_lists_what_is_there(tmp_path):
    f = tmp_path / "impl.py"
    f.write_text("from torch import nn\nclass MyBN(nn.Module):\n    pass\n")
    with pytest.raises(TargetError, match=r"did you mean MyBN\?"):
        load_target(f"{f}:MyBn")
    with pytest.raises(TargetError, match=r"available: MyBN"):
        load_target(f"{f}:Other")
