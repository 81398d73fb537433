"""
art_latent: hidden-layer (latent) adversarial defenses for PyTorch models in IBM's Adversarial Robustness Toolbox.

The public names are imported on first use (PEP 562), so ``import art_latent`` and the ``art-latent`` command start
without importing torch and ART.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LatentClassifier": "art_latent.estimator",
    "ARTAttackSource": "art_latent.perturbations",
    "GaussianNoiseSource": "art_latent.perturbations",
    "PerturbationSource": "art_latent.perturbations",
    "TorchGradientAttack": "art_latent.perturbations",
    "as_perturbation_source": "art_latent.perturbations",
    "latent_disparity": "art_latent.regularizers",
    "LatentTrainer": "art_latent.trainers",
    "HLDRTrainer": "art_latent.trainers",
    "FIMRTrainer": "art_latent.trainers",
    "GaussianNoiseTrainer": "art_latent.trainers",
    "StabilityTrainer": "art_latent.trainers",
    "AFDTrainer": "art_latent.trainers",
    "DeepDefenseTrainer": "art_latent.trainers",
    "LayerwisePerturbationTrainer": "art_latent.trainers",
    "ATLRTrainer": "art_latent.trainers",
    "LayerSustainabilityAnalysis": "art_latent.analysis",
    "DenoiserTrainer": "art_latent.defences",
    "FeatureGuidedDenoiser": "art_latent.defences",
    "RobustnessReport": "art_latent.analysis",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'art_latent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
