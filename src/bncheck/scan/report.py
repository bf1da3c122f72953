"""What a scan found: each layer's verdict, each class's verification, each model-level check.

>>> from bncheck.scan.report import ScanReport
>>> ScanReport(model="m", seed=0, profile="ci").ok  # nothing verified is not a pass
False
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bncheck.engine.runner import PropertyResult, Report
from bncheck.scan.infer import Group, declarations
from bncheck.scan.inventory import NormLayer
from bncheck.scan.model_checks import Check

__all__ = ["ClassResult", "LayerVerdict", "ScanReport"]


@dataclass
class ClassResult:
    """One group's verification: its report, or why it could not be verified."""

    group: Group
    report: Report | None = None
    error: str = ""
    replays: dict[str, str] = field(default_factory=dict)  # property -> bncheck verify ...

    @property
    def ok(self) -> bool:
        return self.report is not None and self.report.ok and not self.error

    @property
    def first_failure(self) -> PropertyResult | None:
        if self.report is None:
            return None
        failed = self.report.failed
        own = [r for r in failed if r.consequence_of is None]
        chosen = own or failed
        return chosen[0] if chosen else None

    def to_json(self) -> dict[str, Any]:
        decl = declarations(self.group).to_json()
        return {"class": self.group.cls_name, "spec": self.group.spec,
                "config": self.group.config.to_json(), "frozen": self.group.frozen,
                "dims": list(self.group.dims), "paths": [lay.path for lay in self.group.layers],
                "declarations": {k: v for k, v in decl.items() if v is not None},
                "ok": self.ok, "error": self.error or None, "replays": self.replays,
                "report": None if self.report is None else self.report.to_json()}


@dataclass
class LayerVerdict:
    """One layer's row: ``passed``, ``failed``, ``frozen`` or ``not verified``."""

    layer: NormLayer
    verdict: str
    reason: str = ""  # the first failing property or check
    replay: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"path": self.layer.path, "class": self.layer.cls_name,
                "spec": self.layer.spec, "found_by": self.layer.found_by,
                "config": self.layer.config.to_json(), "verdict": self.verdict,
                "reason": self.reason, "replay": self.replay or None}


@dataclass
class ScanReport:
    """Everything one scan found."""

    model: str
    seed: int
    profile: str
    classes: list[ClassResult] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    order: list[str] = field(default_factory=list)  # layer paths in module order

    @property
    def layers(self) -> list[NormLayer]:
        return [lay for c in self.classes for lay in c.group.layers]

    @property
    def ok(self) -> bool:
        """Layers were found, every class verified and passed, no check failed."""
        return bool(self.classes) and all(c.ok for c in self.classes) and \
            all(c.status != "failed" for c in self.checks) and not self.interrupted

    def verdicts(self) -> list[LayerVerdict]:
        """Each layer's verdict, in module order: its class's verification first, then any
        model-level check that names it."""
        blamed: dict[str, Check] = {}  # a failed check first, then a note
        for named in sorted(self.checks, key=lambda x: x.status != "failed"):
            for path in named.paths:
                blamed.setdefault(path, named)
        out = []
        for c in self.classes:
            first = c.first_failure
            for lay in c.group.layers:
                check = blamed.get(lay.path)
                if c.error:
                    out.append(LayerVerdict(lay, "not verified", c.error))
                elif first is not None:
                    out.append(LayerVerdict(lay, "failed", f"property {first.name}: "
                                            f"{_first_line(first.message)}",
                                            c.replays.get(first.name, "")))
                elif check is not None and check.status == "failed":
                    out.append(LayerVerdict(lay, "failed", f"check {check.name}"))
                elif c.report is None:
                    out.append(LayerVerdict(lay, "not verified", "interrupted"))
                elif c.group.frozen:
                    out.append(LayerVerdict(lay, "frozen", "class passed; a frozen class"))
                elif check is not None and check.status == "note":
                    out.append(LayerVerdict(lay, "frozen", f"class passed; noted by "
                                                           f"{check.name}"))
                else:
                    out.append(LayerVerdict(lay, "passed"))
        order = {path: i for i, path in enumerate(self.order)}
        return sorted(out, key=lambda v: order.get(v.layer.path, len(order)))

    def summary(self) -> str:
        verdicts = self.verdicts()
        failed = [c for c in self.checks if c.status == "failed"]
        bad = [v for v in verdicts if v.verdict in ("failed", "not verified")]
        return (f"{len(verdicts)} normalization layer(s) in {len(self.classes)} class "
                f"configuration(s): {len(bad)} failed or not verified; "
                f"{len(failed)} of {len(self.checks)} model-level check(s) failed")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "ok": self.ok, "seed": self.seed, "profile": self.profile,
                "seconds": self.seconds, "interrupted": self.interrupted,
                "summary": self.summary(),
                "layers": [v.to_json() for v in self.verdicts()],
                "classes": [c.to_json() for c in self.classes],
                "checks": [c.to_json() for c in self.checks]}


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""
