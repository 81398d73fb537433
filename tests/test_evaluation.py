"""Evaluation metrics (curves.py), the RobustnessReport and its gradient-masking check."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from art.attacks.evasion import FastGradientMethod
from helpers import make_classifier

from art_latent.analysis.curves import (
    accuracy_under_perturbation,
    accuracy_vs_noise,
    mean_confidence_interval,
    perturbation_error,
    predict_labels,
)
from art_latent.analysis.metrics import robust_accuracy
from art_latent.analysis.report import RobustnessReport, gradient_masking_flags
from art_latent.perturbations import GaussianNoiseSource


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


# ---------------------------------------------------------------------------------------------------- metrics


def test_perturbation_error_matches_hand_computation_and_restores_state(tiny_classifier):
    model = tiny_classifier.model
    model.train()
    model.res.bn1.eval()  # a mixed mode, to check that every module's flag is restored
    before = _modes(model)
    torch.manual_seed(0)
    x, x_adv = torch.rand(7, 1, 8, 8), torch.rand(7, 1, 8, 8)
    errors = perturbation_error(tiny_classifier, x, x_adv, layers=["stem.unit.act", "fc"], batch_size=3)
    assert list(errors) == ["stem.unit.act", "fc"]
    # By hand, in eval mode over the whole set: sum |s(x) - s(x_a)| / sum |s(x)| per layer.
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        stem, stem_a = reference.stem(x), reference.stem(x_adv)
        fc = reference.fc(reference.pool(reference.res(stem)).flatten(1))
        fc_a = reference.fc(reference.pool(reference.res(stem_a)).flatten(1))
    assert errors["stem.unit.act"] == pytest.approx(((stem - stem_a).abs().sum() / stem.abs().sum()).item(), rel=1e-5)
    assert errors["fc"] == pytest.approx(((fc - fc_a).abs().sum() / fc.abs().sum()).item(), rel=1e-5)
    assert _modes(model) == before and _hook_count(model) == 0
    # Identical inputs give 0; the default layers are the classifier's latent layers.
    zero = perturbation_error(tiny_classifier, x, x)
    assert list(zero) == tiny_classifier.latent_layers and all(v == 0 for v in zero.values())


def test_perturbation_error_rejects_bad_input(tiny_classifier):
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        perturbation_error(tiny_classifier, x, x[:3])
    with pytest.raises(ValueError, match="batch_size"):
        perturbation_error(tiny_classifier, x, x, batch_size=0)
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        perturbation_error(object(), x, x)


def test_predict_labels_matches_art_predict_and_keeps_train_mode(tiny_classifier, tiny_data):
    x, _ = tiny_data
    tiny_classifier.model.train()
    labels = predict_labels(tiny_classifier, x, batch_size=10)
    assert tiny_classifier.model.training
    np.testing.assert_array_equal(labels.numpy(), tiny_classifier.predict(x).argmax(1))  # ART's predict: eval mode


def test_accuracy_under_fgsm_equals_art_robust_accuracy(tiny_classifier, tiny_data):
    x, y = tiny_data
    attack = FastGradientMethod(tiny_classifier, eps=0.1, batch_size=128)
    expected = robust_accuracy(tiny_classifier, x, y, attack)
    assert accuracy_under_perturbation(tiny_classifier, x, y, attack, batch_size=20) == pytest.approx(expected)
    # Budget 0 and no source are the clean accuracy; one-hot labels work too.
    clean = float(np.mean(tiny_classifier.predict(x).argmax(1) == y))
    assert accuracy_under_perturbation(tiny_classifier, x, y, attack, eps=0.0) == pytest.approx(clean)
    assert accuracy_under_perturbation(tiny_classifier, x, np.eye(3)[y]) == pytest.approx(clean)


def test_accuracy_vs_noise_reproduces_the_seeded_noise(tiny_classifier, tiny_data):
    x, y = tiny_data
    sigmas = [0.0, 0.2, 0.5]
    accuracies = accuracy_vs_noise(tiny_classifier, x, y, sigmas, batch_size=200, seed=3)
    clean = float(np.mean(tiny_classifier.predict(x).argmax(1) == y))
    assert accuracies[0] == pytest.approx(clean)
    for index in (1, 2):  # one generator per sigma, seeded seed + index
        source = GaussianNoiseSource(sigmas[index], clip_values=(0.0, 1.0), generator=3 + index)
        noisy = source.generate(torch.from_numpy(x))
        assert noisy.min() >= 0 and noisy.max() <= 1
        expected = float(np.mean(tiny_classifier.predict(noisy.numpy()).argmax(1) == y))
        assert accuracies[index] == pytest.approx(expected)
    assert accuracy_vs_noise(tiny_classifier, x, y, sigmas, seed=3) == accuracies  # reproducible
    with pytest.raises(ValueError, match="sigmas"):
        accuracy_vs_noise(tiny_classifier, x, y, [-0.1])


@pytest.mark.parametrize("values", [[0.71, 0.74, 0.69, 0.80, 0.77], [1.0, 2.0], [0.5, 0.5, 0.51, 0.49] * 3])
def test_confidence_interval_equals_scipy(values):
    interval = mean_confidence_interval(values, 0.95)
    low, high = scipy.stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values))
    assert interval.mean == pytest.approx(np.mean(values))
    assert interval.low == pytest.approx(low) and interval.high == pytest.approx(high)
    assert interval.half_width == pytest.approx((high - low) / 2) and interval.n == len(values)
    low90, high90 = scipy.stats.t.interval(0.9, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values))
    assert mean_confidence_interval(values, 0.9).high == pytest.approx(high90)


def test_confidence_interval_edge_cases():
    assert math.isnan(mean_confidence_interval([0.3]).half_width)
    assert mean_confidence_interval([0.3, 0.3, 0.3]).half_width == 0.0
    with pytest.raises(ValueError, match="empty"):
        mean_confidence_interval([])
    with pytest.raises(ValueError, match="finite"):
        mean_confidence_interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        mean_confidence_interval([0.1, 0.2], confidence=1.0)


# ---------------------------------------------------------------------------------------------------- masking check


def test_gradient_masking_flags():
    eps = [0.0, 0.1, 0.2]
    healthy = {"fgsm": [0.9, 0.5, 0.2], "pgd": [0.9, 0.4, 0.1], "transfer": [0.9, 0.7, 0.5]}
    assert gradient_masking_flags(healthy, eps) == []
    # White-box above transfer at 0.1 (by more than the tolerance): flagged, naming the strongest white-box attack.
    masked = {"fgsm": [0.9, 0.8, 0.2], "pgd": [0.9, 0.75, 0.1], "transfer": [0.9, 0.6, 0.5]}
    flags = gradient_masking_flags(masked, eps, tolerance=0.01)
    assert len(flags) == 1 and "pgd: 0.750" in flags[0] and "transfer-attack accuracy (0.600)" in flags[0]
    assert gradient_masking_flags(masked, eps, tolerance=0.2) == []
    assert gradient_masking_flags(masked, eps, check_transfer=False) == []  # the transfer source itself
    # Accuracy rising with eps, and not falling at all.
    rising = gradient_masking_flags({"fgsm": [0.9, 0.3, 0.5]}, eps)
    assert len(rising) == 1 and "rises" in rising[0] and "eps=25.5/255" in rising[0]
    flat = gradient_masking_flags({"pgd": [0.9, 0.9, 0.9]}, eps)
    assert len(flat) == 1 and "does not fall" in flat[0]
    # PGD weaker than FGSM at a budget: flagged at that budget only.
    weaker = gradient_masking_flags({"fgsm": [0.9, 0.5, 0.2], "pgd": [0.9, 0.6, 0.1]}, eps)
    assert weaker == ["pgd accuracy (0.600) exceeds single-step FGSM accuracy (0.500) at eps=25.5/255"]
    assert gradient_masking_flags({"fgsm": [0.9, 0.5, 0.2], "pgd": [0.9, 0.6, 0.1]}, eps, tolerance=0.2) == []


# ---------------------------------------------------------------------------------------------------- report


def _two_classifiers(tiny_data):
    x, y = tiny_data
    base = make_classifier()
    from art_latent import LatentTrainer

    LatentTrainer(base, seed=0).fit(x, y, nb_epochs=3, batch_size=32, verbose=False)
    other = make_classifier()
    other.model.load_state_dict(base.model.state_dict())
    LatentTrainer(other, seed=1).fit(x, y, nb_epochs=1, batch_size=16, verbose=False)
    return {"undefended": base, "tuned": other}


def test_report_evaluates_writes_and_renders(tiny_data, tmp_path):
    x, y = tiny_data
    classifiers = _two_classifiers(tiny_data)
    seen = {}

    def sensitivity(classifier, x_adv, x):
        seen["args"] = (classifier, x_adv.shape, x.shape)
        return {"mean": float(np.abs(x_adv - x).mean()), "per_sample": np.abs(x_adv - x).mean(axis=(1, 2, 3))}

    report = RobustnessReport(attacks=("fgsm", "pgd", "transfer", "noise"), eps_list=[0.1, 0.0, 0.2],
                              sigma_list=[0.0, 0.1], pgd_max_iter=3, pgd_restarts=0, masking_checks=False,
                              perturbation_eps=0.05, extra_metrics={"sens": sensitivity}, batch_size=40, verbose=False)
    assert report.eps_list == [0.0, 0.1, 0.2] and report.pgd_step_ratio == pytest.approx(2.5 / 3)
    results = report.evaluate(classifiers, x, y)
    assert results["reference"] == "undefended" and results["nb_samples"] == len(y)
    for name, clf in classifiers.items():
        res = results["models"][name]
        clean = float(np.mean(clf.predict(x).argmax(1) == y))
        assert res["clean_accuracy"] == pytest.approx(clean)
        assert set(res["accuracy"]) == {"fgsm", "pgd", "transfer"}
        for curve in res["accuracy"].values():
            assert len(curve) == 3 and curve[0] == pytest.approx(clean) and all(0 <= v <= 1 for v in curve)
        fgsm = FastGradientMethod(clf, eps=0.2, batch_size=128)
        assert res["accuracy"]["fgsm"][2] == pytest.approx(robust_accuracy(clf, x, y, fgsm))
        assert len(res["noise_accuracy"]) == 2 and res["noise_accuracy"][0] == pytest.approx(clean)
        assert res["perturbation_error"]["layers"] == clf.latent_layers
        assert set(res["extra"]) == {"sens.mean"}  # the per-sample array is dropped
        assert res["extra"]["sens.mean"] == pytest.approx(0.05, abs=1e-3)  # FGSM moves every pixel by eps or less
        assert set(res["auc"]) == {"fgsm", "pgd", "transfer"}
    assert seen["args"][0] is classifiers["tuned"] and seen["args"][1] == x.shape
    # Without random starts, the transfer attack on the reference *is* its white-box PGD.
    ref = results["models"]["undefended"]["accuracy"]
    assert ref["transfer"] == pytest.approx(ref["pgd"])
    gains = RobustnessReport.gains(results)
    assert gains["undefended"]["fgsm"] == [0.0, 0.0, 0.0]

    paths = report.write(results, tmp_path)
    names = {p.name for p in paths}
    assert {"report.json", "report.md", "accuracy_vs_eps.png", "gain_vs_eps.png", "accuracy_vs_sigma.png",
            "perturbation_error.png"} <= names
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["models"]["tuned"]["accuracy"] == results["models"]["tuned"]["accuracy"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| tuned |" in markdown and "Gradient-masking check" in markdown and "![accuracy_vs_eps]" in markdown
    (tmp_path / "report.md").unlink()
    RobustnessReport.render(tmp_path)
    assert (tmp_path / "report.md").read_text() == markdown


def test_report_rejects_bad_settings_before_work(tiny_classifier, tiny_data, monkeypatch):
    x, y = tiny_data
    with pytest.raises(ValueError, match="attacks"):
        RobustnessReport(attacks=("fgsm", "cw"))
    with pytest.raises(ValueError, match="eps_list"):
        RobustnessReport(eps_list=[0.0, -0.1])
    with pytest.raises(ValueError, match="pgd_max_iter"):
        RobustnessReport(pgd_max_iter=0)
    with pytest.raises(ValueError, match="needs the argument 'layer_name'"):
        RobustnessReport(extra_metrics={"m": lambda classifier, layer_name: 0.0})
    with pytest.raises(ValueError, match="x_adv needs perturbation_eps"):
        RobustnessReport(perturbation_eps=None, extra_metrics={"m": lambda x_adv: 0.0})
    report = RobustnessReport(verbose=False)
    with pytest.raises(ValueError, match="no reference model"):
        report.evaluate({"a": tiny_classifier}, x, y)
    with pytest.raises(ValueError, match="not one of the classifiers"):
        report.evaluate({"a": tiny_classifier}, x, y, reference="b")


def test_autoattack_without_multiprocess_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "multiprocess" else real(name, *a))
    with pytest.raises(ImportError, match="pip install multiprocess"):
        RobustnessReport(attacks=("fgsm", "autoattack"))
