"""
Cost of the per-step NaN/inf guard (``check_finite=True``, the default) against ``check_finite=False``.

VGG-16 (BatchNorm, ELU, width 0.25) on the bundled Fashion-MNIST subset, batch size 64, NAdam: plain fine-tuning
(:class:`~art_latent.trainers.LatentTrainer`) and HLDR with precomputed FGSM pairs. Each configuration trains one
warm-up epoch and then `--epochs` timed epochs on `--samples` images; configurations are interleaved over `--reps`
repetitions and the median epoch time (``history["time_s"]``) is printed. The guard adds one host
synchronisation per step: on a GPU it stalls the launch queue once per step (run with ``--device gpu``).

Run: ``OMP_NUM_THREADS=1 python scripts/time_check_finite.py`` (about two minutes on one CPU core).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from art.attacks.evasion import FastGradientMethod

from art_latent.data import load_dataset
from art_latent.estimator import LatentClassifier
from art_latent.models import VGG
from art_latent.trainers.base import LatentTrainer
from art_latent.trainers.hldr import HLDRTrainer


def _trainer(method: str, check: bool, device_type: str) -> LatentTrainer:
    torch.manual_seed(0)
    model = VGG(in_channels=1, num_classes=10, width=0.25, input_size=28)
    clf = LatentClassifier(model, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10, clip_values=(0.0, 1.0),
                           optimizer=torch.optim.NAdam(model.parameters(), lr=1e-3), device_type=device_type)
    if method == "plain":
        return LatentTrainer(clf, seed=0, check_finite=check)
    return HLDRTrainer(clf, FastGradientMethod(clf, eps=16 / 255), seed=0, check_finite=check,
                       validation_attack=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    args = parser.parse_args()
    data = load_dataset("bundled")
    x, y = data.x_train[: args.samples], data.y_train[: args.samples]
    times: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.reps):
        for method in ("plain", "hldr"):
            for check in (True, False):
                trainer = _trainer(method, check, args.device)
                # the first epoch is the warm-up (and makes HLDR's pairs); the later ones are the steady state
                history = trainer.fit(x, y, nb_epochs=1 + args.epochs, batch_size=64, verbose=False)
                times.setdefault((method, check), []).extend(record["time_s"] for record in history[1:])
    print(f"{'method':8s} {'check_finite':>12s} {'s/epoch':>9s} {'vs off':>7s}")
    for method in ("plain", "hldr"):
        off = statistics.median(times[(method, False)])
        for check in (True, False):
            value = statistics.median(times[(method, check)])
            print(f"{method:8s} {str(check):>12s} {value:9.3f} {value / off:7.3f}")


if __name__ == "__main__":
    main()
