"""pytest plugin (entry point ``bncheck``).

Registers the Hypothesis profiles ``dev``, ``ci`` and ``thorough`` in every pytest run, and
loads one of them when ``HYPOTHESIS_PROFILE`` names it, so ``HYPOTHESIS_PROFILE=ci pytest`` is
deterministic. Any other value is left alone (it may be the user's own profile).

It also offers the fixture ``bncheck_verify``, the catalogue as a callable::

    def test_my_bn(bncheck_verify):
        bncheck_verify(MyBN, convention="onnx", dims=(2, 4))

which is :func:`bncheck.check_batchnorm`: it raises ``AssertionError`` with the full report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bncheck.profiles import PROFILES, load_profile, profile_from_env, register_profiles


def pytest_configure(config: pytest.Config) -> None:
    register_profiles()
    name = profile_from_env(default="")
    if name in PROFILES:
        load_profile(name)


@pytest.fixture
def bncheck_verify() -> Callable[..., Any]:
    """:func:`bncheck.check_batchnorm`: run the catalogue against a BatchNorm, raise on failure."""
    from bncheck.verify import check_batchnorm

    return check_batchnorm
