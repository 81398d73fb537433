"""Paper 000's baselines: FIMR, AGNT, stability training and the feature-guided denoiser (HGD)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.data_generators import NumpyDataGenerator
from art.estimators.classification import PyTorchClassifier
from helpers import make_classifier
from torch import nn

from art_latent import LatentClassifier, LatentTrainer
from art_latent.defences.denoiser import DenoiserTrainer, DenoisingUNet, FeatureGuidedDenoiser
from art_latent.regularizers import latent_disparity
from art_latent.regularizers.fisher import fisher_trace, inverse_probabilities
from art_latent.regularizers.stability import stability_kl
from art_latent.trainers.fimr import FIMRTrainer
from art_latent.trainers.noise import GaussianNoiseTrainer, StabilityTrainer

F = nn.functional


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=generator), torch.arange(n) % 3


def _denoiser(**kwargs) -> FeatureGuidedDenoiser:
    torch.manual_seed(5)
    kwargs.setdefault("width", 4)
    return FeatureGuidedDenoiser(1, device_type="cpu", **kwargs)


def _pretrained(tiny_data) -> LatentClassifier:
    clf = make_classifier()
    LatentTrainer(clf, seed=0).fit(*tiny_data, nb_epochs=6, batch_size=16, verbose=False)
    return clf


# ---------------------------------------------------------------------------------------------- regularizers


def test_fisher_trace_hand_values():
    # Row 1: uniform over 3 classes, 1/p = 3 each -> 9. Row 2: exp([ln 2, 0, 0]) = [2, 1, 1] -> p = [1/2, 1/4, 1/4]
    # -> 1/p = [2, 4, 4] -> 10.
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    assert fisher_trace(logits).item() == pytest.approx(9.5, rel=1e-6)
    assert fisher_trace(logits, reduction="sum").item() == pytest.approx(19.0, rel=1e-6)


def test_inverse_probabilities_continue_linearly_beyond_the_bound():
    # -log p of logits [0, -5]: t0 = log(1 + e^-5), t1 = 5 + log(1 + e^-5). With max_inverse = 10 (c = log 10), t0 < c
    # gives e^t0 and t1 > c gives the tangent 10 * (1 + t1 - c).
    t0 = math.log1p(math.exp(-5.0))
    t1 = 5.0 + t0
    expected = [math.exp(t0), 10.0 * (1.0 + t1 - math.log(10.0))]
    value = inverse_probabilities(torch.tensor([[0.0, -5.0]]), max_inverse=10.0)
    np.testing.assert_allclose(value[0].numpy(), expected, rtol=1e-5)


def test_fisher_trace_and_gradient_finite_for_extreme_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], requires_grad=True)
    value = fisher_trace(logits)
    value.backward()
    assert torch.isfinite(value) and value > 1e12
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] < 0 and logits.grad[0, 2] < 0  # the vanishing probabilities are still pushed up
    half = fisher_trace(torch.tensor([[1e4, -1e4]], dtype=torch.bfloat16))
    assert half.dtype == torch.float32 and torch.isfinite(half)


def test_stability_kl_hand_values():
    # p = [1/2, 1/4, 1/4], q uniform: KL = 1/2 ln(3/2) + 2 * 1/4 ln(3/4); the second row has p = q: 0.
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    perturbed = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], requires_grad=True)
    value = stability_kl(logits, perturbed)
    expected = (0.5 * math.log(1.5) + 0.5 * math.log(0.75)) / 2
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert logits.grad.abs().sum() > 0 and perturbed.grad.abs().sum() > 0
    extreme = stability_kl(torch.tensor([[1e4, -1e4]]), torch.tensor([[-1e4, 1e4]]))
    assert torch.isfinite(extreme) and extreme.item() == pytest.approx(2e4, rel=1e-6)  # log p_0 - log q_0 = 2e4


# ---------------------------------------------------------------------------------------------- FIMR


def test_fimr_step_matches_hand_computation(tiny_classifier):
    model = tiny_classifier.model
    model.train()
    trainer = FIMRTrainer(tiny_classifier, zeta=0.3)
    x, y = _batch()
    loss, logits, logs = trainer.training_step({"x": x, "y": y})
    expected_logits = model(x)
    ce = F.cross_entropy(expected_logits, y)
    fisher = (1.0 / torch.softmax(expected_logits, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(loss, 0.7 * ce + 0.3 * fisher)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(logs["regularizer"], fisher.detach())


class _Extreme(nn.Module):
    """Logits of magnitude ~1e4."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1e4 * torch.tanh(10 * self.fc(x.flatten(1)))


