"""
Evaluation of defended classifiers: robust accuracy, accuracy-versus-budget curves and the representation metrics
of the papers (sensitivity, dimensionality, rho_2, eps_ref).
"""

from art_latent.analysis.curves import (
    ConfidenceInterval,
    accuracy,
    accuracy_under_perturbation,
    accuracy_vs_eps,
    accuracy_vs_noise,
    mean_confidence_interval,
    perturbation_error,
    predict_labels,
    robust_accuracy,
)
from art_latent.analysis.deepfool_metrics import accuracy_at_eps_ref, eps_ref, rho2
from art_latent.analysis.lsa import LayerSustainabilityAnalysis, LSAResult, learnable_layers, rg_score
from art_latent.analysis.report import RobustnessReport, gradient_masking_flags
from art_latent.analysis.representation import (
    embeddings,
    representation_dimensionality,
    representation_sensitivity,
    robust_accuracy_auc,
)

__all__ = [
    "ConfidenceInterval",
    "LSAResult",
    "LayerSustainabilityAnalysis",
    "RobustnessReport",
    "accuracy",
    "accuracy_under_perturbation",
    "accuracy_vs_noise",
    "gradient_masking_flags",
    "learnable_layers",
    "mean_confidence_interval",
    "perturbation_error",
    "predict_labels",
    "accuracy_at_eps_ref",
    "accuracy_vs_eps",
    "embeddings",
    "eps_ref",
    "representation_dimensionality",
    "representation_sensitivity",
    "rg_score",
    "rho2",
    "robust_accuracy",
    "robust_accuracy_auc",
]
