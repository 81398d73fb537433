"""Tests of art_latent.perturbations: the on-device attacks against ART's own, the ART bridge and the noise source."""

from __future__ import annotations

import math

import art.config
import art.utils
import numpy as np
import pytest
import torch
from art.attacks.evasion import (
    BasicIterativeMethod,
    DeepFool,
    FastGradientMethod,
    MomentumIterativeMethod,
    ProjectedGradientDescent,
)
from art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_numpy import (
    ProjectedGradientDescentNumpy,
)
from art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_pytorch import (
    ProjectedGradientDescentPyTorch,
)
from art.defences.preprocessor import SpatialSmoothing
from art.estimators.classification import PyTorchClassifier

from art_latent.perturbations import (
    ARTAttackSource,
    GaussianNoiseSource,
    PerturbationSource,
    TorchGradientAttack,
    as_perturbation_source,
)

N_SAMPLES = 24
NB_CLASSES = 5
ART_BATCH = 64  # >= N_SAMPLES, so ART averages the loss over the same batch as the torch path
PREPROCESSING = (0.4, 0.3)


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.relu = torch.nn.ReLU()
        self.flatten = torch.nn.Flatten()
        self.fc = torch.nn.Linear(4 * 8 * 8, NB_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.relu(self.bn(self.conv(x)))))


@pytest.fixture(autouse=True)
def _isolated_art_data_path(tmp_path):
    old = art.config.ART_DATA_PATH
    art.config.set_data_path(tmp_path / "art_data")
    yield
    art.config.set_data_path(old)


def make_classifier(preprocessing=None, **kwargs) -> PyTorchClassifier:
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        for _ in range(3):
            model(torch.rand(32, 1, 8, 8))
    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=NB_CLASSES,
        clip_values=(0.0, 1.0),
        preprocessing=preprocessing,
        **kwargs,
    )


@pytest.fixture
def classifier() -> PyTorchClassifier:
    return make_classifier()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(N_SAMPLES, 1, 8, 8, generator=generator)
    y = torch.randint(0, NB_CLASSES, (N_SAMPLES,), generator=generator)
    return x, y


def one_hot(y: torch.Tensor) -> np.ndarray:
    return np.eye(NB_CLASSES, dtype=np.float32)[y.numpy()]


def art_attack(name: str, classifier: PyTorchClassifier):
    common = {"batch_size": ART_BATCH}
    iterative = {"verbose": False, **common}
    if name == "fgsm":
        return FastGradientMethod(classifier, eps=0.1, **common)
    if name == "fgm_l2":
        return FastGradientMethod(classifier, norm=2, eps=1.0, **common)
    if name == "fgsm_targeted":
        return FastGradientMethod(classifier, eps=0.1, targeted=True, **common)
    if name == "bim":
        return BasicIterativeMethod(classifier, eps=0.1, eps_step=0.02, max_iter=7, **iterative)
    if name == "pgd_linf":
        return ProjectedGradientDescent(classifier, eps=0.1, eps_step=0.03, max_iter=6, **iterative)
    if name == "pgd_l2":
        return ProjectedGradientDescent(classifier, norm=2, eps=0.8, eps_step=0.3, max_iter=6, **iterative)
    if name == "pgd_targeted":
        return ProjectedGradientDescent(
            classifier, norm="inf", eps=0.1, eps_step=0.03, max_iter=4, targeted=True, **iterative
        )
    if name == "pgd_pytorch":
        return ProjectedGradientDescentPyTorch(classifier, norm=2, eps=0.8, eps_step=0.3, max_iter=5, **iterative)
    if name == "pgd_numpy":
        return ProjectedGradientDescentNumpy(classifier, eps=0.1, eps_step=0.03, max_iter=5, **iterative)
    raise KeyError(name)


ATTACKS = [
    "fgsm",
    "fgm_l2",
    "fgsm_targeted",
    "bim",
    "pgd_linf",
    "pgd_l2",
    "pgd_targeted",
    "pgd_pytorch",
    "pgd_numpy",
]


@pytest.mark.parametrize("preprocessing", [None, PREPROCESSING], ids=["raw", "standardised"])
@pytest.mark.parametrize("name", ATTACKS)
def test_fast_path_equals_art(name, preprocessing, data):
    classifier = make_classifier(preprocessing)
    x, y = data
    attack = art_attack(name, classifier)
    source = TorchGradientAttack.from_art(attack)
    assert isinstance(source, TorchGradientAttack)

    ours = source.generate(x, y)
    reference = attack.generate(x.numpy(), y=one_hot(y))

    assert ours.shape == x.shape and ours.dtype == x.dtype
    assert not torch.equal(ours, x)
    assert np.abs(ours.numpy() - reference).max() <= 1e-5
    assert ours.min() >= 0.0 and ours.max() <= 1.0


