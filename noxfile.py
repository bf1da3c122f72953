"""nox sessions. Every install goes through constraints.txt (torch==2.13.0, the CPU wheel)."""

import glob
import shutil

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")


def _install(session: nox.Session) -> None:
    session.install(*CONSTRAINTS, "-e", ".[dev]")


#: pytest-xdist: two worker processes (CI and this project's reference machine have 2 cores);
#: tests that share an expensive module fixture (a running pool of ranks, one export) carry
#: the same ``xdist_group`` and run on one worker, which builds it once.
XDIST = ("-n", "2", "--dist", "loadgroup")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Run the test suite under the deterministic Hypothesis "ci" profile, on two workers
    (`nox -s tests -- -n 0 tests/unit` runs in one process)."""
    _install(session)
    session.env["HYPOTHESIS_PROFILE"] = "ci"
    session.env["OMP_NUM_THREADS"] = "1"  # one intra-op thread per worker and subprocess
    session.run("pytest", *XDIST, *(session.posargs or ["-q"]))


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff and mypy."""
    _install(session)
    session.run("ruff", "check", "src", "tests", "fuzz", "benchmarks", "noxfile.py")
    session.run("mypy")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks (pytest-benchmark; not part of tests). `-- --gate` fails on a ratio more than
    25% worse than benchmarks/baseline.json; `-- --update-baseline` rewrites it."""
    _install(session)
    session.run("pytest", "benchmarks", "--benchmark-enable", "-p", "no:cacheprovider",
                *session.posargs)


@nox.session(python="3.11")
def gate(session: nox.Session) -> None:
    """The ONNX regression gate: re-create the exports and compare with exports/."""
    _install(session)
    session.run("bncheck", "gate", *session.posargs)


#: The coverage-guided harnesses (atheris), run one after another.
FUZZ_HARNESSES = ("fuzz/fuzz_reference.py", "fuzz/fuzz_idx.py", "fuzz/fuzz_onnx_check.py",
                  "fuzz/fuzz_cli.py")


@nox.session(python="3.11")
def fuzz(session: nox.Session) -> None:
    """Each fuzz harness for a bounded time from fuzz/corpus/: nox -s fuzz -- --seconds N
    (default 60 each). Crashes land in fuzz/findings/; not part of the tests."""
    session.install(*CONSTRAINTS, "-e", ".[fuzz,train]", "pytest")  # pytest: the CLI harness
    # builds its bad files with tests/unit/test_bad_input.py
    args = list(session.posargs) or ["--seconds", "60"]
    for harness in FUZZ_HARNESSES:
        session.run("python", harness, *args)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The docs site into site/ (MkDocs Material; warnings are errors). The property catalogue,
    the mutants and the benchmark baseline are rendered from the code at build time
    (tools/mkdocs_hooks.py); `-- serve` serves it instead."""
    session.install(*CONSTRAINTS, "-e", ".[docs]")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(python="3.11")
def build(session: nox.Session) -> None:
    """sdist and wheel into dist/, `twine check --strict`, then the wheel installed into a
    fresh virtualenv (not editable, through constraints.txt) running verify, export, check and
    gate with no extra, then train --epochs 1 and pytest --help with the train and test extras
    (tools/check_wheel.py)."""
    session.install(*CONSTRAINTS, "build", "twine")
    shutil.rmtree("dist", ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", "dist")
    session.run("twine", "check", "--strict", *glob.glob("dist/*"))
    wheels = glob.glob("dist/*.whl")
    if len(wheels) != 1:
        session.error(f"expected one wheel in dist/, found {wheels}")
    session.run("python", "tools/check_wheel.py", wheels[0])
