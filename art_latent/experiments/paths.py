"""The layout of a benchmark run directory, shared by the protocol that writes it and the report that reads it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FOLD_DIR", "fold_path"]

#: The folder of the per-fold result files (``folds/fold_XX.json``).
FOLD_DIR = "folds"


def fold_path(out: str | os.PathLike, fold: int) -> Path:
    """
    The result file of a fold.

    :param out: The run directory.
    :param fold: The fold index.
    :return: ``out/folds/fold_XX.json``.
    """
    return Path(out) / FOLD_DIR / f"fold_{fold:02d}.json"
