"""How every ridgeline figure is made and saved: without pyplot, one drawing at a time.

pyplot keeps a global registry of figures and a current one, which threads would share (reports
are made in threads), and it would need closing. A ``Figure`` on its own Agg canvas has neither:
it is freed when it goes out of scope. Drawing still shares matplotlib's text layout (its
mathtext parser, which lays out log-axis tick labels, fails when two threads use it at once), so
``save`` draws under one lock; building figures runs in parallel. matplotlib loads on the first
figure, not on import.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_DRAWING = threading.Lock()  # matplotlib's text layout is not thread-safe


def new_figure(figsize: tuple[float, float], *grid: int, **kw) -> tuple[Figure, Any]:
    """A figure of ``figsize`` inches and its axes, ``fig.subplots(*grid, **kw)`` (one Axes when
    ``grid`` is empty, else an array of them)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*grid, **kw)


def save(fig: Figure, path, dpi: int = 110, **layout) -> Path:
    """Lay ``fig`` out tightly (``layout``: tight_layout's arguments) and write it as a PNG,
    creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _DRAWING:
        fig.tight_layout(**layout)
        fig.savefig(path, dpi=dpi)
    return path
