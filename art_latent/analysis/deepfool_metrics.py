"""
Robustness metrics of paper 003 (Deep Defense): :math:`\\rho_2` under DeepFool, :math:`\\epsilon_{ref}` (the
smallest FGSM budget with 50% error) and the accuracy at fractions of it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.classification.pytorch import PyTorchClassifier
from tqdm.auto import tqdm

from art_latent.regularizers.deepfool import deepfool, perturbation_ratio
from art_latent.utils import preserve_mode

logger = logging.getLogger(__name__)


def _labels(y: Any) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y.astype(np.int64)


def rho2(
    classifier: PyTorchClassifier,
    x: np.ndarray | torch.Tensor,
    max_iter: int = 50,
    overshoot: float = 0.02,
    batch_size: int = 128,
    candidates: int | None = None,
    return_details: bool = False,
    verbose: bool = False,
) -> float | dict[str, Any]:
    r"""
    :math:`\rho_2 = \frac{1}{|\mathcal{D}|}\sum_k \|\Delta_{x_k}\|_2 / \|x_k\|_2` with :math:`\Delta_{x_k}` the L2
    DeepFool perturbation of :math:`x_k` (paper 003, eq. 7; the DeepFool paper's robustness measure).

    DeepFool is art_latent's batched implementation (:func:`art_latent.regularizers.deepfool.deepfool`, the one
    Deep Defense trains with), run in eval mode, untargeted (each sample leaves its predicted class), overshoot
    0.02, no clipping to ``clip_values`` (as the authors' evaluation); the ratio is measured in input space (before
    ART's preprocessing). Samples that are not fooled within `max_iter` steps count with their last perturbation,
    as in the authors' code. ART's ``DeepFool`` differs (it clips, its overshoot ``epsilon`` defaults to 1e-6 and
    it looks at ``nb_grads`` classes) and is not used.

    :param classifier: An ART ``PyTorchClassifier`` (e.g. a :class:`~art_latent.LatentClassifier`).
    :param x: Inputs (the paper: the test set).
    :param max_iter: DeepFool steps (50 here; Deep Defense trains with 5).
    :param overshoot: DeepFool's overshoot.
    :param batch_size: Batch size.
    :param candidates: Classes considered per step (see :func:`~art_latent.regularizers.deepfool.deepfool`);
                       ``None``: all.
    :param return_details: Return a dict with the per-sample ratios and the fooled mask instead of the mean.
    :param verbose: Show a progress bar.
    :return: :math:`\rho_2`, or ``{"rho2", "per_sample", "fooled_rate", "fooled"}``.
    """
    if not isinstance(classifier, PyTorchClassifier):
        raise TypeError(f"`classifier` must be an ART PyTorchClassifier, got {type(classifier).__name__}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
    x_t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
    if len(x_t) == 0:
        raise ValueError("`x` is empty.")
    model = classifier.model

    def forward(z: torch.Tensor) -> torch.Tensor:
        return classifier._model(classifier._apply_preprocessing(z, y=None, fit=False, no_grad=False)[0])[-1]

    ratios, fooled = [], []
    with preserve_mode(model):
        model.eval()
        for begin in tqdm(range(0, len(x_t), batch_size), desc="rho_2", disable=not verbose):
            batch = x_t[begin : begin + batch_size].to(classifier.device, torch.float32)
            result = deepfool(forward, batch, max_iter=max_iter, overshoot=overshoot, candidates=candidates)
            ratios.append(perturbation_ratio(result.perturbation, batch).cpu())
            fooled.append(result.fooled.cpu())
    per_sample = torch.cat(ratios).double().numpy()
    fooled_np = torch.cat(fooled).numpy()
    value = float(per_sample.mean())
    if return_details:
        return {"rho2": value, "per_sample": per_sample, "fooled_rate": float(fooled_np.mean()), "fooled": fooled_np}
    return value


class _FGSMCurve:
    """FGSM (Linf, no random start) at any budget from one input gradient: ``clip(x + eps * sign(grad))``."""

    def __init__(self, classifier: ClassifierMixin, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
        self.classifier = classifier
        self.x = np.asarray(x, dtype=np.float32)
        self.y = _labels(y)
        if len(self.x) == 0 or len(self.x) != len(self.y):
            raise ValueError(
                f"Need the same non-zero number of inputs and labels, got {len(self.x)} and {len(self.y)}."
            )
        self.batch_size = batch_size
        one_hot = np.eye(classifier.nb_classes, dtype=np.float32)[self.y]
        # The sign of ART's loss gradient does not depend on the budget: one gradient serves every eps.
        grads = [
            classifier.loss_gradient(self.x[b : b + batch_size], one_hot[b : b + batch_size])
            for b in range(0, len(self.x), batch_size)
        ]
        grad = np.concatenate(grads)
        self.direction = np.sign(np.where(np.isnan(grad), 0.0, grad)).astype(np.float32)
        clip = getattr(classifier, "clip_values", None)
        self.clip = None if clip is None else (np.asarray(clip[0]), np.asarray(clip[1]))

    def accuracy(self, eps: float) -> float:
        x_adv = self.x + np.float32(eps) * self.direction
        if self.clip is not None:
            x_adv = np.clip(x_adv, self.clip[0], self.clip[1]).astype(np.float32)
        predictions = self.classifier.predict(x_adv, batch_size=self.batch_size).argmax(axis=1)
        return float(np.mean(predictions == self.y))


def eps_ref(
    classifier: ClassifierMixin,
    x: np.ndarray,
    y: np.ndarray,
    target_error: float = 0.5,
    tol: float = 1e-4,
    eps_max: float | None = None,
    batch_size: int = 256,
) -> float:
    r"""
    :math:`\epsilon_{ref}`: the smallest FGSM budget at which `target_error` (50%) of `x` is misclassified (paper
    003, section 4.1), found by bisection to within `tol`.

    FGSM is ART's (``FastGradientMethod``, Linf, untargeted with the true labels, no random start:
    ``clip(x + eps * sign(grad))``); the input gradient (ART's ``loss_gradient``) does not depend on the budget, so it
    is computed once and each bisection step costs one prediction pass. Works with any ART classifier. Bisection
    assumes the error grows with the budget (FGSM's usually does; where it does not, a crossing is returned).

    :param classifier: An ART classifier with ``loss_gradient`` (the paper: the Deep Defense model).
    :param x: Inputs (the test set).
    :param y: True labels (indices or one-hot).
    :param target_error: The error rate that defines the reference, in (0, 1].
    :param tol: Absolute precision of the returned budget.
    :param eps_max: Upper end of the search; default: the width of ``clip_values`` (1 without them).
    :param batch_size: Batch size.
    :return: :math:`\epsilon_{ref}` (0 when the clean error already reaches `target_error`; ``inf`` with a warning
             when even `eps_max` does not).
    """
    if not 0.0 < target_error <= 1.0:
        raise ValueError(f"`target_error` must be in (0, 1], got {target_error!r}.")
    if not tol > 0:
        raise ValueError(f"`tol` must be > 0, got {tol!r}.")
    curve = _FGSMCurve(classifier, x, y, batch_size)
    if eps_max is None:
        eps_max = 1.0 if curve.clip is None else float(np.max(curve.clip[1] - curve.clip[0]))
    if not eps_max > 0:
        raise ValueError(f"`eps_max` must be > 0, got {eps_max!r}.")

    def reached(eps: float) -> bool:
        return 1.0 - curve.accuracy(eps) >= target_error

    if reached(0.0):
        return 0.0
    if not reached(eps_max):
        logger.warning("FGSM at eps_max=%g misclassifies less than %g of the inputs: eps_ref is inf.", eps_max,
                       target_error)
        return math.inf
    low, high = 0.0, float(eps_max)
    while high - low > tol:
        middle = 0.5 * (low + high)
        if reached(middle):
            high = middle
        else:
            low = middle
    return high


def accuracy_at_eps_ref(
    classifier: ClassifierMixin,
    x: np.ndarray,
    y: np.ndarray,
    eps_reference: float,
    fractions: Sequence[float] = (0.2, 0.5, 1.0),
    batch_size: int = 256,
) -> dict[float, float]:
    r"""
    FGSM accuracy at fractions of :math:`\epsilon_{ref}` (paper 003, Table 1: 0.2, 0.5 and 1.0
    :math:`\epsilon_{ref}`, with :math:`\epsilon_{ref}` of the Deep Defense model applied to every model).

    :param classifier: An ART classifier.
    :param x: Inputs.
    :param y: True labels.
    :param eps_reference: :math:`\epsilon_{ref}` (from :func:`eps_ref`), finite and >= 0.
    :param fractions: The fractions.
    :param batch_size: Batch size.
    :return: ``{fraction: accuracy}``.
    """
    if not (math.isfinite(eps_reference) and eps_reference >= 0):
        raise ValueError(f"`eps_reference` must be finite and >= 0, got {eps_reference!r}.")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not (math.isfinite(f) and f >= 0) for f in fractions):
        raise ValueError(f"`fractions` must be non-empty, finite and >= 0, got {fractions}.")
    curve = _FGSMCurve(classifier, x, y, batch_size)
    return {f: curve.accuracy(f * eps_reference) for f in fractions}
