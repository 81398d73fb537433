"""
Regularizers as pure functions of tensors: testable alone, reusable across trainers (HLDR's disparity is also the
feature-guided denoiser's guidance loss; AT-LR's relative error is LSA's measure).
"""

from art_latent.regularizers.deepfool import DeepFoolResult, deep_defense_regularizer, deepfool, perturbation_ratio
from art_latent.regularizers.disparity import NORMALIZATIONS, latent_disparity
from art_latent.regularizers.fisher import fisher_trace, inverse_probabilities
from art_latent.regularizers.relative_error import layerwise_relative_error, relative_error
from art_latent.regularizers.stability import stability_kl

__all__ = [
    "NORMALIZATIONS",
    "DeepFoolResult",
    "deep_defense_regularizer",
    "deepfool",
    "fisher_trace",
    "inverse_probabilities",
    "latent_disparity",
    "layerwise_relative_error",
    "perturbation_ratio",
    "relative_error",
    "stability_kl",
]
