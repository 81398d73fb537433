"""
Aggregate the per-fold results of a benchmark run (mean and t confidence interval over folds) and render
``results.json``, the figures and ``report.md``, from the JSON files alone (``art-latent report``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from art_latent.analysis.curves import mean_confidence_interval
from art_latent.analysis.masking import gradient_masking_flags
from art_latent.analysis.tables import budget_label, markdown_table
from art_latent.experiments.figures import with_reference, write_figures
from art_latent.experiments.paths import FOLD_DIR
from art_latent.io import atomic_write, inside, write_json
from art_latent.registries.evaluation_attacks import attack_names, attack_titles

logger = logging.getLogger(__name__)

__all__ = ["aggregate", "load_run", "render_markdown", "render_report"]



def _ci(values: Sequence[float | None], confidence: float) -> dict[str, Any]:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "half_width": None, "n": 0}
    interval = mean_confidence_interval(finite, confidence)
    return {"mean": interval.mean, "half_width": interval.half_width, "n": interval.n}


def _curve_ci(curves: Sequence[Sequence[float | None]], confidence: float) -> dict[str, Any]:
    points = [_ci([c[i] for c in curves], confidence) for i in range(len(curves[0]))]
    return {"mean": [p["mean"] for p in points], "half_width": [p["half_width"] for p in points],
            "n": min(p["n"] for p in points)}


def _difference(a: Sequence[float | None], b: Sequence[float | None]) -> list[float | None]:
    return [None if u is None or v is None else u - v for u, v in zip(a, b, strict=True)]


def _check_saved_config(saved: Any, path: Path) -> None:
    # The names in a run directory's config.json become file names and table keys: hold them to the rules they met
    # when the run was configured (a crafted file must not lead a write out of the directory).
    from art_latent.experiments.specs import PAIR_SETS

    def fail(message: str) -> None:
        raise ValueError(f"{path} is not a configuration written by `art-latent benchmark`: {message}.")

    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict) or "digest" not in saved:
        fail("expected an object with 'digest' and 'config'")
    config = saved["config"]
    try:
        pair_sets = list(config["protocol"]["pair_sets"])
        attacks = list(config["evaluation"]["attacks"])
        defenses = list(config["defenses"])
        reference = config["evaluation"]["reference"]
    except (KeyError, TypeError) as error:
        fail(f"missing or malformed entry {error}")
    for pair_set in pair_sets + [p for d in defenses if isinstance(d, dict) for p in d.get("pair_sets") or []]:
        if pair_set not in PAIR_SETS:
            fail(f"pair set {pair_set!r} is not one of {list(PAIR_SETS)}")
    for attack in attacks:
        if attack not in attack_names():
            fail(f"attack {attack!r} is not one of {list(attack_names())}")
    names = [d.get("name") if isinstance(d, dict) else None for d in defenses]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        fail(f"the defense names must be distinct non-empty strings, got {names!r}")
    if not isinstance(reference, str):
        fail(f"`evaluation.reference` must be a string, got {reference!r}")


def load_run(out: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """
    Read a run directory: its configuration and the finished folds, in fold order.

    :param out: The directory ``art-latent benchmark`` wrote.
    :return: ``(config dict, fold results)``.
    :raises FileNotFoundError: If `out` holds no ``config.json``.
    """
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"The run directory {out} does not exist.")
    if not (out / "config.json").exists():
        raise FileNotFoundError(f"{out} has no config.json: not the output directory of `art-latent benchmark`.")
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{out / 'config.json'} is not valid JSON: {error}") from error
    _check_saved_config(saved, out / "config.json")
    folds = []
    for path in sorted((out / FOLD_DIR).glob("fold_*.json")):
        fold = json.loads(path.read_text())
        if fold.get("config_digest") != saved["digest"]:
            logger.warning("Ignoring %s: computed with another configuration.", path)
            continue
        folds.append(fold)
    return saved["config"], folds


def _pair_sets_of(config: Mapping[str, Any], defense: Mapping[str, Any]) -> list[str]:
    chosen = defense.get("pair_sets") or config["protocol"]["pair_sets"]
    return [p for p in config["protocol"]["pair_sets"] if p in chosen]


def aggregate(config: Mapping[str, Any], folds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """
    Means and confidence intervals over folds of every result, per pair set and defense.

    Gains over the reference are computed per fold (same test samples) and then aggregated, so their intervals are
    those of the paired differences. The reference of a pair set without its own reference run is the reference of
    the first pair set that has one. The gradient-masking check runs on the mean curves; ``flagged_folds`` counts the
    folds in which it fired.

    :param config: The configuration dict (``config.json``'s ``"config"``).
    :param folds: The fold results.
    :return: ``{"nb_folds", "summary": {pair set: {defense: {...}}}}``.
    """
    ev = config["evaluation"]
    confidence, reference = ev["confidence"], ev["reference"]
    eps = [e / 255 for e in ev["eps_255"]]
    summary: dict[str, dict[str, Any]] = {}
    for pair_set in config["protocol"]["pair_sets"]:
        summary[pair_set] = {}
        for defense in config["defenses"]:
            name = defense["name"]
            if pair_set not in _pair_sets_of(config, defense):
                continue
            runs = [(f, f["results"][pair_set][name]) for f in folds if name in f["results"].get(pair_set, {})]
            if not runs:
                continue
            res = [r for _, r in runs]
            entry: dict[str, Any] = {
                "n_folds": len(res),
                "clean_accuracy": _ci([r["clean_accuracy"] for r in res], confidence),
                "accuracy": {a: _curve_ci([r["accuracy"][a] for r in res], confidence) for a in res[0]["accuracy"]},
                "ms_per_sample": _ci([r["timing"]["ms_per_sample"] for r in res], confidence),
                "fit_seconds": _ci([r["timing"]["fit_seconds"] for r in res], confidence),
                "eval_seconds": _ci([r["timing"]["eval_seconds"] for r in res], confidence),
                "flagged_folds": sum(1 for r in res if r["flags"]),
            }
            if "noise_accuracy" in res[0]:
                entry["noise_accuracy"] = _curve_ci([r["noise_accuracy"] for r in res], confidence)
            if "auc" in res[0]:
                entry["auc"] = {a: _ci([r["auc"][a] for r in res], confidence) for a in res[0]["auc"]}
            if "perturbation_error" in res[0]:
                entry["perturbation_error"] = {"layers": res[0]["perturbation_error"]["layers"],
                                               **_curve_ci([r["perturbation_error"]["values"] for r in res],
                                                           confidence)}
            extras = res[0].get("extra") or {}
            scalar = [k for k, v in extras.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if scalar:
                entry["extra"] = {k: _ci([r["extra"][k] for r in res], confidence) for k in scalar}
            gains: dict[str, Any] = {}
            ref_runs = [_reference_run(config, f, pair_set, reference) for f, _ in runs]
            if all(ref is not None for ref in ref_runs):
                for attack in res[0]["accuracy"]:
                    gains[attack] = _curve_ci([_difference(r["accuracy"][attack], ref["accuracy"][attack])
                                               for r, ref in zip(res, ref_runs, strict=True)], confidence)
                if "noise_accuracy" in res[0]:
                    gains["noise"] = _curve_ci([_difference(r["noise_accuracy"], ref["noise_accuracy"])
                                                for r, ref in zip(res, ref_runs, strict=True)], confidence)
            entry["gain"] = gains
            mean_curves = {a: c["mean"] for a, c in entry["accuracy"].items()}
            entry["flags"] = gradient_masking_flags(mean_curves, eps, ev["masking_tolerance"],
                                                    check_transfer=name != reference)
            summary[pair_set][name] = entry
    return {"nb_folds": len(folds), "summary": summary}


def _reference_run(config: Mapping[str, Any], fold: Mapping[str, Any], pair_set: str, reference: str) -> Any:
    if reference in fold["results"].get(pair_set, {}):
        return fold["results"][pair_set][reference]
    for other in config["protocol"]["pair_sets"]:
        if reference in fold["results"].get(other, {}):
            return fold["results"][other][reference]
    return None


def _pm(entry: Mapping[str, Any] | None, index: int | None = None, digits: int = 3, signed: bool = False) -> str:
    if entry is None:
        return "-"
    mean = entry["mean"] if index is None else entry["mean"][index]
    half = entry["half_width"] if index is None else entry["half_width"][index]
    if mean is None:
        return "-"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if half is None or not math.isfinite(half) else f"{text} ± {half:.{digits}f}"


def render_markdown(
    config: Mapping[str, Any],
    aggregated: Mapping[str, Any],
    figures: Sequence[tuple[str, str]],
    run_info: Mapping[str, Any],
) -> str:
    """
    The text of ``report.md``.

    :param config: The configuration dict.
    :param aggregated: :func:`aggregate`'s output.
    :param figures: ``(caption, relative path)`` of each figure.
    :param run_info: ``{"folds_done", "wall_seconds", "pretrain"}``.
    :return: Markdown.
    """
    ev, protocol, summary = config["evaluation"], config["protocol"], aggregated["summary"]
    conf = round(100 * ev["confidence"])
    model = config["model"]
    model_kwargs = ", ".join(f"{k}={v}" for k, v in model["kwargs"].items())
    pre = run_info.get("pretrain") or {}
    step = ev["pgd_step_ratio"] or 2.5 / ev["pgd_max_iter"]
    test_cap = f", at most {protocol['test_samples']} samples" if protocol["test_samples"] else ""
    lines = [
        f"# Benchmark `{config['name']}`\n",
        *([config["description"], ""] if config.get("description") else []),
        "The k-fold fine-tuning protocol of Schwartz & Ditzler (IJCNN 2021, §IV): a model pre-trained once on a "
        "random subset, then, per fold, every defense fine-tuned from the same pre-trained weights and evaluated on "
        "the fold's test part. Numbers are means over folds with "
        f"{conf}% t confidence intervals (± half width).\n",
        "| setting | value |",
        "|---|---|",
        f"| data | {config['data']['dataset']} (pool: {config['data']['pool']}"
        + (f", limited to {config['data']['limit']}" if config["data"]["limit"] else "") + ") |",
        f"| model | {model['name']}({model_kwargs}), latent layers {model['layers']!r} |",
        f"| optimizer | {config['optimizer']['name']}, lr {config['optimizer']['lr']:g} |",
        f"| pre-training | {config['pretrain']['samples']} samples, {pre.get('epochs', '?')} epoch(s) run of "
        f"{config['pretrain']['epochs']} (best at {pre.get('best_epoch', '?')}), "
        f"batch {config['pretrain']['batch_size']} |",
        f"| folds | {run_info['folds_done']} finished of {protocol['folds']} (stratified) |",
        f"| fine-tuning | {protocol['finetune_samples'] or 'all'} benign samples per fold, {protocol['epochs']} "
        f"epoch(s), batch {protocol['batch_size']} |",
        f"| pair budgets | {', '.join(f'{b:g}/255' for b in protocol['budgets_255'])}; D_N adds noise pairs with "
        f"sigma {protocol['noise_sigma_255']:g}/255 |",
        f"| test | the fold's test part{test_cap} |",
        f"| attacks | {', '.join(ev['attacks'])} (PGD: {ev['pgd_max_iter']} steps of {step:g} eps, "
        f"{ev['pgd_restarts']} random start(s); transfer: {ev['transfer_attack'].upper()} on `{ev['reference']}`) |",
        f"| seed | {config['seed']} |",
        f"| wall time | {run_info['wall_seconds']:.0f} s (pre-training and folds, as measured) |",
        "",
        "Defenses:\n",
        "| name | trainer | kwargs | pair sets |",
        "|---|---|---|---|",
    ]
    for d in config["defenses"]:
        kwargs = ", ".join(f"{k}={v}" for k, v in d["kwargs"].items()) or "-"
        lines.append(f"| {d['name']} | {d['trainer']} | {kwargs} | {', '.join(_pair_sets_of(config, d))} |")
    lines.append("")
    if not aggregated["nb_folds"]:
        lines.append("No fold has finished yet.")
        return "\n".join(lines) + "\n"
    eps_labels = [budget_label(e / 255, 255.0) for e in ev["eps_255"]]
    sigma_labels = [budget_label(s / 255, 255.0) for s in ev["sigmas_255"]]
    for pair_set, entries in summary.items():
        if not entries:
            continue
        lines.append(f"## Pair set {pair_set}\n")
        shown, _ = with_reference(summary, pair_set, ev["reference"])
        for attack in (a for a in ev["attacks"] if a in attack_names("eps")):
            lines.append(f"### {attack_titles().get(attack, attack)}: test accuracy vs eps\n")
            rows = {n: [_pm(e["accuracy"][attack], i) for i in range(len(eps_labels))] for n, e in shown.items()}
            lines.append(markdown_table("defense", eps_labels, rows))
            gains = {n: e["gain"][attack] for n, e in entries.items() if attack in e["gain"] and n != ev["reference"]}
            if gains:
                lines.append(f"\nGain over `{ev['reference']}`:\n")
                lines.append(markdown_table("defense", eps_labels, {
                    n: [_pm(g, i, signed=True) for i in range(len(eps_labels))] for n, g in gains.items()}))
            lines.append("")
        aucs = {n: e["auc"] for n, e in shown.items() if "auc" in e}
        if aucs:
            attacks = list(next(iter(aucs.values())))
            lines.append("### Area under accuracy vs eps (normalized by the eps range)\n")
            lines.append(markdown_table("defense", [attack_titles().get(a, a) for a in attacks],
                                {n: [_pm(a.get(k)) for k in attacks] for n, a in aucs.items()}))
            lines.append("")
        if "noise" in ev["attacks"]:
            lines.append("### Gaussian noise: test accuracy vs sigma\n")
            lines.append(markdown_table("defense", sigma_labels, {n: [_pm(e["noise_accuracy"], i)
                                                              for i in range(len(sigma_labels))]
                                                          for n, e in shown.items()}))
            lines.append("")
    lines.append("## Table I: fine-tuning time per sample\n")
    lines.append("Milliseconds per fine-tuning sample (one pair of the pair set; a benign-only trainer sees the benign "
                 "member of each pair), i.e. fit wall time / (epochs x pairs), including the generation of the "
                 "adversarial pairs; measured on this run's machine.\n")
    rows = {}
    for d in config["defenses"]:
        rows[d["name"]] = [_pm(summary.get(p, {}).get(d["name"], {}).get("ms_per_sample"), digits=2)
                           if d["name"] in summary.get(p, {}) else "-" for p in protocol["pair_sets"]]
    lines.append(markdown_table("defense", list(protocol["pair_sets"]), rows))
    lines.append("")
    errors = [(p, n, e["perturbation_error"]) for p, entries in summary.items() for n, e in entries.items()
              if "perturbation_error" in e]
    if errors:
        lines.append(f"## Per-layer perturbation error at eps={ev['perturbation_eps_255']:g}/255 (FGSM)\n")
        layers = errors[0][2]["layers"]
        columns = [f"{n} ({p})" for p, n, _ in errors]
        rows = {f"{i + 1}: {layer}": [_pm(e, i) if e["layers"] == layers else "-" for _, _, e in errors]
                for i, layer in enumerate(layers)}
        lines.append(markdown_table("layer", columns, rows))
        lines.append("")
    extras = [(p, n, e["extra"]) for p, entries in summary.items() for n, e in entries.items() if e.get("extra")]
    if extras:
        lines.append("## Extra metrics\n")
        keys = sorted({k for _, _, x in extras for k in x})
        lines.append(markdown_table("defense", keys,
                                    {f"{n} ({p})": [_pm(x.get(k)) for k in keys] for p, n, x in extras}))
        lines.append("")
    lines.append("## Gradient-masking check\n")
    lines.append(f"A defense is flagged when its white-box accuracy exceeds its transfer-attack accuracy, or its "
                 f"accuracy does not fall as eps grows (tolerance {ev['masking_tolerance']:g}), on the mean curves."
                 + ("" if "transfer" in ev["attacks"] else " The suite has no transfer attack: only the second "
                    "check ran.") + "\n")
    flagged = [(p, n, e) for p, entries in summary.items() for n, e in entries.items()
               if e["flags"] or e["flagged_folds"]]
    if not flagged:
        lines.append("No defense flagged.")
    for pair_set, name, entry in flagged:
        lines.append(f"- **{name} ({pair_set})**: flagged in {entry['flagged_folds']} of {entry['n_folds']} folds"
                     + (": " + "; ".join(entry["flags"]) if entry["flags"] else ""))
    lines.append("")
    if figures:
        lines.append("## Figures\n")
        for caption, path in figures:
            lines.append(f"**{caption}**\n\n![{caption}]({path})\n")
    return "\n".join(lines) + "\n"


def render_report(out: str | Path) -> dict[str, Any]:
    """
    (Re-)write ``results.json``, ``figures/*.png`` and ``report.md`` of a run directory from its JSON files.

    :param out: The run directory.
    :return: The aggregated results (``results.json``).
    """
    out = Path(out)
    config, folds = load_run(out)
    aggregated = aggregate(config, folds)
    pretrain = json.loads((out / "pretrain.json").read_text()) if (out / "pretrain.json").exists() else {}
    wall = (pretrain.get("seconds") or 0.0) + sum(f["timing"]["fold_seconds"] for f in folds)
    run_info = {"folds_done": len(folds), "wall_seconds": wall,
                "pretrain": {k: pretrain.get(k) for k in ("epochs", "best_epoch")}}
    figures = write_figures(config, aggregated, inside(out, "figures")) if folds else []
    results = {"name": config["name"], "config": config, **aggregated,
               "folds": [f["fold"] for f in folds], "timing": {"wall_seconds": wall},
               "figures": [{"caption": c, "path": p} for c, p in figures]}
    write_json(results, out / "results.json")
    atomic_write(out / "report.md", render_markdown(config, aggregated, figures, run_info))
    return results
