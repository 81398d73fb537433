"""
Reproduce Table 2 of paper 004 (Khalooei et al., LSA and AT-LR): model A on the Moon data set, trained normally, with
AT-FGSM, AT-PGD, AT-TRADES and AT-FAST at eps 0.3, and with each of them plus the layer-wise regularizer (AT-LR) at
learnable layer 0, 1 or 2; FGSM accuracy at eps 0, 0.1, ..., 0.5 and the R&G score (their sum, in percent).

Setup (the paper's where it states one; ``--help`` for the knobs):

* data: ``sklearn.datasets.make_moons`` with noise 0.2 (unstated in the paper; 0.2 gives the paper's clean accuracy of
  the normal model, ~97%), three separate draws: training (1,000 samples, ``random_state=0``), validation (1,000,
  ``random_state=1``) and test (2,000, ``random_state=2``); features standardized with a ``StandardScaler`` fitted on
  the training draw (``--scale standard``, the default; unstated in the paper, whose normal-model FGSM accuracies the
  raw features, ``--scale none``, do not come near), so the budgets are in units of the features' standard
  deviations; no clipping;
* model A: Linear(2, 100) - ELU - Linear(100, 100) - ELU - Linear(100, 100) - ELU - Linear(100, 2), cross-entropy
  (the paper's Linear(1) output with a sigmoid is the same model family); "learnable layer l" is the output of the
  l-th ELU, which is both art_latent's ``"learnable"`` rule and what the authors' hooks (ReLU/ELU/LeakyReLU modules)
  measure;
* Adam, learning rate 1e-3, batch 128, 100 epochs, training budget eps 0.3 (L-infinity); attacks from ART:
  FGSM = ``FastGradientMethod``, PGD = ``ProjectedGradientDescent`` (7 steps of eps/4, random start), FAST =
  :func:`art_latent.trainers.atlr.make_fast_attack` (FGSM from a random start, step 1.25 eps), TRADES = the TRADES
  loss (beta 6) on the PGD examples;
* every adversarial row is :class:`~art_latent.trainers.atlr.ATLRTrainer`: ``gamma=0`` is the base AT (its
  cross-entropy on x_hat; TRADES' CE + beta KL), ``gamma > 0`` with ``layers=[layer l]`` is AT-LR; the normal row is
  the plain :class:`~art_latent.trainers.base.LatentTrainer`; the same seed gives the same initial weights and
  batches to every row;
* AT-LR is run with both reductions of the relative error: ``"sample"`` (art_latent's default, the per-sample mean)
  and ``"batch"`` (one Frobenius ratio per batch, the authors' LSA code);
* gamma (unpublished) is chosen per AT-LR row from ``--gammas`` by the mean R&G score on the **validation** draw over
  the ``--sweep-seeds``; the remaining seeds are then trained at the chosen gamma only; the test draw is used for
  reporting only;
* the LSA of every normal model (PGD, eps 0.3, validation draw, both reductions) gives the most vulnerable layers
  (Algorithm 1, eta 0.5), to compare with the paper's finding (layer 2).

Run ``OMP_NUM_THREADS=1 python scripts/reproduce_paper004.py --out benchmarks/results/paper004`` (about 30 minutes on
one core). Resumable: a run whose JSON exists in ``OUT/runs`` is not trained again. Writes ``OUT/runs/*.json`` (one
per training run), ``OUT/summary.json``, ``OUT/table.md``, ``OUT/table.rst``, ``OUT/table_vs_paper.rst``
and figures in ``--figures``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger(__name__)

EVAL_EPS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
TRAIN_EPS = 0.3
BASES = ("fgsm", "pgd", "trades", "fast")
LAYERS = (0, 1, 2)
REDUCTIONS = ("sample", "batch")
DEFAULT_GAMMAS = (0.1, 0.3, 1.0, 3.0)
ETA = 0.5

#: Table 2 of paper 004 (FGSM accuracy in % at eps 0, 0.1, ..., 0.5, then the R&G score), quoted from the text.
PAPER_TABLE2: dict[str, list[float]] = {
    "Normal": [97.07, 93.63, 82.5, 76.83, 63.79, 52.35, 466.17],
    "AT-FGSM": [95.86, 91.98, 87.88, 81.33, 70.54, 58.69, 486.28],
    "AT-PGD": [86.5, 83.89, 80.87, 76.61, 72.57, 60.02, 460.46],
    "AT-TRADES": [96.17, 93.06, 85.78, 74.2, 68.62, 59.68, 477.51],
    "AT-FAST": [94.32, 89.72, 84.91, 78.35, 70.18, 61.65, 479.13],
    "AT-FGSM-LR-L0": [92.81, 90.25, 85.36, 80.74, 68.21, 58.74, 476.11],
    "AT-FGSM-LR-L1": [91.87, 89.77, 86.95, 81.51, 69.15, 59.59, 478.84],
    "AT-FGSM-LR-L2": [93.98, 93.01, 89.12, 84.01, 75.15, 63.25, 498.52],
    "AT-PGD-LR-L0": [87.02, 84.02, 80.64, 76.22, 71.12, 65.87, 464.89],
    "AT-PGD-LR-L1": [86.2, 82.94, 79.23, 75.16, 70.5, 65.04, 459.07],
    "AT-PGD-LR-L2": [88.78, 86.93, 81.25, 77.01, 72.81, 66.58, 473.36],
    "AT-FAST-LR-L0": [86.86, 83.85, 80.33, 76.34, 71.34, 65.79, 464.51],
    "AT-FAST-LR-L1": [87.91, 85.43, 82.44, 77.38, 70.01, 62.25, 465.42],
    "AT-FAST-LR-L2": [92.91, 90.31, 86.26, 81.53, 75.09, 67.65, 493.75],
    "AT-TRADES-LR-L0": [86.84, 82.38, 80.55, 76.37, 71.58, 64.07, 461.79],
    "AT-TRADES-LR-L1": [87.25, 84.22, 81.25, 76.98, 71.14, 63.25, 464.09],
    "AT-TRADES-LR-L2": [96.67, 93.2, 86.56, 81.25, 79.5, 68.65, 505.83],
}


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``base`` None is the normal model; ``layer`` None (gamma 0) the base adversarial training."""

    seed: int
    base: str | None = None
    layer: int | None = None
    reduction: str = "sample"
    gamma: float = 0.0

    @property
    def row(self) -> str:
        """The row name of Table 2 (with the reduction for AT-LR rows)."""
        if self.base is None:
            return "Normal"
        name = f"AT-{self.base.upper()}"
        return name if self.layer is None else f"{name}-LR-L{self.layer}"

    @property
    def config(self) -> str:
        """The row plus the reduction: what gamma is chosen for."""
        return self.row if self.layer is None else f"{self.row} ({self.reduction})"

    @property
    def key(self) -> str:
        """The file name stem of the run's JSON."""
        if self.layer is None:
            return f"{self.row.lower()}_s{self.seed}"
        return f"{self.row.lower()}_{self.reduction}_g{self.gamma:g}_s{self.seed}"


