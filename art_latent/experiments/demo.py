"""
The demo of ``art-latent demo``: pre-train a small VGG, fine-tune an undefended and an HLDR copy from the same weights,
attack both with ART's FGSM over several budgets and report the accuracies.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from art_latent.io import atomic_write, save_figure
from art_latent.weights import save_weights

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_EPS_255", "DEFAULT_SEEDS", "conclusion", "format_table", "run_demo", "summarize"]

#: FGSM budgets of the demo, in units of 1/255 of the [0, 1] input range.
DEFAULT_EPS_255 = (0, 2, 4, 8, 16, 32)
#: Seeds the demo runs by default: one seed is one noisy draw on the bundled subset.
DEFAULT_SEEDS = 3


def _make_classifier(model: Any, input_shape: tuple[int, ...], nb_classes: int, lr: float, device: str) -> Any:
    import torch

    from art_latent.estimator import LatentClassifier

    return LatentClassifier(
        model,
        torch.nn.CrossEntropyLoss(),
        input_shape,
        nb_classes,
        optimizer=torch.optim.NAdam(model.parameters(), lr=lr),
        clip_values=(0.0, 1.0),
        device_type=device,
    )


def run_demo(
    out: str | os.PathLike = "demo_output",
    model: str = "vgg16",
    width: float = 0.25,
    pretrain_epochs: int = 8,
    finetune_epochs: int = 3,
    batch_size: int = 64,
    xi: float = 0.25,
    eps_list_255: tuple[float, ...] = DEFAULT_EPS_255,
    dataset: str = "bundled",
    data_path: str | None = None,
    device: str = "gpu",
    seed: int = 0,
    verbose: bool = True,
    seeds: int = DEFAULT_SEEDS,
) -> dict[str, Any]:
    """
    Run the demo and write ``results.json``, ``results.md``, ``accuracy_vs_eps.png`` and the models to `out`.

    The training split is halved (stratified): the first half pre-trains the model (plain cross-entropy), the second
    half fine-tunes two copies of the pre-trained weights, one undefended (cross-entropy) and one with HLDR (pairs
    at budgets 0, 16/255, 32/255 made by FGSM on the pre-trained model, xi = 0.25), as in paper 000's protocol.
    The undefended copy runs ``3 * finetune_epochs`` epochs so that both take the same number of optimizer steps
    (HLDR's set has three pairs per image).
    Both are evaluated on the test split against ART's ``FastGradientMethod`` at every budget.

    One seed is one noisy draw (on the bundled subset the HLDR gain of a single seed moves by several points between
    seeds and between thread counts), so the demo repeats the whole protocol for `seeds` seeds (``seed``,
    ``seed + 1``, ...: the split, the weights, shuffling and attacks) and reports the mean gain with its 95 % t
    interval; its conclusion says at which budgets the interval excludes 0.

    :param out: Output directory.
    :param model: ``vgg16``, ``vgg11`` or ``small_cnn``.
    :param width: Width multiplier of the VGG.
    :param pretrain_epochs: Epochs of pre-training.
    :param finetune_epochs: Epochs of HLDR fine-tuning (the undefended copy runs three times as many).
    :param batch_size: Batch size.
    :param xi: HLDR's regularization weight.
    :param eps_list_255: FGSM budgets for evaluation, in units of 1/255.
    :param dataset: Dataset name for :func:`art_latent.data.load_dataset`.
    :param data_path: Directory of the dataset files (not for ``bundled``).
    :param device: ``"gpu"`` (CUDA when available) or ``"cpu"``.
    :param seed: The first seed.
    :param verbose: Progress bars and progress messages.
    :param seeds: How many seeds (>= 1; with 1 there is no interval and the output says so).
    :return: The results (also written to ``results.json``): the settings, ``"runs"`` (one per seed) and
             ``"defenses"`` (mean accuracy curves) and ``"gain"`` (mean, half width, per seed).
    """
    import torch

    from art_latent.data import load_dataset
    from art_latent.validation import check_int

    seeds = check_int("seeds", seeds)
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(dataset, data_path)
    budgets = (0.0, 16 / 255, 32 / 255)
    results: dict[str, Any] = {
        "dataset": dataset, "model": model, "width": width, "seeds": list(range(seed, seed + seeds)),
        "pretrain_samples": len(data.x_train) - len(data.x_train) // 2, "finetune_samples": len(data.x_train) // 2,
        "test_samples": len(data.x_test), "pretrain_epochs": pretrain_epochs,
        "finetune_epochs_hldr": finetune_epochs, "finetune_epochs_undefended": finetune_epochs * len(budgets),
        "budgets_255": [round(b * 255, 6) for b in budgets], "batch_size": batch_size, "xi": xi,
        "eps_255": list(eps_list_255), "attack": "art.attacks.evasion.FastGradientMethod (Linf, true labels)",
        "threads": torch.get_num_threads(), "versions": _versions(), "runs": [],
    }
    saved: list[Path] = []
    for index, run_seed in enumerate(results["seeds"]):
        if verbose:
            print(f"Seed {run_seed} ({index + 1} of {seeds})")
        run, files = _run_seed(out, data, model, width, pretrain_epochs, finetune_epochs, batch_size, xi,
                               eps_list_255, budgets, dataset, device, run_seed, verbose, save=index == 0)
        results["runs"].append(run)
        saved += files
    summarize(results)
    results["seconds"] = time.perf_counter() - started
    atomic_write(out / "results.json", json.dumps(results, indent=2, allow_nan=True))
    table = format_table(results)
    atomic_write(out / "results.md", table + "\n\n" + results["conclusion"] + "\n")
    plot_path = _plot(results, out / "accuracy_vs_eps.png")
    results["files"] = [str(out / "results.json"), str(out / "results.md"), str(plot_path), *map(str, saved)]
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """
    Fill in the mean accuracy curves, HLDR's gain (per budget and averaged over the attacked budgets, with 95 % t
    intervals over the seeds) and the conclusion from ``results["runs"]``; also re-renders a saved ``results.json``.

    :param results: The demo's results with ``"runs"``, ``"eps_255"`` and ``"seeds"``.
    :return: `results`, updated in place.
    """
    from art_latent.analysis.curves import mean_confidence_interval

    eps_list_255 = results["eps_255"]
    names = list(results["runs"][0]["defenses"])
    results["defenses"] = {n: {"accuracy": np.mean([r["defenses"][n]["accuracy"] for r in results["runs"]],
                                                  axis=0).tolist()} for n in names}
    per_seed = [np.subtract(r["defenses"]["HLDR"]["accuracy"], r["defenses"]["undefended"]["accuracy"]).tolist()
                for r in results["runs"]]
    intervals = [mean_confidence_interval([g[i] for g in per_seed]) for i in range(len(eps_list_255))]
    attacked = [i for i, e in enumerate(eps_list_255) if e > 0]
    robust = mean_confidence_interval([float(np.mean([g[i] for i in attacked])) for g in per_seed]) if attacked \
        else None
    results["gain"] = {"mean": [ci.mean for ci in intervals], "half_width": [ci.half_width for ci in intervals],
                       "per_seed": per_seed,
                       "robust_mean": None if robust is None else robust.mean,
                       "robust_half_width": None if robust is None else robust.half_width}
    results["conclusion"] = conclusion(results)
    return results


def _versions() -> dict[str, str]:
    import platform

    import art
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "art": art.__version__,
            "numpy": np.__version__}


def _run_seed(out: Path, data: Any, model: str, width: float, pretrain_epochs: int, finetune_epochs: int,
              batch_size: int, xi: float, eps_list_255: tuple[float, ...], budgets: tuple[float, ...], dataset: str,
              device: str, seed: int, verbose: bool, save: bool) -> tuple[dict[str, Any], list[Path]]:
    """One seed of the protocol: split, pre-train, fine-tune both copies, evaluate; the models saved when `save`."""
    import torch
    from art.attacks.evasion import FastGradientMethod
    from sklearn.model_selection import train_test_split

    from art_latent.analysis.metrics import accuracy_vs_eps
    from art_latent.models import build_model
    from art_latent.trainers import HLDRTrainer, LatentTrainer

    x_pre, x_ft, y_pre, y_ft = train_test_split(
        data.x_train, data.y_train, test_size=0.5, stratify=data.y_train, random_state=seed
    )
    model_kwargs: dict[str, Any] = {"in_channels": data.input_shape[0], "num_classes": data.nb_classes,
                                    "input_size": data.input_shape[1]}
    if model.startswith("vgg"):
        model_kwargs["width"] = width
    torch.manual_seed(seed)
    base = build_model(model, **model_kwargs)
    clf = _make_classifier(base, data.input_shape, data.nb_classes, 1e-3, device)
    if verbose:
        print(f"Pre-training {model} (width {width}) on {len(x_pre)} {dataset} images for {pretrain_epochs} epochs")
    LatentTrainer(clf, seed=seed).fit(x_pre, y_pre, batch_size=batch_size, nb_epochs=pretrain_epochs, verbose=verbose)
    pretrained = {k: v.detach().clone() for k, v in base.state_dict().items()}
    meta: dict[str, Any] = {"model": model, "model_kwargs": {"width": width} if model.startswith("vgg") else {},
                            "dataset": dataset, "input_shape": data.input_shape, "nb_classes": data.nb_classes}
    saved = [save_weights(out / "pretrained.pt", pretrained, **meta, seed=seed, epochs=pretrain_epochs)] if save \
        else []
    run: dict[str, Any] = {"seed": seed, "defenses": {}}
    for name in ("undefended", "HLDR"):
        torch.manual_seed(seed)
        net = build_model(model, **model_kwargs)
        net.load_state_dict(pretrained)
        clf = _make_classifier(net, data.input_shape, data.nb_classes, 1e-3, device)
        if name == "undefended":
            trainer: LatentTrainer = LatentTrainer(clf, seed=seed)
            epochs = finetune_epochs * len(budgets)  # as many optimizer steps as HLDR, which sees len(budgets) pairs
        else:
            trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=16 / 255, batch_size=256), xi=xi, budgets=budgets,
                                  seed=seed, validation_attack=None)
            epochs = finetune_epochs
        if verbose:
            print(f"Fine-tuning the {name} copy on {len(x_ft)} images for {epochs} epochs")
        fit_started = time.perf_counter()
        history = trainer.fit(x_ft, y_ft, batch_size=batch_size, nb_epochs=epochs, verbose=verbose)
        fit_seconds = time.perf_counter() - fit_started
        curve = accuracy_vs_eps(
            clf, data.x_test, data.y_test, lambda c, e: FastGradientMethod(c, eps=e, batch_size=256),
            [e / 255 for e in eps_list_255], verbose=verbose,
        )
        run["defenses"][name] = {"accuracy": curve, "fit_seconds": fit_seconds, "history": history}
        if save:
            saved.append(save_weights(out / f"{name.lower()}.pt", net.state_dict(), **meta, seed=seed, defense=name,
                                      epochs=epochs))
    return run, saved


def conclusion(results: dict[str, Any]) -> str:
    """
    What the run shows, worded so that it holds for any seed and thread count: per budget, whether the 95 % interval
    of HLDR's mean gain over the seeds excludes 0; with one seed, that one draw cannot tell.

    :param results: What :func:`run_demo` returns.
    :return: A few lines of text.
    """
    seeds, gain = results["seeds"], results["gain"]
    labels = ["clean" if e == 0 else f"{e:g}/255" for e in results["eps_255"]]
    if len(seeds) < 2:
        return (f"One seed ({seeds[0]}) is one noisy draw: on this small data set the HLDR gain of a single seed moves "
                "by several points between seeds and thread counts, so it supports no conclusion. Run with --seeds 3 "
                "(the default) or more for an interval.")
    def verdict(mean: float, half: float) -> str:
        return "more accurate" if mean - half > 0 else "less accurate" if mean + half < 0 else "not distinguishable"

    better: list[str] = []
    worse: list[str] = []
    unclear: list[str] = []
    for label, mean, half in zip(labels, gain["mean"], gain["half_width"], strict=True):
        (better if mean - half > 0 else worse if mean + half < 0 else unclear).append(f"{label} ({mean:+.3f})")
    lines = [f"HLDR vs undefended over seeds {seeds[0]}-{seeds[-1]} (mean gain, 95% t interval over the seeds):"]
    if gain.get("robust_mean") is not None:
        mean, half = gain["robust_mean"], gain["robust_half_width"]
        budgets = [label for label in labels if label != "clean"]
        lines.append(f"  averaged over the FGSM budgets {budgets[0]}-{budgets[-1]}: {mean:+.3f} [{mean - half:+.3f}, "
                     f"{mean + half:+.3f}], HLDR is {verdict(mean, half)};")
    lines.append("  per budget:")
    if better:
        lines.append(f"    HLDR is more accurate at {', '.join(better)};")
    if worse:
        lines.append(f"    HLDR is less accurate at {', '.join(worse)};")
    if unclear:
        lines.append(f"    no difference can be told from {len(seeds)} seeds at {', '.join(unclear)}.")
    return "\n".join(lines)


def format_table(results: dict[str, Any]) -> str:
    """
    A Markdown table of FGSM accuracy per budget (mean over the seeds) for both models, with HLDR's mean gain and its
    95 % t interval.

    :param results: What :func:`run_demo` returns.
    :return: The table.
    """
    names = list(results["defenses"])
    seeds = len(results["seeds"])
    header = (f"| FGSM eps | {' | '.join(names)} | HLDR gain (mean of {seeds} seed{'s' if seeds > 1 else ''}"
              f"{', 95% CI' if seeds > 1 else ''}) |")
    lines = [header, "|" + "---|" * (len(names) + 2)]
    for i, eps in enumerate(results["eps_255"]):
        accs = [results["defenses"][n]["accuracy"][i] for n in names]
        mean, half = results["gain"]["mean"][i], results["gain"]["half_width"][i]
        gain = f"{mean:+.3f}" + (f" [{mean - half:+.3f}, {mean + half:+.3f}]" if seeds > 1 else "")
        label = "0 (clean)" if eps == 0 else f"{eps:g}/255"
        lines.append(f"| {label} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {gain} |")
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.5))
    for name, res in results["defenses"].items():
        ax.plot(results["eps_255"], res["accuracy"], marker="o", label=name)
    ax.set_xlabel("FGSM budget eps (x 1/255)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{results['dataset']}: {results['model']} (width {results['width']}), mean of "
                 f"{len(results['seeds'])} seed(s)", fontsize=10)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # never over the data
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


