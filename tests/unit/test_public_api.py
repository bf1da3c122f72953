"""The public API type-checks for its users (issue 16, item 5): mypy, run on a small user file,
sees every name of ``bncheck.__all__`` as what it is (never ``object`` or ``Any``), accepts a
correct call and rejects a wrong one; and ``import bncheck`` stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import bncheck

SRC = Path(bncheck.__file__).parent.parent
#: Third-party packages mypy does not follow (their types become Any inside signatures; the
#: public names' own types do not depend on them), so the check takes seconds, not minutes.
CONFIG = """\
[mypy]
follow_imports = silent
[mypy-torch.*,hypothesis.*,numpy.*,rich.*,click.*,onnx.*,onnxruntime.*]
follow_imports = skip
"""

pytest.importorskip("mypy")


def _mypy(tmp_path: Path, code: str) -> tuple[int, str]:
    (tmp_path / "user.py").write_text(code)
    (tmp_path / "mypy.ini").write_text(CONFIG)
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini",
                        "--no-incremental", "--cache-dir", str(tmp_path / ".cache"),
                        "user.py"], cwd=tmp_path, capture_output=True, text=True,
                       env={"MYPYPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=600)
    return r.returncode, r.stdout + r.stderr


def test_every_public_name_has_a_type(tmp_path):
    names = [n for n in bncheck.__all__ if n != "__version__"]
    code, out = _mypy(tmp_path, "import bncheck\n" + "".join(
        f"reveal_type(bncheck.{n})\n" for n in names))
    revealed = re.findall(r'user\.py:(\d+): note: Revealed type is "(.*)"', out)
    assert len(revealed) == len(names), out
    untyped = [(names[int(line) - 2], kind) for line, kind in revealed
               if kind in ("builtins.object", "Any")]
    assert not untyped, out
    assert code == 0, out


def test_a_wrong_call_is_a_type_error(tmp_path):
    code, out = _mypy(tmp_path, """\
import bncheck
import torch

ok: bncheck.Declaration = bncheck.Declaration(eps=1e-3, dims=[2, 4], names={"weight": "g"})
report = bncheck.check_batchnorm(torch.nn.BatchNorm1d, declaration=ok)
passed: bool = report.ok
wrong = bncheck.Declaration(eps="small")
""")
    assert code == 1, out
    assert re.search(r'user\.py:7: error: Argument "eps" to "Declaration"', out), out
    assert out.count("error:") == 1, out


def test_import_bncheck_does_not_import_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, bncheck; "
                        "print(sorted(m for m in ('torch', 'hypothesis', 'numpy') "
                        "if m in sys.modules))"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(SRC)}, timeout=120)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_bncheck_verify_is_the_function():
    import torch

    report = bncheck.verify(torch.nn.BatchNorm1d, properties=["train_forward"], examples=2)
    assert report.ok
    import bncheck.engine.runner as engine  # importing the module changes nothing for the caller

    assert bncheck.verify(torch.nn.BatchNorm1d, properties=["train_forward"], examples=2).ok
    assert engine.verify is not None
