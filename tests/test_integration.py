"""Slow integration tests: real training on the bundled Fashion-MNIST subset, fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod

from art_latent import HLDRTrainer, LatentClassifier, LatentTrainer
from art_latent.analysis import accuracy_vs_eps
from art_latent.data import load_bundled_fashion_mnist
from art_latent.models import SmallCNN


def _classifier(model: torch.nn.Module) -> LatentClassifier:
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), (1, 28, 28), 10,
                            optimizer=torch.optim.NAdam(model.parameters(), lr=1e-3), clip_values=(0.0, 1.0),
                            device_type="cpu")


@pytest.mark.slow
def test_hldr_is_more_robust_than_undefended_fine_tuning():
    """
    Pre-train a small CNN, then fine-tune two copies from the same weights for the same number of optimizer steps:
    plain cross-entropy on the benign images vs HLDR on (x, x + FGSM) pairs at budgets 0, 16/255, 32/255 (three
    pairs per image, so HLDR runs one epoch for every three of the undefended copy). HLDR must be clearly more
    accurate under ART's FGSM at 8/255 and 16/255.
    """
    data = load_bundled_fashion_mnist()
    x_pre, y_pre = data.x_train[:1500], data.y_train[:1500]
    x_ft, y_ft = data.x_train[1500:], data.y_train[1500:]
    torch.manual_seed(0)
    base = SmallCNN()
    LatentTrainer(_classifier(base), seed=0).fit(x_pre, y_pre, nb_epochs=4, batch_size=64, verbose=False)
    weights = {k: v.clone() for k, v in base.state_dict().items()}

    accuracies = {}
    for name in ("undefended", "hldr"):
        model = SmallCNN()
        model.load_state_dict(weights)
        clf = _classifier(model)
        if name == "undefended":
            LatentTrainer(clf, seed=0).fit(x_ft, y_ft, nb_epochs=9, batch_size=64, verbose=False)
        else:
            HLDRTrainer(clf, FastGradientMethod(clf, eps=16 / 255), xi=0.5, seed=0, validation_attack=None).fit(
                x_ft, y_ft, nb_epochs=3, batch_size=64, verbose=False
            )
        accuracies[name] = np.array(accuracy_vs_eps(
            clf, data.x_test, data.y_test, lambda c, e: FastGradientMethod(c, eps=e, batch_size=256),
            [0.0, 8 / 255, 16 / 255],
        ))
    gain = accuracies["hldr"] - accuracies["undefended"]
    assert accuracies["hldr"][0] > 0.7, accuracies  # it still classifies clean images
    assert gain[1] > 0.04 and gain[2] > 0.04, accuracies
