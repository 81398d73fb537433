"""Markdown formatting shared by the evaluation report and the benchmark report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["budget_label", "fmt", "markdown_table"]


def budget_label(value: float | None, scale: float) -> str:
    """A budget in display units (``8/255``); ``-`` for none."""
    if value is None:
        return "-"
    scaled = value * scale
    text = f"{round(scaled, 4):g}"
    return text if scale == 1 else f"{text}/{scale:g}"


def fmt(value: float | None, signed: bool = False) -> str:
    """A number with three decimals (signed for gains); ``-`` for none or non-finite."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def markdown_table(first: str, columns: Sequence[str], rows: Mapping[str, Sequence[str]]) -> str:
    """A Markdown table: header `first` and `columns`, one row ``name | cells`` per entry of `rows`."""
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return "\n".join(lines)
