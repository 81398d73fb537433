"""
ART ``Trainer`` subclasses: the shared training loop and the latent defenses built on it.
"""

from art_latent.trainers.afd import AFDTrainer, ProjectionDiscriminator
from art_latent.trainers.atlr import ATLRTrainer, make_fast_attack
from art_latent.trainers.base import LatentTrainer
from art_latent.trainers.deep_defense import DeepDefenseTrainer
from art_latent.trainers.fimr import FIMRTrainer
from art_latent.trainers.hldr import HLDRTrainer
from art_latent.trainers.layerwise import LayerwisePerturbationTrainer
from art_latent.trainers.noise import GaussianNoiseTrainer, StabilityTrainer

__all__ = [
    "AFDTrainer",
    "ATLRTrainer",
    "DeepDefenseTrainer",
    "FIMRTrainer",
    "GaussianNoiseTrainer",
    "HLDRTrainer",
    "LatentTrainer",
    "LayerwisePerturbationTrainer",
    "ProjectionDiscriminator",
    "StabilityTrainer",
    "make_fast_attack",
]
