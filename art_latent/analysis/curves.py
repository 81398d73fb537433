"""
Accuracy metrics and evaluation curves: accuracy under an attack or under Gaussian noise, the per-layer perturbation
error of paper 000 (Fig. 6), t confidence intervals over repeated runs (folds), and the plain accuracy and robust
accuracy of a classifier on numpy inputs.

ART's ``art.metrics.adversarial_accuracy`` is conditional on the clean-correct samples; the papers report the plain
robust accuracy (correct under attack / all samples), which :func:`robust_accuracy` computes.

Everything here works on torch tensors on the classifier's device (numpy inputs are moved there once), in eval mode
under ``torch.no_grad()`` where no gradient is needed, and restores the train/eval flag of every module afterwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from art_latent.utils import labels_to_indices, preserve_mode
from art_latent.validation import check_int, check_range

if TYPE_CHECKING:
    from art.estimators.classification.classifier import ClassifierMixin

logger = logging.getLogger(__name__)

__all__ = [
    "ConfidenceInterval",
    "accuracy",
    "accuracy_vs_eps",
    "classifier_inputs",
    "robust_accuracy",
    "accuracy_under_perturbation",
    "accuracy_vs_noise",
    "mean_confidence_interval",
    "perturbation_error",
    "predict_labels",
]


def _as_tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype or x.dtype)
    array = np.asarray(x)
    if dtype is None:
        dtype = torch.float32 if np.issubdtype(array.dtype, np.floating) else torch.int64
    return torch.as_tensor(array, dtype=dtype, device=device)


def _check_pytorch(classifier: Any) -> None:
    from art.estimators.classification.pytorch import PyTorchClassifier

    if not isinstance(classifier, PyTorchClassifier):
        raise TypeError(
            f"`classifier` must be an ART PyTorchClassifier (or LatentClassifier), got {type(classifier).__name__}."
        )


def classifier_inputs(classifier: Any, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and move ``(x, y)`` to the classifier's device; labels become class indices."""
    _check_pytorch(classifier)
    x_t = _as_tensor(x, classifier.device, torch.float32)
    y_t = labels_to_indices(_as_tensor(y, classifier.device))
    if x_t.ndim < 1 or tuple(x_t.shape[1:]) != tuple(classifier.input_shape):
        raise ValueError(f"`x` must have shape (n, {', '.join(map(str, classifier.input_shape))}), got "
                         f"{tuple(x_t.shape)}.")
    if len(x_t) == 0:
        raise ValueError("`x` is empty.")
    if len(y_t) != len(x_t):
        raise ValueError(f"`x` has {len(x_t)} samples but `y` has {len(y_t)} labels.")
    return x_t, y_t


def predict_labels(classifier: Any, x: Any, batch_size: int = 256) -> torch.Tensor:
    """
    Predicted class indices of `x`, in eval mode, batched, on the classifier's device.

    ART's preprocessing (standardisation and PyTorch preprocessing defences) is applied as in ``predict``; the
    postprocessing defences are not (they do not change the arg-max of the ones ART ships, except ``ClassLabels``
    rounding, which keeps it too).

    :param classifier: An ART ``PyTorchClassifier``.
    :param x: Inputs (tensor or numpy), shape ``(n, *input_shape)``.
    :param batch_size: Batch size.
    :return: ``int64`` tensor ``(n,)`` on the classifier's device.
    """
    _check_pytorch(classifier)
    batch_size = check_int("batch_size", batch_size)
    x_t = _as_tensor(x, classifier.device, torch.float32)
    model = classifier.model
    out = []
    with preserve_mode(model), torch.no_grad():
        model.eval()
        for begin in range(0, len(x_t), batch_size):
            x_pre, _ = classifier._apply_preprocessing(x_t[begin : begin + batch_size], y=None, fit=False,
                                                       no_grad=True)
            out.append(classifier._model(x_pre)[-1].argmax(dim=1))  # ART's wrapper: the logits
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64, device=classifier.device)


