"""
``art-latent lsa``: Layer Sustainability Analysis of a saved model from the command line.

A *saved model* is a weights file of :mod:`art_latent.weights` (what ``art-latent demo`` and ``art-latent benchmark``
write: the ``state_dict`` with the model's name, width and data set, so ``--model`` and ``--width`` are read from
it) or a plain ``state_dict`` file written by ``torch.save(model.state_dict(), "model.pt")`` for a model built by
:func:`art_latent.models.build_model` (then give ``--model``, and ``--width`` for the VGGs). The input shape and the
number of classes come from the dataset. Imports stay lazy: building the parser loads neither torch nor ART.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from art_latent.cli.arguments import HelpFormatter, budget, positive_int

logger = logging.getLogger(__name__)

__all__ = ["add_parser", "format_lsa", "run", "run_lsa"]

_MODELS = ("vgg16", "vgg11", "small_cnn")
_ATTACKS = ("pgd", "fgsm", "fast", "none")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add the ``lsa`` sub-command to an ``argparse`` sub-parsers object.

    :param subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    :return: The ``lsa`` parser.
    """
    parser = subparsers.add_parser(
        "lsa",
        help="Layer Sustainability Analysis of a saved model: per-layer relative error, most vulnerable layers.",
        description="Measure the relative error |phi(x) - phi(x_hat)|_F / |phi(x)|_F of every learnable layer of a "
        "saved model for an attack and statistical noises (paper 004), print the most vulnerable layers, write "
        "lsa.json and lsa.png. The weights file is what `art-latent demo` / `art-latent benchmark` save (model, width "
        "and data set are read from it) or a plain state_dict saved with torch.save(model.state_dict(), path) for "
        "art_latent.models.build_model(--model, width=--width). Layers are numbered from 1, as in the benchmark "
        "report.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("weights", help="The weights file (.pt) of the model.")
    parser.add_argument("--model", default=None, choices=_MODELS,
                        help="Architecture of the weights (default: the one recorded in the file; required for a "
                             "plain state_dict).")
    parser.add_argument("--width", type=float, default=None,
                        help="VGG width multiplier of the weights (default: the file's, else 1.0).")
    parser.add_argument("--dataset", default="bundled", help="bundled, fashion-mnist, mnist or cifar10.")
    parser.add_argument("--data-path", default=None, help="Directory of the dataset files (not for bundled).")
    parser.add_argument("--split", default="test", choices=("test", "train"), help="Samples to analyse.")
    parser.add_argument("--samples", type=positive_int, default=1000, help="Number M of random samples.")
    parser.add_argument("--attack", default="pgd", choices=_ATTACKS,
                        help="Adversarial perturbation: pgd (L-inf, as in the paper), fgsm, fast or none.")
    parser.add_argument("--eps", type=budget, default=0.1,
                        help="Attack budget, L-inf, in input units (the [0, 1] range): 0.1 or 8/255.")
    parser.add_argument("--eps-step", type=budget, default=None, help="PGD step, input units (default: eps / 4).")
    parser.add_argument("--max-iter", type=positive_int, default=7, help="PGD iterations.")
    parser.add_argument("--noise", default="gaussian,salt,pepper,speckle",
                        help="Comma-separated statistical noises (gaussian, salt, pepper, s&p, speckle) or 'none'.")
    parser.add_argument("--layers", default="learnable",
                        help="'learnable' or comma-separated module names / glob patterns.")
    parser.add_argument("--include-logits", action="store_true", help="With 'learnable', also measure the logits.")
    parser.add_argument("--eta", type=float, default=0.5, help="MVL cut-off: mean > mu + eta * sigma.")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="Batch size of the analysis.")
    parser.add_argument("--out", default="lsa_output", help="Output directory.")
    parser.add_argument("--device", default="gpu", choices=("gpu", "cpu"), help="gpu uses CUDA when available.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sample choice, PGD start and noises.")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    return parser


