"""
``argparse`` argument types shared by the ``art-latent`` subcommands (standard library only: the CLI starts fast).
"""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """
    Parse an integer >= 1.

    :param text: The command-line text.
    :return: The integer.
    """
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """
    Parse a finite float >= 0.

    :param text: The command-line text.
    :return: The float.
    """
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value
