"""
art_latent: hidden-layer (latent) adversarial defenses for PyTorch models in IBM's Adversarial Robustness Toolbox.
"""

from art_latent.defences import DenoiserTrainer, FeatureGuidedDenoiser
from art_latent.estimator import LatentClassifier
from art_latent.perturbations import (
    ARTAttackSource,
    GaussianNoiseSource,
    PerturbationSource,
    TorchGradientAttack,
    as_perturbation_source,
)
from art_latent.regularizers import latent_disparity
from art_latent.trainers import (
    AFDTrainer,
    DeepDefenseTrainer,
    FIMRTrainer,
    GaussianNoiseTrainer,
    HLDRTrainer,
    LatentTrainer,
    StabilityTrainer,
)

__version__ = "0.1.0"

__all__ = [
    "AFDTrainer",
    "ARTAttackSource",
    "DeepDefenseTrainer",
    "DenoiserTrainer",
    "FIMRTrainer",
    "FeatureGuidedDenoiser",
    "GaussianNoiseSource",
    "GaussianNoiseTrainer",
    "HLDRTrainer",
    "LatentClassifier",
    "LatentTrainer",
    "PerturbationSource",
    "StabilityTrainer",
    "TorchGradientAttack",
    "__version__",
    "as_perturbation_source",
    "latent_disparity",
]
