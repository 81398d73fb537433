"""
Accuracy metrics as the papers report them.

ART's ``art.metrics.adversarial_accuracy`` is conditional on the clean-correct samples; the papers report the plain
robust accuracy (correct under attack / all samples), which :func:`robust_accuracy` computes.

The batched, on-device curves (``accuracy_vs_noise``, ``perturbation_error``, ``mean_confidence_interval``) live in
:mod:`art_latent.analysis.curves` and are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from art.estimators.classification.classifier import ClassifierMixin
from tqdm.auto import tqdm

from art_latent.analysis.curves import accuracy_vs_noise as accuracy_vs_noise
from art_latent.analysis.curves import mean_confidence_interval as mean_confidence_interval
from art_latent.analysis.curves import perturbation_error as perturbation_error

logger = logging.getLogger(__name__)


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y.astype(np.int64)


def accuracy(classifier: ClassifierMixin, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """
    Fraction of `x` that `classifier` labels correctly.

    :param classifier: An ART classifier.
    :param x: Inputs.
    :param y: Labels as indices or one-hot.
    :param batch_size: Prediction batch size.
    :return: The accuracy in [0, 1].
    """
    predictions = classifier.predict(x, batch_size=batch_size)
    return float(np.mean(predictions.argmax(axis=1) == _labels(y)))


def robust_accuracy(
    classifier: ClassifierMixin, x: np.ndarray, y: np.ndarray, attack: Any = None, batch_size: int = 256
) -> float:
    """
    Plain robust accuracy: samples classified correctly *after* the attack, over all samples.

    :param classifier: An ART classifier.
    :param x: Clean inputs.
    :param y: True labels (indices or one-hot).
    :param attack: An ART evasion attack (its ``generate(x, y)`` is called with the true labels); ``None`` gives the
                   clean accuracy.
    :param batch_size: Prediction batch size.
    :return: The robust accuracy in [0, 1].
    """
    if attack is None:
        return accuracy(classifier, x, y, batch_size)
    nb_classes = classifier.nb_classes
    y_onehot = np.eye(nb_classes, dtype=np.float32)[_labels(y)]
    x_adv = attack.generate(x=x, y=y_onehot)
    return accuracy(classifier, x_adv, y, batch_size)


def accuracy_vs_eps(
    classifier: ClassifierMixin,
    x: np.ndarray,
    y: np.ndarray,
    attack_factory: Callable[[ClassifierMixin, float], Any],
    eps_list: Sequence[float],
    batch_size: int = 256,
    verbose: bool = False,
) -> list[float]:
    """
    Robust accuracy for every budget in `eps_list` (budget 0 is the clean accuracy).

    :param classifier: An ART classifier.
    :param x: Clean inputs.
    :param y: True labels.
    :param attack_factory: ``attack_factory(classifier, eps)`` returns an ART evasion attack with budget `eps`,
                           e.g. ``lambda c, e: FastGradientMethod(c, eps=e, batch_size=256)``.
    :param eps_list: The budgets.
    :param batch_size: Prediction batch size.
    :param verbose: Show a progress bar.
    :return: One accuracy per budget.
    """
    results = []
    for eps in tqdm(eps_list, desc="budgets", disable=not verbose):
        attack = None if eps == 0 else attack_factory(classifier, float(eps))
        results.append(robust_accuracy(classifier, x, y, attack, batch_size))
    return results