# ---------------------------------------------------------------------------------------------------------- data


def make_data(args: argparse.Namespace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """
    The three ``make_moons`` draws, standardized with the training draw's mean and standard deviation unless
    ``--scale none``.

    :param args: The command-line arguments.
    :return: ``{"train", "val", "test"}`` -> ``(x, y)``.
    """
    data = {
        "train": moons(args.n_train, args.noise, 0),
        "val": moons(args.n_val, args.noise, 1),
        "test": moons(args.n_test, args.noise, 2),
    }
    if args.scale == "standard":
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(data["train"][0])
        data = {k: (scaler.transform(x).astype(np.float32), y) for k, (x, y) in data.items()}
    return data


def moons(n: int, noise: float, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """
    One ``make_moons`` draw.

    :param n: Number of samples.
    :param noise: Standard deviation of the Gaussian noise.
    :param random_state: The draw's seed.
    :return: ``(x, y)`` as float32 features and int64 labels.
    """
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=noise, random_state=random_state)
    return x.astype(np.float32), y.astype(np.int64)


def model_a(seed: int, hidden: int = 100) -> torch.nn.Sequential:
    """
    Model A of paper 004 (Table 1) with two logits.

    :param seed: Seeds the initial weights.
    :param hidden: Units per hidden layer.
    :return: The network; its ELU modules (``"1"``, ``"3"``, ``"5"``) are learnable layers 0, 1, 2.
    """
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(2, hidden), torch.nn.ELU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ELU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ELU(),
        torch.nn.Linear(hidden, 2),
    )


