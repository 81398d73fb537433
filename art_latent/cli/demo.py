"""
``art-latent demo``: pre-train, fine-tune an undefended and an HLDR copy, attack both with FGSM, print a table (the
work is :func:`art_latent.experiments.demo.run_demo`).
"""

from __future__ import annotations

import argparse
from typing import Any

from art_latent.cli.arguments import HelpFormatter, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add the ``demo`` subcommand.

    :param subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    :return: The ``demo`` parser.
    """
    demo = subparsers.add_parser(
        "demo", help="Pre-train, fine-tune undefended vs HLDR, attack with FGSM, print a table.",
        description="Pre-train a model, fine-tune an undefended and an HLDR copy from the same weights, attack both "
                    "with ART's FGSM and print the accuracies; writes results.json, results.md, accuracy_vs_eps.png "
                    "and the three models' weights (pretrained.pt, undefended.pt, hldr.pt) to --out. Budgets are in "
                    "units of 1/255 of the [0, 1] input range.",
        formatter_class=HelpFormatter)
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
    return demo


def run(args: argparse.Namespace) -> int:
    """
    Handler of ``art-latent demo``.

    :param args: The parsed arguments (see :func:`add_parser`).
    :return: The exit status.
    """
    from art_latent.experiments.demo import format_table, run_demo

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