def test_fimr_loss_and_gradients_finite_with_extreme_logits(tiny_data):
    torch.manual_seed(0)
    model = _Extreme()
    clf = LatentClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 3, clip_values=(0.0, 1.0), device_type="cpu",
                           optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), layers="fc")
    trainer = FIMRTrainer(clf)
    x, y = (torch.from_numpy(a[:16]) for a in tiny_data)
    loss, logits, _ = trainer.training_step({"x": x, "y": y})
    assert logits.abs().max() > 5e3 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())
    history = trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    assert np.isfinite(history[-1]["loss"]) and all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- AGNT and stability


@pytest.mark.parametrize("keep_clean", [False, True])
def test_gaussian_noise_step_matches_hand_computation(tiny_classifier, keep_clean):
    model = tiny_classifier.model
    model.train()
    trainer = GaussianNoiseTrainer(tiny_classifier, sigma=0.1, keep_clean=keep_clean)
    x, y = _batch()
    x_noisy = (x + 0.1).clamp(0, 1)
    trainer.noise.generate = lambda x_, y_=None, eps=None: x_noisy
    loss, logits, _ = trainer.training_step({"x": x, "y": y})
    if keep_clean:  # one forward of clean and noisy, CE over both halves, accuracy on the clean half
        both = model(torch.cat([x, x_noisy]))
        torch.testing.assert_close(loss, F.cross_entropy(both, torch.cat([y, y])))
        torch.testing.assert_close(logits, both[:6])
    else:
        noisy = model(x_noisy)
        torch.testing.assert_close(loss, F.cross_entropy(noisy, y))
        torch.testing.assert_close(logits, noisy)


def test_gaussian_noise_is_clipped_with_the_right_scale(tiny_classifier):
    trainer = GaussianNoiseTrainer(tiny_classifier, sigma=0.1)
    torch.manual_seed(0)
    mid = torch.full((200, 1, 8, 8), 0.5)
    noise = trainer.noise.generate(mid) - mid
    assert noise.std().item() == pytest.approx(0.1, rel=0.05) and noise.mean().abs() < 0.01
    dark = trainer.noise.generate(torch.zeros(50, 1, 8, 8))
    assert dark.min() == 0.0 and dark.max() <= 1.0 and (dark == 0).float().mean() > 0.4


def test_fixed_noise_is_reused_every_epoch(tiny_classifier, tiny_data):
    trainer = GaussianNoiseTrainer(tiny_classifier, fixed_noise=True, seed=0)
    seen: dict[bytes, list[torch.Tensor]] = {}
    original = trainer.training_step

    def recording_step(batch):
        for row, noisy in zip(batch["x"], batch["x_noisy"], strict=True):
            seen.setdefault(row.numpy().tobytes(), []).append(noisy.clone())
        return original(batch)

    trainer.training_step = recording_step
    trainer.fit(*tiny_data, nb_epochs=2, batch_size=32, verbose=False)
    assert len(seen) == len(tiny_data[0])
    assert all(len(v) == 2 and torch.equal(v[0], v[1]) and not torch.equal(v[0], v[0] * 0) for v in seen.values())


