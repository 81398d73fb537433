"""The default report suite (AutoAttack, the latent attack, the masking checklist) and the checks on a masked model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet
from torch import nn

from art_latent import LatentClassifier, LatentTrainer
from art_latent.analysis.masking import masking_checks
from art_latent.analysis.report import ATTACKS, RobustnessReport
from art_latent.attacks.autoattack import AutoAttackEnsemble


class _Quantize(torch.autograd.Function):
    """Rounds the input to 1/4 steps; the gradient is exactly zero (shattered gradients, Athalye et al. 2018)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return torch.zeros_like(grad)


class Masked(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_Quantize.apply(x))


def _classifier(model: nn.Module) -> LatentClassifier:
    return LatentClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 3, clip_values=(0.0, 1.0), device_type="cpu",
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.05))


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    n = 96
    y = (np.arange(n) % 3).astype(np.int64)
    x = rng.uniform(0.0, 0.4, size=(n, 1, 8, 8)).astype(np.float32)
    for i, label in enumerate(y):
        x[i, 0, :, label * 2 : label * 2 + 3] += 0.5
    x = np.clip(x, 0, 1)
    torch.manual_seed(0)
    net = TinyNet()
    honest = _classifier(net)
    LatentTrainer(honest, seed=0).fit(x, y, nb_epochs=15, batch_size=32, verbose=False)
    return honest, _classifier(Masked(net)), x[:48], y[:48]


def test_every_applicable_check_fires_on_a_masked_model_and_none_on_an_honest_one(trained):
    honest, masked, x, y = trained
    assert (masked.predict(x).argmax(1) == y).mean() > 0.9  # the quantizer keeps the accuracy, kills the gradient
    report = RobustnessReport(attacks=("fgsm", "pgd", "transfer"), eps_list=[0.0, 0.15, 0.3], pgd_max_iter=5,
                              check_eps=0.3, square_queries=200, check_samples=48, perturbation_eps=None,
                              verbose=False)
    results = report.evaluate({"undefended": honest, "masked": masked}, x, y)
    honest_res, masked_res = results["models"]["undefended"], results["models"]["masked"]
    checks = masked_res["masking_checks"]
    assert not checks["gradients"]["passed"] and checks["gradients"]["value"] == 1.0
    assert not checks["unbounded"]["passed"]
    assert not checks["black_box"]["passed"]  # Square, without gradients, beats the white-box attacks
    assert any("exceeds transfer-attack accuracy" in f for f in masked_res["flags"])
    assert any("does not fall as eps grows" in f for f in masked_res["flags"])
    assert all(c["passed"] for c in honest_res["masking_checks"].values()), honest_res["masking_checks"]
    assert honest_res["flags"] == []
    markdown = RobustnessReport.to_markdown(results)
    assert "FAIL" in markdown and "Checklist at eps=" in markdown


def test_checks_without_references_skip_what_they_cannot_compare(trained):
    honest, _, x, y = trained
    checks = masking_checks(honest, x[:16], y[:16], eps=0.3, samples=16)
    assert set(checks) == {"gradients", "unbounded"} and all(c["passed"] for c in checks.values())


def test_the_default_suite_runs_autoattack_and_the_latent_attack(trained):
    honest, _, x, y = trained
    assert RobustnessReport().attacks == ATTACKS
    report = RobustnessReport(eps_list=[0.0, 0.3], sigma_list=[0.0, 0.1], pgd_max_iter=5, square_queries=50,
                              autoattack_kwargs={"max_iter": 10, "square_queries": 50}, check_samples=24,
                              verbose=False)
    results = report.evaluate({"undefended": honest}, x[:24], y[:24])
    accuracy = results["models"]["undefended"]["accuracy"]
    assert {"autoattack", "latent", "pgd"} <= set(accuracy)
    # AutoAttack is at least as strong as PGD; the latent attack (CE + latent distance) is a real attack
    assert accuracy["autoattack"][1] <= accuracy["pgd"][1] + 1 / 24
    assert accuracy["latent"][1] < accuracy["latent"][0]
    assert "masking_checks" in results["models"]["undefended"]


def test_autoattack_ensemble_fast_and_standard(trained):
    honest, _, x, y = trained
    for preset in ("fast", "standard"):
        attack = AutoAttackEnsemble(honest, eps=0.3, preset=preset, max_iter=10, square_queries=50, targets=2)
        x_adv = attack.generate(x[:24], y[:24])
        assert np.abs(x_adv - x[:24]).max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        broken = honest.predict(x_adv).argmax(1) != y[:24]
        assert broken.mean() > 0.5 and set(attack.best_attack[broken]) <= {"apgd-ce", "apgd-dlr", "apgd-t", "square"}
    with pytest.raises(ValueError, match="preset"):
        AutoAttackEnsemble(honest, preset="plus")
    with pytest.raises(ValueError, match="eps"):
        AutoAttackEnsemble(honest, eps=0.0)