def run_lsa(args: argparse.Namespace) -> dict[str, Any]:
    """
    Run the analysis described by parsed ``art-latent lsa`` arguments.

    :param args: The parsed arguments.
    :return: The :meth:`~art_latent.analysis.lsa.LSAResult.to_dict` summary (without per-sample errors) plus
             ``"files"``.
    :raises FileNotFoundError: If the weights file does not exist.
    :raises ValueError: On weights that do not fit the architecture, or invalid options.
    """
    import json

    import numpy as np
    import torch
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    from art_latent.analysis.lsa import LayerSustainabilityAnalysis
    from art_latent.data import load_dataset
    from art_latent.estimator import LatentClassifier
    from art_latent.io import atomic_write
    from art_latent.models import build_model
    from art_latent.perturbations.noise import NOISE_KINDS
    from art_latent.trainers.atlr import make_fast_attack
    from art_latent.weights import load_weights

    weights = Path(args.weights)
    saved = load_weights(weights)  # FileNotFoundError / ValueError with a one-line message
    recorded = saved.meta("model")
    model_name = args.model or recorded
    if model_name is None:
        raise ValueError(f"{weights} is a plain state_dict without the model's name: give --model.")
    if recorded is not None and args.model is not None and args.model != recorded:
        raise ValueError(f"{weights} holds weights of {recorded!r}, not of --model {args.model!r}.")
    recorded_width = (saved.meta("model_kwargs") or {}).get("width")
    width = args.width if args.width is not None else (recorded_width if recorded_width is not None else 1.0)
    if recorded_width is not None and args.width is not None and float(args.width) != float(recorded_width):
        raise ValueError(f"{weights} holds weights of width {recorded_width}, not of --width {args.width}.")
    if saved.meta("dataset") not in (None, args.dataset):
        logger.warning("%s was trained on %s; analysing it on %s.", weights, saved.meta("dataset"), args.dataset)
    noises = [] if args.noise.strip().lower() == "none" else [n.strip().lower() for n in args.noise.split(",")]
    unknown = [n for n in noises if n not in NOISE_KINDS]
    if unknown:
        raise ValueError(f"Unknown noise {unknown}; accepted: {', '.join(NOISE_KINDS)} or 'none'.")
    if args.attack == "none" and not noises:
        raise ValueError("Nothing to analyse: --attack none and --noise none.")
    if args.attack != "none" and args.eps <= 0:
        raise ValueError("--eps must be > 0 for an attack.")

    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset, args.data_path)
    kwargs: dict[str, Any] = {"in_channels": data.input_shape[0], "num_classes": data.nb_classes,
                              "input_size": data.input_shape[1]}
    if model_name.startswith("vgg"):
        kwargs["width"] = width
    model = build_model(model_name, **kwargs)
    try:
        model.load_state_dict(saved.state_dict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(f"The weights in {weights} do not fit {model_name} (width {width:g}) on {args.dataset}: "
                         f"{' '.join(line.strip() for line in first[:3])}") from err
    model.eval()
    clf = LatentClassifier(model, torch.nn.CrossEntropyLoss(), data.input_shape, data.nb_classes,
                           clip_values=(0.0, 1.0), device_type=args.device)

    x_all, y_all = (data.x_test, data.y_test) if args.split == "test" else (data.x_train, data.y_train)
    rng = np.random.default_rng(args.seed)
    index = np.sort(rng.permutation(len(x_all))[: min(args.samples, len(x_all))])
    x, y = x_all[index], y_all[index]

    attacks = {}
    if args.attack == "pgd":
        step = args.eps / 4 if args.eps_step is None else args.eps_step
        attacks[f"PGD(eps={args.eps:g})"] = ProjectedGradientDescent(
            clf, eps=args.eps, eps_step=step, max_iter=args.max_iter, num_random_init=1, verbose=False
        )
    elif args.attack == "fgsm":
        attacks[f"FGSM(eps={args.eps:g})"] = FastGradientMethod(clf, eps=args.eps)
    elif args.attack == "fast":
        attacks[f"FAST(eps={args.eps:g})"] = make_fast_attack(clf, args.eps)

    layers = "learnable" if args.layers == "learnable" else [n.strip() for n in args.layers.split(",") if n.strip()]
    analysis = LayerSustainabilityAnalysis(clf, layers=layers, include_logits=args.include_logits)
    result = analysis.run(x, attack=attacks or None, noise=noises or None, y=y, batch_size=args.batch_size,
                          verbose=not args.quiet)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.to_dict(eta=args.eta, samples=False)
    summary.update({"model": model_name, "weights": str(weights), "dataset": args.dataset, "split": args.split})
    full = result.to_dict(eta=args.eta, samples=True)
    full.update({k: summary[k] for k in ("model", "weights", "dataset", "split")})
    json_path = out / "lsa.json"
    atomic_write(json_path, json.dumps(full, indent=1))
    png_path = result.plot(out / "lsa.png", title=f"LSA: {model_name} on {args.dataset} ({len(x)} samples)",
                           eta=args.eta)
    summary["files"] = [str(json_path), png_path]
    return summary


def format_lsa(summary: dict[str, Any]) -> str:
    """
    A Markdown table of per-layer mean +- std relative errors, one column per perturbation, and the MVL lists.

    :param summary: What :func:`run_lsa` returned.
    :return: The text.
    """
    names = list(summary["perturbations"])
    lines = ["| layer | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for index, layer in enumerate(summary["layers"]):
        cells = [f"{summary['perturbations'][n]['mean'][index]:.4f} +- {summary['perturbations'][n]['std'][index]:.4f}"
                 for n in names]
        lines.append(f"| {index + 1}: {layer} | " + " | ".join(cells) + " |")  # from 1, as the benchmark report
    lines.append("")
    for name in names:
        entry = summary["perturbations"][name]
        lines.append(f"{name}: mu = {entry['mu']:.4f}, sigma = {entry['sigma']:.4f}, most vulnerable (eta = "
                     f"{summary['eta']:g}): {entry['most_vulnerable'] or 'none'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """
    Entry point of ``art-latent lsa``: run the analysis, print the table, write the files.

    :param args: The parsed arguments (see :func:`add_parser`).
    :return: The exit status (0; a missing or mismatched weights file raises, and ``art-latent`` prints it as one line
             with status 2).
    """
    summary = run_lsa(args)  # errors: one line and status 2, from art_latent.cli.main
    print(format_lsa(summary))
    print(f"\nWrote {', '.join(summary['files'])}")
    return 0
