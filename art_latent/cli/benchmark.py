"""
The ``art-latent benchmark`` subcommand: paper 000's k-fold protocol from a TOML config. Imports stay lazy:
``import art`` alone takes seconds, and ``--help`` must not pay for it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from art_latent.cli.arguments import HelpFormatter, positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add the ``benchmark`` subcommand.

    :param subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    :return: The ``benchmark`` parser.
    """
    from art_latent.registries.evaluation_attacks import attack_names
    from art_latent.registries.trainers import trainer_names

    bench = subparsers.add_parser(
        "benchmark",
        epilog=f"Trainers ([[defenses]].trainer): {', '.join(trainer_names())}. Evaluation attacks "
               f"([evaluation].attacks): {', '.join(attack_names())}.",
        help="Run paper 000's k-fold fine-tuning protocol from a TOML config (resumes unfinished runs).",
        description="Pre-train once, then per stratified fold fine-tune every defense of the config from the same "
                    "weights and evaluate it; writes per-fold JSON, results.json, figures and report.md to --out. "
                    "An interrupted run resumes after its last finished fold.",
        formatter_class=HelpFormatter,
    )
    bench.add_argument("--config", required=True, help="TOML configuration, e.g. configs/quick.toml.")
    bench.add_argument("--out", default="results", help="Output directory.")
    bench.add_argument("--restart", action="store_true",
                       help="Discard the finished folds and pre-trained weights in --out instead of resuming.")
    bench.add_argument("--folds", type=positive_int, default=None,
                       help="Run only the first N folds (overrides [protocol].run_folds).")
    bench.add_argument("--device", choices=("gpu", "cpu"), default=None, help="Override the config's device.")
    bench.add_argument("--data-path", default=None, help="Override [data].path (the directory of the data files).")
    bench.add_argument("--quiet", action="store_true", help="No progress bars.")
    return bench


def run(args: argparse.Namespace) -> int:
    """
    Handler of ``art-latent benchmark``.

    :param args: Parsed arguments (``config``, ``out``, ``restart``, ``folds``, ``device``, ``data_path``, ``quiet``).
    :return: The exit status.
    """
    import dataclasses

    from art_latent.experiments.config import load_config
    from art_latent.experiments.protocol import run_benchmark

    config = load_config(args.config)
    if args.device is not None:
        config = dataclasses.replace(config, device=args.device)
    if args.data_path is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=args.data_path))
    if args.folds is not None:
        if args.folds > config.protocol.folds:
            raise ValueError(f"--folds {args.folds} exceeds the {config.protocol.folds} folds of the config.")
        config = dataclasses.replace(config, protocol=dataclasses.replace(config.protocol, run_folds=args.folds))
    started = time.perf_counter()
    results = run_benchmark(config, args.out, resume=not args.restart, verbose=not args.quiet)
    print(f"\n{results['nb_folds']} fold(s) of {config.protocol.folds} finished; wrote {args.out}/report.md, "
          f"{args.out}/results.json and {len(results['figures'])} figure(s) in {time.perf_counter() - started:.0f} s.")
    return 0
