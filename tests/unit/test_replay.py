"""The same seed draws the same cases wherever bncheck runs: bncheck's Hypothesis profiles never
redefine the user's, the draws do not depend on the literals of loaded modules, and the seed
layer's gradients property is a fixed function of its inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hypothesis import settings

from bncheck.engine.runner import verify
from bncheck.engine.target import load_target

SEED = Path(__file__).parents[1] / "data" / "seed_bn_fixed.py"


def test_bncheck_profiles_never_redefine_the_users():
    from bncheck.engine.profiles import load_profile, register_profiles

    before = settings._current_profile
    settings.register_profile("ci", max_examples=1234)
    try:
        register_profiles()
        assert settings.get_profile("ci").max_examples == 1234
        assert load_profile("ci").max_examples == 20  # bncheck's ci is bncheck-ci
        assert settings.get_profile("ci").max_examples == 1234
    finally:
        settings.load_profile(before)


class _Recording(torch.nn.BatchNorm1d):
    seen: list[list[float]] = []

    def forward(self, x):
        _Recording.seen.append(x.detach().flatten().tolist())
        return super().forward(x)


def test_draws_do_not_depend_on_the_machines_local_constants(tmp_path, monkeypatch):
    """Hypothesis draws some values from the literals of every loaded non-site-packages module
    (bncheck's own source under an editable install, the caller's script, the target's file).
    Loading a module full of literals must not change what a seed draws."""
    def drawn():
        _Recording.seen.clear()
        verify(_Recording, properties=["train_forward"], seed=5, examples=20, dims=(2,))
        return list(_Recording.seen)

    first = drawn()
    lots = ", ".join(f"{-2 + k / 64:.6f}" for k in range(256))
    (tmp_path / "local_literals_i7.py").write_text(f"VALUES = [{lots}]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("local_literals_i7")
    try:
        assert drawn() == first
    finally:
        sys.modules.pop("local_literals_i7", None)


def test_seed_gradients_is_a_fixed_function_of_its_inputs():
    seed = load_target(f"{SEED}:BatchNorm")
    for s in (0, 2, 3):
        report = verify(seed, convention="onnx", properties=["gradients"], seed=s, examples=10)
        assert report.ok, report.render()
