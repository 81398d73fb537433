"""The authors' variant of the relative error: one Frobenius ratio per batch, at the activation modules' outputs."""

from __future__ import annotations

import math

import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from helpers import make_classifier
from torch import nn

from art_latent.analysis.lsa import LayerSustainabilityAnalysis, activation_layers, learnable_layers
from art_latent.estimator import LatentClassifier
from art_latent.perturbations import as_perturbation_source
from art_latent.regularizers.relative_error import layerwise_relative_error, relative_error
from art_latent.trainers.atlr import ATLRTrainer

# Three samples; the hidden layer is ReLU(identity(x)), so the activations are ReLU(x) by hand:
# relu(X)     = [[1, 2], [3, 0], [0, 2]]       relu(X_HAT) = [[1, 1], [2, 0], [0, 0]]
# difference  = [[0, 1], [1, 0], [0, 2]]
# per sample: 1/sqrt(5), 1/3, 2/2 = 1;  whole batch: sqrt(1+1+4) / sqrt(5+9+4) = sqrt(1/3);
# batches of two: sqrt(2)/sqrt(14) for samples 0-1, then 1 for sample 2.
X = [[1.0, 2.0], [3.0, -1.0], [0.0, 2.0]]
X_HAT = [[1.0, 1.0], [2.0, -1.0], [0.0, 0.0]]
PER_SAMPLE = [1 / math.sqrt(5), 1 / 3, 1.0]


def _identity_relu_classifier() -> LatentClassifier:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        model[2].bias.zero_()
    return LatentClassifier(model, nn.CrossEntropyLoss(), (2,), 2,
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), device_type="cpu")


def test_layerwise_batch_reduction_matches_hand_computation():
    a, b = torch.relu(torch.tensor(X)), torch.relu(torch.tensor(X_HAT))
    a2 = torch.tensor([[1.0], [2.0], [2.0]])  # second layer: diff (1, 1, 0): batch sqrt(2)/3, samples (1, 1/2, 0)
    batch = layerwise_relative_error([a, a2], [b, a2 + torch.tensor([[1.0], [1.0], [0.0]])], gamma=[0.5, 2.0],
                                     reduction="batch")
    assert batch.item() == pytest.approx(0.5 * math.sqrt(1 / 3) + 2.0 * math.sqrt(2) / 3)
    sample = layerwise_relative_error([a, a2], [b, a2 + torch.tensor([[1.0], [1.0], [0.0]])], gamma=[0.5, 2.0])
    assert sample.item() == pytest.approx(0.5 * sum(PER_SAMPLE) / 3 + 2.0 * 1.5 / 3)
    # "sample" is the default and "mean" its alias; the batch ratio is relative_error(..., "batch")
    assert layerwise_relative_error([a], [b], reduction="mean").item() == pytest.approx(sum(PER_SAMPLE) / 3)
    assert layerwise_relative_error([a], [b], reduction="batch").item() == pytest.approx(
        relative_error(a, b, "batch").item())
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        layerwise_relative_error([a], [b], reduction="none")


def test_batch_reduction_gradient_is_finite_for_identical_inputs():
    a = torch.tensor(X, requires_grad=True)
    value = layerwise_relative_error([a], [a.detach().clone()], reduction="batch")
    value.backward()
    assert value.item() == 0.0
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_lsa_batch_reduction_matches_hand_computation():
    clf = _identity_relu_classifier()
    analysis = LayerSustainabilityAnalysis(clf)
    assert analysis.layers == ["1"]
    x, x_hat = torch.tensor(X).numpy(), torch.tensor(X_HAT).numpy()
    per_sample = analysis.run(x, x_perturbed=x_hat, batch_size=2)  # default: unchanged, one row per sample
    assert per_sample.errors["x_perturbed"][:, 0].tolist() == pytest.approx(PER_SAMPLE)
    whole = analysis.run(x, x_perturbed=x_hat, batch_size=3, reduction="batch")
    assert whole.errors["x_perturbed"].shape == (1, 1)
    assert whole.errors["x_perturbed"][0, 0] == pytest.approx(math.sqrt(1 / 3))
    halves = analysis.run(x, x_perturbed=x_hat, batch_size=2, reduction="batch")
    assert halves.errors["x_perturbed"][:, 0].tolist() == pytest.approx([math.sqrt(2 / 14), 1.0])
    assert halves.mu() == pytest.approx((math.sqrt(2 / 14) + 1.0) / 2)
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        analysis.run(x, x_perturbed=x_hat, reduction="mean")


def test_activation_layers_are_the_authors_probes():
    clf = _identity_relu_classifier()
    assert activation_layers(clf) == learnable_layers(clf) == ["1"]
    # TinyNet: the ELU, then the residual block's ReLU called twice; the functional relu after fc is not a module
    tiny = make_classifier()
    assert activation_layers(tiny) == ["stem.unit.act", "res.relu", "res.relu#1"]
    assert LayerSustainabilityAnalysis(tiny, layers="activations").layers == activation_layers(tiny)
    assert learnable_layers(tiny) != activation_layers(tiny)
    with pytest.raises(ValueError, match="include_logits"):
        LayerSustainabilityAnalysis(tiny, layers="activations", include_logits=True)
    tanh = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    tanh_clf = LatentClassifier(tanh, nn.CrossEntropyLoss(), (2,), 2, device_type="cpu")
    with pytest.raises(ValueError, match="no ReLU, ELU or LeakyReLU"):
        activation_layers(tanh_clf)


def test_atlr_batch_reduction_loss_matches_hand_computation():
    clf = _identity_relu_classifier()
    attack = FastGradientMethod(clf, eps=0.5)
    x, y = torch.tensor(X), torch.tensor([0, 1, 0])
    x_hat = as_perturbation_source(attack).generate(x, y)
    model = clf.model
    logits_adv = model(x_hat)
    a, b = torch.relu(x), torch.relu(x_hat)
    by_batch = (a - b).norm() / a.norm()
    by_sample = ((a - b).norm(dim=1) / a.norm(dim=1)).mean()
    assert not math.isclose(by_batch.item(), by_sample.item(), rel_tol=1e-3)
    for reduction, expected in (("batch", by_batch), ("sample", by_sample)):
        trainer = ATLRTrainer(clf, attack, layers=["1"], gamma=2.0, reduction=reduction)
        loss, _, logs = trainer.training_step({"x": x, "y": y})
        torch.testing.assert_close(logs["regularizer"], 2.0 * expected.detach())
        torch.testing.assert_close(loss, nn.functional.cross_entropy(logits_adv, y) + 2.0 * expected)
    assert ATLRTrainer(clf, attack, layers=["1"]).reduction == "sample"
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        ATLRTrainer(clf, attack, layers=["1"], reduction="mean")