def test_fast_path_accepts_one_hot_labels(classifier, data):
    x, y = data
    source = TorchGradientAttack(classifier, eps=0.1, eps_step=0.1)
    torch.testing.assert_close(source.generate(x, torch.from_numpy(one_hot(y))), source.generate(x, y))


def test_per_sample_eps_equals_separate_groups(classifier, data):
    x, y = data
    source = TorchGradientAttack(classifier, eps=0.1, eps_step=0.025, max_iter=5)
    budgets = torch.tensor([0.0, 16 / 255, 32 / 255]).repeat(N_SAMPLES // 3)

    mixed = source.generate(x, y, eps=budgets)

    assert torch.equal(mixed[budgets == 0], x[budgets == 0])
    for budget in (16 / 255, 32 / 255):
        rows = budgets == budget
        separate = source.generate(x[rows], y[rows], eps=budget)
        torch.testing.assert_close(mixed[rows], separate, rtol=0, atol=1e-6)
        # eps_step is scaled with the budget, so the per-sample run matches an attack built for that budget
        built = TorchGradientAttack(classifier, eps=budget, eps_step=0.025 * budget / 0.1, max_iter=5)
        torch.testing.assert_close(mixed[rows], built.generate(x[rows], y[rows]), rtol=0, atol=1e-6)
        assert (mixed[rows] - x[rows]).abs().max() <= budget + 1e-6


def test_per_sample_eps_equals_art_array_eps(classifier, data):
    x, y = data
    budgets = np.array([0.02, 0.05, 0.1], dtype=np.float32).repeat(N_SAMPLES // 3)
    shape = (N_SAMPLES, 1, 1, 1)
    attack = ProjectedGradientDescent(
        classifier,
        eps=budgets.reshape(shape),
        eps_step=(budgets / 4).reshape(shape),
        max_iter=5,
        batch_size=ART_BATCH,
        verbose=False,
    )
    source = TorchGradientAttack(classifier, eps=0.1, eps_step=0.025, max_iter=5)

    ours = source.generate(x, y, eps=torch.from_numpy(budgets))
    reference = attack.generate(x.numpy(), y=one_hot(y))

    assert np.abs(ours.numpy() - reference).max() <= 1e-5


@pytest.mark.parametrize("source_kind", ["torch", "art", "torch_restarts"])
def test_zero_eps_returns_input_exactly(source_kind, classifier, data):
    x, y = data
    x = x * 1.2 - 0.1  # partly outside clip_values: clipping must not touch zero-budget rows
    if source_kind == "art":
        source = ARTAttackSource(art_attack("pgd_linf", classifier))
    else:
        source = TorchGradientAttack(classifier, eps=0.1, num_random_init=3 if source_kind == "torch_restarts" else 0)
    assert torch.equal(source.generate(x, y, eps=0.0), x)
    assert torch.equal(source.generate(x, y, eps=torch.zeros(N_SAMPLES)), x)


def _make_sources(classifier: PyTorchClassifier) -> dict[str, PerturbationSource]:
    return {
        "torch": TorchGradientAttack(classifier, eps=0.1, eps_step=0.03, max_iter=3, num_random_init=2),
        "art": ARTAttackSource(art_attack("pgd_linf", classifier)),
    }


@pytest.mark.parametrize("source_name", ["torch", "art"])
def test_modes_and_parameter_grads_restored(source_name, classifier, data):
    x, y = data
    model = classifier.model
    model.train()
    model.bn.eval()
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    grads = [param.grad.clone() for param in model.parameters()]
    modes = {name: module.training for name, module in model.named_modules()}

    _make_sources(classifier)[source_name].generate(x, y, eps=torch.linspace(0, 0.1, N_SAMPLES))

    assert {name: module.training for name, module in model.named_modules()} == modes
    assert not model.bn.training and model.conv.training
    for param, grad in zip(model.parameters(), grads, strict=True):
        assert torch.equal(param.grad, grad)


@pytest.mark.parametrize("source_name", ["torch", "art"])
def test_modes_restored_after_exception(source_name, classifier, data, monkeypatch):
    x, y = data
    model = classifier.model
    model.train()
    model.bn.eval()
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    modes = {name: module.training for name, module in model.named_modules()}

    def broken_forward(inputs: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward failed")

    source = _make_sources(classifier)[source_name]
    monkeypatch.setattr(model, "forward", broken_forward)
    with pytest.raises(RuntimeError, match="forward failed"):
        source.generate(x, y)

    assert {name: module.training for name, module in model.named_modules()} == modes
    assert all(torch.equal(param.grad, torch.ones_like(param)) for param in model.parameters())


def test_fast_path_computes_no_parameter_gradients(classifier, data):
    x, y = data
    source = TorchGradientAttack(classifier, norm=2, eps=0.5, eps_step=0.2, max_iter=3, num_random_init=2)
    source.generate(x, y)
    assert all(param.grad is None for param in classifier.model.parameters())
    assert all(param.requires_grad for param in classifier.model.parameters())


@pytest.mark.parametrize("norm", [np.inf, 2])
def test_random_init_stays_in_ball_and_is_reproducible(norm, classifier, data):
    x, y = data
    eps = 0.1 if norm == np.inf else 0.8

    def make(seed: int) -> TorchGradientAttack:
        return TorchGradientAttack(
            classifier, eps=eps, eps_step=eps / 4, max_iter=3, norm=norm, num_random_init=2, generator=seed
        )

    first = make(3).generate(x, y)
    assert torch.equal(first, make(3).generate(x, y))
    assert not torch.equal(first, make(4).generate(x, y))
    delta = (first - x).reshape(N_SAMPLES, -1)
    size = delta.abs().amax(dim=1) if norm == np.inf else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert first.min() >= 0 and first.max() <= 1


@pytest.mark.parametrize("norm", [np.inf, 2])
def test_random_init_matches_art_random_sphere(norm, classifier):
    eps = 0.5 if norm == 2 else 0.1
    source = TorchGradientAttack(classifier, norm=norm, eps=eps, generator=0)
    x = torch.full((4000, 1, 8, 8), 0.5)  # far enough from 0 and 1 that clipping never acts
    ours = (source._random_init(x, torch.tensor(eps)) - x).reshape(len(x), -1)
    np.random.seed(0)
    reference = torch.from_numpy(art.utils.random_sphere(len(x), 64, eps, norm)).float()
    for values in (ours, reference):
        sizes = values.abs().amax(dim=1) if norm == np.inf else values.norm(dim=1)
        assert sizes.max() <= eps + 1e-6
    if norm == 2:  # uniform in the ball: same radius quantiles as ART's draw
        quantiles = torch.tensor([0.01, 0.5, 0.99])
        torch.testing.assert_close(
            ours.norm(dim=1).quantile(quantiles), reference.norm(dim=1).quantile(quantiles), rtol=0, atol=0.005
        )
    else:  # uniform in the box
        assert abs(ours.std().item() - eps / math.sqrt(3)) < 0.001


def test_random_eps_scales_budget(classifier, data):
    x, y = data
    source = TorchGradientAttack(classifier, eps=0.1, eps_step=0.1, random_eps=True, generator=0)
    sizes = [(source.generate(x, y) - x).abs().max().item() for _ in range(8)]
    assert max(sizes) <= 0.1 + 1e-6
    assert len({round(size, 6) for size in sizes}) > 1


def test_from_art_reads_random_eps_bound(classifier):
    attack = ProjectedGradientDescent(classifier, eps=0.2, eps_step=0.05, max_iter=2, random_eps=True, verbose=False)
    attack.generate(np.random.rand(4, 1, 8, 8).astype(np.float32))  # ART overwrites attack.eps with a draw
    source = TorchGradientAttack.from_art(attack)
    assert source.random_eps and math.isclose(source.eps, 0.2) and math.isclose(source.eps_step, 0.05)


def test_fgm_restarts_select_whole_batch(classifier, data):
    x, y = data
    source = TorchGradientAttack.from_art(FastGradientMethod(classifier, eps=0.2, num_random_init=3))
    assert source.restart_selection == "batch" and source.num_random_init == 3
    out = source.generate(x, y)
    assert (out - x).abs().max() <= 0.2 + 1e-6


def test_from_art_returns_none_when_not_reproducible(classifier):
    smoothing = make_classifier(preprocessing_defences=[SpatialSmoothing(window_size=3)])
    assert TorchGradientAttack.from_art(FastGradientMethod(classifier, minimal=True)) is None
    assert TorchGradientAttack.from_art(ProjectedGradientDescent(classifier, decay=0.5, verbose=False)) is None
    assert TorchGradientAttack.from_art(MomentumIterativeMethod(classifier, verbose=False)) is None
    assert TorchGradientAttack.from_art(FastGradientMethod(classifier, norm=1)) is None
    assert TorchGradientAttack.from_art(FastGradientMethod(smoothing)) is None
    assert TorchGradientAttack.from_art(DeepFool(classifier, verbose=False)) is None
    eps = np.full((1, 8, 8), 0.1, dtype=np.float32)
    assert TorchGradientAttack.from_art(FastGradientMethod(classifier, eps=eps, eps_step=eps)) is None
    with pytest.raises(ValueError, match="PreprocessorPyTorch"):
        TorchGradientAttack(smoothing)


def test_as_perturbation_source_dispatch(classifier):
    pgd = art_attack("pgd_linf", classifier)
    noise = GaussianNoiseSource(0.1)

    assert as_perturbation_source(noise) is noise
    assert isinstance(as_perturbation_source(pgd), TorchGradientAttack)
    bridged = as_perturbation_source(pgd, fast=False)
    assert isinstance(bridged, ARTAttackSource) and bridged.attack is pgd
    assert isinstance(as_perturbation_source(FastGradientMethod(classifier, minimal=True)), ARTAttackSource)
    assert isinstance(as_perturbation_source(DeepFool(classifier, verbose=False)), ARTAttackSource)
    with pytest.raises(TypeError, match="PerturbationSource or an art"):
        as_perturbation_source("pgd")


def test_art_source_matches_attack_and_keeps_dtype(classifier, data):
    x, y = data
    attack = art_attack("pgd_linf", classifier)
    out = ARTAttackSource(attack).generate(x.double(), y)
    assert out.dtype == torch.float64 and out.device == x.device
    reference = attack.generate(x.numpy(), y=one_hot(y))
    assert np.abs(out.numpy() - reference).max() <= 1e-6


def test_art_source_eps_override_restores_params(classifier, data):
    x, y = data
    attack = art_attack("pgd_linf", classifier)
    source = ARTAttackSource(attack)
    budgets = torch.tensor([0.0, 0.05]).repeat(N_SAMPLES // 2)

    out = source.generate(x, y, eps=budgets)

    assert attack.eps == 0.1 and attack.eps_step == 0.03
    assert attack._attack.eps == 0.1 and attack._attack.eps_step == 0.03
    assert source.eps == 0.1
    assert torch.equal(out[budgets == 0], x[budgets == 0])
    rows = (budgets == 0.05).numpy()
    reference = ProjectedGradientDescent(
        classifier, eps=0.05, eps_step=0.015, max_iter=6, batch_size=ART_BATCH, verbose=False
    ).generate(x.numpy()[rows], y=one_hot(y)[rows])
    assert np.abs(out.numpy()[rows] - reference).max() <= 1e-6


def test_art_source_without_fast_path_or_eps(classifier, data):
    x, y = data
    source = ARTAttackSource(DeepFool(classifier, max_iter=2, verbose=False))
    assert source.eps is None
    out = source.generate(x, y)
    assert out.shape == x.shape and out.dtype == x.dtype and not torch.equal(out, x)
    with pytest.raises(ValueError, match="no `eps` parameter"):
        source.generate(x, y, eps=0.1)


def test_art_source_rejects_random_eps_override(classifier, data):
    x, y = data
    attack = ProjectedGradientDescent(classifier, eps=0.1, eps_step=0.03, random_eps=True, verbose=False)
    with pytest.raises(ValueError, match="random_eps"):
        ARTAttackSource(attack).generate(x, y, eps=0.05)


def test_gaussian_noise_statistics():
    x = torch.zeros(200, 1000)
    noisy = GaussianNoiseSource(0.5, generator=0).generate(x, torch.zeros(200, dtype=torch.long))
    assert abs(noisy.mean().item()) < 0.01
    assert abs(noisy.std().item() - 0.5) < 0.01


def test_gaussian_noise_clipping_and_override():
    x = torch.full((300, 64), 0.5)
    source = GaussianNoiseSource(0.1, clip_values=(0.0, 1.0), generator=0)
    clipped = source.generate(x, None, eps=2.0)
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    assert ((clipped == 0) | (clipped == 1)).float().mean() > 0.5

    sigma = torch.tensor([0.0, 0.05, 0.2]).repeat(100)
    noisy = GaussianNoiseSource(0.1, generator=0).generate(x, None, eps=sigma)
    assert torch.equal(noisy[sigma == 0], x[sigma == 0])
    assert abs((noisy[sigma == 0.05] - 0.5).std().item() - 0.05) < 0.005
    assert abs((noisy[sigma == 0.2] - 0.5).std().item() - 0.2) < 0.02
    assert source.eps == 0.1


def test_gaussian_noise_reproducible():
    x = torch.rand(8, 1, 8, 8)
    first = GaussianNoiseSource(0.1, generator=torch.Generator().manual_seed(5))
    second = GaussianNoiseSource(0.1, generator=torch.Generator().manual_seed(5))
    a, b = first.generate(x, None), second.generate(x, None)
    assert torch.equal(a, b)
    assert not torch.equal(first.generate(x, None), a)


def test_invalid_budgets(classifier, data):
    x, y = data
    source = TorchGradientAttack(classifier)
    with pytest.raises(ValueError, match="non-negative"):
        source.generate(x, y, eps=-0.1)
    with pytest.raises(ValueError, match="one per sample"):
        source.generate(x, y, eps=torch.ones(3))
    with pytest.raises(ValueError, match="norms"):
        TorchGradientAttack(classifier, norm=1)
