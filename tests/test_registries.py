"""
The registries. Every registered evaluation attack builds a source that perturbs within its budget, and an attack
registered by a user is accepted by the report and the benchmark configuration by its name alone. Every registered
trainer declares the protocol contract its constructor has and trains from its test factory; a trainer from an entry
point is found by name.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_classifier

from art_latent.analysis.report import ATTACKS, RobustnessReport
from art_latent.registries import evaluation_attacks as registry
from art_latent.registries import trainers as trainer_registry
from art_latent.registries.evaluation_attacks import EvaluationAttack, attack_names, evaluation_attack
from art_latent.registries.trainers import ProtocolContract, TrainerEntry, trainer_entries


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


# ---------------------------------------------------------------------------------------------------- trainers

ENTRIES = [e for e in trainer_entries().values() if e.path.startswith("art_latent.")]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_every_trainer_declares_the_contract_its_constructor_has(entry):
    """A renamed constructor argument fails here instead of silently changing what the protocol hands over."""
    cls = entry.load()
    assert cls.__name__ == entry.name and callable(cls.fit)
    assert entry.contract == ProtocolContract.infer(cls)
    assert trainer_registry.trainer_entry_for(cls) is entry


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_every_test_factory_trains_one_epoch(entry, tiny_data):
    torch.manual_seed(0)
    trainer = entry.test_factory(make_classifier(), 0)
    assert type(trainer) is entry.load()
    x, y = tiny_data
    trainer.fit(x[:16], y[:16], nb_epochs=1, batch_size=8, verbose=False)


def test_short_names_are_unique():
    keys = [e.key for e in trainer_entries().values()]
    assert len(keys) == len(set(keys))


class _EntryPoint:
    name, value = "ToyTrainer", "toy_package:ENTRY"

    def __init__(self, entry):
        self.entry = entry

    def load(self):
        return self.entry


def test_a_trainer_from_an_entry_point_is_resolved_and_fed_by_its_contract(monkeypatch):
    from art_latent.experiments.registry import resolve_trainer
    from art_latent.trainers import LatentTrainer

    class ToyTrainer(LatentTrainer):
        def __init__(self, classifier, attack=None, **kwargs):
            super().__init__(classifier, **kwargs)
            self.attack = attack

    toy = TrainerEntry("ToyTrainer", "toy_package:ToyTrainer", ProtocolContract(attack=True),
                       lambda clf, seed: ToyTrainer(clf, seed=seed), "toy")
    monkeypatch.setattr(trainer_registry, "_REGISTRY", dict(trainer_registry._REGISTRY))
    monkeypatch.setattr(trainer_registry, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(trainer_registry, "entry_points", lambda group: [_EntryPoint(toy)])
    monkeypatch.setattr(TrainerEntry, "load", lambda self: ToyTrainer if self.name == "ToyTrainer" else
                        getattr(__import__(self.path.partition(":")[0], fromlist=["_"]), self.path.partition(":")[2]))
    assert resolve_trainer("ToyTrainer") is ToyTrainer
    assert trainer_registry.trainer_entry_for(ToyTrainer).contract.attack
    with pytest.raises(ValueError, match="registered trainers are"):
        resolve_trainer("NoSuchTrainer")
