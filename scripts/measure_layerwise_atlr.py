"""
Measure layerwise perturbation training (paper 002) and AT-LR (paper 004) on the bundled Fashion-MNIST subset
(3,000 training / 1,000 test images, SmallCNN, CPU).

Part 1, layerwise training vs plain training, both from the same random initialisation per seed (SGD with Nesterov
momentum as in paper 002): clean test accuracy after ``--lw-epochs`` epochs, FGSM accuracy at small budgets, seconds
per epoch, and the perturbation size relative to the activations' standard deviation.

Part 2, AT-LR vs its base adversarial training: per seed, one SmallCNN is pre-trained without attack (Adam); the
Layer Sustainability Analysis of that model (PGD-Linf, eps 0.1, on ``--lsa-samples`` training images) selects the
most vulnerable layers (paper 004, Algorithm 2); then AT (``gamma=0``) and AT-LR (``gamma``, the selected layers)
fine-tune copies of the pre-trained weights with the same seed, batches and attack (Algorithm 3). Both are evaluated
on the test set with FGSM (the paper's tables) and PGD-10 (no random start) at the budgets 0, 1/30, 2/30, 0.1: the
MNIST list {0, 0.1, 0.2, 0.3} of paper 004 scaled by 1/3 for Fashion-MNIST (whose usual training budget is 0.1
against MNIST's 0.3); the R&G score is the sum of these accuracies in percent. The relative error at the regularized
layers (PGD, test set) is reported for both models (the paper's Fig. 5).

Run with ``OMP_NUM_THREADS=1 python scripts/measure_layerwise_atlr.py --out DIR`` (about 15 minutes on one core with
the defaults); writes ``DIR/measurements.json``, ``DIR/summary.md`` and the LSA plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_latent.analysis.lsa import LayerSustainabilityAnalysis, rg_score  # noqa: E402
from art_latent.data import load_dataset  # noqa: E402
from art_latent.estimator import LatentClassifier  # noqa: E402
from art_latent.models import SmallCNN  # noqa: E402
from art_latent.perturbations import TorchGradientAttack  # noqa: E402
from art_latent.trainers.atlr import ATLRTrainer, make_fast_attack  # noqa: E402
from art_latent.trainers.base import LatentTrainer  # noqa: E402
from art_latent.trainers.layerwise import LayerwisePerturbationTrainer  # noqa: E402

logger = logging.getLogger(__name__)

BUDGETS = [0.0, 1 / 30, 2 / 30, 0.1]
TRAIN_EPS = 0.1


def make_classifier(weights: dict[str, torch.Tensor] | None, optimizer: str, lr: float, seed: int) -> LatentClassifier:
    torch.manual_seed(seed)
    model = SmallCNN()
    if weights is not None:
        model.load_state_dict(weights)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10, optimizer=opt,
                            clip_values=(0.0, 1.0), device_type="cpu")


def accuracy_under(clf: LatentClassifier, x: torch.Tensor, y: torch.Tensor, attack: str, eps: float) -> float:
    model = clf.model
    model.eval()
    correct = 0
    for begin in range(0, len(y), 500):
        xb, yb = x[begin : begin + 500], y[begin : begin + 500]
        if eps > 0:
            steps = 1 if attack == "fgsm" else 10
            step = eps if attack == "fgsm" else eps / 4
            xb = TorchGradientAttack(clf, eps=eps, eps_step=step, max_iter=steps).generate(xb, yb)
        with torch.no_grad():
            correct += int((model(xb).argmax(1) == yb).sum())
    return correct / len(y)


def curves(clf: LatentClassifier, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for attack in ("fgsm", "pgd"):
        accs = [accuracy_under(clf, x, y, attack, eps) for eps in BUDGETS]
        result[attack] = accs
        result[f"rg_{attack}"] = rg_score(accs)
    return result


def base_attack(name: str, clf: LatentClassifier) -> tuple[Any, str]:
    pgd = ProjectedGradientDescent(clf, eps=TRAIN_EPS, eps_step=TRAIN_EPS / 4, max_iter=7, num_random_init=1,
                                   verbose=False)
    if name == "fgsm":
        return FastGradientMethod(clf, eps=TRAIN_EPS), "ce"
    if name == "fast":
        return make_fast_attack(clf, TRAIN_EPS), "ce"
    if name == "pgd":
        return pgd, "ce"
    if name == "trades":
        return pgd, "trades"
    raise ValueError(f"Unknown base {name!r}.")


def layerwise_part(args: argparse.Namespace, data: Any, x_test: torch.Tensor, y_test: torch.Tensor) -> dict:
    runs: dict[str, list[dict[str, Any]]] = {}
    methods = ["plain", *args.lw_runs]
    for seed in args.seeds:
        for method in methods:
            clf = make_classifier(None, "sgd", args.lw_lr, seed)
            if method == "plain":
                trainer = LatentTrainer(clf, seed=seed)
            else:
                variant, eps = method.split(":")
                trainer = LayerwisePerturbationTrainer(clf, eps=float(eps), variant=variant, seed=seed)
            history = trainer.fit(data.x_train, data.y_train, nb_epochs=args.lw_epochs, batch_size=args.batch_size,
                                  verbose=False)
            entry = {
                "seed": seed,
                "clean": accuracy_under(clf, x_test, y_test, "fgsm", 0.0),
                "fgsm_0.02": accuracy_under(clf, x_test, y_test, "fgsm", 0.02),
                "fgsm_0.05": accuracy_under(clf, x_test, y_test, "fgsm", 0.05),
                "train_accuracy": history[-1]["accuracy"],
                "s_per_epoch": float(np.median([h["time_s"] for h in history])),
                "rel_size": {k[len("rel_size/"):]: v for k, v in history[-1].items() if k.startswith("rel_size/")},
            }
            runs.setdefault(method, []).append(entry)
            print(f"[layerwise] seed {seed} {method}: clean {entry['clean']:.3f} FGSM(0.02) {entry['fgsm_0.02']:.3f} "
                  f"{entry['s_per_epoch']:.2f} s/epoch {entry['rel_size']}", flush=True)
    return runs


def atlr_part(args: argparse.Namespace, data: Any, x_test: torch.Tensor, y_test: torch.Tensor, out: Path) -> dict:
    runs: dict[str, Any] = {"lsa": [], "results": {}}
    for seed in args.seeds:
        clf = make_classifier(None, "adam", 1e-3, seed)
        LatentTrainer(clf, seed=seed).fit(data.x_train, data.y_train, nb_epochs=args.pretrain_epochs,
                                          batch_size=args.batch_size, verbose=False)
        pretrained = {k: v.detach().clone() for k, v in clf.model.state_dict().items()}
        pre_curves = curves(clf, x_test, y_test)
        rng = np.random.default_rng(seed)
        index = rng.permutation(len(data.x_train))[: args.lsa_samples]
        x_lsa, y_lsa = data.x_train[index], data.y_train[index]
        lsa_attack = ProjectedGradientDescent(clf, eps=TRAIN_EPS, eps_step=TRAIN_EPS / 4, max_iter=7,
                                              num_random_init=1, verbose=False)
        torch.manual_seed(seed)
        lsa = LayerSustainabilityAnalysis(clf).run(x_lsa, attack={"PGD(0.1)": lsa_attack},
                                                   noise=["gaussian", "salt", "pepper", "speckle"], y=y_lsa)
        if seed == args.seeds[0]:
            lsa.plot(out / "lsa_pretrained.png", title=f"LSA of the pre-trained SmallCNN (seed {seed})", eta=args.eta)
        runs["lsa"].append({"seed": seed, **lsa.to_dict(eta=args.eta, samples=False),
                            "pretrained": pre_curves})
        print(f"[lsa] seed {seed}: means {np.round(lsa.layer_mean(), 4).tolist()} mu {lsa.mu():.4f} "
              f"sigma {lsa.sigma():.4f} MVL(eta={args.eta}) {lsa.most_vulnerable(args.eta)}", flush=True)
        configs = [(0.0, "lsa")] + [(gamma, spec) for gamma in args.gammas for spec in args.lr_layers]
        for base in args.bases:
            for gamma, spec in configs:
                name = f"AT-{base.upper()}"
                if gamma > 0:
                    name += f"-LR(gamma={gamma:g})" if spec == "lsa" else f"-LR[{spec}](gamma={gamma:g})"
                clf = make_classifier(pretrained, "adam", args.ft_lr, seed)
                attack, loss = base_attack(base, clf)
                lsa_attack = ProjectedGradientDescent(clf, eps=TRAIN_EPS, eps_step=TRAIN_EPS / 4, max_iter=7,
                                                      num_random_init=1, verbose=False)
                layers = "lsa" if spec == "lsa" else spec.split(",")
                trainer = ATLRTrainer(clf, attack, layers=layers, gamma=gamma, eta=args.eta, base=loss,
                                      lsa_attack=lsa_attack, validation_attack=None, seed=seed)
                if gamma > 0 and spec == "lsa":
                    # The analysis of the starting model (Algorithm 2) on the same samples as above; fit re-seeds.
                    trainer.select_layers(x_lsa, y_lsa)
                started = time.perf_counter()
                history = trainer.fit(data.x_train, data.y_train, nb_epochs=args.ft_epochs,
                                      batch_size=args.batch_size, verbose=False)
                seconds = time.perf_counter() - started
                entry = {"seed": seed, "layers": trainer.layers, "s_per_epoch": seconds / args.ft_epochs,
                         "train_adv_accuracy": history[-1]["adv_accuracy"], **curves(clf, x_test, y_test)}
                runs["results"].setdefault(name, []).append(entry)
                print(f"[atlr] seed {seed} {name} layers {trainer.layers}: FGSM {np.round(entry['fgsm'], 3).tolist()}"
                      f" R&G {entry['rg_fgsm']:.1f}; PGD {np.round(entry['pgd'], 3).tolist()} R&G "
                      f"{entry['rg_pgd']:.1f} ({entry['s_per_epoch']:.1f} s/epoch)", flush=True)
                entry["_model"] = {k: v.detach().clone() for k, v in clf.model.state_dict().items()}
        # Fig. 5: relative error of the fine-tuned models at the layers AT-LR regularized (PGD on the test set)
        for entries in runs["results"].values():
            entry = entries[-1]
            if "_model" not in entry:
                continue
            clf = make_classifier(entry.pop("_model"), "adam", 1e-3, seed)
            torch.manual_seed(seed)
            result = LayerSustainabilityAnalysis(clf).run(
                data.x_test[:500], y=data.y_test[:500],
                attack={"pgd": ProjectedGradientDescent(clf, eps=TRAIN_EPS, eps_step=TRAIN_EPS / 4, max_iter=7,
                                                        num_random_init=1, verbose=False)},
            )
            entry["lsa_test_mean"] = dict(zip(result.layers, result.layer_mean().tolist(), strict=True))
    return runs


def summarize(measurements: dict[str, Any]) -> str:
    lines = []
    if "layerwise" in measurements:
        lines += ["## Layerwise perturbation training vs plain training", "",
                  "| method | clean acc | FGSM 0.02 | FGSM 0.05 | train acc | s/epoch |", "|---|---|---|---|---|---|"]
        for method, runs in measurements["layerwise"].items():
            cells = []
            for key in ("clean", "fgsm_0.02", "fgsm_0.05", "train_accuracy", "s_per_epoch"):
                values = np.array([r[key] for r in runs])
                cells.append(f"{values.mean():.3f} +- {values.std():.3f}" if len(values) > 1 else f"{values[0]:.3f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if "atlr" in measurements:
        eps_text = ", ".join(f"{e:.4g}" for e in BUDGETS)
        lines += [f"## AT-LR vs base AT (budgets {eps_text})", "",
                  "| training | layers | FGSM accuracies | R&G FGSM | PGD-10 accuracies | R&G PGD | s/epoch |",
                  "|---|---|---|---|---|---|---|"]
        for name, runs in measurements["atlr"]["results"].items():
            fgsm = np.mean([r["fgsm"] for r in runs], axis=0)
            pgd = np.mean([r["pgd"] for r in runs], axis=0)
            rg_f = np.array([r["rg_fgsm"] for r in runs])
            rg_p = np.array([r["rg_pgd"] for r in runs])
            layers = sorted({",".join(r["layers"] or ["-"]) for r in runs})
            lines.append(f"| {name} | {'; '.join(layers)} | {np.round(fgsm, 3).tolist()} | {rg_f.mean():.1f} +- "
                         f"{rg_f.std():.1f} | {np.round(pgd, 3).tolist()} | {rg_p.mean():.1f} +- {rg_p.std():.1f} | "
                         f"{np.mean([r['s_per_epoch'] for r in runs]):.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="measure_layerwise_atlr_output")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--parts", nargs="+", default=["layerwise", "atlr"], choices=("layerwise", "atlr"))
    parser.add_argument("--lw-epochs", type=int, default=10)
    parser.add_argument("--lw-lr", type=float, default=0.02)
    parser.add_argument("--lw-runs", nargs="+", default=["orig:20", "orig:100", "joint:20", "fgs-inter:20"],
                        help="Layerwise runs as variant:eps.")
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--ft-epochs", type=int, default=5)
    parser.add_argument("--ft-lr", type=float, default=1e-3)
    parser.add_argument("--bases", nargs="+", default=["fgsm", "fast", "pgd", "trades"])
    parser.add_argument("--gammas", type=float, nargs="+", default=[1.0])
    parser.add_argument("--lr-layers", nargs="+", default=["lsa"],
                        help="AT-LR layer choices: 'lsa' (the MVL list) or comma-separated module names.")
    parser.add_argument("--eta", type=float, default=0.5)
    parser.add_argument("--lsa-samples", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_dataset("bundled")
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    measurements: dict[str, Any] = {"config": vars(args), "budgets": BUDGETS, "train_eps": TRAIN_EPS,
                                    "data": "bundled Fashion-MNIST subset, 3000 train / 1000 test", "model": "SmallCNN"}
    started = time.perf_counter()
    if "layerwise" in args.parts:
        measurements["layerwise"] = layerwise_part(args, data, x_test, y_test)
    if "atlr" in args.parts:
        measurements["atlr"] = atlr_part(args, data, x_test, y_test, out)
    measurements["seconds"] = time.perf_counter() - started
    (out / "measurements.json").write_text(json.dumps(measurements, indent=1))
    summary = summarize(measurements)
    (out / "summary.md").write_text(summary)
    print()
    print(summary)


if __name__ == "__main__":
    main()
