"""
The figures of paper 000 from aggregated benchmark results, with 95 % confidence-interval error bars:

* Fig. 2 / Fig. 4: test accuracy vs FGSM budget and the gain over the undefended model, on ``D`` / ``D_N``
  (the same pair of panels for every other eps attack of the suite: PGD, transfer, AutoAttack);
* Fig. 3 / Fig. 5: test accuracy vs Gaussian-noise sigma and the gain, on ``D`` / ``D_N``;
* Fig. 6: per-layer perturbation error at the FGSM budget of ``perturbation_eps_255``, one panel per pair set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from art_latent.analysis.plotting import plot_curves, pyplot
from art_latent.io import inside, save_figure
from art_latent.registries.evaluation_attacks import attack_names, attack_titles

logger = logging.getLogger(__name__)

__all__ = ["with_reference", "write_figures"]

#: Paper 000's figure numbers: (pair set, attack) -> figure.
PAPER_FIGURES = {("D", "fgsm"): "Fig. 2", ("D", "noise"): "Fig. 3", ("D_N", "fgsm"): "Fig. 4",
                 ("D_N", "noise"): "Fig. 5"}


def _two_panels(plt: Any, xs: list[float], entries: Mapping[str, Any], key: str, gain_key: str, reference: str,
                xlabel: str, title: str, path: Path, colors: Mapping[str, str]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 3.6))
    plot_curves(axes[0], xs, {n: (e[key]["mean"], e[key]["half_width"]) for n, e in entries.items()},
                xlabel, "test accuracy", f"(a) {title}", colors=colors, ylim=(0.0, 1.0), legend=False)
    gains = {n: (e["gain"][gain_key]["mean"], e["gain"][gain_key]["half_width"])
             for n, e in entries.items() if gain_key in e["gain"] and n != reference}  # the reference's gain is 0
    plot_curves(axes[1], xs, gains, xlabel, f"accuracy gain over {reference}", f"(b) gain over {reference}",
                zero_line=True, colors=colors, legend=False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(0.995, 0.5), borderaxespad=0.0)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_figures(config: Mapping[str, Any], aggregated: Mapping[str, Any], out: str | Path) -> list[tuple[str, str]]:
    """
    Write the PNG figures of a benchmark run.

    :param config: The configuration dict.
    :param aggregated: :func:`art_latent.experiments.summary.aggregate`'s output.
    :param out: The figures directory (created).
    :return: ``(caption, path relative to the run directory)`` per figure.
    """
    plt = pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ev, summary = config["evaluation"], aggregated["summary"]
    reference = ev["reference"]
    colors = {d["name"]: f"C{i % 10}" for i, d in enumerate(config["defenses"])}  # one color per defense everywhere
    written: list[tuple[str, str]] = []
    eps_x, sigma_x = list(ev["eps_255"]), list(ev["sigmas_255"])
    for pair_set in summary:
        entries, label = with_reference(summary, pair_set, reference)
        if not entries:
            continue
        colors = {**colors, label: colors.get(reference, "C0")}
        for attack in (a for a in ev["attacks"] if a in attack_names("eps")):
            path = inside(out, f"accuracy_vs_eps_{attack}_{pair_set}.png")
            key = f"accuracy_{attack}"
            data = {n: {key: e["accuracy"][attack], "gain": e["gain"]} for n, e in entries.items()}
            title = attack_titles().get(attack, attack)
            _two_panels(plt, eps_x, data, key, attack, label, "eps (x 1/255)", f"{title}, pair set {pair_set}", path,
                        colors)
            number = PAPER_FIGURES.get((pair_set, attack))
            caption = f"{number + ': ' if number else ''}{title} accuracy vs eps, pair set {pair_set}"
            written.append((caption, f"{out.name}/{path.name}"))
        if "noise" in ev["attacks"]:
            path = inside(out, f"accuracy_vs_sigma_{pair_set}.png")
            _two_panels(plt, sigma_x, entries, "noise_accuracy", "noise", label, "sigma (x 1/255)",
                        f"Gaussian noise, pair set {pair_set}", path, colors)
            number = PAPER_FIGURES.get((pair_set, "noise"))
            caption = f"{number + ': ' if number else ''}Gaussian-noise accuracy vs sigma, pair set {pair_set}"
            written.append((caption, f"{out.name}/{path.name}"))
    with_errors = {p: {n: e for n, e in entries.items() if "perturbation_error" in e} for p, entries in summary.items()}
    with_errors = {p: entries for p, entries in with_errors.items() if entries}
    if with_errors:
        fig, axes = plt.subplots(1, len(with_errors), figsize=(6.5 * len(with_errors) + 1.6, 4.0), squeeze=False)
        for index, (ax, (pair_set, entries)) in enumerate(zip(axes[0], with_errors.items(), strict=True)):
            first = next(iter(entries.values()))["perturbation_error"]
            size = len(first["mean"])
            names = first.get("layers") or []
            plot_curves(ax, list(range(1, size + 1)),
                        {n: (e["perturbation_error"]["mean"], e["perturbation_error"]["half_width"])
                         for n, e in entries.items()},
                        "hidden layer", "perturbation error", f"pair set {pair_set}", colors=colors, integer_x=True,
                        xticklabels=[f"{i + 1}: {n}" for i, n in enumerate(names)] if len(names) == size else None,
                        ylim=(0.0, None), legend=index == len(with_errors) - 1)
        fig.tight_layout()
        path = inside(out, "perturbation_error.png")
        save_figure(fig, path)
        plt.close(fig)
        written.append((f"Fig. 6: per-layer perturbation error at eps={ev['perturbation_eps_255']:g}/255 (FGSM)",
                        f"{out.name}/{path.name}"))
    return written


def with_reference(summary: Mapping[str, Any], pair_set: str, reference: str) -> tuple[dict[str, Any], str]:
    """
    The entries of a pair set with the reference first; a pair set without its own reference run borrows the one of
    the first pair set that has it, labelled ``"reference (pair set)"`` (so Figs. 4-5 show the undefended curve).

    :param summary: :func:`aggregate`'s ``"summary"``.
    :param pair_set: The pair set.
    :param reference: The reference's name.
    :return: ``(entries, the reference's label)``.
    """
    entries = dict(summary[pair_set])
    if reference in entries or not entries:
        return entries, reference
    for other, others in summary.items():
        if reference in others:
            label = f"{reference} ({other})"
            return {label: others[reference], **entries}, label
    return entries, reference
