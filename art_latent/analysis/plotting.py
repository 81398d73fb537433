"""Matplotlib helpers shared by the evaluation report and the benchmark figures (imported lazily: Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from art_latent.io import save_figure

__all__ = ["close_and_save", "plot_curves", "pyplot"]


def plot_curves(
    ax: Any,
    xs: Sequence[float],
    series: Mapping[str, tuple[Sequence[float | None], Sequence[float | None] | None]],
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    zero_line: bool = False,
    colors: Mapping[str, str] | None = None,
    integer_x: bool = False,
    ylim: tuple[float | None, float | None] | None = None,
    xticklabels: Sequence[str] | None = None,
    legend: bool = True,
) -> None:
    """
    Draw one line per series on a matplotlib axis, with error bars when half widths are given.

    :param ax: A matplotlib ``Axes``.
    :param xs: The x values.
    :param series: ``{label: (values, half widths or None)}``; ``None`` values and half widths are skipped / drawn
                   without a bar.
    :param xlabel: x-axis label.
    :param ylabel: y-axis label.
    :param title: Axis title.
    :param zero_line: Draw a horizontal line at 0 (for gains).
    :param colors: ``{label: matplotlib color}``, so a model keeps its color across panels and figures.
    :param integer_x: Integer ticks on the x axis (layer numbers).
    :param ylim: ``(bottom, top)`` of the y axis (``(0, 1)`` for accuracies, so small gaps are not magnified);
                 ``None`` entries autoscale.
    :param xticklabels: Names for the x ticks (one per x value, e.g. the layers), drawn rotated.
    :param legend: Draw the legend, outside the axis on the right so that it never covers the data.
    """
    for label, (values, half) in series.items():
        y = np.array([np.nan if v is None else v for v in values], dtype=float)
        err = None if half is None else np.array([0.0 if h is None or not np.isfinite(h) else h for h in half])
        ax.errorbar(list(xs), y, yerr=err, marker="o", markersize=3, capsize=3 if err is not None else 0, label=label,
                    color=(colors or {}).get(label))
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8)
    if xticklabels is not None:
        ax.set_xticks(list(xs))
        ax.set_xticklabels(list(xticklabels), rotation=40, ha="right", fontsize=7)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if series and legend:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def close_and_save(fig: Any, path: Path, plt: Any) -> Path:
    """
    Save a figure as PNG atomically and close it.

    :param fig: The figure.
    :param path: The destination.
    :param plt: ``matplotlib.pyplot``.
    :return: The path.
    """
    save_figure(fig, path)
    plt.close(fig)
    return path
