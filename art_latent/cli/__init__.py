"""
The ``art-latent`` command line: one module a command in this package, each with the same two functions,
``add_parser(subparsers)`` (the command's ``argparse`` parser) and ``run(args)`` (the command; returns the exit
status). :data:`COMMANDS` lists them; adding a command is one module plus one line there. Imports stay lazy:
``import art`` alone takes seconds, and building the parser loads neither torch nor ART.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from art_latent.cli.arguments import HelpFormatter, Parser

logger = logging.getLogger(__name__)

__all__ = ["COMMANDS", "build_parser", "main"]

#: The subcommands, in the order of ``art-latent --help``: each names the module ``art_latent.cli.<name>``.
COMMANDS = ("demo", "benchmark", "report", "lsa")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``art-latent``."""
    parser = Parser(prog="art-latent", description="Latent adversarial defenses for ART.",
                    formatter_class=HelpFormatter)
    parser.add_argument("--log-level", default="WARNING",
                        help="Python logging level (DEBUG also shows the traceback of an error).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        command = importlib.import_module(f"art_latent.cli.{name}")
        command.add_parser(sub).set_defaults(handler=command.run)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())
    if isinstance(error, FileNotFoundError) and error.filename and not text.startswith(str(error.filename)):
        text = f"{error.filename} does not exist" if error.strerror else text
    return text or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """
    Entry point of ``art-latent``. An error in the input (a missing file, a bad configuration, weights that do not
    fit) is one line on stderr and exit status 2, never a traceback; ``--log-level DEBUG`` shows the traceback.

    :param argv: Arguments (default: ``sys.argv[1:]``).
    :return: The exit status.
    """
    args = build_parser().parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"art-latent: error: --log-level {args.log_level!r} is not a logging level (DEBUG, INFO, WARNING, "
              "ERROR).", file=sys.stderr)
        return 2
    logging.basicConfig(level=level)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print(f"art-latent {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, ImportError) as error:
        if level <= logging.DEBUG:
            raise
        print(f"art-latent {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
