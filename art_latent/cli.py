"""
The ``art-latent`` command line. Imports stay lazy: ``import art`` alone takes seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from art_latent.cli_types import positive_int

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``art-latent``."""
    parser = argparse.ArgumentParser(prog="art-latent", description="Latent adversarial defenses for ART.")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (default WARNING).")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="Pre-train, fine-tune undefended vs HLDR, attack with FGSM, print a table.")
    demo.add_argument("--out", default="demo_output", help="Output directory (default demo_output).")
    demo.add_argument("--model", default="vgg16", choices=("vgg16", "vgg11", "small_cnn"))
    demo.add_argument("--width", type=float, default=0.25, help="VGG width multiplier (default 0.25).")
    demo.add_argument("--pretrain-epochs", type=positive_int, default=8)
    demo.add_argument("--finetune-epochs", type=positive_int, default=3)
    demo.add_argument("--batch-size", type=positive_int, default=64)
    demo.add_argument("--xi", type=float, default=0.25, help="HLDR weight in [0, 1] (default 0.25).")
    demo.add_argument("--dataset", default="bundled", help="bundled (default), fashion-mnist, mnist or cifar10.")
    demo.add_argument("--data-path", default=None, help="Directory of the dataset files (not for bundled).")
    demo.add_argument("--device", default="gpu", choices=("gpu", "cpu"), help="gpu uses CUDA when available.")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="No progress bars.")
    from art_latent.experiments_cli import add_benchmark_parsers
    from art_latent.lsa_cli import add_lsa_parser

    add_benchmark_parsers(sub)
    add_lsa_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Entry point of ``art-latent``.

    :param argv: Arguments (default: ``sys.argv[1:]``).
    :return: The exit status.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING))
    if args.command == "demo":
        from art_latent.demo import format_table, run_demo

        results = run_demo(
            out=args.out, model=args.model, width=args.width, pretrain_epochs=args.pretrain_epochs,
            finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, xi=args.xi, dataset=args.dataset,
            data_path=args.data_path, device=args.device, seed=args.seed, verbose=not args.quiet,
        )
        print()
        print(format_table(results))
        print(f"\nWrote {', '.join(results['files'])} in {results['seconds']:.0f} s")
        return 0
    if args.command == "lsa":
        from art_latent.lsa_cli import main_lsa

        return main_lsa(args)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