def test_stability_step_matches_hand_computation(tiny_classifier):
    model = tiny_classifier.model
    model.train()
    trainer = StabilityTrainer(tiny_classifier, alpha=0.5, sigma=0.04)
    x, y = _batch()
    x_noisy = (x - 0.05).clamp(0, 1)
    trainer.noise.generate = lambda x_, y_=None, eps=None: x_noisy
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        loss, logits, logs = trainer.training_step({"x": x, "y": y})
    finally:
        handle.remove()
    assert len(calls) == 1  # one concatenated forward
    both = model(torch.cat([x, x_noisy]))
    p, q = torch.softmax(both[:6], dim=1), torch.softmax(both[6:], dim=1)
    kl = (p * torch.log(p / q)).sum(dim=1).mean()
    torch.testing.assert_close(loss, F.cross_entropy(both[:6], y) + 0.5 * kl)
    torch.testing.assert_close(logits, both[:6])
    torch.testing.assert_close(logs["regularizer"], kl.detach())


# ---------------------------------------------------------------------------------------------- every trainer learns


@pytest.mark.parametrize(
    "make",
    [
        lambda clf: FIMRTrainer(clf, seed=0),
        lambda clf: GaussianNoiseTrainer(clf, sigma=0.1, seed=0),
        lambda clf: GaussianNoiseTrainer(clf, sigma=0.1, keep_clean=True, fixed_noise=True, seed=0),
        lambda clf: StabilityTrainer(clf, alpha=0.5, seed=0),
    ],
    ids=["fimr", "agnt", "agnt-clean-fixed", "stability"],
)
def test_every_classifier_trainer_learns(tiny_classifier, tiny_data, make):
    x, y = tiny_data
    history = make(tiny_classifier).fit(x, y, validation_data=(x, y), nb_epochs=6, batch_size=16, verbose=False)
    assert len(history) == 6 and history[-1]["val_accuracy"] > 0.9


# ---------------------------------------------------------------------------------------------- the denoiser


def test_denoiser_network_shapes_and_identity_start():
    for in_channels, shape in ((1, (7, 9)), (3, (32, 32)), (1, (28, 28))):
        net = DenoisingUNet(in_channels, width=4, depth=3)
        x = torch.rand(2, in_channels, *shape)
        assert torch.equal(net(x), torch.zeros_like(x))
    denoiser = _denoiser()
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(denoiser.forward(x)[0], x) and not denoiser.network.training
    assert not denoiser.apply_fit and denoiser.apply_predict


def test_denoiser_forward_and_clip():
    denoiser = _denoiser(identity_init=False, clip_values=(0.0, 1.0))
    x = torch.rand(4, 1, 8, 8)
    x_hat, y = denoiser.forward(x, "labels")
    assert y == "labels"
    torch.testing.assert_close(x_hat, (x - denoiser.network(x)).clamp(0, 1))
    numpy_out, _ = denoiser(x.numpy())  # ART's numpy entry point
    np.testing.assert_allclose(numpy_out, x_hat.detach().numpy(), atol=1e-6)


def test_denoiser_save_load_round_trip(tmp_path):
    denoiser = _denoiser(identity_init=False, clip_values=(0.0, 1.0), depth=1)
    path = tmp_path / "denoiser.pt"
    denoiser.save(path)
    loaded = FeatureGuidedDenoiser.load(path, device_type="cpu")
    assert loaded.config == denoiser.config == {"in_channels": 1, "width": 4, "depth": 1, "clip_values": (0.0, 1.0)}
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(loaded.forward(x)[0], denoiser.forward(x)[0])
    fresh = _denoiser(depth=1, clip_values=(0.0, 1.0))
    fresh.load_state_dict(denoiser.state_dict())
    torch.testing.assert_close(fresh.forward(x)[0], denoiser.forward(x)[0])


