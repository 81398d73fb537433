"""Deep Defense: the batched DeepFool, the regularizer and its gradient, the trainer, modes, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import make_classifier
from torch import nn

from art_latent import LatentClassifier, LatentTrainer
from art_latent.analysis.deepfool_metrics import rho2
from art_latent.regularizers.deepfool import deep_defense_regularizer, deepfool, perturbation_ratio
from art_latent.trainers.deep_defense import DeepDefenseTrainer


def _linear(dtype=torch.float64, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(6, 4).to(dtype)


def _boundary_distance(lin: nn.Linear, x: torch.Tensor, source: torch.Tensor, target: torch.Tensor | None = None):
    """Closed form: min over k != a of |(w_k - w_a)^T x + b_k - b_a| / |w_k - w_a| (or only k = target)."""
    W, b = lin.weight.detach(), lin.bias.detach()
    z = x.flatten(1) @ W.T + b
    distances = []
    for i, a in enumerate(source.tolist()):
        classes = [int(target[i])] if target is not None else [k for k in range(W.shape[0]) if k != a]
        distances.append(min(abs(z[i, k] - z[i, a]) / (W[k] - W[a]).norm() for k in classes))
    return torch.stack(distances)


@pytest.mark.parametrize("create_graph", [False, True])
def test_deepfool_finds_the_exact_boundary_distance_of_a_linear_classifier(create_graph):
    lin = _linear()
    x = torch.randn(7, 6, dtype=torch.float64)
    result = deepfool(lin, x, max_iter=4, overshoot=0.02, create_graph=create_graph)
    prediction = lin(x).argmax(1)
    expected = _boundary_distance(lin, x, prediction)
    torch.testing.assert_close(result.perturbation.norm(dim=1) / 1.02, expected)
    assert result.fooled.all() and torch.equal(result.iterations, torch.ones(7, dtype=torch.long))
    assert (lin(x + result.perturbation).argmax(1) != prediction).all()
    assert result.perturbation.requires_grad == create_graph


def test_deepfool_inside_the_trainer_finds_the_linear_boundary():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    clf = LatentClassifier(model, nn.CrossEntropyLoss(), (6,), 4, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                           device_type="cpu", layers="0")
    trainer = DeepDefenseTrainer(clf, lam=2.0, c=3.0)
    x = torch.rand(8, 6)
    y = model(x).argmax(1)  # every sample correctly classified: R_i = exp(-c * ratio_i)
    loss, logits, logs = trainer.training_step({"x": x, "y": y})
    ratio = 1.02 * _boundary_distance(model[1], x, y) / x.norm(dim=1)
    torch.testing.assert_close(logs["ratio"], ratio.mean(), rtol=1e-5, atol=1e-6)
    ce = nn.functional.cross_entropy(logits, y)
    torch.testing.assert_close(loss, ce + 2.0 * torch.exp(-3.0 * ratio).mean(), rtol=1e-5, atol=1e-6)
    assert logs["fooled"] == 1.0


def test_misclassified_samples_are_pushed_to_their_true_label():
    lin = _linear(seed=3)
    x = torch.randn(12, 6, dtype=torch.float64)
    prediction = lin(x).argmax(1)
    labels = (prediction + torch.arange(12) % 3) % 4  # a third correct, the rest wrong
    result = deepfool(lin, x, labels=labels, max_iter=10)
    after = lin(x + result.perturbation).argmax(1)
    wrong = prediction != labels
    assert wrong.sum() == 8 and result.fooled.all()
    assert torch.equal(after[wrong], labels[wrong]) and (after[~wrong] != labels[~wrong]).all()
    # A wrong sample's first step goes straight to the boundary between its prediction and its label.
    one_step = deepfool(lin, x[wrong], labels=labels[wrong], max_iter=1)
    torch.testing.assert_close(
        one_step.perturbation.norm(dim=1) / 1.02, _boundary_distance(lin, x[wrong], prediction[wrong], labels[wrong])
    )


def test_batched_deepfool_equals_one_sample_at_a_time():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    batched = deepfool(model, x, labels=labels, max_iter=6)
    for i in range(6):
        single = deepfool(model, x[i : i + 1], labels=labels[i : i + 1], max_iter=6)
        torch.testing.assert_close(batched.perturbation[i : i + 1], single.perturbation)
        assert batched.iterations[i] == single.iterations[0] and batched.fooled[i] == single.fooled[0]
    assert len(set(batched.iterations.tolist())) > 1  # samples stopped at different steps: the masking worked


def test_candidates_restrict_the_classes():
    lin = _linear(seed=2)
    x = torch.randn(5, 6, dtype=torch.float64)
    logits = lin(x)
    runner_up = logits.topk(2, dim=1).indices[:, 1]
    result = deepfool(lin, x, max_iter=1, candidates=1)
    expected = _boundary_distance(lin, x, logits.argmax(1), runner_up)
    torch.testing.assert_close(result.perturbation.norm(dim=1) / 1.02, expected)


def test_regularizer_and_ratio_hand_computed():
    r = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    x = torch.tensor([[0.0, 10.0], [2.0, 0.0]])
    ratio = perturbation_ratio(r, x)
    torch.testing.assert_close(ratio, torch.tensor([0.5, 0.5]))
    correct = torch.tensor([True, False])
    value = deep_defense_regularizer(ratio, correct, c=25.0, d=5.0)
    assert value.item() == pytest.approx((math.exp(-12.5) + math.exp(2.5)) / 2, rel=1e-6)
    per_sample = deep_defense_regularizer(ratio, correct, reduction="none")
    assert per_sample.shape == (2,)
    assert deep_defense_regularizer(ratio, correct, reduction="sum").item() == pytest.approx(per_sample.sum().item())
    # A huge ratio of a correctly classified sample must not poison the gradient through the unselected branch.
    big = torch.tensor([100.0, 0.1], requires_grad=True)
    deep_defense_regularizer(big, torch.tensor([True, False])).backward()
    assert torch.isfinite(big.grad).all()
    with pytest.raises(ValueError, match="reduction"):
        deep_defense_regularizer(ratio, correct, reduction="max")


def test_regularizer_gradient_matches_finite_differences():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 5, dtype=torch.float64)
    with torch.no_grad():
        prediction = model(x).argmax(1)
    labels = torch.where(torch.arange(5) < 3, prediction, (prediction + 1) % 3)  # 3 correct, 2 misclassified

    def regularizer() -> torch.Tensor:
        result = deepfool(model, x, labels=labels, max_iter=3, create_graph=True)
        return deep_defense_regularizer(perturbation_ratio(result.perturbation, x), prediction == labels, 2.0, 1.5)

    params = list(model.parameters())
    analytic = torch.autograd.grad(regularizer(), params)
    # The regularizer depends on the weights only through r: a non-zero gradient is the gradient through DeepFool.
    assert sum(g.abs().sum() for g in analytic) > 1e-3
    step = 1e-6
    for param, grad in zip(params, analytic, strict=True):
        numeric = torch.zeros_like(param)
        flat = param.data.view(-1)
        for i in range(flat.numel()):
            original = flat[i].item()
            flat[i] = original + step
            with torch.no_grad():
                up = regularizer().item()
            flat[i] = original - step
            with torch.no_grad():
                down = regularizer().item()
            flat[i] = original
            numeric.view(-1)[i] = (up - down) / (2 * step)
        torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-7)


def test_deepfool_rejects_bad_arguments():
    lin = _linear()
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="max_iter"):
        deepfool(lin, x, max_iter=0)
    with pytest.raises(ValueError, match="overshoot"):
        deepfool(lin, x, overshoot=-0.1)
    with pytest.raises(ValueError, match="candidates"):
        deepfool(lin, x, candidates=4)
    with pytest.raises(ValueError, match="labels"):
        deepfool(lin, x, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="require gradients"):
        deepfool(lin, x, logits=lin(x))


def _bn_modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _pretrained(x, y):
    """Deep Defense fine-tunes (as in the paper): on an untrained net exp(d |r|/|x|) of wrong samples can overflow."""
    clf = make_classifier()
    LatentTrainer(clf, seed=0).fit(x, y, nb_epochs=6, batch_size=16, verbose=False)
    for group in clf.optimizer.param_groups:
        group["lr"] = 0.005
    return clf


def test_batchnorm_frozen_during_fit_and_modes_restored(tiny_data):
    tiny_classifier = _pretrained(*tiny_data)
    model = tiny_classifier.model
    model.train()
    model.res.bn1.eval()
    modes = [m.training for m in model.modules()]
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    trainer = DeepDefenseTrainer(tiny_classifier, lam=1.0, seed=0)
    seen = []
    original = trainer.training_step

    def spy(batch):
        out = original(batch)
        seen.append((_bn_modes(model), model.fc.training))
        return out

    trainer.training_step = spy
    trainer.fit(*tiny_data, nb_epochs=2, batch_size=48, verbose=False)
    assert seen and all(not any(bn) and fc for bn, fc in seen)  # BN in eval in every step of both epochs
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())  # running statistics untouched
    assert [m.training for m in model.modules()] == modes


def test_modes_restored_after_an_exception(tiny_classifier, tiny_data):
    model = tiny_classifier.model
    model.train()
    trainer = DeepDefenseTrainer(tiny_classifier)
    original = trainer.training_step

    def failing(batch):
        original(batch)
        raise RuntimeError("interrupted")

    trainer.training_step = failing
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    assert model.training and all(_bn_modes(model))
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_deep_defense_fine_tuning_raises_rho2(tiny_data):
    x, y = tiny_data
    clf = _pretrained(x, y)
    before = rho2(clf, x)
    history = DeepDefenseTrainer(clf, seed=0).fit(x, y, validation_data=(x, y), nb_epochs=4, batch_size=32,
                                                  verbose=False)
    assert rho2(clf, x) > before + 0.005
    assert history[-1]["val_accuracy"] == 1.0
    for key in ("ce", "regularizer", "ratio", "fooled"):
        assert np.isfinite(history[-1][key]), key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam": -1.0}, "`lam`"),
        ({"lam": float("nan")}, "`lam`"),
        ({"c": 0.0}, "`c`"),
        ({"d": -5.0}, "`d`"),
        ({"max_iter": 0}, "`max_iter`"),
        ({"max_iter": 2.5}, "`max_iter`"),
        ({"overshoot": -0.02}, "`overshoot`"),
        ({"candidates": 0}, "`candidates`"),
        ({"candidates": 3}, "`candidates`"),
    ],
)
def test_bad_hyper_parameters_rejected(tiny_classifier, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepDefenseTrainer(tiny_classifier, **kwargs)


def test_never_estimated_batchnorm_is_estimated_once_and_a_fresh_resnet_trains():
    # A fresh BatchNorm ResNet (torchvision's structure) at the paper's defaults with the authors' optimizer: frozen
    # BatchNorm at mean 0 / variance 1 does not normalize, and the loss used to explode within five batches.
    from archs import resnet_tv

    from art_latent.data import load_dataset

    data = load_dataset("bundled")
    index = np.random.default_rng(0).permutation(len(data.y_train))[:256]
    x, y = data.x_train[index], data.y_train[index]
    torch.manual_seed(0)
    model = resnet_tv("basic", (1, 1))
    clf = LatentClassifier(model, nn.CrossEntropyLoss(), (1, 28, 28), 10, clip_values=(0.0, 1.0), device_type="cpu",
                           optimizer=torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    history = DeepDefenseTrainer(clf, seed=0).fit(x, y, nb_epochs=1, batch_size=64, verbose=False)
    assert np.isfinite(history[-1]["loss"]) and history[-1]["loss"] < 1e3
    bn = model.layer1[0].bn2
    assert int(bn.num_batches_tracked) > 0 and not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert bn.momentum == 0.1  # restored after the cumulative pass
    # a trained model's statistics are left alone
    before = bn.running_mean.clone()
    DeepDefenseTrainer(clf, seed=0).prepare_data(torch.from_numpy(x[:8]), torch.from_numpy(y[:8]))
    assert torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("candidates", [None, 2])
def test_stepping_only_the_active_samples_gives_the_masked_result_and_gradients(candidates):
    # compact=True computes each DeepFool step on the samples not yet fooled; the masked loop (no host read)
    # steps every sample with zeros for the stopped ones: same perturbation, iterations and parameter gradients.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model.eval()
    x = torch.rand(24, 1, 8, 8, dtype=torch.float64)
    model.double()
    labels = torch.arange(24) % 5
    results = []
    for stop_early in (True, False):
        model.zero_grad()
        x0 = x.clone().requires_grad_(True)
        logits = model(x0)
        result = deepfool(model, x0, labels=labels, max_iter=5, candidates=candidates, create_graph=True,
                          logits=logits, stop_early=stop_early, compact=stop_early)
        correct = logits.detach().argmax(1) == labels
        deep_defense_regularizer(perturbation_ratio(result.perturbation, x), correct).backward()
        results.append((result, [p.grad.clone() for p in model.parameters()]))
    (early, grads_early), (masked, grads_masked) = results
    assert len(set(early.iterations.tolist())) > 1  # samples stopped at different steps
    assert torch.equal(early.iterations, masked.iterations) and torch.equal(early.fooled, masked.fooled)
    torch.testing.assert_close(early.perturbation, masked.perturbation, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads_early, grads_masked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
