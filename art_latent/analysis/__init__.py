"""
Evaluation of defended classifiers: robust accuracy and accuracy-versus-budget curves.
"""

from art_latent.analysis.metrics import accuracy, accuracy_vs_eps, robust_accuracy

__all__ = ["accuracy", "accuracy_vs_eps", "robust_accuracy"]
