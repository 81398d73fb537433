"""
The checks a trainer runs on an attack it is given (training, validation or analysis attack) before it keeps it: not a
targeted one where the method trains on the true label, budgets in the classifier's units, and a warning when the
attack follows another model's gradients (a transfer attack).
"""

from __future__ import annotations

import warnings
from typing import Any

from art_latent.estimator import LatentClassifier
from art_latent.perturbations import PerturbationSource, as_perturbation_source, attacked_model
from art_latent.utils import user_stacklevel
from art_latent.validation import check_budget_units


def is_targeted(attack: Any) -> bool:
    """Whether `attack`, or the ART attack a perturbation source wraps, is a targeted attack."""
    for candidate in (attack, getattr(attack, "attack", None)):
        targeted = getattr(candidate, "targeted", False)
        if isinstance(targeted, bool) and targeted:
            return True
    return False


def checked_attack_source(attack: Any, fast: bool, argument: str, classifier: LatentClassifier,
                          refuse_targeted: bool, trainer_name: str) -> PerturbationSource:
    """
    `attack` as a :class:`~art_latent.perturbations.PerturbationSource`, checked for the trainer of `classifier`.

    :param attack: An ART evasion attack or a perturbation source.
    :param fast: Use the on-device torch path where it reproduces the attack.
    :param argument: The argument that gave the attack (for error messages).
    :param classifier: The trainer's classifier: budgets must be in its ``clip_values`` units, and an attack on
                       another model is warned about.
    :param refuse_targeted: Refuse a targeted attack (a method that trains on the examples with the true label).
    :param trainer_name: The trainer's class name (for error messages).
    :return: The perturbation source.
    """
    if refuse_targeted and is_targeted(attack):
        raise ValueError(
            f"`{argument}` is a targeted attack ({type(attack).__name__} with targeted=True): its examples move "
            f"towards the label they are given, which {trainer_name} uses as the true label, so training "
            "on them would not defend against anything. Use an untargeted attack (targeted=False), as ART's "
            "AdversarialTrainer requires."
        )
    source = as_perturbation_source(attack, fast=fast, argument=argument)
    check_budget_units(argument, getattr(source, "eps", None), classifier.clip_values, "eps")
    model = attacked_model(attack) or attacked_model(source)
    if model is not None and model is not classifier.model:
        warnings.warn(
            f"`{argument}` follows the gradients of another model than the trainer's classifier: its examples "
            "are a transfer attack, not adversarial for the model being trained. Build the attack on the "
            "trainer's classifier unless a transfer attack is intended.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return source