def accuracy_under_perturbation(
    classifier: Any,
    x: Any,
    y: Any,
    source: Any = None,
    eps: float | None = None,
    batch_size: int = 256,
    verbose: bool = False,
    desc: str = "attack",
) -> float:
    """
    Plain robust accuracy (correct after the perturbation / all samples), generated and scored batch by batch on
    the classifier's device.

    :param classifier: The classifier that is scored (an ART ``PyTorchClassifier``).
    :param x: Clean inputs.
    :param y: True labels (indices or one-hot).
    :param source: A :class:`~art_latent.perturbations.PerturbationSource` or an ART evasion attack (on any
                   estimator: a transfer attack's source model may differ from `classifier`); ``None`` scores the
                   clean inputs.
    :param eps: Budget override passed to the source (``None``: its own); 0 scores the clean inputs.
    :param batch_size: Batch size of generation and scoring.
    :param verbose: Show a progress bar.
    :param desc: Progress-bar label.
    :return: The accuracy in [0, 1].
    """
    from art_latent.perturbations import as_perturbation_source

    x_t, y_t = classifier_inputs(classifier, x, y)
    batch_size = check_int("batch_size", batch_size)
    source = as_perturbation_source(source) if source is not None and eps != 0 else None
    correct = torch.zeros((), dtype=torch.int64, device=x_t.device)
    starts = range(0, len(x_t), batch_size)
    for begin in tqdm(starts, desc=desc, disable=not verbose, leave=False):
        xb, yb = x_t[begin : begin + batch_size], y_t[begin : begin + batch_size]
        if source is not None:
            xb = source.generate(xb, yb, eps=eps).to(x_t.device)
        correct += (predict_labels(classifier, xb, len(xb)) == yb).sum()
    return correct.item() / len(x_t)


def accuracy_vs_noise(
    classifier: Any,
    x: Any,
    y: Any,
    sigmas: Sequence[float],
    batch_size: int = 256,
    seed: int | None = 0,
    verbose: bool = False,
) -> list[float]:
    """
    Accuracy under additive Gaussian noise ``clip(x + N(0, sigma^2))`` for every ``sigma`` in `sigmas`
    (paper 000, Fig. 3; ``sigma = 0`` gives the clean accuracy).

    :param classifier: An ART ``PyTorchClassifier`` (inputs are clipped to its ``clip_values`` when set).
    :param x: Clean inputs.
    :param y: True labels (indices or one-hot).
    :param sigmas: Noise standard deviations, each >= 0, in input units (e.g. ``32 / 255``).
    :param batch_size: Batch size.
    :param seed: Seed of the noise (one generator per sigma, so each sigma's draw does not depend on the others);
                 ``None`` draws from torch's global generator.
    :param verbose: Show a progress bar.
    :return: One accuracy per sigma.
    """
    from art_latent.perturbations import GaussianNoiseSource

    x_t, y_t = classifier_inputs(classifier, x, y)
    sigmas = [check_range("sigmas", s, 0.0, math.inf, high_open=True) for s in sigmas]
    results = []
    for index, sigma in enumerate(tqdm(sigmas, desc="noise levels", disable=not verbose)):
        generator = None if seed is None else torch.Generator().manual_seed(int(seed) + index)
        source = GaussianNoiseSource(sigma, clip_values=classifier.clip_values, generator=generator)
        results.append(accuracy_under_perturbation(classifier, x_t, y_t, source if sigma > 0 else None,
                                                   batch_size=batch_size))
    return results


