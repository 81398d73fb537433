"""Old import path of :mod:`art_latent.cli.benchmark` and :mod:`art_latent.cli.report`, kept so that existing imports
keep working."""

from __future__ import annotations

from typing import Any

from art_latent.cli import benchmark, report

__all__ = ["add_benchmark_parsers", "run_benchmark_command", "run_report_command"]

#: :func:`art_latent.cli.benchmark.run`.
run_benchmark_command = benchmark.run
#: :func:`art_latent.cli.report.run`.
run_report_command = report.run


def add_benchmark_parsers(subparsers: Any) -> None:
    """
    Add the ``benchmark`` and ``report`` subcommands, each with its ``handler``.

    :param subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    """
    for command in (benchmark, report):
        command.add_parser(subparsers).set_defaults(handler=command.run)