def _forward_at(model: nn.Module, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    store = {}
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: store.__setitem__("s", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, store["s"]


@pytest.mark.parametrize(
    ("guide_layer", "normalization"), [("last_conv", None), ("logits", None), ("fc", "batch")]
)
def test_guide_loss_matches_hand_computation(tiny_classifier, guide_layer, normalization):
    model = tiny_classifier.model
    denoiser = _denoiser(identity_init=False)
    trainer = DenoiserTrainer(tiny_classifier, denoiser, FastGradientMethod(tiny_classifier, eps=0.1),
                              guide_layer=guide_layer, normalization=normalization)
    name = {"last_conv": "res", "logits": "head", "fc": "fc"}[guide_layer]
    assert trainer.guide_layer == ("logits" if guide_layer == "logits" else name)
    x, y = _batch()
    model.eval()
    with torch.no_grad():
        target = _forward_at(model, name, x)[1]
    torch.testing.assert_close(trainer.targets(x), target)
    batch = trainer.make_pairs(x, y)  # three budgets: 18 rows
    torch.testing.assert_close(batch["target"], target.repeat(3, *([1] * (target.ndim - 1))))
    with trainer.fit_context():  # classifier frozen; the modes optimization_step sets:
        model.eval()
        denoiser.network.train()
        loss, logits, _ = trainer.training_step(batch)
        loss.backward()
        x_hat = batch["x_pair"] - denoiser.network(batch["x_pair"])  # x_a - D(x_a)
        expected_logits, guide = _forward_at(model, name, x_hat)
    denoiser.network.eval()
    expected = (
        (guide - batch["target"]).abs().mean()
        if normalization is None
        else latent_disparity([batch["target"]], [guide])
    )
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, expected_logits)  # precomputed pairs: the loop's batch is all 18 rows
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in denoiser.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_denoiser_fit_leaves_the_classifier_unchanged(tiny_data):
    clf = _pretrained(tiny_data)
    model = clf.model
    model.train()
    model.res.bn1.eval()
    model.head.weight.requires_grad_(False)
    modes, flags, before = _modes(model), [p.requires_grad for p in model.parameters()], _state(model)
    denoiser = _denoiser()
    denoiser_before = _state(denoiser.network)
    optimizer_state = clf.optimizer.state_dict()
    trainer = DenoiserTrainer(clf, denoiser, FastGradientMethod(clf, eps=0.1), noise_sigma=0.1, seed=0)
    x, y = tiny_data
    history = trainer.fit(x, y, validation_data=(x, y), nb_epochs=3, batch_size=32, verbose=False)
    assert _same_state(before, _state(model))  # parameters and BatchNorm statistics
    assert _modes(model) == modes and [p.requires_grad for p in model.parameters()] == flags
    assert clf.optimizer.state_dict() == optimizer_state
    assert not _same_state(denoiser_before, _state(denoiser.network)) and not denoiser.network.training
    assert denoiser.is_fitted and history[-1]["val_accuracy"] > 0.8
    assert history[-1]["loss"] < history[0]["loss"]
    for key in ("val_robust_accuracy", "accuracy", "lr"):
        assert np.isfinite(history[-1][key])
    assert trainer.get_classifier().preprocessing_defences[0] is denoiser and clf.preprocessing_defences is None


def test_denoiser_fit_restores_the_classifier_after_an_exception(tiny_classifier, tiny_data):
    model = tiny_classifier.model
    model.train()
    modes, before = _modes(model), _state(model)
    trainer = DenoiserTrainer(tiny_classifier, _denoiser(), FastGradientMethod(tiny_classifier, eps=0.1))
    original = trainer.training_step
    calls = {"n": 0}

    def failing_step(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            assert not any(p.requires_grad for p in model.parameters()) and not model.training
            raise RuntimeError("interrupted")
        return original(batch)

    trainer.training_step = failing_step
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.fit(*tiny_data, nb_epochs=2, batch_size=32, verbose=False)
    assert all(p.requires_grad for p in model.parameters()) and _modes(model) == modes
    assert _same_state(before, _state(model)) and not trainer.denoiser.network.training


def test_white_box_gradients_flow_through_the_denoiser(tiny_data):
    clf = _pretrained(tiny_data)
    denoiser = _denoiser(identity_init=False)
    x, y = tiny_data[0][:8], np.eye(3, dtype=np.float32)[tiny_data[1][:8]]  # ART wants one-hot labels
    plain = PyTorchClassifier(clf.model, nn.CrossEntropyLoss(), (1, 8, 8), 3, clip_values=(0.0, 1.0),
                              device_type="cpu")
    defended = PyTorchClassifier(clf.model, nn.CrossEntropyLoss(), (1, 8, 8), 3, clip_values=(0.0, 1.0),
                                 preprocessing_defences=[denoiser], device_type="cpu")
    grad_plain = plain.loss_gradient(x, y)
    grad = defended.loss_gradient(x, y)
    # By hand: autograd through x - D(x) and the model, both in eval mode.
    x_t = torch.from_numpy(x).requires_grad_(True)
    clf.model.eval()
    F.cross_entropy(clf.model(x_t - denoiser.network(x_t)), torch.from_numpy(y.argmax(1))).backward()
    np.testing.assert_allclose(grad, x_t.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert np.abs(grad).sum() > 0 and not np.allclose(grad, grad_plain, atol=1e-6)
    tensor_grad = defended.loss_gradient(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(tensor_grad.numpy(), grad, rtol=1e-4, atol=1e-7)
    # ART's white-box PGD runs through the denoiser and lands elsewhere than against the bare model.
    x_adv = ProjectedGradientDescent(defended, eps=0.1, eps_step=0.05, max_iter=3, verbose=False).generate(x, y=y)
    x_adv_plain = ProjectedGradientDescent(plain, eps=0.1, eps_step=0.05, max_iter=3, verbose=False).generate(x, y=y)
    assert np.abs(x_adv - x).max() == pytest.approx(0.1, rel=1e-5) and not np.allclose(x_adv, x_adv_plain)
    # LatentClassifier: one differentiable forward through the denoiser.
    latent = LatentClassifier(clf.model, nn.CrossEntropyLoss(), (1, 8, 8), 3, clip_values=(0.0, 1.0),
                              preprocessing_defences=[denoiser], device_type="cpu")
    x_t = torch.from_numpy(x).requires_grad_(True)
    logits, acts = latent.forward_with_latents(x_t)
    (logits.sum() + sum(a.sum() for a in acts.values())).backward()
    assert x_t.grad.abs().sum() > 0


@pytest.mark.parametrize("regenerate", ["epoch", "batch", "generator"])
def test_denoiser_regenerate_modes_and_generator(tiny_classifier, tiny_data, regenerate):
    x, y = tiny_data
    before = _state(tiny_classifier.model)
    attack = ProjectedGradientDescent(tiny_classifier, eps=0.1, eps_step=0.05, max_iter=2, num_random_init=1)
    trainer = DenoiserTrainer(tiny_classifier, _denoiser(), attack,
                              regenerate="batch" if regenerate == "generator" else regenerate, seed=0)
    if regenerate == "generator":
        history = trainer.fit_generator(NumpyDataGenerator(x, y, batch_size=32), nb_epochs=2, verbose=False)
    else:
        history = trainer.fit(x, y, nb_epochs=2, batch_size=32, verbose=False)
    assert len(history) == 2 and np.isfinite(history[-1]["loss"])
    assert _same_state(before, _state(tiny_classifier.model))


def test_denoiser_resume_reproduces_an_uninterrupted_run(tiny_data, tmp_path):
    def run(nb_epochs, checkpoint=None, resume=False):
        clf = make_classifier()
        denoiser = _denoiser()
        trainer = DenoiserTrainer(clf, denoiser, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), seed=3)
        trainer.fit(*tiny_data, nb_epochs=nb_epochs, batch_size=32, checkpoint_dir=checkpoint, resume=resume,
                    verbose=False)
        return _state(denoiser.network)

    reference = run(3)
    run(2, tmp_path / "c")
    assert _same_state(reference, run(3, tmp_path / "c", resume=True))


def test_denoiser_attached_to_the_classifier_is_not_applied_twice(tiny_classifier):
    denoiser = _denoiser(identity_init=False)
    attached = LatentClassifier(tiny_classifier.model, nn.CrossEntropyLoss(), (1, 8, 8), 3, clip_values=(0.0, 1.0),
                                preprocessing_defences=[denoiser], device_type="cpu")
    trainer = DenoiserTrainer(attached, denoiser, FastGradientMethod(tiny_classifier, eps=0.1), guide_layer="logits")
    assert [d for d in trainer.get_classifier().preprocessing_defences] == [denoiser]
    x, _ = _batch()
    tiny_classifier.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(trainer.targets(x), tiny_classifier.model(x))  # clean targets skip the denoiser


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda c: FIMRTrainer(c, zeta=-0.1), ValueError, r"`zeta` must be in \[0.0, 1.0\]"),
        (lambda c: FIMRTrainer(c, zeta=1.5), ValueError, "`zeta`"),
        (lambda c: FIMRTrainer(c, zeta=float("nan")), ValueError, "`zeta`"),
        (lambda c: FIMRTrainer(c, reduction="max"), ValueError, "`reduction`"),
        (lambda c: FIMRTrainer(c, max_inverse=1.0), ValueError, "`max_inverse`"),
        (lambda c: GaussianNoiseTrainer(c, sigma=-0.1), ValueError, "`sigma`"),
        (lambda c: GaussianNoiseTrainer(c, sigma=0.0), ValueError, "`sigma`"),
        (lambda c: GaussianNoiseTrainer(c, keep_clean="yes"), ValueError, "`keep_clean`"),
        (lambda c: StabilityTrainer(c, alpha=-1.0), ValueError, "`alpha`"),
        (lambda c: StabilityTrainer(c, sigma=float("inf")), ValueError, "`sigma`"),
        (lambda c: DenoiserTrainer(c, object(), None), TypeError, "FeatureGuidedDenoiser"),
        (lambda c: DenoiserTrainer(object(), _denoiser(), None), TypeError, "PyTorchClassifier"),
        (lambda c: DenoiserTrainer(c, FeatureGuidedDenoiser(3, device_type="cpu"), None), ValueError, "channels"),
        (lambda c: DenoiserTrainer(c, _denoiser(), FastGradientMethod(c), learning_rate=0.0), ValueError,
         "`learning_rate`"),
        (lambda c: DenoiserTrainer(c, _denoiser(), FastGradientMethod(c), optimizer=c.optimizer), ValueError,
         "denoiser's parameters"),
        (lambda c: DenoiserTrainer(c, _denoiser(), FastGradientMethod(c), guide_layer="nope"), ValueError,
         "unknown layer"),
        (lambda c: DenoiserTrainer(c, _denoiser(), FastGradientMethod(c), regenerate="always"), ValueError,
         "`regenerate`"),
        (lambda c: DenoiserTrainer(c, _denoiser(), FastGradientMethod(c), normalization="global"), ValueError,
         "`normalization`"),
        (lambda c: DenoiserTrainer(c, _denoiser(), FastGradientMethod(c), budgets=(0.0, -0.1)), ValueError,
         "`budgets`"),
        (lambda c: DenoiserTrainer(c, _denoiser(), FastGradientMethod(c), noise_sigma=-1.0), ValueError,
         "`noise_sigma`"),
        (lambda c: FeatureGuidedDenoiser(width=0), ValueError, "`width`"),
        (lambda c: FeatureGuidedDenoiser(depth=0), ValueError, "`depth`"),
        (lambda c: FeatureGuidedDenoiser(clip_values=(1.0, 0.0)), ValueError, "`clip_values`"),
    ],
)
def test_bad_hyper_parameters_rejected(tiny_classifier, make, error, match):
    with pytest.raises(error, match=match):
        make(tiny_classifier)


def test_last_conv_guide_needs_a_convolutional_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))
    clf = make_classifier(model)
    with pytest.raises(ValueError, match="no latent layer with a spatial output"):
        DenoiserTrainer(clf, _denoiser(), FastGradientMethod(clf, eps=0.1))
    assert DenoiserTrainer(clf, _denoiser(), FastGradientMethod(clf, eps=0.1), guide_layer="logits").guide_layer == (
        "logits"
    )


def test_bad_data_rejected_before_any_work(tiny_data):
    clf = make_classifier()
    denoiser = _denoiser()
    before = _state(denoiser.network)
    trainer = DenoiserTrainer(clf, denoiser, FastGradientMethod(clf, eps=0.1))
    x, y = tiny_data
    with pytest.raises(ValueError, match="clip_values"):
        trainer.fit(x * 255, y, verbose=False)
    assert _same_state(before, _state(denoiser.network))
