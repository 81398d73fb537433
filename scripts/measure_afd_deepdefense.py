"""
Measure Deep Defense and AFD against plain fine-tuning on the bundled Fashion-MNIST subset.

One SmallCNN is pre-trained (NAdam, fixed seed); every method then fine-tunes a copy of the same weights:

* Deep Defense vs plain fine-tuning (same optimizer, epochs and batches): clean test accuracy, rho_2 (DeepFool,
  50 steps) on the test set, eps_ref of the Deep Defense model and the FGSM accuracy of both at 0.2/0.5/1.0 eps_ref;
* AFD (PGD-Linf training attack) vs plain fine-tuning: representation sensitivity of the embedding (input of the
  final linear layer) under a white-box PGD-Linf attack on each model, PGD robust accuracy, AUC of the PGD accuracy
  over budgets, and the representation dimensionality.

Run with ``OMP_NUM_THREADS=1 python scripts/measure_afd_deepdefense.py`` (a few minutes on one CPU core); the
numbers are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch
from art.attacks.evasion import ProjectedGradientDescent

from art_latent.analysis.deepfool_metrics import accuracy_at_eps_ref, eps_ref, rho2
from art_latent.analysis.metrics import accuracy
from art_latent.analysis.representation import (
    representation_dimensionality,
    representation_sensitivity,
    robust_accuracy_auc,
)
from art_latent.data import load_dataset
from art_latent.estimator import LatentClassifier
from art_latent.models import SmallCNN
from art_latent.perturbations import TorchGradientAttack
from art_latent.trainers.afd import AFDTrainer
from art_latent.trainers.base import LatentTrainer
from art_latent.trainers.deep_defense import DeepDefenseTrainer

logger = logging.getLogger(__name__)


def make_classifier(weights: dict[str, torch.Tensor] | None, optimizer: str, lr: float) -> LatentClassifier:
    model = SmallCNN()
    if weights is not None:
        model.load_state_dict(weights)
    if optimizer == "nadam":
        opt = torch.optim.NAdam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10, optimizer=opt,
                            clip_values=(0.0, 1.0), device_type="cpu")


def pgd(clf: LatentClassifier, eps: float, steps: int) -> TorchGradientAttack:
    """ART's PGD-Linf semantics (no random start, so the evaluation is deterministic), on device."""
    return TorchGradientAttack(clf, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps)


