"""Figures for the diagnostics, drawn without pyplot so that the user's matplotlib backend is never changed.

A :class:`matplotlib.figure.Figure` with an Agg canvas of its own renders to a file on any machine
(no display needed) and is not registered with pyplot: a notebook's backend, its open figures and
``plt.gcf()`` stay as they were.
"""

from __future__ import annotations

from typing import Any

PLOT_HINT = "plots need matplotlib: pip install 'torchinit[plot]'"


def figure(**kwargs: Any) -> Any:
    """A new ``Figure`` (``kwargs`` as for ``Figure``, e.g. ``figsize``) attached to its own Agg canvas.

    Example:
        >>> fig = figure(figsize=(4, 3))          # doctest: +SKIP
        >>> ax = fig.subplots(); _ = ax.plot([1, 2]); fig.savefig("plot.png")  # doctest: +SKIP
    """
    try:
        import matplotlib  # noqa: F401  (first: its absence shows even when the submodules were imported before)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ModuleNotFoundError(PLOT_HINT) from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def colors(name: str = "tab20") -> list[Any]:
    """The colors of a listed colormap (``tab20`` reordered: its ten strong colors first, then the light ones)."""
    import matplotlib

    colormap: Any = matplotlib.colormaps[name]  # a ListedColormap, whose .colors its stubs do not know
    listed = list(colormap.colors)
    return listed[::2] + listed[1::2] if name == "tab20" else listed