def make_classifier(seed: int, lr: float) -> Any:
    """
    Model A as an art_latent ``LatentClassifier`` (an ART ``PyTorchClassifier``) with Adam.

    :param seed: Seeds the initial weights.
    :param lr: Adam's learning rate.
    :return: The classifier.
    """
    from art_latent.estimator import LatentClassifier

    model = model_a(seed)
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), (2,), 2,
                            optimizer=torch.optim.Adam(model.parameters(), lr=lr), device_type="cpu")


def make_attack(base: str, clf: Any) -> tuple[Any, str]:
    """
    The base attack (an ART attack) and the base loss of one adversarial-training row.

    :param base: ``"fgsm"``, ``"pgd"``, ``"trades"`` or ``"fast"``.
    :param clf: The classifier the attack runs on.
    :return: ``(attack, base loss)`` for :class:`ATLRTrainer`.
    """
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    from art_latent.trainers.atlr import make_fast_attack

    if base == "fgsm":
        return FastGradientMethod(clf, eps=TRAIN_EPS), "ce"
    if base == "fast":
        return make_fast_attack(clf, TRAIN_EPS), "ce"
    pgd = ProjectedGradientDescent(clf, eps=TRAIN_EPS, eps_step=TRAIN_EPS / 4, max_iter=7, num_random_init=1,
                                   verbose=False)
    return pgd, ("trades" if base == "trades" else "ce")


# ---------------------------------------------------------------------------------------------------------- runs


def fgsm_curve(clf: Any, x: np.ndarray, y: np.ndarray) -> list[float]:
    """
    FGSM accuracy (ART's ``FastGradientMethod``, true labels) at every budget of :data:`EVAL_EPS`.

    :param clf: The classifier.
    :param x: Inputs.
    :param y: Labels.
    :return: Accuracies in [0, 1].
    """
    from art.attacks.evasion import FastGradientMethod

    from art_latent.analysis.metrics import accuracy_vs_eps

    return accuracy_vs_eps(clf, x, y, lambda c, e: FastGradientMethod(c, eps=e, batch_size=512), EVAL_EPS,
                           batch_size=512)


def layer_errors(clf: Any, x: np.ndarray, y: np.ndarray, layers: Sequence[str]) -> dict[str, list[float]]:
    """
    The relative error at the three learnable layers under FGSM at the training budget (the paper's Fig. 5), with
    both reductions.

    :param clf: The classifier.
    :param x: Inputs.
    :param y: Labels.
    :param layers: The learnable layers.
    :return: ``{"sample": [...], "batch": [...]}``, one value per layer (the batch values: mean over batches of 256).
    """
    from art.attacks.evasion import FastGradientMethod

    from art_latent.analysis.lsa import LayerSustainabilityAnalysis

    x_adv = FastGradientMethod(clf, eps=TRAIN_EPS, batch_size=512).generate(x, np.eye(2, dtype=np.float32)[y])
    analysis = LayerSustainabilityAnalysis(clf, layers=list(layers))
    return {reduction: analysis.run(x, x_perturbed=x_adv, reduction=reduction).layer_mean().tolist()
            for reduction in REDUCTIONS}


