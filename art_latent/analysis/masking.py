"""
Gradient-masking checks: signs that a model's robustness under white-box attacks is an artefact of broken gradients
(Athalye et al., ICML 2018; Carlini et al., "On Evaluating Adversarial Robustness", 2019; Croce & Hein, 2020).

:func:`gradient_masking_flags` reads the accuracy curves a report already has; :func:`masking_checks` runs the
extra attacks of the checklist at one budget and says which checks pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from art_latent.analysis.curves import accuracy_under_perturbation, classifier_inputs
from art_latent.registries.evaluation_attacks import evaluation_attacks

logger = logging.getLogger(__name__)

#: The built-in white-box attacks of the report (the registry's ``white_box`` flag decides, for any attack), compared
#: with the transfer and black-box attacks.
WHITE_BOX = tuple(n for n, a in evaluation_attacks().items() if a.white_box)

#: The checks of :func:`masking_checks`, with the source of each.
CHECKS = {
    "gradients": "input gradients of the loss are non-zero and finite (art.metrics.loss_gradient_check; Athalye et "
                 "al. 2018, shattered gradients)",
    "unbounded": "PGD at a budget spanning the whole input range brings accuracy to ~0 (Carlini et al. 2019, "
                 "sec. 5.2)",
    "stronger_pgd": "more PGD steps and random restarts do not raise accuracy (Carlini et al. 2019, sec. 5.2)",
    "black_box": "black-box Square does not beat the white-box attacks (Croce & Hein 2020; Athalye et al. 2018)",
}


def gradient_masking_flags(
    accuracy: Mapping[str, Sequence[float | None]],
    eps_list: Sequence[float],
    tolerance: float = 0.01,
    check_transfer: bool = True,
    scale: float = 255.0,
) -> list[str]:
    """
    Signs of gradient masking (obfuscated gradients) in one model's accuracy curves:

    * a white-box attack (FGSM, PGD, AutoAttack, the latent attack; the strongest of them at each budget) leaves a
      *higher* accuracy than the transfer attack from the undefended model at the same budget: a white-box attack
      with working gradients is at least as strong as a black-box one;
    * a white-box attack's accuracy *rises* from one budget to the next, or does not fall from the smallest to the
      largest budget: a larger ball contains the smaller one;
    * an iterative attack (PGD, AutoAttack) leaves a *higher* accuracy than single-step FGSM at the same budget:
      with working gradients, more steps (PGD's first step is FGSM's, up to its random start) find at least as many
      adversarial examples.

    Each comparison allows `tolerance` (absolute accuracy) for sampling noise.

    :param accuracy: ``{attack name: accuracies over eps_list}`` (``"fgsm"``, ``"pgd"``, ``"autoattack"``,
                     ``"latent"``, ``"transfer"``; others are ignored).
    :param eps_list: The budgets, ascending.
    :param tolerance: Allowed slack, in accuracy units.
    :param check_transfer: Compare with the transfer attack (off for the transfer source itself).
    :param scale: Budgets are printed times this (255: in units of 1/255).
    :return: Human-readable findings; empty when nothing is suspicious.
    """
    flags = []
    eps = list(eps_list)

    def fmt(e: float) -> str:
        return f"{e * scale:g}/{scale:g}" if scale != 1 else f"{e:g}"

    white_box = {n for n, a in evaluation_attacks().items() if a.white_box}
    white = {k: v for k, v in accuracy.items() if k in white_box and v is not None}
    for name, curve in white.items():
        values = [math.nan if v is None else float(v) for v in curve]
        for i in range(len(eps) - 1):
            if values[i + 1] > values[i] + tolerance:
                flags.append(f"{name}: accuracy rises from {values[i]:.3f} at eps={fmt(eps[i])} to {values[i + 1]:.3f} "
                             f"at eps={fmt(eps[i + 1])}")
        if len(eps) > 1 and eps[-1] > eps[0] and values[-1] >= values[0] - tolerance:
            flags.append(f"{name}: accuracy does not fall as eps grows ({values[0]:.3f} at eps={fmt(eps[0])}, "
                         f"{values[-1]:.3f} at eps={fmt(eps[-1])})")
    fgsm = white.get("fgsm")
    for iterative_name in ("pgd", "autoattack"):
        iterative_curve = white.get(iterative_name)
        if fgsm is None or iterative_curve is None:
            continue
        for i, e in enumerate(eps):
            single, iterative = fgsm[i], iterative_curve[i]
            if e > 0 and single is not None and iterative is not None and float(iterative) > float(single) + tolerance:
                flags.append(f"{iterative_name} accuracy ({float(iterative):.3f}) exceeds single-step FGSM accuracy "
                             f"({float(single):.3f}) at eps={fmt(e)}")
    transfer = accuracy.get("transfer")
    if check_transfer and transfer is not None and white:
        for i, e in enumerate(eps):
            transfer_i = transfer[i]
            if e <= 0 or transfer_i is None:
                continue
            best_name, best = min(((k, float(v_i)) for k, v in white.items() if (v_i := v[i]) is not None),
                                  key=lambda item: item[1], default=(None, math.nan))
            if best_name is not None and best > float(transfer_i) + tolerance:
                flags.append(f"white-box accuracy ({best_name}: {best:.3f}) exceeds transfer-attack accuracy "
                             f"({float(transfer_i):.3f}) at eps={fmt(e)}")
    return flags


def _pgd(classifier: Any, eps: float, max_iter: int, restarts: int, seed: int, batch_size: int) -> Any:
    from art.attacks.evasion import ProjectedGradientDescent

    from art_latent.perturbations import as_perturbation_source

    attack = ProjectedGradientDescent(classifier, eps=eps, eps_step=2.5 * eps / max_iter, max_iter=max_iter,
                                      num_random_init=restarts, batch_size=batch_size, verbose=False)
    return as_perturbation_source(attack, generator=torch.Generator().manual_seed(seed))


def masking_checks(
    classifier: Any,
    x: Any,
    y: Any,
    eps: float,
    white_box_accuracy: float | None = None,
    pgd_accuracy: float | None = None,
    pgd_max_iter: int = 10,
    tolerance: float = 0.01,
    unbounded_max: float = 0.05,
    gradient_max: float = 0.1,
    square_queries: int = 1000,
    samples: int = 200,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """
    Run the gradient-masking checklist (:data:`CHECKS`) on one classifier, at budget `eps` (L-inf):

    * ``"gradients"``: the fraction of samples whose loss gradient w.r.t. the input is all zero, NaN or inf
      (``art.metrics.loss_gradient_check``) must be at most `gradient_max`;
    * ``"unbounded"``: PGD (`pgd_max_iter` steps) with eps = the whole clip range must leave at most `unbounded_max`
      accuracy (any input is then reachable);
    * ``"stronger_pgd"``: PGD with 4x the steps and 5 random restarts must not leave more accuracy than
      `pgd_accuracy` (the report's PGD at `eps`) + `tolerance`;
    * ``"black_box"``: ART's ``SquareAttack`` (`square_queries` queries) must not leave less accuracy than
      `white_box_accuracy` (the strongest white-box attack at `eps`) - `tolerance`.

    Checks whose reference is not given are skipped (``"stronger_pgd"`` without `pgd_accuracy`, ``"black_box"``
    without `white_box_accuracy`). They run on the first `samples` inputs.

    :param classifier: An ART ``PyTorchClassifier``.
    :param x: Test inputs.
    :param y: True labels.
    :param eps: The budget of the checks, > 0.
    :param white_box_accuracy: Accuracy under the strongest white-box attack at `eps`.
    :param pgd_accuracy: Accuracy under the report's PGD at `eps`.
    :param pgd_max_iter: Steps of the report's PGD.
    :param tolerance: Slack for sampling noise, in accuracy units.
    :param unbounded_max: Largest accuracy the unbounded attack may leave.
    :param gradient_max: Largest fraction of samples with a zero or non-finite gradient.
    :param square_queries: Square's query budget.
    :param samples: Number of samples the checks use.
    :param batch_size: Batch size.
    :param seed: Seed of the random starts.
    :return: ``{check: {"passed": bool, "value": float, "bound": float, "detail": str}}``.
    """
    from art.attacks.evasion import SquareAttack
    from art.metrics import loss_gradient_check

    x_t, y_t = classifier_inputs(classifier, x, y)
    x_t, y_t = x_t[:samples], y_t[:samples]
    x_np, y_np = x_t.cpu().numpy(), y_t.cpu().numpy()
    out: dict[str, dict[str, Any]] = {}

    def record(name: str, passed: bool, value: float, bound: float, detail: str) -> None:
        out[name] = {"passed": bool(passed), "value": float(value), "bound": float(bound), "detail": detail}

    nb = classifier.nb_classes
    bad = loss_gradient_check(classifier, x_np, np.eye(nb, dtype=np.float32)[y_np], verbose=False)
    bad_fraction = float(np.asarray(bad).any(axis=1).mean())
    record("gradients", bad_fraction <= gradient_max, bad_fraction, gradient_max,
           f"{bad_fraction:.3f} of the samples have an all-zero or non-finite input gradient")
    low, high = (0.0, 1.0) if classifier.clip_values is None else (float(np.min(classifier.clip_values[0])),
                                                                   float(np.max(classifier.clip_values[1])))
    span = high - low
    unbounded = accuracy_under_perturbation(classifier, x_t, y_t, _pgd(classifier, span, pgd_max_iter, 1, seed,
                                                                       batch_size), eps=span, batch_size=batch_size)
    record("unbounded", unbounded <= unbounded_max, unbounded, unbounded_max,
           f"PGD at eps={span:g} (the whole input range) leaves accuracy {unbounded:.3f}")
    if pgd_accuracy is not None:
        stronger = accuracy_under_perturbation(classifier, x_t, y_t,
                                               _pgd(classifier, eps, 4 * pgd_max_iter, 5, seed + 1, batch_size),
                                               eps=eps, batch_size=batch_size)
        record("stronger_pgd", stronger <= pgd_accuracy + tolerance, stronger, pgd_accuracy + tolerance,
               f"PGD with {4 * pgd_max_iter} steps and 5 restarts: {stronger:.3f} (the report's PGD: "
               f"{pgd_accuracy:.3f})")
    if white_box_accuracy is not None:
        square = SquareAttack(classifier, norm=np.inf, eps=eps, max_iter=square_queries, p_init=0.8, nb_restarts=1,
                              batch_size=batch_size, verbose=False)
        x_adv = square.generate(x_np, np.eye(nb, dtype=np.float32)[y_np])
        black = accuracy_under_perturbation(classifier, torch.from_numpy(x_adv).to(x_t.device), y_t,
                                            batch_size=batch_size)
        record("black_box", black >= white_box_accuracy - tolerance, black, white_box_accuracy - tolerance,
               f"Square ({square_queries} queries): {black:.3f} (strongest white-box: {white_box_accuracy:.3f})")
    for name, check in out.items():
        if not check["passed"]:
            logger.warning("Gradient-masking check %r failed: %s.", name, check["detail"])
    return out
