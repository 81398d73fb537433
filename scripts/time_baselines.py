"""
Time paper 000's defenses per fine-tuning sample, relative to plain fine-tuning (paper 000, Table I).

One VGG-16 (BatchNorm, ELU, width 0.25) is pre-trained briefly on the bundled Fashion-MNIST subset (28x28); every
method then fine-tunes a fresh copy of those weights (NAdam, batch size 64) on the same `--samples` benign images:

* ``plain``: :class:`~art_latent.trainers.LatentTrainer` (cross-entropy), the undefended baseline;
* ``hldr``: :class:`~art_latent.trainers.HLDRTrainer`, FGSM pairs at budgets 0, 16/255, 32/255 precomputed once;
* ``fimr``: :class:`~art_latent.trainers.fimr.FIMRTrainer` (zeta 0.0025);
* ``agnt``: :class:`~art_latent.trainers.noise.GaussianNoiseTrainer` (sigma 32/255);
* ``stability``: :class:`~art_latent.trainers.noise.StabilityTrainer` (alpha 0.01, sigma 0.04);
* ``hgd``: :class:`~art_latent.defences.DenoiserTrainer` (FGD, the same FGSM pairs as HLDR, Adam).

A *sample* is one row of the fine-tuning set: an image for plain/FIMR/AGNT/stability, a pair (x, x_a) for HLDR and
HGD (3 per image), as in the paper's per-sample times. Steady state: each method runs two epochs and only the second
is timed (the first includes the pair precomputation, which is timed separately with ``make_pairs``). The methods are
interleaved over `--reps` repetitions and the median is reported.

Run with ``OMP_NUM_THREADS=1 python scripts/time_baselines.py`` (a few minutes on one CPU core).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from art.attacks.evasion import FastGradientMethod

from art_latent.data import load_dataset
from art_latent.defences.denoiser import DenoiserTrainer, FeatureGuidedDenoiser
from art_latent.estimator import LatentClassifier
from art_latent.models import VGG
from art_latent.trainers.base import LatentTrainer
from art_latent.trainers.fimr import FIMRTrainer
from art_latent.trainers.hldr import HLDRTrainer
from art_latent.trainers.noise import GaussianNoiseTrainer, StabilityTrainer

logger = logging.getLogger(__name__)

BUDGETS = (0.0, 16 / 255, 32 / 255)
PAPER_MS = {"hldr": 2.1, "hgd": 5.3, "fimr": 2.0}  # Table I of paper 000 (ms per sample; TensorFlow, GPU unstated)


def make_classifier(
    weights: dict[str, torch.Tensor] | None, width: float, lr: float, device_type: str
) -> LatentClassifier:
    model = VGG(in_channels=1, num_classes=10, width=width, input_size=28)
    if weights is not None:
        model.load_state_dict(weights)
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10,
                            optimizer=torch.optim.NAdam(model.parameters(), lr=lr), clip_values=(0.0, 1.0),
                            device_type=device_type)


def methods(seed: int, denoiser_width: int, device_type: str) -> dict[str, tuple[Callable, int]]:
    """name -> (trainer factory, fine-tuning rows per benign image)."""

    def hldr(clf):
        return HLDRTrainer(clf, FastGradientMethod(clf, eps=16 / 255), budgets=BUDGETS, validation_attack=None,
                           seed=seed)

    def hgd(clf):
        torch.manual_seed(seed)
        denoiser = FeatureGuidedDenoiser(1, width=denoiser_width, depth=2, device_type=device_type)
        return DenoiserTrainer(clf, denoiser, FastGradientMethod(clf, eps=16 / 255), budgets=BUDGETS,
                               validation_attack=None, seed=seed)

    return {
        "plain": (lambda clf: LatentTrainer(clf, seed=seed), 1),
        "hldr": (hldr, len(BUDGETS)),
        "fimr": (lambda clf: FIMRTrainer(clf, seed=seed), 1),
        "agnt": (lambda clf: GaussianNoiseTrainer(clf, seed=seed), 1),
        "stability": (lambda clf: StabilityTrainer(clf, seed=seed), 1),
        "hgd": (hgd, len(BUDGETS)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=512, help="benign fine-tuning images")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--denoiser-width", type=int, default=16,
                        help="channels of the U-Net's full-resolution level (16: about 1.3x the VGG's compute)")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu: CUDA when available")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON too")
    args = parser.parse_args()

    data = load_dataset("bundled")
    torch.manual_seed(args.seed)
    clf = make_classifier(None, args.width, args.lr, args.device)
    LatentTrainer(clf, seed=args.seed).fit(data.x_train, data.y_train, nb_epochs=args.pretrain_epochs,
                                           batch_size=args.batch_size, verbose=False)
    weights = {k: v.detach().clone() for k, v in clf.model.state_dict().items()}
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(data.x_train), size=args.samples, replace=False)
    x, y = data.x_train[idx], data.y_train[idx]
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)

    table = methods(args.seed, args.denoiser_width, args.device)
    per_sample: dict[str, list[float]] = {name: [] for name in table}
    per_step: dict[str, list[float]] = {name: [] for name in table}
    precompute: dict[str, list[float]] = {"hldr": [], "hgd": []}
    for rep in range(args.reps):
        for name, (factory, copies) in table.items():
            trainer = factory(make_classifier(weights, args.width, args.lr, args.device))
            if name in precompute:
                started = time.perf_counter()
                trainer.make_pairs(x_t, y_t)
                precompute[name].append(time.perf_counter() - started)
            history = trainer.fit(x, y, nb_epochs=2, batch_size=args.batch_size, verbose=False)
            rows = args.samples * copies
            per_sample[name].append(history[1]["time_s"] / rows)
            per_step[name].append(history[1]["time_s"] / -(-rows // args.batch_size))
        logger.info("repetition %d done", rep + 1)

    plain = statistics.median(per_sample["plain"])
    denoiser_params = sum(p.numel() for p in FeatureGuidedDenoiser(1, width=args.denoiser_width).parameters())
    print(f"VGG-16 width {args.width} ({sum(p.numel() for p in clf.model.parameters()):,} parameters), bundled "
          f"Fashion-MNIST 28x28, {args.samples} images, batch {args.batch_size}, seed {args.seed}, "
          f"{clf.device}, {torch.get_num_threads()} torch thread(s), median of {args.reps} interleaved repetitions; "
          f"denoiser: {denoiser_params:,} parameters")
    print(f"{'method':<10} {'ms/sample':>10} {'x plain':>8} {'ms/step':>8} {'paper ms/sample':>16}")
    for name in table:
        ms = 1e3 * statistics.median(per_sample[name])
        step = 1e3 * statistics.median(per_step[name])
        paper = f"{PAPER_MS[name]:.1f}" if name in PAPER_MS else "-"
        print(f"{name:<10} {ms:>10.3f} {ms / (1e3 * plain):>8.2f} {step:>8.1f} {paper:>16}")
    for name, times in precompute.items():
        ms = 1e3 * statistics.median(times) / args.samples
        print(f"pair precomputation ({name}): {ms:.3f} ms per benign image ({len(BUDGETS)} budgets), once per fit")
    if args.json:
        print(json.dumps({"per_sample_s": per_sample, "per_step_s": per_step, "precompute_s": precompute}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
