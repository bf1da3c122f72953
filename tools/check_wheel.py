"""Install a built wheel into a fresh virtualenv and run bncheck from it, as a user would.

    python tools/check_wheel.py dist/bncheck-*.whl      # nox -s build runs this

Checks the wheel's contents (the package data: py.typed, the mutants, the distributed mutants,
the pytest entry point), installs it non-editable through ``constraints.txt`` into a new
virtualenv, and runs, from an empty folder outside the checkout and without PYTHONPATH: with no
extra (the README's main install) ``bncheck verify``, ``bncheck export lenet.onnx``, ``bncheck
check lenet.onnx`` and ``bncheck gate`` (against this checkout's goldens in ``exports/``: the
gate's goldens are the repository's, read in place); then with the ``train`` and ``test``
extras ``bncheck train --epochs 1`` and ``pytest --help`` (the plugin's options). Prints the
time of each step; exits 1 on the first failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Files the installed commands need, beyond the modules setuptools always packs.
REQUIRED = ("bncheck/py.typed", "bncheck/engine/mutants.py", "bncheck/distributed/mutants.py",
            "bncheck/pytest_plugin.py", "bncheck/_version.py", "bncheck/cli/__init__.py")


def check_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        sys.exit(f"{wheel.name} lacks {', '.join(missing)}")
    info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(info).decode()
    for needed in ("bncheck = bncheck.cli:main", "bncheck = bncheck.pytest_plugin"):
        if needed not in entry_points:
            sys.exit(f"{wheel.name}: entry_points.txt lacks {needed!r}:\n{entry_points}")
    version: dict[str, str] = {}
    exec((ROOT / "src" / "bncheck" / "_version.py").read_text(), version)
    if f"-{version['__version__']}-" not in wheel.name:
        sys.exit(f"{wheel.name} is not version {version['__version__']} (_version.py)")
    print(f"contents: {len(names)} files, {', '.join(REQUIRED)} and both entry points present")


def step(label: str, command: list[str], cwd: Path, env: dict[str, str]) -> str:
    start = time.perf_counter()
    r = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    print(f"{took:7.1f} s  exit {r.returncode}  {label}", flush=True)
    if r.returncode != 0:
        print(r.stdout[-4000:] + r.stderr[-4000:])
        sys.exit(1)
    return r.stdout


def main(wheel: Path) -> None:
    wheel = wheel.resolve()
    check_contents(wheel)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS")}
    env.update(OMP_NUM_THREADS="1", HYPOTHESIS_PROFILE="ci")
    with tempfile.TemporaryDirectory(prefix="bncheck-wheel-") as tmp:
        venv, work = Path(tmp) / "venv", Path(tmp) / "work"
        work.mkdir()
        step("fresh virtualenv", [sys.executable, "-m", "venv", str(venv)], work, env)
        bin_ = venv / "bin"
        env["PATH"] = f"{bin_}{os.pathsep}{env['PATH']}"
        pip = [str(bin_ / "python"), "-m", "pip", "install", "--quiet", "-c",
               str(ROOT / "constraints.txt")]
        step("pip install the wheel -c constraints.txt (not editable, no extras)",
             [*pip, str(wheel)], work, env)
        where = step("import bncheck from the virtualenv",
                     [str(bin_ / "python"), "-c", "import bncheck; print(bncheck.__file__)"],
                     work, env).strip()
        if not where.startswith(str(venv)):
            sys.exit(f"bncheck was imported from {where}, not from the fresh virtualenv")
        bncheck = str(bin_ / "bncheck")
        step("bncheck --version", [bncheck, "--version"], work, env)
        step("bncheck verify", [bncheck, "verify"], work, env)
        step("bncheck export lenet.onnx", [bncheck, "export", "lenet.onnx"], work, env)
        step("bncheck check lenet.onnx", [bncheck, "check", "lenet.onnx"], work, env)
        step("bncheck gate --exports <checkout>/exports",
             [bncheck, "gate", "--exports", str(ROOT / "exports")], work, env)
        step("pip install the wheel's extras [train,test]", [*pip, f"{wheel}[train,test]"],
             work, env)
        step("bncheck train --epochs 1", [bncheck, "train", "--epochs", "1", "--out", "run"],
             work, env)
        shown = step("pytest --help (the plugin's options)",
                     [str(bin_ / "python"), "-m", "pytest", "--help"], work, env)
        if "--bncheck-profile" not in shown:
            sys.exit("pytest --help does not list --bncheck-profile: the plugin is not installed")
    print(f"{wheel.name}: installed and ran")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/check_wheel.py WHEEL")
    main(Path(sys.argv[1]))
