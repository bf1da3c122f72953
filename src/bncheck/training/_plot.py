"""The notebook's picture: train loss, train accuracy and test accuracy per epoch, as a PNG.

d2l's ``Animator`` draws the three curves on one set of axes while ``train_ch6`` runs; this draws
the same picture once, headless (matplotlib's Agg canvas, never ``pyplot``, so the caller's
matplotlib backend is left alone). matplotlib is an optional extra, imported here only.

>>> from bncheck.training import TrainingHistory, EpochStats, plot_curves
>>> h = TrainingHistory(1, 1.0, 256, 0, 100, 10, epochs=[EpochStats(1, 0.5, 0.8, 0.75, 1.0, 0.9)])
>>> plot_curves(h, title="example")[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import importlib.util
import io

from bncheck.errors import UsageError
from bncheck.training._loop import TrainingHistory

__all__ = ["plot_curves", "plotting_available"]

_INSTALL = "pip install 'bncheck[train]'"


def plotting_available() -> bool:
    """Whether matplotlib is installed (checked without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def plot_curves(history: TrainingHistory, *, title: str, banner: str | None = None,
                status: str | None = None) -> bytes:
    """The PNG bytes of the three curves of ``history``.

    Args:
        history: the run's curve points (train loss/accuracy, several per epoch) and epochs
            (test accuracy, one per epoch).
        title: the figure's title (model, data, recipe).
        banner: a line drawn in red above the axes (the stand-in label, say).
        status: appended to the title when the run did not finish ("interrupted", ...).

    Raises:
        UsageError: matplotlib is not installed.
    """
    if not plotting_available():
        raise UsageError(f"Plotting needs the optional package matplotlib: {_INSTALL}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [p.epoch for p in history.curve]
    ax.plot(xs, [p.train_loss for p in history.curve], "-", color="tab:blue", label="train loss")
    ax.plot(xs, [p.train_acc for p in history.curve], "--", color="tab:purple",
            label="train acc")
    ax.plot([e.epoch for e in history.epochs], [e.test_acc for e in history.epochs], "-.o",
            color="tab:green", markersize=4, label="test acc")
    last = max([history.epochs_requested, *xs]) if xs else history.epochs_requested
    ax.set_xlim(0, max(1, last))
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center right")
    full_title = title if status is None else f"{title} ({status})"
    if banner is not None:
        fig.suptitle(banner, color="tab:red", fontweight="bold", fontsize=10)
    ax.set_title(full_title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
