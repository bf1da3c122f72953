"""pytest plugin (entry point ``bncheck``).

Registers the Hypothesis profiles ``dev``, ``ci`` and ``thorough`` in every pytest run, and
loads one of them when ``HYPOTHESIS_PROFILE`` names it, so ``HYPOTHESIS_PROFILE=ci pytest`` is
deterministic. Any other value is left alone (it may be the user's own profile).
"""

from __future__ import annotations

import pytest

from bncheck.profiles import PROFILES, load_profile, profile_from_env, register_profiles


def pytest_configure(config: pytest.Config) -> None:
    register_profiles()
    name = profile_from_env(default="")
    if name in PROFILES:
        load_profile(name)
