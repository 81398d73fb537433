"""
Preprocessing defences (ART ``PreprocessorPyTorch``) and their trainers: the feature-guided denoiser of paper 000's
baselines.
"""

from art_latent.defences.denoiser import DenoiserTrainer
from art_latent.defences.feature_guided import FeatureGuidedDenoiser
from art_latent.defences.unet import DenoisingUNet

__all__ = ["DenoiserTrainer", "DenoisingUNet", "FeatureGuidedDenoiser"]
