"""
:class:`TorchGradientAttack`: ART's FGSM / BIM / PGD re-implemented on device, computing input gradients only.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from art_latent.perturbations.base import PerturbationSource
from art_latent.perturbations.budgets import (
    Budget,
    broadcastable,
    device_budget,
    make_generator,
    on_device,
    per_sample_budget,
    sample,
    scalar,
)
from art_latent.utils import labels_to_indices, preserve_mode

if TYPE_CHECKING:
    from art.attacks.attack import EvasionAttack
    from art.estimators.classification.pytorch import PyTorchClassifier

logger = logging.getLogger(__name__)

__all__ = ["TorchGradientAttack"]


def _parse_norm(norm: int | float | str) -> float:
    """
    Normalise an ART norm specification to ``math.inf`` or ``2.0``.

    :param norm: ``np.inf``, ``"inf"`` or ``2``.
    :return: The norm as a float.
    """
    value = math.inf if norm == "inf" else float(norm)
    if value not in (math.inf, 2.0):
        raise ValueError(f'Only the norms np.inf, "inf" and 2 are supported, got {norm!r}.')
    return value



class TorchGradientAttack(PerturbationSource):
    """
    On-device FGSM / BIM / PGD with ART's semantics.

    One iteration, exactly as ART's ``ProjectedGradientDescentPyTorch._compute_pytorch`` and ``FastGradientMethod``:

    1. on the first iteration of a random restart (``num_random_init > 0``): ``x_adv = clip(x + u)`` with `u` drawn
       uniformly from the eps ball (ART's ``random_sphere``: uniform in the box for Linf, uniform in the ball for L2);
    2. ``g`` = gradient of the estimator's loss at ``x_adv`` w.r.t. the input, through ART's preprocessing, model in
       eval mode (ART's ``loss_gradient(training_mode=False)``), NaN entries set to 0, negated when targeted;
    3. direction ``sign(g)`` (Linf) or ``g / ||g||_2`` (L2; 0 where the norm is 0);
    4. ``x_adv = clip(x_adv + eps_step * direction)`` (NaN steps set to 0), with ``clip_values`` of the estimator;
    5. ``x_adv = x + projection(x_adv - x, eps)`` (ART's ``projection``: clipping for Linf, rescaling for L2).

    FGSM is one iteration with ``eps_step = eps`` (ART's ``FastGradientMethod`` also projects); BIM is PGD with Linf
    and no random init. With ``num_random_init > 1`` the restarts are combined as ART does: ``"sample"`` (PGD) keeps
    the first restart and replaces each sample by a later restart where that one succeeds (prediction changed from
    the clean prediction, or equal to the target); ``"batch"`` (FGM) keeps the restart with the highest success rate
    over the batch, starting from the clean batch with rate 0.

    Differences from ART, by design: the whole batch given to :meth:`generate` is one attack batch (ART averages the
    loss per ``batch_size`` chunk, which only rescales the gradient); random draws come from torch, not numpy;
    success is judged on logits without ART's postprocessing defences; preprocessing is applied to `x` only (labels
    are reduced once with the estimator's ``reduce_labels``).
    """

    eps: float

    def __init__(
        self,
        estimator: PyTorchClassifier,
        eps: float = 0.3,
        eps_step: float = 0.1,
        max_iter: int = 1,
        norm: int | float | str = np.inf,
        targeted: bool = False,
        num_random_init: int = 0,
        random_eps: bool = False,
        restart_selection: Literal["sample", "batch"] = "sample",
        generator: torch.Generator | int | None = None,
    ) -> None:
        """
        Create a :class:`.TorchGradientAttack` instance.

        :param estimator: An ART ``PyTorchClassifier`` (or subclass) whose preprocessing is all PyTorch.
        :param eps: Maximum perturbation (radius of the Linf or L2 ball around the input).
        :param eps_step: Step size of each iteration. Per-sample overrides of `eps` scale it by ``eps / self.eps``
                         so iterative attacks keep their step/eps ratio (unscaled when ``self.eps == 0``).
        :param max_iter: Number of iterations (1 for FGSM); 0 returns the inputs.
        :param norm: ``np.inf``, ``"inf"`` or 2.
        :param targeted: Descend the loss towards the labels given to :meth:`generate` instead of ascending it.
        :param num_random_init: Number of random restarts inside the eps ball; 0 starts at the input.
        :param random_eps: As ART's PGD: on each call, scale eps and eps_step by one factor drawn from a normal
                           distribution ``N(0, 1/2)`` truncated to ``[0, 1]``.
        :param restart_selection: How restarts are combined when ``num_random_init > 1``: ``"sample"`` (ART's PGD)
                                  or ``"batch"`` (ART's FastGradientMethod).
        :param generator: ``torch.Generator`` (or integer seed of a new CPU generator) for the random draws; `None`
                          uses torch's global generator.
        """
        from art.estimators.classification.pytorch import PyTorchClassifier

        if not isinstance(estimator, PyTorchClassifier):
            raise TypeError(f"`estimator` must be an art PyTorchClassifier, got {type(estimator).__name__}.")
        if not estimator.all_framework_preprocessing:
            raise ValueError(
                "TorchGradientAttack needs every preprocessing step of the estimator to be a PreprocessorPyTorch "
                "(gradients must flow through them as tensors); use ARTAttackSource instead."
            )
        if eps < 0:
            raise ValueError("The perturbation size `eps` has to be non-negative.")
        if eps_step <= 0:
            raise ValueError("The perturbation step-size `eps_step` has to be positive.")
        if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
            raise ValueError("The number of iterations `max_iter` has to be a non-negative integer.")
        if not isinstance(num_random_init, (int, np.integer)) or num_random_init < 0:
            raise ValueError("The number of random initialisations `num_random_init` has to be a non-negative integer.")
        if restart_selection not in ("sample", "batch"):
            raise ValueError(f'`restart_selection` must be "sample" or "batch", got {restart_selection!r}.')

        self.estimator = estimator
        self.eps = float(eps)
        self.eps_step = float(eps_step)
        self.max_iter = int(max_iter)
        self.norm = _parse_norm(norm)
        self.targeted = bool(targeted)
        self.num_random_init = int(num_random_init)
        self.random_eps = bool(random_eps)
        self.restart_selection = restart_selection
        self.generator = make_generator(generator)
        self._clip_cache: dict[tuple[torch.device, torch.dtype, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_art(
        cls, attack: EvasionAttack, generator: torch.Generator | int | None = None
    ) -> TorchGradientAttack | None:
        """
        Build the on-device equivalent of an ART attack, or return `None` when it cannot be reproduced.

        Supported: ``FastGradientMethod`` (``minimal=False``), ``BasicIterativeMethod``, ``ProjectedGradientDescent``
        and its ``ProjectedGradientDescentPyTorch`` / ``ProjectedGradientDescentNumpy`` variants, with norm inf or 2,
        scalar ``eps`` / ``eps_step``, any ``targeted``, ``num_random_init``, ``random_eps`` and ``max_iter``, on a
        ``PyTorchClassifier`` whose preprocessing is all PyTorch. Anything else (``minimal=True``, momentum
        ``decay``, a summary writer, norm 1, per-feature eps arrays, other estimators, subclasses that may change the
        algorithm) gives `None`.

        "Same as ART" means: with random initialisation off and the ART attack's ``batch_size`` at least the number of
        samples, :meth:`generate` returns what the attack's ``generate(x, y)`` returns for the same inputs and
        one-hot labels, up to float32 rounding (the tests check a max abs difference of 1e-5). With random
        initialisation the draws come from torch instead of numpy, with the same distributions.

        :param attack: An ART evasion attack.
        :param generator: Generator for the random draws (see :class:`.TorchGradientAttack`).
        :return: The equivalent source, or `None`.
        """
        from art.attacks.evasion import BasicIterativeMethod, FastGradientMethod, ProjectedGradientDescent
        from art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_numpy import (
            ProjectedGradientDescentNumpy,
        )
        from art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_pytorch import (
            ProjectedGradientDescentPyTorch,
        )
        from art.estimators.classification.pytorch import PyTorchClassifier

        def unsupported(reason: str) -> TorchGradientAttack | None:
            """Log why there is no equivalent; the `None` that ``from_art`` returns."""
            logger.debug("No on-device equivalent of %s: %s.", type(attack).__name__, reason)
            return None

        kind = type(attack)
        if kind is FastGradientMethod:
            params = attack
        elif kind in (ProjectedGradientDescent, BasicIterativeMethod):
            # The public PGD class delegates to a framework-specific attack that holds the full parameter set.
            params = attack._attack
            if type(params) not in (ProjectedGradientDescentPyTorch, ProjectedGradientDescentNumpy):
                return unsupported(f"delegates to {type(params).__name__}")
        elif kind in (ProjectedGradientDescentPyTorch, ProjectedGradientDescentNumpy):
            params = attack
        else:
            return unsupported("not FGM, BIM or PGD")

        estimator = params.estimator
        if not isinstance(estimator, PyTorchClassifier):
            return unsupported(f"estimator {type(estimator).__name__} is not a PyTorchClassifier")
        if not estimator.all_framework_preprocessing:
            return unsupported("preprocessing is not all PyTorch")
        if params.summary_writer is not None:
            return unsupported("a summary writer is set")
        if getattr(params, "minimal", False):
            return unsupported("minimal=True")
        if getattr(params, "decay", None) is not None:
            return unsupported("momentum (decay) is set")
        try:
            norm = _parse_norm(params.norm)
        except ValueError:
            return unsupported(f"norm {params.norm!r}")

        eps, eps_step = scalar(params.eps), scalar(params.eps_step)
        if eps is None or eps_step is None:
            return unsupported("eps or eps_step is not a scalar")
        random_eps = bool(getattr(params, "random_eps", False))
        if random_eps:
            # ART overwrites eps with each draw; the distribution fixed at construction holds the original bound.
            lower, upper = params.norm_dist.args
            scale, loc = params.norm_dist.kwds["scale"], params.norm_dist.kwds["loc"]
            if scalar(upper) is None or eps <= 0:
                return unsupported("random_eps with array eps")
            ratio = eps_step / eps
            eps = float(upper) * float(scale) + float(loc)
            eps_step = ratio * eps

        if kind is FastGradientMethod:
            # FGM steps by eps (its eps_step only serves minimal=True); eps == 0 makes the step irrelevant.
            return cls(
                estimator,
                eps=eps,
                eps_step=eps if eps > 0 else eps_step,
                max_iter=1,
                norm=norm,
                targeted=params.targeted,
                num_random_init=params.num_random_init,
                restart_selection="batch",
                generator=generator,
            )
        return cls(
            estimator,
            eps=eps,
            eps_step=eps_step,
            max_iter=params.max_iter,
            norm=norm,
            targeted=params.targeted,
            num_random_init=params.num_random_init,
            random_eps=random_eps,
            restart_selection="sample",
            generator=generator,
        )

    def generate(self, x: torch.Tensor, y: torch.Tensor, eps: Budget | None = None) -> torch.Tensor:
        """
        Perturb a batch on its device; see :class:`.TorchGradientAttack` for the algorithm.

        Same as ART: with random initialisation off, the result equals ART's ``generate`` of the attack this source
        was built from (see :meth:`from_art`) up to float32 rounding. Per-sample budgets give the same rows as
        generating each budget group separately. Only input gradients are computed (``torch.autograd.grad``), so
        parameter ``.grad`` tensors are never touched.

        :param x: Inputs ``(B, *input_shape)`` in input space, on the estimator's device.
        :param y: Labels (indices or one-hot); the target classes when the attack is targeted.
        :param eps: Budget override, a float or a tensor ``(B,)``.
        :return: Detached adversarial inputs.
        """
        x = x.detach()
        batch_size = x.shape[0]
        labels = labels_to_indices(y.detach()).to(x.device)
        if labels.shape[0] != batch_size:
            raise ValueError(f"`x` has {batch_size} samples but `y` has {labels.shape[0]}.")
        if self.max_iter == 0:
            return x.clone()

        rows: torch.Tensor | None = None  # the rows with a positive budget, when some are 0 (known on the host)
        if eps is None:
            if self.eps <= 0:
                return x.clone()
            # Filled on the device: no host-to-device copy (which would synchronise) per call.
            budgets = torch.full((batch_size,), self.eps, dtype=torch.float64, device=x.device)
            steps = torch.full((batch_size,), self.eps_step, dtype=torch.float64, device=x.device)
        else:
            if on_device(eps):
                # Read on the host it would synchronise: zero-budget rows are attacked too, and come back as x.
                budgets = device_budget(eps, batch_size)  # type: ignore[arg-type]
            else:
                budgets = per_sample_budget(eps, batch_size)
                active = budgets > 0
                if not active.any():
                    return x.clone()
                if not active.all():
                    # Rows are independent in eval mode, so zero-budget rows are skipped instead of attacked.
                    rows = active.nonzero().squeeze(1)
                    budgets = budgets[rows]
            steps = budgets * (self.eps_step / self.eps) if self.eps > 0 else torch.full_like(budgets, self.eps_step)

        if self.random_eps:
            factor = self._truncated_normal_factor()
            budgets, steps = budgets * factor, steps * factor

        if rows is None:
            return self._attack(x, labels, budgets, steps)
        rows = rows.to(x.device, non_blocking=True)
        x_adv = x.clone()
        x_adv[rows] = self._attack(x[rows], labels[rows], budgets, steps)
        return x_adv

    def _truncated_normal_factor(self) -> float:
        """
        Draw ART's ``random_eps`` factor: ``N(0, 1/2)`` truncated to ``[0, 1]``, by inverting the CDF.

        :return: The factor.
        """
        u = sample("rand", (1,), torch.empty(0, dtype=torch.float64), self.generator).item()
        cdf_upper = 0.5 * (1.0 + math.erf(2.0 / math.sqrt(2.0)))
        probability = torch.tensor(0.5 + u * (cdf_upper - 0.5), dtype=torch.float64)
        return round(0.5 * torch.special.ndtri(probability).item(), 10)

    def _clip_bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """
        Return the estimator's ``clip_values`` as tensors on `like`'s device and dtype (cached), or `None`.

        :param like: Tensor giving device and dtype.
        :return: ``(clip_min, clip_max)`` or `None`.
        """
        clip_values = self.estimator.clip_values
        if clip_values is None:
            return None
        key = (like.device, like.dtype, id(clip_values))
        if key not in self._clip_cache:
            self._clip_cache[key] = (
                torch.as_tensor(np.asarray(clip_values[0]), dtype=like.dtype, device=like.device),
                torch.as_tensor(np.asarray(clip_values[1]), dtype=like.dtype, device=like.device),
            )
        return self._clip_cache[key]

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        """
        Clip to the estimator's ``clip_values`` as ART does (``max(min(x, clip_max), clip_min)``).

        :param x: Inputs.
        :return: Clipped inputs.
        """
        bounds = self._clip_bounds(x)
        if bounds is None:
            return x
        return torch.maximum(torch.minimum(x, bounds[1]), bounds[0])

    def _set_gradient_mode(self) -> None:
        """
        Put the model in the mode ART's ``loss_gradient(training_mode=False)`` uses.
        """
        self.estimator._model.train(mode=False)
        if self.estimator.is_rnn:
            # cuDNN RNN backward only runs in training mode; ART then freezes batch-norm and dropout instead.
            self.estimator._model.train(mode=True)
            self.estimator.set_batchnorm(train=False)
            self.estimator.set_dropout(train=False)

    def _loss_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """
        Convert class indices to the labels the estimator's loss expects, as ART's ``loss_gradient`` does.

        :param labels: Class indices ``(B,)``.
        :return: Labels for ``estimator._loss``.
        """
        one_hot = torch.nn.functional.one_hot(labels, num_classes=self.estimator.nb_classes).to(torch.float32)
        return self.estimator.reduce_labels(one_hot)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """
        Run ART's preprocessing and the model on `x`, keeping the graph.

        :param x: Inputs in input space.
        :return: Logits.
        """
        x_preprocessed, _ = self.estimator._apply_preprocessing(x, y=None, fit=False, no_grad=False)
        return self.estimator._model(x_preprocessed)[-1]

    def _direction(self, x_adv: torch.Tensor, loss_labels: torch.Tensor) -> torch.Tensor:
        """
        Compute ART's normalised step direction at `x_adv`.

        :param x_adv: Current adversarial inputs.
        :param loss_labels: Labels for the estimator's loss.
        :return: ``sign(g)`` for Linf, ``g / ||g||_2`` for L2, with `g` the (negated if targeted) loss gradient.
        """
        x_grad = x_adv.detach().requires_grad_(True)
        loss = self.estimator._loss(self._logits(x_grad), loss_labels)
        (grad,) = torch.autograd.grad(loss, x_grad)
        if self.targeted:
            grad = -grad
        grad = torch.where(torch.isnan(grad), torch.zeros_like(grad), grad)
        if self.norm == math.inf:
            return grad.sign()
        grad_2d = grad.reshape(len(grad), -1)
        q_norm = torch.linalg.vector_norm(grad_2d, ord=2, dim=1, keepdim=True)
        inverse = torch.where(q_norm == 0, q_norm, 1 / q_norm)
        return (grad_2d.abs() * inverse).reshape(grad.shape) * grad.sign()

    def _project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """
        ART's ``projection``: onto the Linf ball by clipping, onto the L2 ball by rescaling.

        :param delta: Perturbations ``(B, ...)``.
        :param eps: Radii broadcastable as ``(B, 1, ..., 1)``.
        :return: Projected perturbations.
        """
        if self.norm == math.inf:
            return delta.sign() * torch.minimum(delta.abs(), eps)
        delta_2d = delta.reshape(len(delta), -1)
        norm = torch.linalg.vector_norm(delta_2d, ord=2, dim=1, keepdim=True)
        factor = torch.where(norm == 0, norm, torch.minimum(torch.ones_like(norm), eps.reshape(-1, 1) / norm))
        return (delta_2d * factor).reshape(delta.shape)

    def _random_init(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """
        ART's ``random_sphere`` start: uniform in the Linf box, or uniform in the L2 ball, then clipped.

        :param x: Clean inputs.
        :param eps: Radii broadcastable as ``(B, 1, ..., 1)``.
        :return: Randomly displaced inputs.
        """
        if self.norm == math.inf:
            noise = (2 * sample("rand", tuple(x.shape), x, self.generator) - 1) * eps
        else:
            n, dims = x.shape[0], x[0].numel()
            direction = sample(
                "randn", (n, dims), torch.empty(0, dtype=torch.float64, device=x.device), self.generator
            )
            s_2 = direction.pow(2).sum(dim=1)
            radius = torch.special.gammainc(torch.tensor(dims / 2.0, dtype=torch.float64), s_2 / 2.0) ** (1.0 / dims)
            noise = (direction * (radius / s_2.sqrt()).unsqueeze(1)).to(x.dtype).reshape(x.shape) * eps
        return self._clip(x + noise)

    def _success(self, x_adv: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """
        ART's ``compute_success_array``: prediction equals the target (targeted) or differs from the clean one.

        :param x_adv: Adversarial inputs.
        :param reference: Target indices (targeted) or clean predictions (untargeted).
        :return: Boolean success per sample.
        """
        self.estimator._model.eval()
        with torch.no_grad():
            predictions = self._logits(x_adv).argmax(dim=1)
        self._set_gradient_mode()
        return predictions == reference if self.targeted else predictions != reference

    def _attack(
        self, x: torch.Tensor, labels: torch.Tensor, budgets: torch.Tensor, steps: torch.Tensor
    ) -> torch.Tensor:
        """
        Run all restarts and iterations on a batch whose budgets are all positive.

        :param x: Clean inputs.
        :param labels: Class indices (targets when targeted).
        :param budgets: Per-sample eps ``(B,)``.
        :param steps: Per-sample eps_step ``(B,)``.
        :return: Adversarial inputs.
        """
        eps = broadcastable(budgets, x)
        eps_step = broadcastable(steps, x)
        loss_labels = self._loss_labels(labels)
        restarts = max(1, self.num_random_init)
        with preserve_mode(self.estimator._model):
            self._set_gradient_mode()
            reference = None
            if restarts > 1:
                if self.targeted:
                    reference = labels
                else:
                    self.estimator._model.eval()
                    with torch.no_grad():
                        reference = self._logits(x).argmax(dim=1)
                    self._set_gradient_mode()

            best = x
            best_rate = torch.zeros((), dtype=torch.float64, device=x.device)
            for restart in range(restarts):
                x_adv = x
                for iteration in range(self.max_iter):
                    if iteration == 0 and self.num_random_init > 0:
                        x_adv = self._random_init(x, eps)
                    step = eps_step * self._direction(x_adv, loss_labels)
                    step = torch.where(torch.isnan(step), torch.zeros_like(step), step)
                    x_adv = self._clip(x_adv + step)
                    x_adv = x + self._project(x_adv - x, eps)

                if restarts == 1:
                    best = x_adv
                elif self.restart_selection == "batch":
                    assert reference is not None  # set above whenever restarts > 1
                    # Compared on the device (a host read would synchronise): strictly better replaces, as in ART.
                    rate = self._success(x_adv, reference).double().mean()
                    better = rate > best_rate
                    best, best_rate = torch.where(better, x_adv, best), torch.where(better, rate, best_rate)
                elif restart == 0:
                    best = x_adv
                else:
                    assert reference is not None  # set above whenever restarts > 1
                    success = self._success(x_adv, reference).reshape(-1, *([1] * (x.ndim - 1)))
                    best = torch.where(success, x_adv, best)
        return best.detach()
