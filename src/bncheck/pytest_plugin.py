"""pytest plugin (entry point ``bncheck``).

Registers bncheck's Hypothesis profiles under their own names (``bncheck-dev``, ``bncheck-ci``,
``bncheck-thorough``) and loads one only when ``HYPOTHESIS_PROFILE`` names it with that prefix:
a user's own profiles, ``ci`` included, are never redefined or loaded by bncheck.

It also offers the fixture ``bncheck_verify``, the catalogue as a callable::

    def test_my_bn(bncheck_verify):
        bncheck_verify(MyBN, convention="onnx", dims=(2, 4))

which is :func:`bncheck.check_batchnorm`: it raises ``AssertionError`` with the full report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bncheck.profiles import PREFIX, PROFILES, load_profile, register_profiles


def pytest_configure(config: pytest.Config) -> None:
    import os

    register_profiles()
    name = os.environ.get("HYPOTHESIS_PROFILE", "")
    if name.startswith(PREFIX) and name.removeprefix(PREFIX) in PROFILES:
        load_profile(name)


@pytest.fixture
def bncheck_verify() -> Callable[..., Any]:
    """:func:`bncheck.check_batchnorm`: run the catalogue against a BatchNorm, raise on failure."""
    from bncheck.verify import check_batchnorm

    return check_batchnorm
