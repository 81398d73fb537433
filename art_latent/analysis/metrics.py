"""Old import path of the accuracy metrics, which live in :mod:`art_latent.analysis.curves` with the curves."""

from art_latent.analysis.curves import (
    accuracy,
    accuracy_vs_eps,
    accuracy_vs_noise,
    mean_confidence_interval,
    perturbation_error,
    robust_accuracy,
)

__all__ = ["accuracy", "accuracy_vs_eps", "accuracy_vs_noise", "mean_confidence_interval", "perturbation_error",
           "robust_accuracy"]
