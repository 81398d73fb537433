"""
ART ``Trainer`` subclasses: the shared training loop and the latent defenses built on it.
"""

from art_latent.trainers.base import LatentTrainer
from art_latent.trainers.fimr import FIMRTrainer
from art_latent.trainers.hldr import HLDRTrainer
from art_latent.trainers.noise import GaussianNoiseTrainer, StabilityTrainer

__all__ = ["FIMRTrainer", "GaussianNoiseTrainer", "HLDRTrainer", "LatentTrainer", "StabilityTrainer"]
