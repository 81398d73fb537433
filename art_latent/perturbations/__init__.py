"""
Sources of perturbed inputs for a training batch.

A :class:`PerturbationSource` turns a batch ``(x, y)`` that already lives on the model's device into perturbed inputs
of the same shape, dtype and device. Three sources are provided:

- :class:`ARTAttackSource` runs any ART ``EvasionAttack`` through a numpy round trip (general, slower);
- :class:`TorchGradientAttack` re-implements ART's FGSM / BIM / PGD on device, computing input gradients only
  (ART's ``loss_gradient`` also back-propagates into every parameter, which is most of its cost);
- :class:`GaussianNoiseSource` adds clipped Gaussian noise (and :class:`~art_latent.perturbations.noise.NoiseSource`
  the statistical noises of LSA).

:func:`as_perturbation_source` picks the fast torch path for an ART attack whenever it can reproduce the attack.

Every source takes an optional budget override ``eps``: a float, or a tensor with one budget per sample, so a batch
can be perturbed at several budgets (for example ``0, 16/255, 32/255``) in one call; rows with a zero budget are
returned unchanged, bit for bit.

One module per responsibility: :mod:`~art_latent.perturbations.base` (the interface),
:mod:`~art_latent.perturbations.budgets` (per-sample budgets and seeded draws),
:mod:`~art_latent.perturbations.gradient` (the on-device FGSM / BIM / PGD),
:mod:`~art_latent.perturbations.art_bridge` (ART attacks), :mod:`~art_latent.perturbations.noise` (noise) and
:mod:`~art_latent.perturbations.pairs` (HLDR's budget pairs). This package re-exports their names.
"""

from art_latent.perturbations.art_bridge import ARTAttackSource, as_perturbation_source, attacked_model
from art_latent.perturbations.base import PerturbationSource
from art_latent.perturbations.budgets import Budget
from art_latent.perturbations.gradient import TorchGradientAttack
from art_latent.perturbations.noise import GaussianNoiseSource, NoiseSource
from art_latent.perturbations.pairs import budget_pairs

__all__ = [
    "ARTAttackSource",
    "Budget",
    "GaussianNoiseSource",
    "NoiseSource",
    "PerturbationSource",
    "TorchGradientAttack",
    "as_perturbation_source",
    "attacked_model",
    "budget_pairs",
]
