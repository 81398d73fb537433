"""
The ``art-latent demo``: pre-train a small VGG, fine-tune an undefended and an HLDR copy from the same weights,
attack both with ART's FGSM over several budgets and report the accuracies.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from art_latent.io import atomic_write, save_figure
from art_latent.weights import save_weights

logger = logging.getLogger(__name__)

DEFAULT_EPS_255 = (0, 2, 4, 8, 16, 32)


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
) -> dict[str, Any]:
    """
    Run the demo and write ``results.json`` and ``accuracy_vs_eps.png`` to `out`.

    The training split is halved (stratified): the first half pre-trains the model (plain cross-entropy), the second
    half fine-tunes two copies of the pre-trained weights, one undefended (cross-entropy) and one with HLDR (pairs
    at budgets 0, 16/255, 32/255 made by FGSM on the pre-trained model, xi = 0.25), as in paper 000's protocol.
    The undefended copy runs ``3 * finetune_epochs`` epochs so that both take the same number of optimizer steps
    (HLDR's set has three pairs per image).
    Both are evaluated on the test split against ART's ``FastGradientMethod`` at every budget.

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
    :param seed: Seed for the split, the initial weights, shuffling and attacks.
    :param verbose: Progress bars and progress messages.
    :return: The results (also written to ``results.json``).
    """
    import torch
    from art.attacks.evasion import FastGradientMethod
    from sklearn.model_selection import train_test_split

    from art_latent.analysis.metrics import accuracy_vs_eps
    from art_latent.data import load_dataset
    from art_latent.models import build_model
    from art_latent.trainers import HLDRTrainer, LatentTrainer

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(dataset, data_path)
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
    saved = [save_weights(out / "pretrained.pt", pretrained, **meta, seed=seed, epochs=pretrain_epochs)]

    eps_list = [e / 255 for e in eps_list_255]
    budgets = (0.0, 16 / 255, 32 / 255)
    results: dict[str, Any] = {
        "dataset": dataset, "model": model, "width": width, "seed": seed, "pretrain_samples": len(x_pre),
        "finetune_samples": len(x_ft), "test_samples": len(data.x_test), "pretrain_epochs": pretrain_epochs,
        "finetune_epochs_hldr": finetune_epochs, "finetune_epochs_undefended": finetune_epochs * len(budgets),
        "budgets_255": [round(b * 255, 6) for b in budgets], "batch_size": batch_size, "xi": xi,
        "eps_255": list(eps_list_255),
        "attack": "art.attacks.evasion.FastGradientMethod (Linf, true labels)", "defenses": {},
    }
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
            clf, data.x_test, data.y_test, lambda c, e: FastGradientMethod(c, eps=e, batch_size=256), eps_list,
            verbose=verbose,
        )
        results["defenses"][name] = {"accuracy": curve, "fit_seconds": fit_seconds, "history": history}
        saved.append(save_weights(out / f"{name.lower()}.pt", net.state_dict(), **meta, seed=seed, defense=name,
                                  epochs=epochs))

    results["seconds"] = time.perf_counter() - started
    atomic_write(out / "results.json", json.dumps(results, indent=2))
    table = format_table(results)
    atomic_write(out / "results.md", table + "\n")
    plot_path = _plot(results, out / "accuracy_vs_eps.png")
    results["files"] = [str(out / "results.json"), str(out / "results.md"), str(plot_path), *map(str, saved)]
    return results


def format_table(results: dict[str, Any]) -> str:
    """
    A Markdown table of FGSM accuracy per budget for every defense, with the gain of each over the undefended model.

    :param results: What :func:`run_demo` returns.
    :return: The table.
    """
    names = list(results["defenses"])
    base = results["defenses"]["undefended"]["accuracy"]
    header = "| FGSM eps | " + " | ".join(names) + " | " + " | ".join(f"{n} gain" for n in names[1:]) + " |"
    lines = [header, "|" + "---|" * (1 + len(names) + len(names) - 1)]
    for i, eps in enumerate(results["eps_255"]):
        accs = [results["defenses"][n]["accuracy"][i] for n in names]
        gains = [f"{acc - base[i]:+.3f}" for acc in accs[1:]]
        label = "0 (clean)" if eps == 0 else f"{eps:g}/255"
        lines.append(f"| {label} | " + " | ".join(f"{a:.3f}" for a in accs) + " | " + " | ".join(gains) + " |")
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
    ax.set_title(f"{results['dataset']}: {results['model']} (width {results['width']})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # never over the data
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