def pgd_curve(clf: LatentClassifier, x: np.ndarray, y: np.ndarray, budgets: list[float], steps: int) -> list[float]:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    results = []
    for eps in budgets:
        x_adv = xt if eps == 0 else pgd(clf, eps, steps).generate(xt, yt)
        results.append(accuracy(clf, x_adv.numpy(), y))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--dd-epochs", type=int, default=3)
    parser.add_argument("--dd-lr", type=float, default=2e-3)
    parser.add_argument("--dd-lam", type=float, default=15.0)
    parser.add_argument("--dd-c", type=float, default=25.0)
    parser.add_argument("--afd-epochs", type=int, default=3)
    parser.add_argument("--afd-lr", type=float, default=1e-2)
    parser.add_argument("--afd-eps", type=float, default=0.1)
    parser.add_argument("--afd-lr-ratio", type=float, default=1.0,
                        help="encoder and discriminator learning rates as multiples of --afd-lr (the authors: 5)")
    parser.add_argument("--n-eval", type=int, default=500, help="test samples for rho_2 and the PGD metrics")
    parser.add_argument("--skip", choices=["none", "dd", "afd"], default="none")
    args = parser.parse_args()

    started = time.perf_counter()
    data = load_dataset("bundled")
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    x_eval, y_eval = x_test[: args.n_eval], y_test[: args.n_eval]
    torch.manual_seed(args.seed)
    base = make_classifier(None, "nadam", 1e-3)
    LatentTrainer(base, seed=args.seed).fit(x_train, y_train, nb_epochs=args.pretrain_epochs, batch_size=64,
                                            verbose=False)
    weights = {k: v.clone() for k, v in base.model.state_dict().items()}
    report: dict[str, object] = {
        "data": f"bundled Fashion-MNIST subset ({len(x_train)} train / {len(x_test)} test)",
        "model": "SmallCNN (conv16-conv32, BN, ELU, fc64)",
        "seed": args.seed,
        "pretrain": {"epochs": args.pretrain_epochs, "optimizer": "NAdam lr 1e-3", "batch_size": 64,
                     "test_accuracy": accuracy(base, x_test, y_test)},
    }

    if args.skip != "dd":
        dd: dict[str, dict[str, float]] = {}
        classifiers = {}
        for name in ("plain", "deep_defense"):
            clf = make_classifier(weights, "sgd", args.dd_lr)
            trainer = (LatentTrainer(clf, seed=args.seed) if name == "plain"
                       else DeepDefenseTrainer(clf, lam=args.dd_lam, c=args.dd_c, d=5.0, max_iter=5, seed=args.seed))
            t0 = time.perf_counter()
            history = trainer.fit(x_train, y_train, nb_epochs=args.dd_epochs, batch_size=64, verbose=False)
            dd[name] = {"train_time_s": time.perf_counter() - t0, "test_accuracy": accuracy(clf, x_test, y_test),
                        "rho2": rho2(clf, x_eval, max_iter=50)}
            if name == "deep_defense":
                dd[name]["train_ratio_last_epoch"] = history[-1]["ratio"]
            classifiers[name] = clf
        reference = eps_ref(classifiers["deep_defense"], x_test, y_test)
        for name, clf in classifiers.items():
            fractions = accuracy_at_eps_ref(clf, x_test, y_test, reference)
            dd[name].update({f"acc@{f}eps_ref": acc for f, acc in fractions.items()})
        report["deep_defense"] = {
            "setting": f"fine-tune {args.dd_epochs} epochs, SGD momentum 0.9 lr {args.dd_lr}, batch 64; "
                       f"lam={args.dd_lam}, c={args.dd_c}, d=5, DeepFool 5 steps (train) / 50 steps (rho_2 on "
                       f"{len(x_eval)} test images)",
            "eps_ref": reference,
            **dd,
        }

    if args.skip != "afd":
        afd: dict[str, dict[str, object]] = {}
        budgets = [0.0, 0.025, 0.05, 0.1, 0.15, 0.2]
        for name in ("plain", "afd"):
            clf = make_classifier(weights, "sgd", args.afd_lr)
            torch.manual_seed(args.seed)  # the discriminator's initialisation
            if name == "plain":
                trainer = LatentTrainer(clf, seed=args.seed)
            else:
                attack = ProjectedGradientDescent(clf, eps=args.afd_eps, eps_step=args.afd_eps / 4, max_iter=10,
                                                  num_random_init=1, verbose=False)
                lr = args.afd_lr_ratio * args.afd_lr
                trainer = AFDTrainer(clf, attack, loss="softplus", lr_encoder=lr, lr_discriminator=lr, seed=args.seed,
                                     validation_attack=None)
            t0 = time.perf_counter()
            history = trainer.fit(x_train, y_train, nb_epochs=args.afd_epochs, batch_size=64, verbose=False)
            train_time = time.perf_counter() - t0
            x_adv = pgd(clf, args.afd_eps, 20).generate(torch.from_numpy(x_eval), torch.from_numpy(y_eval)).numpy()
            sensitivity = representation_sensitivity(clf, x_eval, x_adv)
            curve = pgd_curve(clf, x_eval, y_eval, budgets, steps=20)
            afd[name] = {
                "train_time_s": train_time,
                "test_accuracy": accuracy(clf, x_test, y_test),
                "sensitivity_median": sensitivity["median"],
                "sensitivity_mean": sensitivity["mean"],
                "pgd_accuracy": dict(zip(budgets, curve, strict=True)),
                "pgd_auc": robust_accuracy_auc(curve, budgets),
                **representation_dimensionality(clf, x_eval),
            }
            if name == "afd":
                afd[name]["history_last_epoch"] = {k: history[-1][k] for k in (
                    "ce", "discriminator_loss", "encoder_loss", "disc_acc_clean", "disc_acc_adv")}
        report["afd"] = {
            "setting": f"fine-tune {args.afd_epochs} epochs, SGD momentum 0.9 lr {args.afd_lr} (AFD: encoder and "
                       f"discriminator lr {args.afd_lr_ratio * args.afd_lr}), batch 64; AFD attack ART PGD-Linf eps "
                       f"{args.afd_eps}, "
                       f"10 steps, random start; evaluation: white-box PGD-Linf 20 steps on {len(x_eval)} test "
                       "images",
            **afd,
        }
    report["total_time_s"] = time.perf_counter() - started
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
