"""
The outputs of :class:`~art_latent.analysis.report.RobustnessReport` from its results (or their JSON): gains over the
reference, the Markdown tables and the PNG plots.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from art_latent.analysis.plotting import close_and_save, plot_curves, pyplot
from art_latent.analysis.tables import budget_label, fmt, markdown_table
from art_latent.registries.evaluation_attacks import attack_names, attack_titles

__all__ = ["gains", "plot", "to_markdown"]


def gains(results: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """
    Accuracy gain of every model over the reference, per attack and budget (and ``"noise"`` per sigma).

    :param results: What :meth:`~art_latent.analysis.report.RobustnessReport.evaluate` returns.
    :return: ``{model: {attack: [gain per budget]}}``; empty without a reference.
    """
    reference = results.get("reference")
    if reference is None:
        return {}
    base = results["models"][reference]
    out = {}
    for name, res in results["models"].items():
        gains = {a: [v - b for v, b in zip(curve, base["accuracy"][a], strict=True)]
                 for a, curve in res["accuracy"].items()}
        if "noise_accuracy" in res:
            gains["noise"] = [v - b for v, b in zip(res["noise_accuracy"], base["noise_accuracy"], strict=True)]
        out[name] = gains
    return out

def to_markdown(results: Mapping[str, Any]) -> str:
    """
    Markdown tables of the results: accuracy per attack and budget, gains over the reference, noise accuracy,
    perturbation error, and the gradient-masking findings.

    :param results: What :meth:`~art_latent.analysis.report.RobustnessReport.evaluate` returns (or the JSON it was
                    saved as).
    :return: The Markdown text.
    """
    settings, models = results["settings"], results["models"]
    scale = settings.get("scale", 255.0)
    eps_labels = [budget_label(e, scale) for e in settings["eps"]]
    lines = ["# Robustness report\n", f"{results['nb_samples']} test samples; reference (undefended, transfer "
             f"source): {results.get('reference') or 'none'}. Accuracies are plain robust accuracies (correct "
             f"under attack / all samples); budget 0 is the clean accuracy. PGD: {settings['pgd_max_iter']} steps "
             f"of {settings['pgd_step_ratio']:g} eps, {settings['pgd_restarts']} random start(s). Transfer: "
             f"{settings['transfer_attack'].upper()} on the reference.\n"]
    titles, eps_attacks, model_gains = attack_titles(), attack_names("eps"), gains(results)
    for attack in (a for a in settings["attacks"] if a in eps_attacks):
        lines.append(f"## {titles.get(attack, attack)}: accuracy vs eps\n")
        rows = {n: [fmt(v) for v in r["accuracy"][attack]] for n, r in models.items()}
        lines.append(markdown_table("model", eps_labels, rows))
        if model_gains:
            lines.append(f"\nGain over {results['reference']}:\n")
            lines.append(markdown_table("model", eps_labels, {n: [fmt(v, signed=True) for v in g[attack]]
                                                      for n, g in model_gains.items() if n != results["reference"]}))
        lines.append("")
    if "noise" in settings["attacks"]:
        lines.append("## Gaussian noise: accuracy vs sigma\n")
        sigma_labels = [budget_label(s, scale) for s in settings["sigmas"]]
        lines.append(markdown_table("model", sigma_labels, {n: [fmt(v) for v in r["noise_accuracy"]]
                                                    for n, r in models.items()}))
        lines.append("")
    errors = {n: r["perturbation_error"] for n, r in models.items() if "perturbation_error" in r}
    if errors:
        lines.append(f"## Per-layer perturbation error at eps={budget_label(settings['perturbation_eps'], scale)}"
                     f" (FGSM)\n")
        layers = next(iter(errors.values()))["layers"]
        rows = {layer: [fmt(e["values"][i]) if e["layers"] == layers else "" for e in errors.values()]
                for i, layer in enumerate(layers)}
        lines.append(markdown_table("layer", list(errors), rows))
        lines.append("")
    aucs = {n: r["auc"] for n, r in models.items() if "auc" in r}
    if aucs:
        lines.append("## Area under accuracy vs eps (normalized by the eps range)\n")
        attacks = list(next(iter(aucs.values())))
        lines.append(markdown_table("model", [titles.get(a, a) for a in attacks],
                            {n: [fmt(a.get(k)) for k in attacks] for n, a in aucs.items()}))
        lines.append("")
    extras = {n: r["extra"] for n, r in models.items() if r.get("extra")}
    if extras:
        lines.append("## Extra metrics\n")
        for name, values in extras.items():
            lines.append(f"- **{name}**: " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items()))
        lines.append("")
    lines.append("## Gradient-masking check\n")
    checked = {n: r["masking_checks"] for n, r in models.items() if r.get("masking_checks")}
    if checked:
        names = list(next(iter(checked.values())))
        lines.append(f"Checklist at eps={budget_label(settings.get('check_eps'), scale)} (see the evaluation "
                     "guide for each check's source); a cell is the measured value, then pass/FAIL:\n")
        lines.append(markdown_table("model", names, {
            n: [f"{c[k]['value']:.3f} {'pass' if c[k]['passed'] else 'FAIL'}" if k in c else "-" for k in names]
            for n, c in checked.items()}))
        lines.append("")
    flagged = {n: r["flags"] for n, r in models.items() if r["flags"]}
    if not flagged:
        lines.append(f"No model flagged (tolerance {settings['masking_tolerance']:g}).")
    for name, flags in flagged.items():
        lines.append(f"- **{name}**: " + "; ".join(flags))
    return "\n".join(lines) + "\n"

def plot(results: Mapping[str, Any], out: str | os.PathLike) -> list[Path]:
    """
    Write the PNG plots: accuracy vs eps (one panel per attack), gain over the reference, accuracy vs sigma and
    per-layer perturbation error.

    :param results: What :meth:`~art_latent.analysis.report.RobustnessReport.evaluate` returns.
    :param out: Output directory.
    :return: The written paths.
    """
    plt = pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings, models = results["settings"], results["models"]
    scale = settings.get("scale", 255.0)
    xs = [e * scale for e in settings["eps"]]
    xlabel = f"eps (x 1/{scale:g})"
    titles, eps_attacks, model_gains = attack_titles(), attack_names("eps"), gains(results)
    attacks = [a for a in settings["attacks"] if a in eps_attacks]
    colors = {name: f"C{i % 10}" for i, name in enumerate(models)}
    paths = []
    panels = [("accuracy_vs_eps.png", "accuracy", False)] + ([("gain_vs_eps.png", "gain", True)] if model_gains else [])
    for filename, what, zero in panels:
        if not attacks:
            break
        fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks) + 1.6, 3.4), squeeze=False)
        for index, (ax, attack) in enumerate(zip(axes[0], attacks, strict=True)):
            if what == "accuracy":
                series = {n: (r["accuracy"][attack], None) for n, r in models.items()}
                ylabel, ylim = "test accuracy", (0.0, 1.0)
            else:
                series = {n: (g[attack], None) for n, g in model_gains.items() if n != results["reference"]}
                ylabel, ylim = f"accuracy gain over {results['reference']}", None
            plot_curves(ax, xs, series, xlabel, ylabel, titles.get(attack, attack), zero_line=zero,
                        colors=colors, ylim=ylim, legend=index == len(attacks) - 1)
        fig.tight_layout()
        paths.append(close_and_save(fig, out / filename, plt))
    if "noise" in settings["attacks"]:
        fig, ax = plt.subplots(figsize=(6.2, 3.4))
        plot_curves(ax, [s * scale for s in settings["sigmas"]],
                    {n: (r["noise_accuracy"], None) for n, r in models.items()},
                    f"sigma (x 1/{scale:g})", "test accuracy", "Gaussian noise", colors=colors, ylim=(0.0, 1.0))
        fig.tight_layout()
        paths.append(close_and_save(fig, out / "accuracy_vs_sigma.png", plt))
    errors = {n: r["perturbation_error"] for n, r in models.items() if "perturbation_error" in r}
    if errors:
        first = next(iter(errors.values()))
        fig, ax = plt.subplots(figsize=(7.5, 3.8))
        plot_curves(ax, list(range(1, len(first["values"]) + 1)),
                    {n: (e["values"], None) for n, e in errors.items()}, "hidden layer",
                    "perturbation error",
                    f"eps={budget_label(settings['perturbation_eps'], scale)} (FGSM)", colors=colors,
                    xticklabels=[f"{i + 1}: {name}" for i, name in enumerate(first.get("layers", []))] or None,
                    ylim=(0.0, None))
        fig.tight_layout()
        paths.append(close_and_save(fig, out / "perturbation_error.png", plt))
    return paths
