"""
``argparse`` argument types shared by the ``art-latent`` subcommands (standard library only: the CLI starts fast).
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn


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


def budget(text: str) -> float:
    """
    Parse an L-infinity budget in input units (the ``[0, 1]`` scale): a number (``0.031``) or ``N/255``
    (``8/255``).

    :param text: The command-line text.
    :return: The budget.
    """
    number, sep, denominator = text.partition("/")
    try:
        value = float(number) / (float(denominator) if sep else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or N/255, got {text}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    if value > 1:
        raise argparse.ArgumentTypeError(
            f"{text} is larger than the whole [0, 1] input range; budgets are in input units: did you mean {text}/255?")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, unless it is None / False or the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS or (
                "default" in text):
            return text
        return super()._get_help_string(action) or text


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        """
        Print ``prog: error: message (see prog --help)`` and exit with status 2.

        :param message: The error.
        """
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
