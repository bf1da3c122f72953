"""Test-wide setup: the Hypothesis profile comes from HYPOTHESIS_PROFILE (nox sets "ci")."""

from bncheck.profiles import load_profile, profile_from_env

load_profile(profile_from_env("dev"))