def perturbation_error(
    classifier: Any,
    x: Any,
    x_adv: Any,
    layers: str | int | Sequence[str | int] | None = None,
    batch_size: int = 256,
    verbose: bool = False,
) -> dict[str, float]:
    r"""
    Per-layer perturbation error of paper 000 (Fig. 6): for each layer :math:`l`

    .. math::
        e_l = \frac{\sum_i |s_l(x_i) - s_l(x^a_i)|_1}{\sum_i |s_l(x_i)|_1}

    with both sums over every sample (and every unit) of the data set. The activations come from
    :meth:`~art_latent.estimator.LatentClassifier.forward_with_latents` (one forward of the benign and perturbed
    batch together), in eval mode under ``torch.no_grad()``; the model's modes are restored afterwards.

    :param classifier: A :class:`~art_latent.estimator.LatentClassifier` (a plain ``PyTorchClassifier`` is wrapped,
                       sharing its model).
    :param x: Benign inputs.
    :param x_adv: Perturbed inputs, same shape.
    :param layers: Layer names or indices into ``latent_layers``; default: the classifier's ``latent_layers``.
    :param batch_size: Batch size.
    :param verbose: Show a progress bar.
    :return: ``{layer name: error}`` in layer order (``nan`` for a layer whose benign activations are all 0).
    """
    from art_latent.estimator import LatentClassifier

    _check_pytorch(classifier)
    if not isinstance(classifier, LatentClassifier):
        classifier = LatentClassifier.from_classifier(classifier)
    batch_size = check_int("batch_size", batch_size)
    x_t = _as_tensor(x, classifier.device, torch.float32)
    xa_t = _as_tensor(x_adv, classifier.device, torch.float32)
    if x_t.shape != xa_t.shape:
        raise ValueError(f"`x` and `x_adv` must have the same shape, got {tuple(x_t.shape)} and {tuple(xa_t.shape)}.")
    if len(x_t) == 0:
        raise ValueError("`x` is empty.")
    names = classifier.layer_refs(layers)
    num = torch.zeros(len(names), dtype=torch.float64, device=x_t.device)
    den = torch.zeros(len(names), dtype=torch.float64, device=x_t.device)
    model = classifier.model
    with preserve_mode(model), torch.no_grad():
        model.eval()
        starts = range(0, len(x_t), batch_size)
        for begin in tqdm(starts, desc="perturbation error", disable=not verbose, leave=False):
            xb, xab = x_t[begin : begin + batch_size], xa_t[begin : begin + batch_size]
            n = len(xb)
            _, acts = classifier.forward_with_latents(torch.cat([xb, xab]), names)
            for index, name in enumerate(names):
                act = acts[name].double()
                num[index] += (act[:n] - act[n:]).abs().sum()
                den[index] += act[:n].abs().sum()
    errors = torch.where(den > 0, num / den, torch.full_like(num, math.nan)).tolist()
    return dict(zip(names, errors, strict=True))


class ConfidenceInterval(NamedTuple):
    """
    Mean and two-sided t confidence interval of a sample.
    """

    #: Sample mean.
    mean: float
    #: Half the interval's width, :math:`t_{(1+c)/2,\,n-1}\, s / \sqrt{n}` (``nan`` for fewer than 2 values).
    half_width: float
    #: ``mean - half_width``.
    low: float
    #: ``mean + half_width``.
    high: float
    #: Number of values.
    n: int


def mean_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> ConfidenceInterval:
    r"""
    Mean and Student-t confidence interval of the mean, as the paper's error bars (95 % over the folds):
    :math:`\bar v \pm t_{(1+c)/2,\,n-1}\; s / \sqrt{n}` with :math:`s` the sample standard deviation (``ddof=1``).

    Equal to ``scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=scipy.stats.sem(values))``. With one
    value the half width is ``nan`` (no spread can be estimated); with identical values it is 0.

    :param values: The per-run values (e.g. one accuracy per fold); ``nan`` values are rejected.
    :param confidence: Confidence level in (0, 1).
    :return: The interval.
    """
    from scipy import stats

    confidence = check_range("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("`values` is empty: a confidence interval needs at least one value.")
    if not np.isfinite(v).all():
        raise ValueError(f"`values` must be finite, got {v.tolist()}.")
    mean = float(v.mean())
    if v.size < 2:
        half = math.nan
    else:
        sem = float(v.std(ddof=1)) / math.sqrt(v.size)
        half = float(stats.t.ppf((1.0 + confidence) / 2.0, v.size - 1)) * sem
    return ConfidenceInterval(mean, half, mean - half, mean + half, int(v.size))


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
