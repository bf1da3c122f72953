"""Scan a whole model: find every normalization layer, verify each class once, check the model.

>>> from bncheck.scan import scan_model, ScanReport

- :mod:`bncheck.scan.inventory`: which modules are normalization layers, and their config;
- :mod:`bncheck.scan.infer`: the dry run (ranks, behaviour), grouping, declarations, replays;
- :mod:`bncheck.scan.model_checks`: checks only the whole model can fail;
- :mod:`bncheck.scan.report`: verdicts per layer, per class, per check;
- :mod:`bncheck.scan.engine`: :func:`scan_model` (:func:`~bncheck.scan.engine.inspect_model`,
  which runs the model's code, then :func:`~bncheck.scan.engine.verify_classes`).
"""

from bncheck.scan.engine import scan_model
from bncheck.scan.report import ScanReport

__all__ = ["scan_model", "ScanReport"]