def train_one(spec: RunSpec, data: dict[str, tuple[np.ndarray, np.ndarray]], args: argparse.Namespace) -> dict:
    """
    Train and evaluate one run.

    :param spec: The run.
    :param data: ``{"train", "val", "test"}`` -> ``(x, y)``.
    :param args: The command-line arguments.
    :return: The run's record (written to its JSON by the caller).
    """
    from art_latent.analysis.lsa import LayerSustainabilityAnalysis, learnable_layers, rg_score
    from art_latent.trainers.atlr import ATLRTrainer
    from art_latent.trainers.base import LatentTrainer

    clf = make_classifier(spec.seed, args.lr)
    layers = learnable_layers(clf)
    trainer: LatentTrainer
    if spec.base is None:
        trainer = LatentTrainer(clf, seed=spec.seed)
    else:
        attack, base_loss = make_attack(spec.base, clf)
        if spec.layer is None:
            trainer = ATLRTrainer(clf, attack, layers=layers, gamma=0.0, base=base_loss, seed=spec.seed,
                                  validation_attack=None)
        else:
            trainer = ATLRTrainer(clf, attack, layers=[layers[spec.layer]], gamma=spec.gamma, base=base_loss,
                                  reduction=spec.reduction, seed=spec.seed, validation_attack=None)
    start = time.perf_counter()
    history = trainer.fit(*data["train"], nb_epochs=args.epochs, batch_size=args.batch_size, verbose=False)
    train_s = time.perf_counter() - start
    clf.model.eval()
    record: dict[str, Any] = {
        "row": spec.row, "config": spec.config, "seed": spec.seed, "base": spec.base, "layer": spec.layer,
        "layer_name": None if spec.layer is None else layers[spec.layer], "reduction": spec.reduction,
        "gamma": spec.gamma, "train_s": train_s,
        "final_epoch": {k: float(v) for k, v in history[-1].items()},
    }
    for split in ("val", "test"):
        accs = fgsm_curve(clf, *data[split])
        record[f"{split}_fgsm"] = accs
        record[f"{split}_rg"] = rg_score(accs)
    record["test_relative_error_fgsm"] = layer_errors(clf, *data["test"], layers)
    if spec.base is None:  # the LSA of the normal model (Algorithm 2): PGD at the training budget, validation draw
        from art.attacks.evasion import ProjectedGradientDescent

        torch.manual_seed(spec.seed)
        pgd = ProjectedGradientDescent(clf, eps=TRAIN_EPS, eps_step=TRAIN_EPS / 4, max_iter=7, num_random_init=1,
                                       verbose=False)
        x_val, y_val = data["val"]
        record["lsa"] = {}
        for layer_rule in ("learnable", "activations"):
            analysis = LayerSustainabilityAnalysis(clf, layers=layer_rule)
            for reduction in REDUCTIONS:
                result = analysis.run(x_val, attack={"PGD": pgd}, y=y_val, reduction=reduction)
                entry = result.to_dict(eta=ETA, samples=False)["perturbations"]["PGD"]
                entry["layers"] = list(result.layers)
                entry["most_vulnerable_index"] = [result.layers.index(n) for n in entry["most_vulnerable"]]
                record["lsa"][f"{layer_rule}/{reduction}"] = entry
    return record


def _write_json(path: Path, payload: Any) -> None:
    from art_latent.io import atomic_write  # the package's atomic writer (temporary file, fsync, rename)

    atomic_write(path, json.dumps(payload, indent=1) + "\n")


def run_all(specs: Sequence[RunSpec], data: dict, args: argparse.Namespace, desc: str) -> dict[str, dict]:
    """
    Train every run whose JSON does not exist yet (resumable), with a progress bar.

    :param specs: The runs.
    :param data: The data splits.
    :param args: The command-line arguments.
    :param desc: The progress bar's label.
    :return: Run key -> record, for all `specs`.
    """
    runs_dir = Path(args.out) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    todo = [s for s in specs if not (runs_dir / f"{s.key}.json").exists()]
    logger.info("%s: %d runs, %d already done.", desc, len(specs), len(specs) - len(todo))
    for spec in specs:
        path = runs_dir / f"{spec.key}.json"
        if path.exists():
            records[spec.key] = json.loads(path.read_text(encoding="utf-8"))
    bar = tqdm(todo, desc=desc, disable=args.quiet)
    for spec in bar:
        bar.set_postfix_str(spec.key)
        record = train_one(spec, data, args)
        _write_json(runs_dir / f"{spec.key}.json", record)
        records[spec.key] = record
    return records


