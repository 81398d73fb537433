"""
The ``art-latent report`` subcommand: re-render a benchmark run's report from its JSON files.
"""

from __future__ import annotations

import argparse
from typing import Any

from art_latent.cli.arguments import HelpFormatter

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add the ``report`` subcommand.

    :param subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    :return: The ``report`` parser.
    """
    report = subparsers.add_parser(
        "report",
        help="Re-render report.md, results.json and the figures of a benchmark run from its JSON files.",
        description="Re-render report.md, results.json and the figures of a benchmark run from its JSON files "
                    "(written inside RESULTS only).",
        formatter_class=HelpFormatter,
    )
    report.add_argument("results", help="The --out directory of `art-latent benchmark`.")
    return report


def run(args: argparse.Namespace) -> int:
    """
    Handler of ``art-latent report``.

    :param args: Parsed arguments (``results``).
    :return: The exit status.
    """
    from art_latent.experiments.summary import render_report

    results = render_report(args.results)
    print(f"Rendered {args.results}/report.md from {results['nb_folds']} fold(s) and "
          f"{len(results['figures'])} figure(s).")
    return 0
