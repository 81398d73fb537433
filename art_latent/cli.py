"""
The ``art-latent`` command line. Imports stay lazy: ``import art`` alone takes seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from art_latent.cli_types import HelpFormatter, Parser, positive_int

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``art-latent``."""
    formatter = HelpFormatter
    parser = Parser(prog="art-latent", description="Latent adversarial defenses for ART.", formatter_class=formatter)
    parser.add_argument("--log-level", default="WARNING",
                        help="Python logging level (DEBUG also shows the traceback of an error).")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Pre-train, fine-tune undefended vs HLDR, attack with FGSM, print a table.",
                          description="Pre-train a model, fine-tune an undefended and an HLDR copy from the same "
                                      "weights, attack both with ART's FGSM and print the accuracies; writes "
                                      "results.json, results.md, accuracy_vs_eps.png and the three models' weights "
                                      "(pretrained.pt, undefended.pt, hldr.pt) to --out. Budgets are in units of "
                                      "1/255 of the [0, 1] input range.",
                          formatter_class=formatter)
    demo.add_argument("--out", default="demo_output", help="Output directory.")
    demo.add_argument("--model", default="vgg16", choices=("vgg16", "vgg11", "small_cnn"), help="Architecture.")
    demo.add_argument("--width", type=float, default=0.25, help="VGG width multiplier.")
    demo.add_argument("--pretrain-epochs", type=positive_int, default=8, help="Epochs of pre-training.")
    demo.add_argument("--finetune-epochs", type=positive_int, default=3,
                      help="Epochs of HLDR fine-tuning (the undefended copy runs 3x as many: same optimizer steps).")
    demo.add_argument("--batch-size", type=positive_int, default=64, help="Batch size.")
    demo.add_argument("--xi", type=float, default=0.25, help="HLDR weight in [0, 1].")
    demo.add_argument("--dataset", default="bundled", help="bundled, fashion-mnist, mnist or cifar10.")
    demo.add_argument("--data-path", default=None, help="Directory of the dataset files (not for bundled).")
    demo.add_argument("--device", default="gpu", choices=("gpu", "cpu"), help="gpu uses CUDA when available.")
    demo.add_argument("--seed", type=int, default=0,
                      help="First seed (of the split, the weights, shuffling and attacks).")
    demo.add_argument("--seeds", type=positive_int, default=3,
                      help="Seeds to run (seed, seed+1, ...): the table shows the mean gain with its 95%% interval; "
                           "one seed is one noisy draw.")
    demo.add_argument("--quiet", action="store_true", help="No progress bars.")
    demo.set_defaults(handler=_run_demo)
    from art_latent.experiments_cli import add_benchmark_parsers
    from art_latent.lsa_cli import add_lsa_parser

    add_benchmark_parsers(sub)
    add_lsa_parser(sub)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from art_latent.demo import format_table, run_demo

    results = run_demo(
        out=args.out, model=args.model, width=args.width, pretrain_epochs=args.pretrain_epochs,
        finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, xi=args.xi, dataset=args.dataset,
        data_path=args.data_path, device=args.device, seed=args.seed, verbose=not args.quiet, seeds=args.seeds,
    )
    print()
    print(format_table(results))
    print()
    print(results["conclusion"])
    print(f"\nWrote {', '.join(results['files'])} in {results['seconds']:.0f} s")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
