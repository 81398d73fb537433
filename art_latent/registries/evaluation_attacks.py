"""
The registry of the attacks :class:`~art_latent.analysis.report.RobustnessReport` can run: one
:class:`EvaluationAttack` entry per attack, with its name, title, white-box flag, axis and builder. The report, the
benchmark configuration, its report and figures read their attack names, titles and kinds from here.

Adding an attack is one builder function and one :func:`register_evaluation_attack` call:

.. code-block:: python

    from art.attacks.evasion import BasicIterativeMethod
    from art_latent.registries.evaluation_attacks import EvaluationAttack, register_evaluation_attack
    from art_latent.perturbations import as_perturbation_source

    def build_bim(report, classifier, eps, generator):
        attack = BasicIterativeMethod(classifier, eps=eps, eps_step=eps / 4, max_iter=5, verbose=False)
        return as_perturbation_source(attack, generator=generator)

    register_evaluation_attack(EvaluationAttack("bim", "BIM (white-box)", white_box=True, axis="eps", build=build_bim))

Imports stay lazy (standard library only at import): the command line and the configuration read this module.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["EvaluationAttack", "attack_names", "attack_titles", "evaluation_attack", "evaluation_attacks",
           "register_evaluation_attack"]

#: ``build(report, classifier, eps, generator)``: the perturbation source of the attack on `classifier` with the
#: report's settings (``eps`` is a reference budget; the report overrides it per call), seeded by `generator`.
Builder = Callable[[Any, Any, float, Any], Any]


@dataclass(frozen=True)
class EvaluationAttack:
    """One attack of the evaluation suite."""

    #: The name in ``RobustnessReport(attacks=...)``, the configuration and the JSON.
    name: str
    #: The title of its tables and figures.
    title: str
    #: Whether it follows the attacked model's own gradients (the gradient-masking checks compare these).
    white_box: bool
    #: ``"eps"`` (a curve over the budgets) or ``"sigma"`` (over the noise levels).
    axis: str
    #: Builds its perturbation source per classifier; ``None`` for the attacks the report runs itself (the
    #: transfer attack, made once on the reference, and the Gaussian noise).
    build: Builder | None = None

    def __post_init__(self) -> None:
        if self.axis not in ("eps", "sigma"):
            raise ValueError(f"EvaluationAttack {self.name!r}: axis must be 'eps' or 'sigma', got {self.axis!r}.")


_REGISTRY: dict[str, EvaluationAttack] = {}


def register_evaluation_attack(attack: EvaluationAttack, replace: bool = False) -> EvaluationAttack:
    """
    Add an attack to the suite.

    :param attack: The entry.
    :param replace: Replace an entry of the same name (else that is an error).
    :return: `attack`.
    :raises ValueError: If the name is taken and `replace` is false.
    """
    if attack.name in _REGISTRY and not replace:
        raise ValueError(f"An evaluation attack named {attack.name!r} is already registered.")
    _REGISTRY[attack.name] = attack
    return attack


def evaluation_attacks() -> dict[str, EvaluationAttack]:
    """Every registered attack, ``{name: entry}``, in registration order."""
    return dict(_REGISTRY)


def evaluation_attack(name: str) -> EvaluationAttack:
    """
    The entry of an attack.

    :param name: Its name.
    :return: The entry.
    :raises ValueError: If no attack has that name.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown evaluation attack {name!r}; registered: {list(_REGISTRY)}.") from None


def attack_names(axis: str | None = None) -> tuple[str, ...]:
    """
    The registered attack names, in registration order.

    :param axis: Only those over this axis (``"eps"`` or ``"sigma"``).
    :return: The names.
    """
    return tuple(n for n, a in _REGISTRY.items() if axis is None or a.axis == axis)


def attack_titles() -> dict[str, str]:
    """``{name: title}`` of every registered attack."""
    return {n: a.title for n, a in _REGISTRY.items()}


# ---------------------------------------------------------------------------------------------------- built-ins


def _fgsm(report: Any, classifier: Any, eps: float, generator: Any) -> Any:
    from art.attacks.evasion import FastGradientMethod

    from art_latent.perturbations import as_perturbation_source

    return as_perturbation_source(FastGradientMethod(classifier, eps=eps, batch_size=report.batch_size),
                                  generator=generator)


def _pgd(report: Any, classifier: Any, eps: float, generator: Any) -> Any:
    from art.attacks.evasion import ProjectedGradientDescent

    from art_latent.perturbations import as_perturbation_source

    attack = ProjectedGradientDescent(
        classifier, eps=eps, eps_step=report.pgd_step_ratio * eps, max_iter=report.pgd_max_iter,
        num_random_init=report.pgd_restarts, batch_size=report.batch_size, verbose=False,
    )
    return as_perturbation_source(attack, generator=generator)


def _autoattack(report: Any, classifier: Any, eps: float, generator: Any) -> Any:
    from art_latent.attacks.autoattack import MULTIPROCESS_MESSAGE, AutoAttackEnsemble
    from art_latent.perturbations import ARTAttackSource

    if importlib.util.find_spec("multiprocess") is None:
        raise ImportError(MULTIPROCESS_MESSAGE)
    kwargs = {"batch_size": report.batch_size, "preset": report.autoattack_preset, **report.autoattack_kwargs}
    return ARTAttackSource(AutoAttackEnsemble(classifier, eps=eps, **kwargs))


def _latent(report: Any, classifier: Any, eps: float, generator: Any) -> Any:
    from art_latent.attacks import LatentPGD
    from art_latent.estimator import LatentClassifier
    from art_latent.perturbations import ARTAttackSource

    if not isinstance(classifier, LatentClassifier):
        classifier = LatentClassifier.from_classifier(classifier)
    kwargs = {"eps_step": report.pgd_step_ratio * eps, "max_iter": report.pgd_max_iter,
              "num_random_init": max(report.pgd_restarts, 1), "batch_size": report.batch_size,
              "verbose": False, **report.latent_kwargs}
    return ARTAttackSource(LatentPGD(classifier, eps=eps, **kwargs))


for _entry in (
    EvaluationAttack("fgsm", "FGSM (white-box)", white_box=True, axis="eps", build=_fgsm),
    EvaluationAttack("pgd", "PGD-Linf (white-box)", white_box=True, axis="eps", build=_pgd),
    EvaluationAttack("transfer", "transfer from the reference", white_box=False, axis="eps"),
    EvaluationAttack("noise", "Gaussian noise", white_box=False, axis="sigma"),
    EvaluationAttack("autoattack", "AutoAttack", white_box=True, axis="eps", build=_autoattack),
    EvaluationAttack("latent", "latent adaptive PGD", white_box=True, axis="eps", build=_latent),
):
    register_evaluation_attack(_entry)
