"""Paper 001 representation metrics and paper 003 DeepFool/FGSM metrics against hand-computed values."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from torch import nn

from art_latent import LatentClassifier
from art_latent.analysis.deepfool_metrics import accuracy_at_eps_ref, eps_ref, rho2
from art_latent.analysis.representation import (
    embeddings,
    final_linear_layer,
    representation_dimensionality,
    representation_sensitivity,
    resolve_embedding,
    robust_accuracy_auc,
)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _mlp_classifier(W1: torch.Tensor, W2: torch.Tensor, clip=None) -> LatentClassifier:
    """x (4,) -> relu(W1 x) (embedding, 3 units) -> W2 h (2 classes); no biases."""
    model = nn.Sequential(OrderedDict(fc=nn.Linear(4, 3, bias=False), act=nn.ReLU(), head=nn.Linear(3, 2, bias=False)))
    with torch.no_grad():
        model.fc.weight.copy_(W1)
        model.head.weight.copy_(W2)
    return LatentClassifier(model, nn.CrossEntropyLoss(), (4,), 2, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                            clip_values=clip, device_type="cpu", layers="act")


W1 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])  # unit 3 dead for x >= 0
W2 = torch.tensor([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.0]])


def test_embedding_is_the_input_of_the_final_linear_layer():
    clf = _mlp_classifier(W1, W2)
    assert final_linear_layer(clf) == "head"
    site = resolve_embedding(clf)
    assert site.name == "head" and site.use_input
    x = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, 0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(embeddings(clf, x), [[1.0, 2.0, 0.0], [0.5, 0.0, 0.0]])
    np.testing.assert_allclose(embeddings(clf, x, layer="fc"), [[1.0, 2.0, -3.0], [0.5, 0.0, 0.0]])
    assert _hooks(clf.model) == 0
    with pytest.raises(ValueError, match="one layer"):
        resolve_embedding(clf, ["fc", "act"])
    with pytest.raises(TypeError, match="LatentClassifier"):
        embeddings(object(), x)


def test_representation_sensitivity_hand_computed():
    clf = _mlp_classifier(W1, W2)
    clf.model.train()
    x = np.array([[3.0, 4.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], dtype=np.float32)
    x_adv = x + np.array([[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    # E(x) = (x1, x2, 0): norms 5, 1, 2; |E(x) - E(x')| = 0, 1, 1 -> 0, 1, 0.5.
    result = representation_sensitivity(clf, x, x_adv, batch_size=2)
    np.testing.assert_allclose(result["per_sample"], [0.0, 1.0, 0.5])
    assert result["median"] == pytest.approx(0.5) and result["mean"] == pytest.approx(0.5)
    assert result["std"] == pytest.approx(np.std([0.0, 1.0, 0.5]))
    assert clf.model.training and _hooks(clf.model) == 0
    with pytest.raises(ValueError, match="shape"):
        representation_sensitivity(clf, x, x_adv[:2])


def test_representation_dimensionality_hand_computed():
    clf = _mlp_classifier(W1, W2)
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, size=(50, 1)).astype(np.float32)
    # x1 = t, x2 = 2t: the embedding (t, 2t, 0) lies on a line; unit 3 is dead.
    x = np.concatenate([t, 2 * t, rng.uniform(0, 1, size=(50, 2)).astype(np.float32)], axis=1)
    assert representation_dimensionality(clf, x) == {"units": 2, "pca_dims": 1, "total_units": 3}
    x[:, 1] = rng.uniform(0, 1, size=50)
    assert representation_dimensionality(clf, x)["pca_dims"] == 2
    assert representation_dimensionality(clf, x, variance=0.5)["pca_dims"] == 1
    assert representation_dimensionality(clf, x, atol=10.0)["units"] == 0
    with pytest.raises(ValueError, match="variance"):
        representation_dimensionality(clf, x, variance=0.0)


def test_robust_accuracy_auc_hand_computed():
    # Trapezoids: 0.1 * (1 + 0.5) / 2 + 0.1 * (0.5 + 0) / 2 = 0.1, over the range 0.2.
    assert robust_accuracy_auc([1.0, 0.5, 0.0], [0.0, 0.1, 0.2]) == pytest.approx(0.5)
    assert robust_accuracy_auc({0.2: 0.0, 0.0: 1.0, 0.1: 0.5}) == pytest.approx(0.5)
    assert robust_accuracy_auc([1.0, 1.0, 1.0], [0.0, 0.3, 0.5]) == pytest.approx(1.0)
    for curve, eps, match in [([1.0, 0.5], None, "eps"), ([1.0], [0.0], "two"), ([1.0, 0.5], [0.1, 0.1], "increasing"),
                              ([1.0, 1.5], [0.0, 0.1], r"\[0, 1\]"), ([1.0, 0.5, 0.2], [0.0, 0.1], "one accuracy")]:
        with pytest.raises(ValueError, match=match):
            robust_accuracy_auc(curve, eps)


def test_rho2_of_a_linear_classifier_is_the_closed_form():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    clf = LatentClassifier(model, nn.CrossEntropyLoss(), (6,), 4, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                           device_type="cpu", layers="0")
    x = torch.rand(10, 6)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    z = x @ W.T + b
    a = z.argmax(1)
    distance = torch.stack([
        min(abs(z[i, k] - z[i, a[i]]) / (W[k] - W[a[i]]).norm() for k in range(4) if k != a[i]) for i in range(10)
    ])
    expected = (1.02 * distance / x.norm(dim=1)).mean().item()
    details = rho2(clf, x.numpy(), batch_size=4, return_details=True)
    assert details["rho2"] == pytest.approx(expected, rel=1e-5)
    assert details["fooled_rate"] == 1.0 and details["per_sample"].shape == (10,)
    assert rho2(clf, x) == pytest.approx(expected, rel=1e-5)


def _fgsm_classifier() -> LatentClassifier:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    return LatentClassifier(model, nn.CrossEntropyLoss(), (6,), 3, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                            clip_values=(0.0, 1.0), device_type="cpu", layers="2")


def _fgsm_accuracy(clf, x, y, eps):
    x_adv = FastGradientMethod(clf, eps=eps, batch_size=1000).generate(x, y=np.eye(3)[y])
    return float(np.mean(clf.predict(x_adv).argmax(1) == y))


def test_eps_ref_is_the_smallest_fgsm_budget_with_half_errors():
    clf = _fgsm_classifier()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(200, 6)).astype(np.float32)
    y = clf.predict(x).argmax(1)  # clean accuracy 1
    reference = eps_ref(clf, x, y, tol=1e-4)
    assert 0 < reference < 1
    assert 1 - _fgsm_accuracy(clf, x, y, reference) >= 0.5  # ART's FGSM, as the metric claims
    assert 1 - _fgsm_accuracy(clf, x, y, reference - 1e-4) < 0.5
    fractions = accuracy_at_eps_ref(clf, x, y, reference)
    assert list(fractions) == [0.2, 0.5, 1.0]
    for fraction, acc in fractions.items():
        assert acc == pytest.approx(_fgsm_accuracy(clf, x, y, fraction * reference))
    assert fractions[1.0] <= 0.5 < fractions[0.2]
    wrong = (y + 1) % 3
    assert eps_ref(clf, x, wrong) == 0.0  # already 100% error without perturbation
    assert eps_ref(clf, x, y, eps_max=1e-6) == math.inf
    with pytest.raises(ValueError, match="eps_reference"):
        accuracy_at_eps_ref(clf, x, y, math.inf)
    with pytest.raises(ValueError, match="target_error"):
        eps_ref(clf, x, y, target_error=0.0)
