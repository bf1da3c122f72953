"""Test-wide setup: the Hypothesis profile comes from HYPOTHESIS_PROFILE (nox sets "ci")."""

from collections.abc import Iterator

import pytest
import torch

from bncheck.profiles import load_profile, profile_from_env

load_profile(profile_from_env("dev"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests: their forwards are small, and on a loaded
    2-core machine OpenMP spinning makes them 4-20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
