"""
ART ``Trainer`` subclasses: the shared training loop and the latent defenses built on it.
"""

from art_latent.trainers.base import LatentTrainer
from art_latent.trainers.hldr import HLDRTrainer

__all__ = ["HLDRTrainer", "LatentTrainer"]
