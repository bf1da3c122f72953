"""The ``bncheck_verify`` fixture and the ``bncheck`` marker take every keyword of
:func:`bncheck.check_batchnorm`: its own keywords and each declaration (a declaration added to
:data:`bncheck.engine.declaration.SPECS` without the fixture would make the fixture refuse it)."""

from __future__ import annotations

import inspect

from bncheck.engine.declaration import SPECS
from bncheck.engine.runner import check_batchnorm
from bncheck.pytest_plugin import OPTION_NAMES


def test_the_fixture_takes_every_keyword_of_check_batchnorm() -> None:
    own = {name for name, p in inspect.signature(check_batchnorm).parameters.items()
           if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert own | set(SPECS) == OPTION_NAMES
