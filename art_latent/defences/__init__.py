"""
Preprocessing defences (ART ``PreprocessorPyTorch``) and their trainers: the feature-guided denoiser of paper 000's
baselines.
"""

from art_latent.defences.denoiser import DenoiserTrainer, DenoisingUNet, FeatureGuidedDenoiser

__all__ = ["DenoiserTrainer", "DenoisingUNet", "FeatureGuidedDenoiser"]
