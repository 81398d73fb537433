"""The registries: every registered evaluation attack builds a source that perturbs within its budget, and an attack
registered by a user is accepted by the report and the benchmark configuration by its name alone."""

from __future__ import annotations

import pytest
import torch
from helpers import make_classifier

from art_latent.analysis import evaluation_attacks as registry
from art_latent.analysis.evaluation_attacks import EvaluationAttack, attack_names, evaluation_attack
from art_latent.analysis.report import ATTACKS, RobustnessReport


def test_the_default_suite_is_the_builtin_registry():
    assert set(ATTACKS) <= set(attack_names())
    assert {evaluation_attack(a).axis for a in ATTACKS} == {"eps", "sigma"}


@pytest.mark.parametrize("name", [n for n, a in registry.evaluation_attacks().items() if a.build is not None])
def test_every_builder_makes_a_source_within_its_budget(name):
    torch.manual_seed(0)
    clf = make_classifier()
    report = RobustnessReport(attacks=(name,), eps_list=(0.0, 0.1), pgd_max_iter=2, masking_checks=False,
                              perturbation_eps=None, autoattack_preset="fast",
                              autoattack_kwargs={"max_iter": 2}, verbose=False)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    source = report.make_source(name, clf)
    x_adv = source.generate(x, y, eps=0.05)
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= 0.05 + 1e-5


def test_a_registered_attack_runs_in_the_report_and_the_config(monkeypatch):
    from art.attacks.evasion import BasicIterativeMethod

    from art_latent.experiments.config import config_from_dict
    from art_latent.perturbations import as_perturbation_source

    def build_bim(report, classifier, eps, generator):
        attack = BasicIterativeMethod(classifier, eps=eps, eps_step=eps / 4, max_iter=3, verbose=False)
        return as_perturbation_source(attack, generator=generator)

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_evaluation_attack(EvaluationAttack("bim", "BIM (white-box)", True, "eps", build_bim))
    with pytest.raises(ValueError, match="already registered"):
        registry.register_evaluation_attack(EvaluationAttack("bim", "BIM", True, "eps", build_bim))
    torch.manual_seed(0)
    clf = make_classifier()
    report = RobustnessReport(attacks=("fgsm", "bim"), eps_list=(0.0, 0.1), masking_checks=False,
                              perturbation_eps=None, verbose=False)
    x, y = torch.rand(8, 1, 8, 8).numpy(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]).numpy()
    results = report.evaluate({"model": clf}, x, y)
    assert len(results["models"]["model"]["accuracy"]["bim"]) == 2
    assert "BIM (white-box)" in RobustnessReport.to_markdown(results)
    config = config_from_dict({"defenses": [{"name": "undefended", "trainer": "LatentTrainer"}],
                               "evaluation": {"attacks": ["fgsm", "bim"]}})
    assert config.evaluation.attacks == ("fgsm", "bim")