# ---------------------------------------------------------------------------------------------------------- statistics


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """
    Mean and the t-interval of the mean (scipy.stats.t); a single value gives NaN bounds.

    :param values: The samples (one per seed).
    :param confidence: The confidence level.
    :return: ``(mean, low, high)``.
    """
    from scipy import stats

    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if len(array) < 2:
        return mean, math.nan, math.nan
    sem = float(stats.sem(array))
    if sem == 0.0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(array) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def summarize(records: dict[str, dict], chosen: dict[str, float], sweep: dict[str, dict[str, float]],
              args: argparse.Namespace) -> dict[str, Any]:
    """
    Per table row: test FGSM accuracies and R&G score (mean, 95% CI over seeds), and the paired R&G difference to
    the base AT with the same seeds.

    :param records: All run records.
    :param chosen: Config -> chosen gamma.
    :param sweep: Config -> gamma -> mean validation R&G over the sweep seeds.
    :param args: The command-line arguments.
    :return: The summary.
    """
    rows: dict[str, dict[str, Any]] = {}
    configs = ["Normal", *[f"AT-{b.upper()}" for b in args.bases]]
    for base in args.bases:
        for layer in args.layers:
            for reduction in args.reductions:
                configs.append(f"AT-{base.upper()}-LR-L{layer} ({reduction})")
    for config in configs:
        gamma = chosen.get(config, 0.0)
        runs = sorted((r for r in records.values() if r["config"] == config and r["gamma"] == gamma
                       and r["seed"] in args.seeds), key=lambda r: r["seed"])
        if not runs:
            continue
        accs = np.array([r["test_fgsm"] for r in runs]) * 100.0
        rg = [r["test_rg"] for r in runs]
        entry: dict[str, Any] = {
            "row": runs[0]["row"], "reduction": runs[0]["reduction"] if runs[0]["layer"] is not None else None,
            "gamma": gamma, "seeds": [r["seed"] for r in runs],
            "test_fgsm_percent": [list(mean_ci(accs[:, i])) for i in range(accs.shape[1])],
            "test_rg": list(mean_ci(rg)), "val_rg": list(mean_ci([r["val_rg"] for r in runs])),
            "train_s": float(np.mean([r["train_s"] for r in runs])),
            "test_relative_error_fgsm_sample": np.mean([r["test_relative_error_fgsm"]["sample"] for r in runs],
                                                       axis=0).tolist(),
            "paper": PAPER_TABLE2.get(runs[0]["row"]),
        }
        if config in sweep:
            entry["val_rg_by_gamma"] = sweep[config]
        if runs[0]["layer"] is not None:
            base_row = f"AT-{runs[0]['base'].upper()}"
            base_by_seed = {r["seed"]: r["test_rg"] for r in records.values()
                            if r["config"] == base_row and r["seed"] in args.seeds}
            paired = [r["test_rg"] - base_by_seed[r["seed"]] for r in runs if r["seed"] in base_by_seed]
            if paired:
                entry["delta_rg_vs_base"] = list(mean_ci(paired))
                entry["base_row"] = base_row
        rows[config] = entry
    return rows


