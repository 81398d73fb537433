"""
Reproduce papers 001 (Bashivan et al., "Adversarial Feature Desensitization", NeurIPS 2021) and 002 (Sankaranarayanan
et al., "Regularizing deep networks using efficient layerwise adversarial training", AAAI 2018) on the full
Fashion-MNIST, in reduced form on CPU: a small CNN trained four ways from the same initial weights (plain training,
PGD adversarial training, AFD, layerwise perturbation training), then attacked.

Setup (``--help`` for every knob):

* data: Fashion-MNIST's official files (60,000 training / 10,000 test images), 6,000 training images held out as a
  stratified validation split (``random_state=0``); pixels in [0, 1], ``clip_values=(0, 1)``. The split does not
  change with the seed; the seed changes the initial weights, the batch order and the attacks' random starts;
* model: :class:`art_latent.models.SmallCNN` (conv 16 - BN - ELU - pool - conv 32 - BN - ELU - pool - fc 64 - ELU -
  fc 10); AFD's embedding is the input of the last linear layer (64 units, the paper's MNIST discriminator width);
* optimizer (every row): SGD, momentum 0.9, weight decay 1e-4 (paper 001), batch 128, learning rate ``--lr``
  divided by 10 after 50% and 80% of the epochs (paper 001's schedule: [50, 80] of 100 epochs); the final weights
  are kept (no early stopping);
* rows: ``plain`` (:class:`~art_latent.trainers.base.LatentTrainer`, cross-entropy), ``layerwise``
  (:class:`~art_latent.trainers.layerwise.LayerwisePerturbationTrainer`, Ours-orig: perturbations after each
  BatchNorm), both ``--clean-epochs`` epochs; ``pgd_at`` (Madry's PGD-AT, cross-entropy on the PGD examples only:
  :class:`~art_latent.trainers.atlr.ATLRTrainer` with ``gamma=0``) and ``afd``
  (:class:`~art_latent.trainers.afd.AFDTrainer`, softplus losses of Alg. 1, spectral-normalized projection
  discriminator), both ``--robust-epochs`` epochs with ART's ``ProjectedGradientDescent`` (L-inf, ``--eps``,
  ``--train-iter`` steps of ``--train-step``, one random start) as the training attack;
* chosen on the **validation** split with the first seed (the other seeds use the choice): the layerwise eps from
  ``--layerwise-eps`` (the paper's 10, 20, 30) by the validation clean accuracy (the paper's claim); AFD's encoder and
  discriminator learning rates from ``--afd-lrs`` by the validation PGD accuracy at ``--eps`` (the paper
  grid-searched its learning rates on a validation split); PGD-AT has nothing to choose (its budget is the threat
  model);
* metrics (test split): clean accuracy (all 10,000 images); on a fixed random ``--n-eval`` test images: white-box PGD
  (ART, 20 steps of eps/8, one random start) and FGSM accuracy at every ``--curve-eps`` budget, their normalized AUC
  (:func:`~art_latent.analysis.representation.robust_accuracy_auc`, paper 001 Table 2), AFD's representation
  sensitivity :math:`\\|E(x) - E(x')\\|_2 / \\|E(x)\\|_2` under that PGD
  (:func:`~art_latent.analysis.representation.representation_sensitivity`, paper 001 Fig. 4), the representation's
  dimensionality (:func:`~art_latent.analysis.representation.representation_dimensionality`, Table A5), AutoAttack's
  standard ensemble at ``--eps`` (:class:`~art_latent.attacks.autoattack.AutoAttackEnsemble`: APGD-CE, APGD-T,
  Square; reduced budgets ``--aa-iter``, ``--aa-targets``, ``--aa-queries``), and transfer (black-box) PGD at
  ``--eps`` from the plain and the PGD-AT model of the same seed to every row (paper 001 Tables 1 and A4). AFD's
  discriminator accuracy is logged every ``--log-every`` (10) training steps (paper 001 Fig. A5).

Run ``OMP_NUM_THREADS=1 python scripts/reproduce_paper001_002.py``. Resumable: a run whose JSON (``OUT/runs``) and
weights (``OUT/weights/*.pt``, git-ignored) exist is not trained again, an evaluation whose JSON exists in
``OUT/eval`` is not run again; the summary, tables and figures are rewritten after every seed, so a partial run
leaves a consistent summary. Order: the first seed of every row (the selection grids included), then the cheap rows
(plain, layerwise) for ``--clean-seeds`` and the other ``--seeds``, then PGD-AT and AFD for the other ``--seeds``:
rerunning the same command with more seeds adds them.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce_paper003 import _fmt, _stratified_split, _write_json, mean_ci  # noqa: E402  (one copy of each)

logger = logging.getLogger(__name__)

ROWS = ("plain", "pgd_at", "afd", "layerwise")
LABELS = {"plain": "Plain (NT)", "pgd_at": "PGD-AT", "afd": "AFD", "layerwise": "Layerwise (Ours-orig)"}
MOMENTUM, WEIGHT_DECAY, BATCH = 0.9, 1e-4, 128
FMNIST_DIR = "/work/shared/data/fashion-mnist"
TRANSFER_SOURCES = ("plain", "pgd_at")

#: Paper 001's MNIST numbers (ResNet18, eps 0.3), quoted: Table 1 (clean, white-box PGD, black-box PGD from the NT
#: model, in %), Table 2 (normalized PGD-Linf AUC), Table A3 (AutoAttack, 100 test images, %).
PAPER001_MNIST = {
    "plain": {"clean": 98.80, "pgd": 0.0, "pgd_bb": 11.25, "auc_pgd": 0.16, "autoattack": 0.0},
    "pgd_at": {"clean": 99.13, "pgd": 95.16, "pgd_bb": 98.41, "auc_pgd": 0.67, "autoattack": 88.0},
    "afd": {"clean": 99.15, "pgd": 96.13, "pgd_bb": 98.31, "auc_pgd": 0.83, "autoattack": 92.0},
}
#: Paper 002, Table 4 (CIFAR-10, VGG, no augmentation; FGS accuracy %, eps on their input scale) and Table 5.
PAPER002_CIFAR10 = {"baseline": [89.4, 67.5, 49.6, 41.2, 37.3, 34.7], "ours_orig": [91.2, 87.95, 83.84, 79.11, 73.66,
                                                                                    68.37],
                    "fgs_eps": [0.0, 0.02, 0.04, 0.06, 0.08, 0.1], "table5_baseline": 89.4, "table5_perturbed": 91.3}


# ---------------------------------------------------------------------------------------------------- data, models


def load_data(args: argparse.Namespace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """
    The training, validation and test splits (fixed, seed-independent).

    :param args: The command-line arguments (``--data``, ``--fmnist-dir``; ``--limit`` truncates every split).
    :return: ``{"train", "val", "test"}`` -> ``(x float32 (n, 1, 28, 28) in [0, 1], y int64)``.
    """
    from art_latent.data import load_dataset

    if args.data == "bundled":  # the package's 3,000 / 1,000 subset (tests)
        splits, n_val = load_dataset("bundled"), 600
    else:
        splits, n_val = load_dataset("fashion-mnist", args.fmnist_dir), 6000
    x_tr, y_tr = splits.x_train.astype(np.float32), splits.y_train.astype(np.int64)
    fit_idx, val_idx = _stratified_split(y_tr, n_val, 0)
    data = {"train": (x_tr[fit_idx], y_tr[fit_idx]), "val": (x_tr[val_idx], y_tr[val_idx]),
            "test": (splits.x_test.astype(np.float32), splits.y_test.astype(np.int64))}
    if args.limit:
        rng = np.random.default_rng(0)
        picks = {k: np.sort(rng.permutation(len(y))[: args.limit]) for k, (_, y) in data.items()}
        data = {k: (x[picks[k]], y[picks[k]]) for k, (x, y) in data.items()}
    return data


def eval_subset(data: dict[str, tuple[np.ndarray, np.ndarray]], split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """
    A fixed random subset of a split (``default_rng(0)``), the same for every row and seed.

    :param data: The splits.
    :param split: ``"val"`` or ``"test"``.
    :param n: Its size (capped at the split's).
    :return: ``(x, y)``.
    """
    x, y = data[split]
    idx = np.sort(np.random.default_rng(0).permutation(len(y))[: min(n, len(y))])
    return x[idx], y[idx]


def build_model(args: argparse.Namespace, seed: int) -> nn.Module:
    """
    The small CNN, seeded (every row of a seed starts from the same weights).

    :param args: ``--channels``, ``--hidden``.
    :param seed: Seeds the initial weights.
    :return: The network (logits).
    """
    from art_latent.models import SmallCNN

    torch.manual_seed(seed)
    return SmallCNN(channels=tuple(args.channels), hidden=args.hidden)


def make_classifier(model: nn.Module, lr: float) -> Any:
    """
    The network as an ART classifier (art_latent's ``LatentClassifier``, inputs in [0, 1]) trained by SGD with
    :data:`MOMENTUM` and :data:`WEIGHT_DECAY`.

    :param model: The network.
    :param lr: The learning rate.
    :return: The classifier.
    """
    from art_latent.estimator import LatentClassifier

    sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return LatentClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                            optimizer=sgd, clip_values=(0.0, 1.0), device_type="cpu")


def pgd(clf: Any, eps: float, steps: int, step: float, seed: int, batch_size: int = 250) -> Any:
    """
    ART's L-inf PGD with one random start; seeds numpy (ART's random start) first.

    :param clf: The attacked classifier.
    :param eps: Budget.
    :param steps: Iterations.
    :param step: Step size.
    :param seed: Seed of the random start.
    :param batch_size: Batch size.
    :return: The attack.
    """
    from art.attacks.evasion import ProjectedGradientDescent

    np.random.seed(seed)
    return ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=step, max_iter=steps, num_random_init=1,
                                    batch_size=batch_size, verbose=False)


def accuracy(clf: Any, x: np.ndarray, y: np.ndarray) -> float:
    """
    Clean accuracy (eval mode).

    :param clf: The classifier.
    :param x: Inputs.
    :param y: Labels.
    :return: Accuracy in [0, 1].
    """
    from art_latent.analysis import accuracy as _accuracy

    clf.model.eval()
    return _accuracy(clf, x, y, batch_size=500)


def eval_pgd(clf: Any, x: np.ndarray, y: np.ndarray, eps: float, seed: int, steps: int = 20) -> np.ndarray:
    """
    White-box PGD examples for evaluation: `steps` steps of eps/8 (2.5 eps in all), one random start.

    :param clf: The classifier.
    :param x: Inputs.
    :param y: Labels.
    :param eps: Budget (0: `x` itself).
    :param seed: Seed of the random start.
    :param steps: Iterations.
    :return: The adversarial inputs.
    """
    if eps == 0:
        return x
    clf.model.eval()
    return pgd(clf, eps, steps, eps * 2.5 / steps, seed).generate(x, np.eye(10, dtype=np.float32)[y])


# ---------------------------------------------------------------------------------------------------------- runs


def run_key(row: str, seed: int, param: Any = None) -> str:
    """
    The file stem of one run.

    :param row: One of :data:`ROWS`.
    :param seed: The seed.
    :param param: The layerwise eps, or AFD's ``(lr_encoder, lr_discriminator)``.
    :return: E.g. ``layerwise_eps20_s0``, ``afd_lrE0.05_lrD0.05_s0``.
    """
    tag = ""
    if row == "layerwise":
        tag = f"_eps{param:g}"
    elif row == "afd":
        tag = f"_lrE{param[0]:g}_lrD{param[1]:g}"
    return f"{row}{tag}_s{seed}"


class StepLog:
    """A step logger for ``fit``: keeps the batch values every ``every_n_steps`` steps (AFD's Fig. A5 curve)."""

    def __init__(self, every_n_steps: int = 10) -> None:
        """
        :param every_n_steps: Logging period in optimizer steps.
        """
        self.every_n_steps = every_n_steps
        self.entries: list[dict[str, float]] = []

    def on_train_step(self, trainer: Any, step: int, logs: dict[str, float]) -> None:
        """
        Keep one step's values.

        :param trainer: The trainer.
        :param step: The global step.
        :param logs: The step's values.
        """
        del trainer
        self.entries.append({"step": float(step), **{k: float(v) for k, v in logs.items()}})

    def __call__(self, trainer: Any, epoch: int, logs: Any) -> None:
        """Nothing at the end of an epoch."""


def make_trainer(row: str, clf: Any, param: Any, seed: int, args: argparse.Namespace) -> Any:
    """
    The trainer of one row.

    :param row: One of :data:`ROWS`.
    :param clf: The classifier.
    :param param: The layerwise eps or AFD's learning rates.
    :param seed: The seed.
    :param args: The command-line arguments.
    :return: The trainer.
    """
    from art_latent.trainers.afd import AFDTrainer
    from art_latent.trainers.atlr import ATLRTrainer
    from art_latent.trainers.base import LatentTrainer
    from art_latent.trainers.layerwise import LayerwisePerturbationTrainer

    if row == "plain":
        return LatentTrainer(clf, seed=seed)
    if row == "layerwise":
        return LayerwisePerturbationTrainer(clf, eps=float(param), variant="orig", seed=seed)
    attack = pgd(clf, args.eps, args.train_iter, args.train_step, seed, batch_size=BATCH)
    if row == "pgd_at":  # gamma 0: cross-entropy on the PGD examples only (the layer term is off)
        return ATLRTrainer(clf, attack, layers=["classifier.fc"], gamma=0.0, validation_attack=None, seed=seed)
    if row == "afd":
        return AFDTrainer(clf, attack, loss="softplus", lr_encoder=float(param[0]), lr_discriminator=float(param[1]),
                          validation_attack=None, seed=seed)
    raise ValueError(f"Unknown row {row!r}.")


def _schedule(clf: Any, epochs: int) -> Any:
    milestones = sorted({max(1, round(0.5 * epochs)), max(1, round(0.8 * epochs))})
    return torch.optim.lr_scheduler.MultiStepLR(clf.optimizer, milestones=milestones, gamma=0.1)


def _binned(entries: list[dict[str, float]], per_bin: int) -> list[dict[str, float]]:
    out = []
    for b in range(0, len(entries), per_bin):
        chunk = entries[b : b + per_bin]
        out.append({k: float(np.mean([e[k] for e in chunk])) for k in chunk[0]})
    return out


def train_run(row: str, seed: int, param: Any, data: dict[str, tuple[np.ndarray, np.ndarray]],
              args: argparse.Namespace) -> dict[str, Any]:
    """
    Train one run and measure it on the validation split; its weights go to ``OUT/weights/<key>.pt``.

    :param row: One of :data:`ROWS`.
    :param seed: The seed.
    :param param: The layerwise eps or AFD's learning rates (else ``None``).
    :param data: The splits.
    :param args: The command-line arguments.
    :return: The run's record (no test number: the test split is for :func:`evaluate_run` only).
    """
    out = Path(args.out)
    key = run_key(row, seed, param)
    model = build_model(args, seed)
    clf = make_classifier(model, args.lr)
    trainer = make_trainer(row, clf, param, seed, args)
    robust = row in ("pgd_at", "afd")
    epochs = args.robust_epochs if robust else args.clean_epochs
    x_val_r, y_val_r = eval_subset(data, "val", args.n_val_robust)
    curve: list[dict[str, float]] = []

    def on_epoch(trainer_: Any, epoch: int, logs: Any) -> None:
        point = {"epoch": float(epoch + 1), "val_acc": accuracy(clf, *data["val"])}
        if robust:  # a cheap PGD (10 steps) on half the robust validation subset, to watch training
            half = len(y_val_r) // 2 or len(y_val_r)
            x_adv = eval_pgd(clf, x_val_r[:half], y_val_r[:half], args.eps, seed, steps=10)
            point["val_pgd10"] = accuracy(clf, x_adv, y_val_r[:half])
        curve.append(point)
        clf.model.train()

    steps = StepLog(args.log_every)
    start = time.perf_counter()
    history = trainer.fit(*data["train"], nb_epochs=epochs, batch_size=BATCH, scheduler=_schedule(clf, epochs),
                          callbacks=[on_epoch, steps], verbose=not args.quiet)
    record: dict[str, Any] = {"row": row, "seed": seed, "key": key, "epochs": epochs,
                              "train_size": len(data["train"][1]), "train_s": time.perf_counter() - start}
    if row == "layerwise":
        record["eps"] = float(param)
    if row == "afd":
        record.update(lr_encoder=float(param[0]), lr_discriminator=float(param[1]))
        record["step_log"] = _binned(steps.entries, 5)  # means over 5 logged steps (50 steps by default)
        record["log_every"] = args.log_every
    record["history"] = [{k: float(v) for k, v in h.items()} for h in history]
    record["val_curve"] = curve
    clf.model.eval()
    (out / "weights").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "weights" / f"{key}.pt")
    start = time.perf_counter()
    record["val_acc"] = accuracy(clf, *data["val"])
    record["val_pgd"] = accuracy(clf, eval_pgd(clf, x_val_r, y_val_r, args.eps, seed), y_val_r)
    record["val_s"] = time.perf_counter() - start
    logger.info("%s: val acc %.4f, val PGD %.4f (%.0f s)", key, record["val_acc"], record["val_pgd"],
                record["train_s"])
    return record


def get_run(row: str, seed: int, param: Any, data: dict, args: argparse.Namespace) -> dict[str, Any] | None:
    """
    The run's record: read from ``OUT/runs/<key>.json`` when it and the weights exist (resume), else trained.

    :param row: Which of :data:`ROWS`.
    :param seed: Seed of the run.
    :param param: Its hyper-parameter (:func:`run_key`).
    :param data: Training, validation and test splits.
    :param args: The parsed command line.
    :return: The record; ``None`` with ``--summary-only`` when it is not finished.
    """
    key = run_key(row, seed, param)
    path = Path(args.out) / "runs" / f"{key}.json"
    if path.exists() and (Path(args.out) / "weights" / f"{key}.pt").exists():
        return json.loads(path.read_text(encoding="utf-8"))
    if args.summary_only:
        return None
    record = train_run(row, seed, param, data, args)
    _write_json(path, record)
    return record


def choose(records: Sequence[dict[str, Any]], row: str) -> Any:
    """
    A row's hyper-parameter from validation numbers only.

    * ``layerwise``: the eps with the highest validation clean accuracy (ties: the smaller eps);
    * ``afd``: the learning rates with the highest validation PGD accuracy (ties: the higher validation clean
      accuracy, then the first in the grid).

    :param records: The row's runs of the selection seed, one per grid point.
    :param row: ``"layerwise"`` or ``"afd"``.
    :return: The eps, or ``(lr_encoder, lr_discriminator)``.
    """
    if row == "layerwise":
        best = max(records, key=lambda r: (r["val_acc"], -r["eps"]))
        return float(best["eps"])
    best = max(records, key=lambda r: (r["val_pgd"], r["val_acc"]))
    return float(best["lr_encoder"]), float(best["lr_discriminator"])


# ---------------------------------------------------------------------------------------------------- evaluation


def load_classifier(key: str, args: argparse.Namespace, seed: int) -> Any:
    """
    A trained run's classifier, in eval mode.

    :param key: The run's key.
    :param args: The command-line arguments.
    :param seed: Its seed (the architecture does not depend on it).
    :return: The classifier.
    """
    model = build_model(args, seed)
    model.load_state_dict(torch.load(Path(args.out) / "weights" / f"{key}.pt", map_location="cpu",
                                     weights_only=True))
    model.eval()
    return make_classifier(model, args.lr)


def evaluate_run(key: str, seed: int, data: dict, args: argparse.Namespace) -> dict[str, Any] | None:
    """
    The white-box evaluation of one trained run on the test split; read from ``OUT/eval/<key>.json`` when present.

    :param key: The run's key.
    :param seed: Its seed (the attacks' random starts).
    :param data: The splits.
    :param args: The command-line arguments.
    :return: Clean accuracy, PGD and FGSM curves and AUCs, representation sensitivity per budget, dimensionality,
             AutoAttack; ``None`` with ``--summary-only`` when it is not finished.
    """
    from art.attacks.evasion import FastGradientMethod

    from art_latent.analysis import representation_dimensionality, representation_sensitivity, robust_accuracy_auc
    from art_latent.attacks.autoattack import AutoAttackEnsemble

    path = Path(args.out) / "eval" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    if args.summary_only:
        return None
    clf = load_classifier(key, args, seed)
    x, y = eval_subset(data, "test", args.n_eval)
    onehot = np.eye(10, dtype=np.float32)[y]
    start = time.perf_counter()
    result: dict[str, Any] = {"key": key, "seed": seed, "n_eval": len(y), "test_acc": accuracy(clf, *data["test"]),
                              "eps": list(args.curve_eps), "pgd": [], "fgsm": [], "sensitivity": []}
    for eps in args.curve_eps:
        x_adv = eval_pgd(clf, x, y, eps, seed)
        result["pgd"].append(accuracy(clf, x_adv, y))
        if eps == 0:
            result["fgsm"].append(result["pgd"][-1])
            result["sensitivity"].append(None)
            continue
        sens = representation_sensitivity(clf, x, x_adv)
        result["sensitivity"].append({k: sens[k] for k in ("median", "mean", "std")})
        result["fgsm"].append(accuracy(clf, FastGradientMethod(clf, eps=eps, batch_size=500).generate(x, onehot), y))
    result["auc_pgd"] = robust_accuracy_auc(result["pgd"], eps=args.curve_eps)
    result["auc_fgsm"] = robust_accuracy_auc(result["fgsm"], eps=args.curve_eps)
    result["dimensionality"] = representation_dimensionality(clf, x, atol=1e-6)
    np.random.seed(seed)
    t0 = time.perf_counter()
    ensemble = AutoAttackEnsemble(clf, eps=args.eps, preset="standard", max_iter=args.aa_iter, targets=args.aa_targets,
                                  square_queries=args.aa_queries, batch_size=250)
    x_aa = ensemble.generate(x, y)
    linf = float(np.abs(x_aa - x).max()) if len(x) else 0.0
    names, counts = np.unique(ensemble.best_attack, return_counts=True)
    result["autoattack"] = {"acc": accuracy(clf, x_aa, y), "eps": args.eps, "max_iter": args.aa_iter,
                            "targets": args.aa_targets, "square_queries": args.aa_queries, "max_linf": linf,
                            "broken_by": {str(k) or "none": int(v) for k, v in zip(names, counts, strict=True)},
                            "time_s": time.perf_counter() - t0}
    result["eval_s"] = time.perf_counter() - start
    logger.info("%s: test acc %.4f, PGD@%g %.4f, AutoAttack %.4f (%.0f s)", key, result["test_acc"], args.eps,
                result["pgd"][list(args.curve_eps).index(args.eps)] if args.eps in args.curve_eps else math.nan,
                result["autoattack"]["acc"], result["eval_s"])
    _write_json(path, result)
    return result


def evaluate_transfer(seed: int, keys: dict[str, str], data: dict, args: argparse.Namespace) -> dict[str, Any] | None:
    """
    Transfer (black-box) PGD at ``--eps`` from the plain and the PGD-AT model of the seed to every row; read from
    ``OUT/eval/transfer_s<seed>.json`` when it covers every row.

    :param seed: The seed.
    :param keys: Row -> the run key of this seed.
    :param data: The splits.
    :param args: The command-line arguments.
    :return: ``{"acc": {source: {row: accuracy}}}`` (a row attacked with its own examples is white-box); ``None``
             with ``--summary-only`` when it is not finished.
    """
    path = Path(args.out) / "eval" / f"transfer_s{seed}.json"
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("keys") == keys:
            return cached
    if args.summary_only:
        return None
    x, y = eval_subset(data, "test", args.n_eval)
    classifiers = {row: load_classifier(key, args, seed) for row, key in keys.items()}
    result: dict[str, Any] = {"seed": seed, "keys": keys, "eps": args.eps, "acc": {}}
    for source in TRANSFER_SOURCES:
        if source not in classifiers:
            continue
        x_adv = eval_pgd(classifiers[source], x, y, args.eps, seed)
        result["acc"][source] = {row: accuracy(clf, x_adv, y) for row, clf in classifiers.items()}
    _write_json(path, result)
    return result


# ---------------------------------------------------------------------------------------------------------- summary


def summarize_rows(evals: dict[str, list[dict]], transfers: list[dict], runs: dict[str, list[dict]],
                   args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """
    Mean and 95% t-interval over seeds of every metric, per row.

    :param evals: Row -> its evaluations (one per seed).
    :param transfers: The transfer evaluations (one per seed with every row).
    :param runs: Row -> its training records at the chosen hyper-parameter (one per seed).
    :param args: The command-line arguments.
    :return: Row -> metric -> ``[mean, low, high]`` (curves: one per budget).
    """
    rows: dict[str, dict[str, Any]] = {}
    for row, recs in evals.items():
        if not recs:
            continue
        n_eps = len(args.curve_eps)
        summary: dict[str, Any] = {
            "seeds": [r["seed"] for r in recs],
            "test_acc": mean_ci([r["test_acc"] for r in recs]),
            "pgd": [mean_ci([r["pgd"][i] for r in recs]) for i in range(n_eps)],
            "fgsm": [mean_ci([r["fgsm"][i] for r in recs]) for i in range(n_eps)],
            "auc_pgd": mean_ci([r["auc_pgd"] for r in recs]),
            "auc_fgsm": mean_ci([r["auc_fgsm"] for r in recs]),
            "autoattack": mean_ci([r["autoattack"]["acc"] for r in recs]),
            "sensitivity_median": [None if recs[0]["sensitivity"][i] is None else
                                   mean_ci([r["sensitivity"][i]["median"] for r in recs]) for i in range(n_eps)],
            "pca_dims": mean_ci([r["dimensionality"]["pca_dims"] for r in recs]),
            "units": mean_ci([r["dimensionality"]["units"] for r in recs]),
            "val_acc": mean_ci([r["val_acc"] for r in runs[row]]),
            "train_s": float(sum(r["train_s"] for r in runs[row])),
        }
        for source in TRANSFER_SOURCES:
            values = [t["acc"][source][row] for t in transfers if source in t["acc"] and row in t["acc"][source]]
            summary[f"transfer_{source}"] = mean_ci(values) if values else [math.nan] * 3
        rows[row] = summary
    return rows


#: The paired comparisons of the claims: (row, baseline).
PAIRS = (("layerwise", "plain"), ("afd", "pgd_at"), ("afd", "plain"), ("pgd_at", "plain"))


def paired_differences(evals: dict[str, list[dict]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """
    Row minus baseline, seed by seed (same initial weights and batch order), mean and 95% t-interval over the seeds
    both have: clean test accuracy, PGD and FGSM accuracy at every budget, PGD AUC, AutoAttack accuracy and the
    median representation sensitivity at ``--eps``.

    :param evals: Row -> its evaluations (one per seed).
    :param args: The command-line arguments.
    :return: ``"row-baseline"`` -> metric -> ``[mean, low, high]`` (and ``"seeds"``).
    """
    at = list(args.curve_eps).index(args.eps) if args.eps in args.curve_eps else None
    metrics: dict[str, Any] = {
        "test_acc": lambda e: e["test_acc"], "auc_pgd": lambda e: e["auc_pgd"],
        "autoattack": lambda e: e["autoattack"]["acc"],
        **{f"pgd@{eps:g}": (lambda e, i=i: e["pgd"][i]) for i, eps in enumerate(args.curve_eps) if eps > 0},
        **{f"fgsm@{eps:g}": (lambda e, i=i: e["fgsm"][i]) for i, eps in enumerate(args.curve_eps) if eps > 0},
    }
    if at is not None:
        metrics[f"sensitivity@{args.eps:g}"] = lambda e: e["sensitivity"][at]["median"]
    out: dict[str, dict[str, Any]] = {}
    for row, base in PAIRS:
        by_seed = {e["seed"]: e for e in evals.get(base, [])}
        both = [(e, by_seed[e["seed"]]) for e in evals.get(row, []) if e["seed"] in by_seed]
        if both:
            out[f"{row}-{base}"] = {"seeds": [e["seed"] for e, _ in both],
                                    **{name: mean_ci([get(e) - get(b) for e, b in both]) for name, get in
                                       metrics.items()}}
    return out


def write_tables(rows: dict[str, dict[str, Any]], args: argparse.Namespace, out: Path) -> None:
    """
    ``table.md`` and ``table.rst``: ours, mean [95% CI] over seeds (no interval with one seed).

    :param rows: The summary rows.
    :param args: The command-line arguments (budgets).
    :param out: Output directory.
    """
    eps_list = list(args.curve_eps)
    shown = [e for e in eps_list if e > 0][:4]
    header = (["Row", "Seeds", "Clean %"] + [f"PGD {e:g} %" for e in shown]
              + ["PGD AUC (x100)", f"AutoAttack {args.eps:g} %", f"Transfer NT {args.eps:g} %",
                 f"Transfer AT {args.eps:g} %", f"Sensitivity {args.eps:g} (median, x100)", "PCA-99 dims"])
    body = []
    at = eps_list.index(args.eps) if args.eps in eps_list else None
    for row, r in rows.items():
        sens = r["sensitivity_median"][at] if at is not None else None
        body.append([LABELS[row], str(len(r["seeds"])), _fmt(r["test_acc"])]
                    + [_fmt(r["pgd"][eps_list.index(e)], digits=1) for e in shown]
                    + [_fmt(r["auc_pgd"], digits=1), _fmt(r["autoattack"], digits=1),
                       _fmt(r["transfer_plain"], digits=1), _fmt(r["transfer_pgd_at"], digits=1),
                       "-" if sens is None else _fmt(sens, digits=1), _fmt(r["pca_dims"], scale=1.0, digits=1)])
    lines = [header, ["---"] * len(header), *body]
    (out / "table.md").write_text("".join(f"| {' | '.join(cells)} |\n" for cells in lines), encoding="utf-8")
    items = ["   * - " + "\n     - ".join(cells) for cells in [header, *body]]
    (out / "table.rst").write_text(".. list-table::\n   :header-rows: 1\n\n" + "\n".join(items) + "\n",
                                   encoding="utf-8")


def _save(figure: Any, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=110, format="png")
    return os.fspath(path)


def plot_figures(rows: dict[str, dict[str, Any]], afd_runs: list[dict], args: argparse.Namespace,
                 figures: Path) -> list[str]:
    """
    ``paper001_002_robustness.png`` (PGD accuracy and representation sensitivity against the budget, per row) and
    ``paper001_002_afd_discriminator.png`` (AFD's discriminator accuracy during training, paper 001 Fig. A5).

    :param rows: The summary rows.
    :param afd_runs: The AFD training records (grid and seeds).
    :param args: The command-line arguments.
    :param figures: The output directory.
    :return: The files written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figures.mkdir(parents=True, exist_ok=True)
    eps = np.array(args.curve_eps)
    figure = Figure(figsize=(11, 4))
    FigureCanvasAgg(figure)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for row, r in rows.items():
        label = f"{LABELS[row]} ({len(r['seeds'])} seed{'s' if len(r['seeds']) > 1 else ''})"
        left.plot(eps, [100 * m[0] for m in r["pgd"]], "-o", label=label)
        sens = [(e, m[0]) for e, m in zip(eps, r["sensitivity_median"], strict=True) if m is not None]
        right.plot([e for e, _ in sens], [v for _, v in sens], "-o", label=label)
    left.set_xlabel("PGD L-inf budget eps")
    left.set_ylabel("test accuracy under white-box PGD (%)")
    right.set_xlabel("PGD L-inf budget eps")
    right.set_ylabel("median ||E(x) - E(x')|| / ||E(x)||")
    right.set_yscale("log")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    written = [_save(figure, figures / "paper001_002_robustness.png")]
    if afd_runs:
        figure = Figure(figsize=(11, 4))
        FigureCanvasAgg(figure)
        for k, run in enumerate(afd_runs):
            axes = figure.add_subplot(1, len(afd_runs), k + 1)
            steps = [e["step"] for e in run["step_log"]]
            axes.plot(steps, [e["disc_acc_clean"] for e in run["step_log"]], label="clean called clean")
            axes.plot(steps, [e["disc_acc_adv"] for e in run["step_log"]], label="PGD called perturbed")
            axes.plot(steps, [(e["disc_acc_clean"] + e["disc_acc_adv"]) / 2 for e in run["step_log"]], "k",
                      label="mean")
            axes.axhline(0.5, color="grey", lw=0.8, ls="--")
            axes.set_ylim(0, 1.02)
            axes.set_xlabel("training step")
            axes.set_title(f"lr_E {run['lr_encoder']:g}, lr_Da {run['lr_discriminator']:g}, seed {run['seed']}",
                           fontsize=8)
            if k == 0:
                axes.set_ylabel(f"discriminator accuracy ({5 * run['log_every']}-step means)")
                axes.legend(fontsize=7)
            axes.grid(alpha=0.3)
        written.append(_save(figure, figures / "paper001_002_afd_discriminator.png"))
    return written


def versions() -> dict[str, str]:
    """The library versions of this run."""
    import importlib

    found = {"python": platform.python_version()}
    for name in ("torch", "art", "numpy", "scipy", "sklearn", "matplotlib"):
        found[name] = str(importlib.import_module(name).__version__)
    return found


def write_summary(state: dict[str, Any], args: argparse.Namespace, argv: Sequence[str] | None,
                  started: float) -> dict[str, Any]:
    """
    ``OUT/summary.json``, the tables and the figures, from what is finished so far.

    :param state: ``selection``, ``evals`` (row -> list), ``transfers``, ``runs`` (row -> list at the choice).
    :param args: The command-line arguments.
    :param argv: The command line (for the record).
    :param started: ``time.perf_counter()`` at the start of this invocation.
    :return: The summary.
    """
    out = Path(args.out)
    rows = summarize_rows(state["evals"], state["transfers"], state["runs"], args)
    all_runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "runs").glob("*.json"))]
    all_evals = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "eval").glob("*.json"))]
    summary = {
        "papers": "001 (Bashivan et al., AFD, NeurIPS 2021) and 002 (Sankaranarayanan et al., layerwise "
                  "perturbation training, AAAI 2018)",
        "command": "python scripts/reproduce_paper001_002.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "setup": {
            "data": (f"{args.data}: official 60,000/10,000, 6,000 of train as validation (stratified, random_state 0)"
                     if args.data == "fashion-mnist" else "bundled subset 3,000/1,000, 600 of train as validation"),
            "limit": args.limit,
            "model": f"SmallCNN channels {list(args.channels)}, hidden {args.hidden} (conv-BN-ELU-pool blocks, "
                     "fc-ELU, logits)",
            "optimizer": f"SGD lr {args.lr} momentum {MOMENTUM} wd {WEIGHT_DECAY}, batch {BATCH}, lr x0.1 after "
                         "50% and 80% of the epochs, final weights",
            "epochs": {"plain/layerwise": args.clean_epochs, "pgd_at/afd": args.robust_epochs},
            "train_attack": f"ART ProjectedGradientDescent Linf eps {args.eps}, {args.train_iter} steps of "
                            f"{args.train_step}, 1 random start",
            "pgd_at": "ATLRTrainer gamma 0: cross-entropy on the PGD examples only",
            "afd": "AFDTrainer softplus losses, ProjectionDiscriminator width = embedding (hidden) size, "
                   f"(lr_E, lr_Da) grid {args.afd_lrs}",
            "layerwise": f"LayerwisePerturbationTrainer variant orig, sites after each BatchNorm, eps grid "
                         f"{args.layerwise_eps}",
            "selection": f"first seed, validation split: layerwise eps by clean accuracy, AFD lrs by PGD accuracy "
                         f"(eps {args.eps}, 20 steps, {args.n_val_robust} validation images)",
            "eval": f"{args.n_eval} fixed random test images (all {len(state['test_y'])} for clean accuracy); PGD "
                    f"20 steps of eps/8, 1 random start, budgets {list(args.curve_eps)}; FGSM; AutoAttack standard "
                    f"(APGD-CE, APGD-T, Square) eps {args.eps}, {args.aa_iter} iterations, {args.aa_targets} "
                    f"targets, {args.aa_queries} Square queries; transfer PGD from the seed's plain and PGD-AT "
                    "models",
            "seeds": list(args.seeds), "clean_seeds": list(args.clean_seeds),
            "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "versions": versions(),
        "selection": state["selection"],
        "rows": rows,
        "paired": paired_differences(state["evals"], args),
        "transfer": state["transfers"],
        "paper001_mnist": PAPER001_MNIST,
        "paper002_cifar10": PAPER002_CIFAR10,
        "runtime_s_this_invocation": time.perf_counter() - started,
        "train_s_all_runs": float(sum(r["train_s"] for r in all_runs)),
        "eval_s_all_runs": float(sum(e.get("eval_s", 0.0) for e in all_evals)),
        "nb_runs": len(all_runs),
    }
    if rows:
        write_tables(rows, args, out)
        if args.figures:
            afd_runs = [r for r in all_runs if r["row"] == "afd" and r.get("step_log")]
            summary["figures"] = plot_figures(rows, afd_runs, args, Path(args.figures))
    _write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The command line.

    :param argv: Arguments (default: ``sys.argv[1:]``).
    :return: The parsed arguments.
    """

    def lr_pair(text: str) -> tuple[float, float]:
        encoder, _, discriminator = text.partition(":")
        try:
            return float(encoder), float(discriminator)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected lr_E:lr_Da, e.g. 0.05:0.05, got {text!r}") from error

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/paper001_002", help="output directory")
    parser.add_argument("--figures", default="docs/_generated", help="directory for the figures ('' skips them)")
    parser.add_argument("--data", default="fashion-mnist", choices=("fashion-mnist", "bundled"))
    parser.add_argument("--fmnist-dir", default=FMNIST_DIR, help="directory of the Fashion-MNIST files")
    # flag: (type, nargs, default, help), two to a line where they fit
    options: dict[str, tuple[Any, str | None, Any, str]] = {
        "--seeds": (int, "+", [0, 1, 2], "seeds of every row"),
        "--clean-seeds": (int, "*", [1, 2, 3, 4], "extra seeds of plain and layerwise"),
        "--channels": (int, "+", [16, 32], "SmallCNN conv channels"), "--hidden": (int, None, 64, "its hidden units"),
        "--lr": (float, None, 0.05, "SGD learning rate (AFD: the classification step's)"),
        "--clean-epochs": (int, None, 15, "plain, layerwise"), "--robust-epochs": (int, None, 10, "PGD-AT, AFD"),
        "--eps": (float, None, 0.1, "L-inf threat model (training and AutoAttack)"),
        "--train-iter": (int, None, 5, "training PGD steps"), "--train-step": (float, None, 0.025, "their size"),
        "--layerwise-eps": (float, "+", [10.0, 20.0, 30.0], "layerwise eps grid (the paper's)"),
        "--afd-lrs": (lr_pair, "+", [(0.05, 0.05), (0.01, 0.05)], "AFD (lr_encoder:lr_discriminator) grid"),
        "--curve-eps": (float, "+", [0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3], "PGD/FGSM budgets, from 0 up"),
        "--n-eval": (int, None, 1000, "test images attacked"), "--n-val-robust": (int, None, 1000, "validation ones"),
        "--aa-iter": (int, None, 100, "AutoAttack APGD steps"), "--aa-targets": (int, None, 3, "APGD-T targets"),
        "--aa-queries": (int, None, 1000, "Square queries"), "--log-every": (int, None, 10, "AFD step-log period"),
    }
    for flag, (kind, nargs, default, text) in options.items():
        parser.add_argument(flag, type=kind, nargs=nargs, default=default, help=f"{text} (default: {default})")
    parser.add_argument("--limit", type=int, default=0, help="truncate every split (tests)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--summary-only", action="store_true",
                        help="train and evaluate nothing: rebuild the summary, tables and figures from the finished "
                             "runs (safe while another invocation runs)")
    args = parser.parse_args(argv)
    if args.curve_eps[0] != 0 or any(b <= a for a, b in zip(args.curve_eps, args.curve_eps[1:], strict=False)):
        parser.error("--curve-eps must start at 0 and increase")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """
    Train, choose, evaluate and summarize, skipping what is finished (see the module's docstring).

    :param argv: The command line without the program name (default: ``sys.argv[1:]``).
    :return: The summary, as written to ``OUT/summary.json``.
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("art").setLevel(logging.WARNING)
    logging.getLogger("art_latent").setLevel(logging.WARNING)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = load_data(args)
    first, later = args.seeds[0], list(args.seeds[1:])
    cheap_rows, robust_rows = ("plain", "layerwise"), ("pgd_at", "afd")
    cheap = sorted(set(args.clean_seeds) | set(later))
    cheap = [s for s in cheap if s != first]
    plan = ([(first, ROWS)] + [(s, cheap_rows) for s in cheap] + [(s, robust_rows) for s in later])
    nb_runs = (len(ROWS) - 2 + len(args.layerwise_eps) + len(args.afd_lrs)) + 2 * len(cheap) + 2 * len(later)
    bar = tqdm(total=nb_runs, desc="paper 001/002 runs", disable=args.quiet)
    state: dict[str, Any] = {"selection": {}, "evals": {r: [] for r in ROWS}, "runs": {r: [] for r in ROWS},
                             "transfers": [], "test_y": data["test"][1]}
    summary: dict[str, Any] = {}
    chosen: dict[str, Any] = {"plain": None, "pgd_at": None}
    keys_by_seed: dict[int, dict[str, str]] = {}
    for seed, rows in plan:
        keys = keys_by_seed.setdefault(seed, {})
        for row in rows:
            record: dict[str, Any] | None = None
            if seed == first and row in ("layerwise", "afd"):
                grid = args.layerwise_eps if row == "layerwise" else args.afd_lrs
                candidates = []
                for param in grid:
                    candidate = get_run(row, seed, param, data, args)
                    candidates.extend([] if candidate is None else [candidate])
                    bar.update(1)
                if len(candidates) < len(grid):  # --summary-only before the grid is finished: no choice yet
                    continue
                chosen[row] = choose(candidates, row)
                state["selection"][row] = {
                    "chosen": chosen[row], "seed": seed,
                    "candidates": [{k: c.get(k) for k in ("key", "eps", "lr_encoder", "lr_discriminator", "val_acc",
                                                          "val_pgd")} for c in candidates]}
                logger.info("%s: %s chosen on validation", row, chosen[row])
                record = next(c for c in candidates if c["key"] == run_key(row, seed, chosen[row]))
            elif row in chosen:
                record = get_run(row, seed, chosen[row], data, args)
                bar.update(1)
            if record is not None:
                keys[row] = record["key"]
                state["runs"][row].append(record)
        for row in rows:
            evaluation = evaluate_run(keys[row], seed, data, args) if row in keys else None
            if evaluation is None:  # --summary-only: trained but not evaluated yet
                missing = keys.pop(row, None)
                state["runs"][row] = [r for r in state["runs"][row] if r["key"] != missing]
            else:
                state["evals"][row].append(evaluation)
        if set(keys) == set(ROWS):  # every row of the seed trained: the transfer attacks
            transfer = evaluate_transfer(seed, {r: keys[r] for r in ROWS}, data, args)
            state["transfers"].extend([] if transfer is None else [transfer])
        summary = write_summary(state, args, argv, started)
        logger.info("seed %d: %s finished; summary written", seed, ", ".join(sorted(keys)) or "nothing")
    bar.close()
    logger.info("Wrote %s (%d runs, %.0f s).", out / "summary.json", summary["nb_runs"],
                summary["runtime_s_this_invocation"])
    return summary


if __name__ == "__main__":
    main()
