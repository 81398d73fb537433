"""
Regularizers as pure functions of tensors: testable alone, reusable across trainers (HLDR's disparity is also the
feature-guided denoiser's guidance loss; AT-LR's relative error is LSA's measure).
"""

from art_latent.regularizers.disparity import NORMALIZATIONS, latent_disparity

__all__ = ["NORMALIZATIONS", "latent_disparity"]