def _fmt(stat: Sequence[float], digits: int = 1) -> str:
    mean, low, high = stat
    if math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def table_rows(rows: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """
    The results table: ours (mean [95% CI]) beside the paper's R&G score.

    :param rows: The summary rows.
    :return: ``(header, rows)`` of strings.
    """
    header = ["Training type", "gamma", *[f"eps {e:g}" for e in EVAL_EPS], "R&G [95% CI]", "paper R&G",
              "R&G - base [95% CI]"]
    body = []
    for config, entry in rows.items():
        paper = entry["paper"]
        body.append([
            config, "" if entry["reduction"] is None else f"{entry['gamma']:g}",
            *[f"{m:.1f}" for m, _, _ in entry["test_fgsm_percent"]],
            _fmt(entry["test_rg"]), "" if paper is None else f"{paper[-1]:.2f}",
            _fmt(entry["delta_rg_vs_base"]) if "delta_rg_vs_base" in entry else "",
        ])
    return header, body


def write_tables(rows: dict[str, dict[str, Any]], out: Path) -> None:
    """
    Write ``table.md`` and ``table.rst`` (an RST ``list-table``).

    :param rows: The summary rows.
    :param out: The output directory.
    """
    header, body = table_rows(rows)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in body]
    (out / "table.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    rst = [".. list-table::", "   :header-rows: 1", ""]
    for r in [header, *body]:
        rst.append("   * - " + (r[0] or " "))
        rst += [f"     - {cell}" if cell else "     -" for cell in r[1:]]
    (out / "table.rst").write_text("\n".join(rst) + "\n", encoding="utf-8")
    header = ["Training type", "gamma", *[f"{e:g}" for e in EVAL_EPS], "R&G [95% CI]", "R&G - base [95% CI]"]
    rst = [".. list-table:: FGSM accuracy (%), ours (mean over seeds) with the paper's in parentheses",
           "   :header-rows: 1", ""]
    for r in [header, *vs_paper_rows(rows)]:
        rst.append("   * - " + r[0])
        rst += [f"     - {cell}" if cell else "     -" for cell in r[1:]]
    (out / "table_vs_paper.rst").write_text("\n".join(rst) + "\n", encoding="utf-8")


def vs_paper_rows(rows: dict[str, dict[str, Any]]) -> list[list[str]]:
    """
    Table rows with each of our numbers followed by the paper's in parentheses (AT-LR rows: the paper's row of the
    same layer, for both reductions).

    :param rows: The summary rows.
    :return: Rows of strings.
    """
    body = []
    for config, entry in rows.items():
        paper = entry["paper"]
        cells = [f"{m:.1f}" + ("" if paper is None else f" ({paper[i]:g})")
                 for i, (m, _, _) in enumerate(entry["test_fgsm_percent"])]
        rg = _fmt(entry["test_rg"]) + ("" if paper is None else f" ({paper[-1]:g})")
        body.append([config, "" if entry["reduction"] is None else f"{entry['gamma']:g}", *cells, rg,
                     _fmt(entry["delta_rg_vs_base"]) if "delta_rg_vs_base" in entry else ""])
    return body


def plot_figures(rows: dict[str, dict[str, Any]], records: dict[str, dict], figures: Path) -> list[str]:
    """
    ``paper004_rg.png`` (R&G score per row, ours with 95% CI, beside the paper's) and ``paper004_lsa.png`` (the
    LSA of the normal models: mean relative error per learnable layer under PGD, both reductions).

    :param rows: The summary rows.
    :param records: All run records.
    :param figures: The output directory.
    :return: The files written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures.mkdir(parents=True, exist_ok=True)
    written = []
    figure = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    names = list(rows)
    means = np.array([rows[n]["test_rg"][0] for n in names])
    lows = np.array([rows[n]["test_rg"][1] for n in names])
    highs = np.array([rows[n]["test_rg"][2] for n in names])
    err = np.vstack([means - np.nan_to_num(lows, nan=0.0), np.nan_to_num(highs, nan=0.0) - means])
    err = np.where(np.isfinite(lows), err, 0.0)
    x = np.arange(len(names))
    axes.bar(x - 0.2, means, width=0.4, yerr=err, capsize=2, label="ours (test, mean, 95% CI)")
    paper = [rows[n]["paper"][-1] if rows[n]["paper"] else np.nan for n in names]
    axes.bar(x + 0.2, paper, width=0.4, label="paper 004, Table 2")
    axes.set_xticks(x)
    axes.set_xticklabels(names, rotation=75, fontsize=7)
    axes.set_ylim(min(np.nanmin(means), np.nanmin(paper)) - 30, max(np.nanmax(means), np.nanmax(paper)) + 15)
    axes.set_ylabel("R&G score (sum of FGSM accuracies, %)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    path = figures / "paper004_rg.png"
    figure.savefig(os.fspath(path), dpi=110, format="png")
    written.append(os.fspath(path))

    normal = [r for r in records.values() if r["row"] == "Normal" and "lsa" in r]
    if normal:
        figure = Figure(figsize=(6, 4))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        for reduction in REDUCTIONS:
            values = np.array([r["lsa"][f"learnable/{reduction}"]["mean"] for r in normal])
            axes.errorbar(np.arange(values.shape[1]), values.mean(0), yerr=values.std(0), fmt="-o", capsize=3,
                          label=f"reduction={reduction!r}")
        axes.set_xticks(np.arange(3))
        axes.set_xlabel("learnable layer (ELU output)")
        axes.set_ylabel("relative error under PGD (eps 0.3)")
        axes.set_title(f"LSA of the normal model A ({len(normal)} seeds, mean +- sd)", fontsize=9)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = figures / "paper004_lsa.png"
        figure.savefig(os.fspath(path), dpi=110, format="png")
        written.append(os.fspath(path))
    return written


# ---------------------------------------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    """The library versions of this run."""
    import art
    import scipy
    import sklearn

    return {"python": platform.python_version(), "torch": torch.__version__, "art": art.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The command line.

    :param argv: Arguments (default: ``sys.argv[1:]``).
    :return: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/paper004", help="output directory")
    parser.add_argument("--figures", default="docs/_generated", help="directory for the figures ('' skips them)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--sweep-seeds", type=int, default=3,
                        help="the first this many seeds train every gamma (selection on validation)")
    parser.add_argument("--gammas", type=float, nargs="+", default=list(DEFAULT_GAMMAS))
    parser.add_argument("--bases", nargs="+", default=list(BASES), choices=BASES)
    parser.add_argument("--layers", type=int, nargs="+", default=list(LAYERS), choices=LAYERS)
    parser.add_argument("--reductions", nargs="+", default=list(REDUCTIONS), choices=REDUCTIONS)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--scale", default="standard", choices=("standard", "none"),
                        help="standardize the features with the training draw's statistics, or keep them raw")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not 1 <= args.sweep_seeds <= len(args.seeds):
        parser.error("--sweep-seeds must be between 1 and the number of --seeds")
    if any(g <= 0 for g in args.gammas):
        parser.error("--gammas must be positive (gamma 0 is the base row)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """
    Run the study.

    :param argv: Command-line arguments.
    :return: The summary (also written to ``OUT/summary.json``).
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("art", "art_latent"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = make_data(args)
    seeds = list(args.seeds)
    sweep_seeds = seeds[: args.sweep_seeds]
    base_specs = [RunSpec(seed) for seed in seeds]
    base_specs += [RunSpec(seed, base=base) for base in args.bases for seed in seeds]
    records = run_all(base_specs, data, args, "normal + base AT")

    lr_configs = [(b, layer, red) for b in args.bases for layer in args.layers for red in args.reductions]
    sweep_specs = [RunSpec(seed, base=b, layer=layer, reduction=red, gamma=g)
                   for b, layer, red in lr_configs for g in args.gammas for seed in sweep_seeds]
    records.update(run_all(sweep_specs, data, args, "AT-LR gamma sweep"))

    chosen: dict[str, float] = {}
    sweep: dict[str, dict[str, float]] = {}
    for b, layer, red in lr_configs:
        config = RunSpec(0, base=b, layer=layer, reduction=red).config
        by_gamma = {}
        for g in args.gammas:
            values = [records[RunSpec(s, base=b, layer=layer, reduction=red, gamma=g).key]["val_rg"]
                      for s in sweep_seeds]
            by_gamma[f"{g:g}"] = float(np.mean(values))
        sweep[config] = by_gamma
        # the highest mean validation R&G; ties go to the smaller gamma
        chosen[config] = max(args.gammas, key=lambda g, bg=by_gamma: (bg[f"{g:g}"], -g))
    final_specs = [RunSpec(seed, base=b, layer=layer, reduction=red, gamma=chosen[RunSpec(0, b, layer, red).config])
                   for b, layer, red in lr_configs for seed in seeds[args.sweep_seeds:]]
    records.update(run_all(final_specs, data, args, "AT-LR at the chosen gamma"))

    rows = summarize(records, chosen, sweep, args)
    summary = {
        "paper": "004 (Khalooei et al., LSA and AT-LR), Table 2",
        "command": "python scripts/reproduce_paper004.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "setup": {
            "data": {"generator": "sklearn.datasets.make_moons", "noise": args.noise,
                     "train": [args.n_train, 0], "val": [args.n_val, 1], "test": [args.n_test, 2],
                     "scale": args.scale,
                     "note": "[n_samples, random_state]; scale 'standard': StandardScaler fitted on the training "
                             "draw; no clipping"},
            "model": "Linear(2,100)-ELU-Linear(100,100)-ELU-Linear(100,100)-ELU-Linear(100,2), cross-entropy",
            "optimizer": f"Adam lr {args.lr}", "batch_size": args.batch_size, "epochs": args.epochs,
            "train_eps": TRAIN_EPS, "eval": "ART FastGradientMethod, true labels", "eval_eps": list(EVAL_EPS),
            "attacks": {"fgsm": "FastGradientMethod(eps=0.3)",
                        "pgd": "ProjectedGradientDescent(eps=0.3, eps_step=0.075, max_iter=7, num_random_init=1)",
                        "fast": "make_fast_attack(eps=0.3, alpha=1.25)",
                        "trades": "TRADES loss (beta 6) on the PGD examples"},
            "seeds": seeds, "sweep_seeds": sweep_seeds, "gammas": list(args.gammas),
            "gamma_selection": "per AT-LR row, highest mean validation R&G over the sweep seeds",
            "threads": torch.get_num_threads(),
        },
        "versions": versions(),
        "chosen_gamma": chosen,
        "rows": rows,
        "runtime_s_this_invocation": time.perf_counter() - started,
        "train_s_all_runs": float(sum(r["train_s"] for r in records.values())),
        "nb_runs": len(records),
    }
    write_tables(rows, out)
    if args.figures:
        summary["figures"] = plot_figures(rows, records, Path(args.figures))
    _write_json(out / "summary.json", summary)
    logger.info("Wrote %s (%d runs, %.0f s).", out / "summary.json", len(records), summary["runtime_s_this_invocation"])
    return summary


if __name__ == "__main__":
    main()
