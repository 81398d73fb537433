"""
:class:`LatentPGD`: projected gradient descent on the logits *and* the hidden features of a
:class:`~art_latent.estimator.LatentClassifier`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from art.attacks.attack import EvasionAttack
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin
from art.utils import check_and_transform_label_format
from tqdm.auto import tqdm

from art_latent.estimator import LatentClassifier
from art_latent.perturbations import TorchGradientAttack
from art_latent.utils import preserve_mode

logger = logging.getLogger(__name__)

__all__ = ["LatentPGD"]

_TINY = 1e-12
_Features = dict[str, torch.Tensor]


def _distance(a: torch.Tensor, b: torch.Tensor, p: int) -> torch.Tensor:
    """Per-sample L1 or L2 norm of ``a - b`` over all non-batch dimensions (0 with a finite gradient at 0)."""
    diff = (a.float() - b.float()).flatten(1)
    if p == 1:
        return diff.abs().sum(dim=1)
    squares = diff.square().sum(dim=1)
    positive = squares > 0  # the double where: exact sqrt, and a zero (not NaN) gradient at 0
    return torch.where(positive, torch.where(positive, squares, torch.ones_like(squares)).sqrt(), 0.0)


class LatentPGD(EvasionAttack):
    r"""
    PGD on ``(1 - w) * loss + w * latent distance``: an adaptive attack on latent (hidden-layer) defenses.

    A defense that regularizes latent distances can flatten the loss around the clean point while the hidden
    features still respond to the input. At each iteration :math:`k` this attack ascends

    .. math::

       J_k(x') = (1 - w_k)\, \mathcal{L}(f(x'), y) + w_k\, \sigma \frac{1}{|\mathcal{S}|} \sum_{l \in \mathcal{S}}
         \frac{\|s_l(x') - t_l\|_p}{\|s_l(x)\|_p}

    with :math:`\mathcal{L}` the estimator's loss (cross-entropy), :math:`s_l` the activation of layer :math:`l`,
    :math:`p \in \{1, 2\}` over all features of one sample, and ``mode="push"`` (:math:`t_l = s_l(x)`,
    :math:`\sigma = +1`) or ``mode="pull"`` (:math:`t_l` the features of a reference of another class,
    :math:`\sigma = -1`).

    Each iteration is ART's ``ProjectedGradientDescentPyTorch`` step (random start in the eps ball on the first
    iteration of a restart, ``sign`` or L2-normalised gradient step of `eps_step`, clipping to ``clip_values``,
    projection onto the eps ball) on :math:`\nabla J_k`, computed on device from one
    :meth:`~art_latent.estimator.LatentClassifier.forward_with_latents` pass in eval mode, w.r.t. the input only. With
    ``latent_weight=0`` it is ART's PGD. Distances are relative to each sample's clean activation norm per layer, so
    layers of different scale count equally; they are averaged over the layers and over the batch (summed when the
    estimator's loss has ``reduction="sum"``).

    ``mode="pull"`` targets the other class with the highest clean logit (smallest margin) that has a reference:
    that class's mean features over `reference_data`, else the features of the nearest (same relative distance)
    sample of the batch predicted as that class; samples without any reference are pushed (logged). Targeted attacks
    descend the loss towards `y` and pull towards class `y`. The push distance has zero gradient at the clean point:
    with ``num_random_init=0`` its first step follows the loss alone, so use ``num_random_init >= 1`` or pull on a
    model whose logit gradient vanishes.

    Restarts (``num_random_init > 1``): each sample keeps a restart that succeeds (prediction differs from the labels
    used, or equals the target; ART compares with the clean prediction, the same when ``y=None``) if any does, the
    one with the highest cross-entropy (lowest when targeted) among equals. Restart ``r`` of a batch draws the same
    start whatever `num_random_init` is, so more restarts never break fewer samples.

    From LAFEAT (Yu et al., CVPR 2021) this keeps: intermediate features give a direction where the logit gradient is
    masked; a convex combination of a latent and the final loss whose latent weight decreases (LAFEAT sweeps it over
    runs, ``schedule="linear"`` decays it to 0 over the iterations); normalising the terms to a common scale (LAFEAT
    divides logits by their top-2 margin, here distances by the clean norm). Not kept: its logit heads trained on the
    features (a latent defense regularizes feature distances, which are attacked directly), its APGD-style momentum
    and decaying step, its masking of a head's term once that head is fooled, and its multi-targeted runs.

    | Paper link: https://arxiv.org/abs/2104.09284
    """

    attack_params = EvasionAttack.attack_params + [
        "layers", "latent_weight", "mode", "distance", "schedule", "reference_data", "norm", "eps", "eps_step",
        "max_iter", "targeted", "num_random_init", "batch_size", "verbose",
    ]
    _estimator_requirements = (BaseEstimator, LossGradientsMixin, ClassifierMixin)

    def __init__(
        self,
        estimator: LatentClassifier,
        layers: str | Sequence[str] | None = None,
        latent_weight: float = 0.5,
        mode: str = "push",
        distance: str = "l2",
        schedule: str = "constant",
        reference_data: tuple[np.ndarray, np.ndarray] | None = None,
        norm: int | float | str = np.inf,
        eps: float = 0.3,
        eps_step: float = 0.1,
        max_iter: int = 100,
        targeted: bool = False,
        num_random_init: int = 0,
        batch_size: int = 32,
        verbose: bool = True,
    ) -> None:
        """
        Create a :class:`LatentPGD` instance.

        :param estimator: A :class:`~art_latent.estimator.LatentClassifier` whose preprocessing is all PyTorch.
        :param layers: Layers whose features are attacked (names or call references); default: the estimator's
                       ``regularized_layers`` when set, else its ``latent_layers``.
        :param latent_weight: Weight ``w`` of the latent term, in [0, 1]; 0 is ART's PGD.
        :param mode: ``"push"`` (features away from their clean values) or ``"pull"`` (towards another class's).
        :param distance: ``"l2"`` or ``"l1"``: the norm of the relative feature distance.
        :param schedule: ``"constant"`` (``w`` at every iteration) or ``"linear"`` (from ``w`` down to 0 at the last
                         iteration).
        :param reference_data: ``(x_ref, y_ref)`` (labels as indices or one-hot) whose per-class mean features are the
                               pull targets; default: the nearest sample of the target class in the batch.
        :param norm: ``np.inf`` (or ``"inf"``) or 2.
        :param eps: Maximum perturbation, a non-negative float.
        :param eps_step: Step size of each iteration, a positive float.
        :param max_iter: Number of iterations, a non-negative integer.
        :param targeted: Move the prediction to the labels `y` given to :meth:`generate`.
        :param num_random_init: Random starts in the eps ball (0: start at the input); restarts when more than 1.
        :param batch_size: Samples per attack batch (the pull mode's in-batch references come from the same batch).
        :param verbose: Show a progress bar.
        :raises TypeError: If `estimator` is not a :class:`~art_latent.estimator.LatentClassifier`.
        """
        if not isinstance(estimator, LatentClassifier):
            raise TypeError(
                f"`estimator` must be an art_latent.LatentClassifier, got {type(estimator).__name__}; wrap an ART "
                "PyTorchClassifier with LatentClassifier.from_classifier(clf)."
            )
        super().__init__(estimator=estimator)
        self.layers, self.latent_weight, self.mode = layers, latent_weight, mode
        self.distance, self.schedule, self.reference_data = distance, schedule, reference_data
        self.norm, self.eps, self.eps_step, self.max_iter = norm, eps, eps_step, max_iter
        self.targeted, self.num_random_init = targeted, num_random_init
        self.batch_size, self.verbose = batch_size, verbose
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()

        def number(name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
                accepted = f"{'(' if low_open else '['}{low}, {high}{']' if math.isfinite(high) else ')'}"
                raise ValueError(f"`{name}` must be a number in {accepted}, got {value!r}.")

        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")

        def choice(name: str, options: tuple[Any, ...]) -> None:
            if getattr(self, name) not in options:
                raise ValueError(f"`{name}` must be one of {options}, got {getattr(self, name)!r}.")

        number("latent_weight", 0.0, 1.0)
        number("eps", 0.0)
        number("eps_step", 0.0, low_open=True)
        integer("max_iter", 0)
        integer("num_random_init", 0)
        integer("batch_size", 1)
        choice("mode", ("push", "pull"))
        choice("distance", ("l2", "l1"))
        choice("schedule", ("constant", "linear"))
        if self.norm not in (np.inf, "inf", 2):
            raise ValueError(f'`norm` must be np.inf, "inf" or 2, got {self.norm!r}.')
        for name in ("targeted", "verbose"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")
        if self.layers is not None:
            names = [self.layers] if isinstance(self.layers, str) else self.layers
            if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
                raise TypeError(f"`layers` must be None, a layer name or a non-empty list of names, got "
                                f"{self.layers!r}.")
            self.estimator.require_latent_layers(list(names), argument="layers")
        if self.reference_data is not None:
            ref = self.reference_data
            if not isinstance(ref, (tuple, list)) or len(ref) != 2 or len(ref[0]) != len(ref[1]) or len(ref[0]) == 0:
                raise ValueError("`reference_data` must be None or a pair (x_ref, y_ref) of equal, non-zero length.")
        if not self.estimator.all_framework_preprocessing:
            raise ValueError("`estimator`: LatentPGD needs every preprocessing step to be PyTorch (gradients flow "
                             "through them as tensors).")

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
        """
        Generate adversarial examples.

        :param x: Inputs, shape ``(n, *input_shape)``.
        :param y: Labels (indices or one-hot): the true labels (untargeted; default: the model's predictions) or the
                  targets (targeted, required).
        :return: The adversarial examples, float32, within the eps ball around `x` and within ``clip_values``.
        :raises ValueError: If ``targeted=True`` and `y` is missing, `y` does not match `x`, or `kwargs` is not empty
                            (ART's ``mask`` is not supported).
        """
        if kwargs:
            raise ValueError(f"LatentPGD.generate takes no keyword arguments besides `y`, got {sorted(kwargs)}.")
        clf: LatentClassifier = self.estimator
        x = np.asarray(x, dtype=np.float32)
        model = clf._model
        with preserve_mode(model):
            if y is None:
                if self.targeted:
                    raise ValueError("Target labels `y` need to be provided for a targeted attack.")
                y = clf.predict(x, batch_size=self.batch_size)
            labels_np = np.argmax(check_and_transform_label_format(y, nb_classes=clf.nb_classes), axis=1)
            if len(labels_np) != len(x):
                raise ValueError(f"`y` has {len(labels_np)} labels for {len(x)} samples.")
            labels = torch.from_numpy(labels_np).long().to(clf.device)
            ops = TorchGradientAttack(clf, eps=self.eps, eps_step=self.eps_step, norm=self.norm)
            ops._set_gradient_mode()
            layers = self._layers() if self.latent_weight > 0 else []
            means = self._class_means(layers) if layers and self.mode == "pull" and self.reference_data else None
            seed = int(torch.randint(0, 2**62, (1,)).item()) if self.num_random_init > 0 else 0
            x_adv = x.copy()
            broken = np.zeros(len(x), dtype=bool)
            starts = range(0, len(x), self.batch_size)
            for index, begin in enumerate(tqdm(starts, desc="LatentPGD - Batches", disable=not self.verbose)):
                end = begin + self.batch_size
                ops.generator = torch.Generator().manual_seed(seed + index) if self.num_random_init > 0 else None
                batch = torch.from_numpy(x[begin:end]).to(clf.device)
                adv, success = self._attack_batch(ops, batch, labels[begin:end], layers, means)
                x_adv[begin:end] = adv.cpu().numpy()
                broken[begin:end] = success.cpu().numpy()
        logger.info("Success rate of LatentPGD: %.2f%%", 100 * broken.mean() if len(x) else 0.0)
        return x_adv

    def _layers(self) -> list[str]:
        """The attacked layers: `layers`, else the estimator's ``regularized_layers``, else its ``latent_layers``."""
        clf: LatentClassifier = self.estimator
        spec = self.layers
        if spec is None:
            spec = getattr(clf, "regularized_layers", None) or None
        names = [spec] if isinstance(spec, str) else spec
        return clf.require_latent_layers(None if names is None else list(names), argument="layers")

    def _weight(self, iteration: int) -> float:
        """The latent weight at `iteration` under the schedule."""
        if self.schedule == "linear" and self.max_iter > 1:
            return float(self.latent_weight) * (1.0 - iteration / (self.max_iter - 1))
        return float(self.latent_weight)

    def _class_means(self, layers: list[str]) -> tuple[_Features, torch.Tensor]:
        """Per-class mean features of `reference_data` (eval mode, no gradient) and which classes have a sample."""
        clf: LatentClassifier = self.estimator
        assert self.reference_data is not None
        x_ref = np.asarray(self.reference_data[0], dtype=np.float32)
        y_ref = np.argmax(check_and_transform_label_format(self.reference_data[1], nb_classes=clf.nb_classes), axis=1)
        if x_ref.shape[1:] != tuple(clf.input_shape):
            raise ValueError(f"`reference_data`: inputs of shape {x_ref.shape[1:]}, expected {clf.input_shape}.")
        sums: _Features = {}
        counts = torch.zeros(clf.nb_classes, device=clf.device)
        with torch.no_grad():
            for begin in range(0, len(x_ref), self.batch_size):
                batch = torch.from_numpy(x_ref[begin : begin + self.batch_size]).to(clf.device)
                classes = torch.from_numpy(y_ref[begin : begin + self.batch_size]).long().to(clf.device)
                _, acts = clf.forward_with_latents(batch, layers)
                for name, act in acts.items():
                    total = sums.setdefault(name, torch.zeros((clf.nb_classes, *act.shape[1:]), device=clf.device))
                    total.index_add_(0, classes, act.float())
                counts += torch.bincount(classes, minlength=clf.nb_classes).float()
        means = {name: total / counts.clamp_min(1).reshape(-1, *[1] * (total.ndim - 1)) for name, total in sums.items()}
        return means, counts > 0

    def _pull_targets(
        self, logits: torch.Tensor, clean: _Features, scales: _Features, labels: torch.Tensor,
        means: tuple[_Features, torch.Tensor] | None,
    ) -> tuple[_Features, torch.Tensor]:
        """Target features per sample (see the class docstring) and which samples have one (else: clean features)."""
        n, p = len(logits), 1 if self.distance == "l1" else 2
        prediction = logits.argmax(dim=1)
        if means is not None:
            available = means[1].unsqueeze(0).expand(n, -1)
        else:  # a class is available to sample i when another sample of the batch is predicted as it
            one_hot = torch.nn.functional.one_hot(prediction, logits.shape[1])
            available = (one_hot.sum(dim=0, keepdim=True) - one_hot) > 0
        if self.targeted:
            target = labels
            valid = available.gather(1, labels.unsqueeze(1)).squeeze(1)
        else:
            other = logits.detach().float().masked_fill(~available, -math.inf)
            other = other.scatter(1, labels.unsqueeze(1), -math.inf)
            best, target = other.max(dim=1)
            valid = torch.isfinite(best)
        if not bool(valid.all()):
            logger.warning("mode='pull': %d of %d samples have no reference of another class (%s); their features "
                           "are pushed instead.", int((~valid).sum()), n,
                           "reference_data" if means is not None else "in their batch: raise batch_size")
        keep = ~valid
        if means is not None:
            return {name: torch.where(keep.reshape(-1, *[1] * (act.ndim - 1)), act, means[0][name][target].to(act))
                    for name, act in clean.items()}, valid
        # nearest sample predicted as the target class, by the mean relative distance over the layers
        pairwise = sum(torch.cdist(act.float().flatten(1), act.float().flatten(1), p=p) / scales[name].unsqueeze(1)
                       for name, act in clean.items())
        candidate = (prediction.unsqueeze(0) == target.unsqueeze(1)) & ~torch.eye(n, dtype=torch.bool,
                                                                                  device=logits.device)
        nearest = torch.as_tensor(pairwise).masked_fill(~candidate, math.inf).argmin(dim=1)
        nearest = torch.where(keep, torch.arange(n, device=logits.device), nearest)
        return {name: act[nearest] for name, act in clean.items()}, valid

    def _gradient(
        self, x_adv: torch.Tensor, loss_labels: torch.Tensor, weight: float, layers: list[str],
        targets: _Features, scales: _Features, sign: torch.Tensor,
    ) -> torch.Tensor:
        """Gradient of the objective at `x_adv` w.r.t. the input only (parameter ``.grad`` untouched)."""
        clf: LatentClassifier = self.estimator
        x_var = x_adv.detach().requires_grad_(True)
        logits, acts = clf.forward_with_latents(x_var, layers if weight > 0 else [])
        loss = clf._loss(logits, loss_labels)
        objective = -loss if self.targeted else loss
        if weight > 0:
            p = 1 if self.distance == "l1" else 2
            latent = sum(_distance(acts[name], targets[name], p) / scales[name] for name in layers) / len(layers)
            latent = sign * torch.as_tensor(latent)
            reduced = latent.sum() if getattr(clf._loss, "reduction", "mean") == "sum" else latent.mean()
            objective = (1.0 - weight) * objective + weight * reduced
        (grad,) = torch.autograd.grad(objective, x_var)
        return torch.where(torch.isnan(grad), torch.zeros_like(grad), grad)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        """ART's normalised step: ``sign(g)`` (Linf) or ``g / ||g||_2`` (L2, 0 where the norm is 0)."""
        if self.norm in (np.inf, "inf"):
            return grad.sign()
        grad_2d = grad.reshape(len(grad), -1)
        q_norm = torch.linalg.vector_norm(grad_2d, ord=2, dim=1, keepdim=True)
        return (grad_2d.abs() * torch.where(q_norm == 0, q_norm, 1 / q_norm)).reshape(grad.shape) * grad.sign()

    def _judge(self, x_adv: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Success per sample and its cross-entropy (negated when targeted: higher is better)."""
        with torch.no_grad():
            logits = self.estimator.forward_with_latents(x_adv, [])[0].float()
        prediction = logits.argmax(dim=1)
        success = prediction == labels if self.targeted else prediction != labels
        score = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return success, -score if self.targeted else score

    def _attack_batch(
        self, ops: TorchGradientAttack, x: torch.Tensor, labels: torch.Tensor, layers: list[str],
        means: tuple[_Features, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All restarts and iterations on one batch; returns the adversarial batch and its success per sample."""
        clf: LatentClassifier = self.estimator
        shape = (len(x),) + (1,) * (x.ndim - 1)
        eps = torch.full(shape, float(self.eps), dtype=x.dtype, device=x.device)
        eps_step = torch.full(shape, float(self.eps_step), dtype=x.dtype, device=x.device)
        loss_labels = ops._loss_labels(labels)
        p = 1 if self.distance == "l1" else 2
        with torch.no_grad():
            logits, clean = clf.forward_with_latents(x, layers)
        clean = {name: act.detach() for name, act in clean.items()}
        scales = {name: _distance(act, torch.zeros_like(act), p).clamp_min(_TINY) for name, act in clean.items()}
        sign = torch.ones(len(x), device=x.device)
        targets = clean
        if layers and self.mode == "pull":
            targets, pulled = self._pull_targets(logits, clean, scales, labels, means)
            sign = torch.where(pulled, -sign, sign)
        if self.max_iter == 0:
            return x.clone(), self._judge(x, labels)[0]
        best, best_success, best_score = x, torch.zeros(0), torch.zeros(0)
        for restart in range(max(1, self.num_random_init)):
            x_adv = x
            for iteration in range(self.max_iter):
                if iteration == 0 and self.num_random_init > 0:
                    x_adv = ops._random_init(x, eps)
                grad = self._gradient(x_adv, loss_labels, self._weight(iteration), layers, targets, scales, sign)
                step = eps_step * self._direction(grad)
                x_adv = ops._clip(x_adv + torch.where(torch.isnan(step), torch.zeros_like(step), step))
                x_adv = x + ops._project(x_adv - x, eps)
            success, score = self._judge(x_adv, labels)
            if restart == 0:
                best, best_success, best_score = x_adv, success, score
                continue
            better = (success & ~best_success) | ((success == best_success) & (score > best_score))
            best = torch.where(better.reshape(shape), x_adv, best)
            best_success, best_score = best_success | success, torch.where(better, score, best_score)
        return best.detach(), best_success
