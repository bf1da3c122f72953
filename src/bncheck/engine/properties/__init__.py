"""The BatchNorm property catalogue: named checks, each with the defect it catches and its
tolerance rule.

>>> from bncheck.engine.properties import CATALOGUE
>>> [p.name for p in CATALOGUE][:3]
['train_forward', 'eval_forward', 'train_eval_switch']

Each property draws its cases with :mod:`bncheck.engine.strategies` and judges the target against
the
float64 oracle (:mod:`bncheck.engine.oracle`), the declared convention
(:mod:`bncheck.engine.conventions`), or
itself (invariances, grad modes). :func:`bncheck.engine.runner.verify` runs them with Hypothesis.
"""

from __future__ import annotations

from bncheck.engine.properties import (  # noqa: F401
    differential,
    forward,
    gradients,
    modes,
    state,
    stats,
)
from bncheck.engine.properties._base import REGISTRY, Checks, Context, Facts, Property, PropertyCase

__all__ = ["CATALOGUE", "Context", "Facts", "Property", "PropertyCase", "Checks", "get", "names"]

#: Every property, in catalogue order.
CATALOGUE: tuple[Property, ...] = tuple(sorted(REGISTRY.values(), key=lambda p: p.number))


def names() -> list[str]:
    """The property names in catalogue order."""
    return [p.name for p in CATALOGUE]


def get(name: str) -> Property:
    """The property ``name``; :class:`~bncheck.errors.InvalidArgument` lists the names."""
    from bncheck.infra.validation import unknown_name

    if name not in REGISTRY:
        raise unknown_name("property", name, names())
    return REGISTRY[name]
