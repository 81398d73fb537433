"""
The bridge to ART: :class:`ARTAttackSource` runs any ART ``EvasionAttack`` through numpy, and
:func:`as_perturbation_source` picks the on-device :class:`~art_latent.perturbations.gradient.TorchGradientAttack`
whenever it reproduces the attack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from art_latent.perturbations import base
from art_latent.perturbations.base import PerturbationSource
from art_latent.perturbations.budgets import Budget, per_sample_budget, scalar
from art_latent.perturbations.gradient import TorchGradientAttack
from art_latent.utils import labels_to_indices, preserve_mode, preserve_param_grads

if TYPE_CHECKING:
    from art.attacks.attack import EvasionAttack

__all__ = ["ARTAttackSource", "as_perturbation_source", "attacked_model"]


@contextlib.contextmanager
def _preserve_estimator_state(estimator: Any) -> Iterator[None]:
    """
    Restore module modes and parameter gradients of an ART estimator's torch model, when it has one.

    :param estimator: Any ART estimator.
    """
    model = getattr(estimator, "_model", None)
    if not isinstance(model, torch.nn.Module):
        model = getattr(estimator, "model", None)
    if not isinstance(model, torch.nn.Module):
        yield
        return
    with preserve_mode(model), preserve_param_grads(model):
        yield


class ARTAttackSource(PerturbationSource):
    """
    Runs any ART ``EvasionAttack`` on a torch batch through numpy.

    Inputs go to the attack as float32 numpy arrays with one-hot float32 labels; the result comes back on the
    device and in the dtype of the inputs. A budget override sets the attack's ``eps`` (and scales ``eps_step`` by the
    same factor, keeping an iterative attack's step/eps ratio) once per distinct budget, then restores the attack's
    parameters. The sub-attacks of an attack holding a list of them (``AutoAttack``) get the override too.
    """

    def __init__(self, attack: EvasionAttack) -> None:
        """
        Create an :class:`~art_latent.perturbations.ARTAttackSource` instance.

        :param attack: An ART evasion attack whose estimator is a classifier.
        """
        from art.attacks.attack import EvasionAttack

        if not isinstance(attack, EvasionAttack):
            raise TypeError(f"`attack` must be an art EvasionAttack, got {type(attack).__name__}.")
        self.attack = attack

    @property
    def eps(self) -> float | None:
        """
        The attack's own ``eps`` when it has a scalar one, else `None`.
        """
        return scalar(getattr(self.attack, "eps", None))

    def generate(self, x: torch.Tensor, y: torch.Tensor, eps: Budget | None = None) -> torch.Tensor:
        """
        Run the attack on a batch.

        :param x: Inputs ``(B, *input_shape)`` in input space.
        :param y: Labels (indices or one-hot), passed to the attack one-hot.
        :param eps: Budget override, a float or a tensor ``(B,)``; rejected with a `ValueError` when the attack has
                    no scalar ``eps``.
        :return: Detached adversarial inputs on `x`'s device, in `x`'s dtype.
        """
        batch_size = x.shape[0]
        labels = labels_to_indices(y.detach()).cpu().numpy()
        if labels.shape[0] != batch_size:
            raise ValueError(f"`x` has {batch_size} samples but `y` has {labels.shape[0]}.")
        # A copy, so an attack writing into its input can never reach `x`'s storage.
        x_np = x.detach().to("cpu", torch.float32).numpy().copy()
        y_np = np.eye(self.attack.estimator.nb_classes, dtype=np.float32)[labels]

        with _preserve_estimator_state(self.attack.estimator):
            if eps is None:
                x_adv = self.attack.generate(x_np, y=y_np)
            else:
                x_adv = self._generate_with_budgets(x_np, y_np, per_sample_budget(eps, batch_size).numpy())
        return torch.from_numpy(np.asarray(x_adv, dtype=np.float32)).to(device=x.device, dtype=x.dtype)

    def _budget_attacks(self) -> list[Any]:
        """
        Return the attacks whose ``eps`` a budget override sets: this one and any sub-attacks it runs.

        :return: The attacks.
        """
        attacks = [self.attack]
        for sub_attack in getattr(self.attack, "attacks", None) or []:
            if "eps" in getattr(sub_attack, "attack_params", []):
                attacks.append(sub_attack)
        return attacks

    def _generate_with_budgets(self, x: np.ndarray, y: np.ndarray, budgets: np.ndarray) -> np.ndarray:
        """
        Generate each group of equal budgets with the attack's ``eps`` temporarily set to that budget.

        :param x: Inputs as float32 numpy.
        :param y: One-hot labels.
        :param budgets: Per-sample budgets ``(B,)``.
        :return: Adversarial inputs; zero-budget rows are `x` unchanged.
        """
        name = type(self.attack).__name__
        if "eps" not in self.attack.attack_params:
            raise ValueError(f"{name} has no `eps` parameter, so a budget override `eps` cannot be applied.")
        if getattr(self.attack, "random_eps", False):
            raise ValueError(
                f"{name} has random_eps=True: it draws eps from a distribution fixed at construction and would ignore "
                "a budget override `eps`."
            )

        # (attack, its parameters to restore, its scalar eps, its scalar eps_step or None when it has none)
        saved: list[tuple[Any, dict[str, Any], float, float | None]] = []
        for attack in self._budget_attacks():
            params = {"eps": attack.eps}
            eps0, step0 = scalar(attack.eps), None
            if "eps_step" in attack.attack_params:
                params["eps_step"] = attack.eps_step
                step0 = scalar(attack.eps_step)
            if eps0 is None or ("eps_step" in params and step0 is None):
                raise ValueError(
                    f"{type(attack).__name__} has array-valued eps/eps_step; a budget override needs scalars."
                )
            saved.append((attack, params, eps0, step0))

        x_adv = x.copy()
        try:
            for budget in np.unique(budgets):
                if budget == 0:
                    continue
                rows = np.flatnonzero(budgets == budget)
                for attack, _, eps0, step0 in saved:
                    update = {"eps": float(budget)}
                    if step0 is not None and eps0 > 0:
                        update["eps_step"] = step0 * float(budget) / eps0
                    attack.set_params(**update)
                x_adv[rows] = self.attack.generate(x[rows], y=y[rows])
        finally:
            for attack, params, _, _ in saved:
                attack.set_params(**params)
        return x_adv


def as_perturbation_source(
    attack: base.PerturbationSource | EvasionAttack,
    fast: bool = True,
    argument: str = "attack",
    generator: torch.Generator | int | None = None,
) -> base.PerturbationSource:  # qualified: the docs document the class under two names
    """
    Turn an attack into a :class:`~art_latent.perturbations.PerturbationSource`.

    :param attack: A :class:`~art_latent.perturbations.PerturbationSource` (returned as is) or an ART ``EvasionAttack``.
    :param fast: Use :class:`~art_latent.perturbations.TorchGradientAttack` when it reproduces the ART attack (see
                 :meth:`~art_latent.perturbations.TorchGradientAttack.from_art`); otherwise, or when `False`, wrap it in
                 :class:`~art_latent.perturbations.ARTAttackSource`.
    :param argument: The name of the argument `attack` came from, for error messages.
    :param generator: Generator (or seed) of the fast path's random starts.
    :return: The perturbation source.
    """
    if isinstance(attack, PerturbationSource):
        return attack
    from art.attacks.attack import EvasionAttack

    if isinstance(attack, EvasionAttack):
        if fast:
            source = TorchGradientAttack.from_art(attack, generator=generator)
            if source is not None:
                return source
        return ARTAttackSource(attack)
    raise TypeError(
        f"`{argument}` must be a PerturbationSource or an art.attacks.attack.EvasionAttack, got "
        f"{type(attack).__name__}."
    )


def attacked_model(attack: Any) -> torch.nn.Module | None:
    """
    The PyTorch model whose gradients `attack` follows, when it has one (ART attacks and the gradient sources).

    :param attack: An ART evasion attack or a :class:`~art_latent.perturbations.PerturbationSource`.
    :return: The ``torch.nn.Module``, or ``None`` for attacks without a model (noise, black-box estimators).
    """
    estimator = getattr(attack, "estimator", None)
    if estimator is None:  # an ARTAttackSource holds the ART attack
        estimator = getattr(getattr(attack, "attack", None), "estimator", None)
    model = getattr(estimator, "model", None)
    return model if isinstance(model, torch.nn.Module) else None
