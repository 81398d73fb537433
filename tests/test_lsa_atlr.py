"""Relative error, Layer Sustainability Analysis, AT-LR, the R&G score and ``art-latent lsa``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.data_generators import NumpyDataGenerator
from helpers import make_classifier
from torch import nn

from art_latent.analysis.lsa import LayerSustainabilityAnalysis, LSAResult, NoiseSource, learnable_layers, rg_score
from art_latent.cli import main as cli_main
from art_latent.estimator import LatentClassifier
from art_latent.lsa_cli import add_lsa_parser
from art_latent.models import SmallCNN
from art_latent.perturbations import GaussianNoiseSource, TorchGradientAttack, as_perturbation_source
from art_latent.regularizers.relative_error import layerwise_relative_error, relative_error
from art_latent.trainers.atlr import ATLRTrainer, make_fast_attack

# Two samples of a (2, 2) activation. Sample 0: diff (1, 0, 0, 2) -> |.|_F = sqrt(5), |a|_F = sqrt(1+4+0+9) = sqrt(14);
# sample 1: diff (0, 0, 3, 0) -> 3, |a|_F = sqrt(4+0+9+16) = sqrt(29).
A = [[[1.0, 2.0], [0.0, 3.0]], [[2.0, 0.0], [3.0, 4.0]]]
B = [[[0.0, 2.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 4.0]]]
PER_SAMPLE = [math.sqrt(5 / 14), 3 / math.sqrt(29)]


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class ZeroLoss(nn.modules.loss._Loss):
    """A classification loss that is identically 0: the AT-LR loss is then the regularizer alone."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits.sum() * 0.0


# ---------------------------------------------------------------------------------------------- relative error


def test_relative_error_matches_hand_computation():
    a, b = torch.tensor(A), torch.tensor(B)
    torch.testing.assert_close(relative_error(a, b, "none"), torch.tensor(PER_SAMPLE))
    assert relative_error(a, b).item() == pytest.approx(sum(PER_SAMPLE) / 2)
    assert relative_error(a, b, "batch").item() == pytest.approx(math.sqrt(14 / 43))  # the authors' code
    a2 = torch.tensor([[1.0], [2.0]])
    value = layerwise_relative_error([a, a2], [b, a2 + 1.0], gamma=[0.5, 2.0])
    assert value.item() == pytest.approx(0.5 * sum(PER_SAMPLE) / 2 + 2.0 * (1.0 + 0.5) / 2)


def test_relative_error_gradient_is_finite_for_identical_inputs():
    a = torch.tensor(A, requires_grad=True)
    value = relative_error(a, a.detach().clone())
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(a.grad).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: relative_error(torch.ones(2, 3), torch.ones(2, 4)), "differ in shape"),
        (lambda: relative_error(torch.ones(2, 3), torch.ones(2, 3), "sum"), "`reduction`"),
        (lambda: layerwise_relative_error([], []), "non-zero number"),
        (lambda: layerwise_relative_error([torch.ones(2, 1)], [torch.ones(2, 1)], [1.0, 2.0]), "2 weights for 1"),
        (lambda: layerwise_relative_error([torch.ones(2, 1)], [torch.ones(2, 1)], -1.0), "non-negative"),
    ],
)
def test_relative_error_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------- LSA


def test_lsa_errors_mu_sigma_match_hand_computation():
    clf = make_classifier()
    model = clf.model
    model.train()
    bn_state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = ["stem.unit.act", "res.bn2", "fc"]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(7, 1, 8, 8, generator=gen)
    x_hat = (x + 0.1 * torch.randn(7, 1, 8, 8, generator=gen)).clamp(0, 1)
    result = LayerSustainabilityAnalysis(clf, layers=layers).run(x.numpy(), x_perturbed=x_hat.numpy(), batch_size=3)
    # eval-mode forward: train flags, BN running statistics and hooks untouched
    assert model.training and _hook_count(model) == 0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, bn_state[key])

    model.eval()
    with torch.no_grad():
        acts = {}
        for name, inp in (("clean", x), ("pert", x_hat)):
            stem = model.stem(inp)
            res_bn2 = model.res.bn2(model.res.conv2(model.res.relu(model.res.bn1(model.res.conv1(stem)))))
            fc = model.fc(model.pool(model.res(stem)).flatten(1))
            acts[name] = [stem, res_bn2, fc]
    expected = np.stack([
        ((c - p).flatten(1).norm(dim=1) / c.flatten(1).norm(dim=1)).numpy()
        for c, p in zip(acts["clean"], acts["pert"], strict=True)
    ], axis=1)
    assert result.perturbations == ["x_perturbed"] and result.layers == layers
    np.testing.assert_allclose(result.errors["x_perturbed"], expected, rtol=1e-5)
    np.testing.assert_allclose(result.layer_mean(), expected.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(result.layer_std(), expected.std(axis=0), rtol=1e-5)
    assert result.mu() == pytest.approx(expected.sum() / 21, rel=1e-5)
    assert result.sigma() == pytest.approx(math.sqrt(((expected - expected.mean()) ** 2).sum() / 21), rel=1e-5)


def test_most_vulnerable_layers_rule_on_a_crafted_example():
    # Layer means: 0.1, 0.5, 0.3, 0.7; over the M x L values: mu = 3.2 / 8 = 0.4, sigma = sqrt(0.5 / 8) = 0.25
    errors = np.array([[0.1, 0.4, 0.3, 0.9], [0.1, 0.6, 0.3, 0.5]])
    result = LSAResult(["a", "b", "c", "d"], {"fgsm": errors, "noise": errors[:, ::-1]})
    sigma = math.sqrt(np.mean((errors - 0.4) ** 2))
    assert result.mu() == pytest.approx(0.4) and result.sigma() == pytest.approx(sigma)
    assert sigma == pytest.approx(0.25)
    assert result.most_vulnerable(0.0) == ["d", "b"]  # sorted by mean relative error, largest first
    assert result.most_vulnerable(0.3 / sigma - 1e-6) == ["d"]  # 0.7 - 0.4 > eta * sigma only for d
    assert result.most_vulnerable(0.3 / sigma + 1e-6) == []
    assert result.most_vulnerable(-1.0) == ["d", "b", "c"]  # threshold 0.15
    assert result.most_vulnerable(-2.0) == ["d", "b", "c", "a"]
    assert result.most_vulnerable(0.0, perturbation="noise") == ["a", "c"]
    np.testing.assert_allclose(result.layer_std(), [0.0, 0.1, 0.0, 0.2], atol=1e-12)
    with pytest.raises(ValueError, match="Unknown perturbation"):
        result.most_vulnerable(0.5, perturbation="pgd")
    with pytest.raises(ValueError, match="`eta`"):
        result.most_vulnerable(float("nan"))
    with pytest.raises(ValueError, match="shape"):
        LSAResult(["a", "b"], {"fgsm": errors})


def test_result_dict_round_trip_and_plot(tmp_path):
    import matplotlib.pyplot as plt

    errors = np.array([[0.1, 0.4, 0.3], [0.2, 0.6, 0.3]])
    result = LSAResult(["a", "b", "c"], {"pgd": errors, "salt": errors / 2})
    data = json.loads(json.dumps(result.to_dict(eta=0.0)))
    assert data["perturbations"]["pgd"]["most_vulnerable"] == ["b"]
    assert data["perturbations"]["salt"]["mu"] == pytest.approx(errors.mean() / 2)
    again = LSAResult.from_dict(data)
    np.testing.assert_allclose(again.errors["salt"], errors / 2)
    assert "errors" not in result.to_dict(samples=False)["perturbations"]["pgd"]
    with pytest.raises(ValueError, match="per-sample errors"):
        LSAResult.from_dict(result.to_dict(samples=False))
    figures = plt.get_fignums()
    path = result.plot(tmp_path / "lsa.png", eta=0.5)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == figures  # no pyplot state left behind


def test_lsa_with_an_attack_equals_lsa_of_its_examples(tiny_data):
    x, y = tiny_data
    clf = make_classifier()
    attack = FastGradientMethod(clf, eps=0.1)
    analysis = LayerSustainabilityAnalysis(clf)
    result = analysis.run(x[:20], attack=attack, noise=["salt", "gaussian"], y=y[:20])
    x_adv = attack.generate(x[:20], y=np.eye(3)[y[:20]])
    reference = analysis.run(x[:20], x_perturbed=x_adv)
    assert result.perturbations == ["FastGradientMethod(eps=0.1)", "salt", "gaussian"]
    np.testing.assert_allclose(result.errors["FastGradientMethod(eps=0.1)"], reference.errors["x_perturbed"],
                               rtol=1e-4, atol=1e-6)
    assert (result.layer_mean("salt") > 0).all()
    # without labels, the attacks use the model's predictions (as ART's attacks do)
    predicted = clf.predict(x[:20]).argmax(1)
    unlabeled = analysis.run(x[:20], attack={"fgsm": attack})
    with_predictions = analysis.run(x[:20], attack={"fgsm": attack}, y=predicted)
    np.testing.assert_allclose(unlabeled.errors["fgsm"], with_predictions.errors["fgsm"], rtol=1e-5)


def test_learnable_layers():
    model = SmallCNN()
    clf = LatentClassifier(model, nn.CrossEntropyLoss(), (1, 28, 28), 10, device_type="cpu")
    assert learnable_layers(clf) == ["features.0.act", "features.1.act", "classifier.act"]
    assert learnable_layers(clf, include_logits=True)[-1] == "classifier.logits"
    assert LayerSustainabilityAnalysis(clf, include_logits=True).layers[-1] == "classifier.logits"


def test_noise_sources():
    x = torch.full((4, 1, 50, 50), 0.5)
    x[0] = 0.0
    salt = NoiseSource("salt", amount=0.2, generator=0).generate(x)
    changed = salt != x
    assert set(salt[changed].tolist()) == {1.0} and 0.15 < changed.float().mean() < 0.25
    pepper = NoiseSource("pepper", amount=0.2, clip_values=(-1.0, 1.0), generator=0).generate(x)
    assert set(pepper[pepper != x].tolist()) == {-1.0}
    sp = NoiseSource("s&p", amount=0.5, salt_vs_pepper=1.0, generator=0).generate(x[1:])
    assert set(sp[sp != x[1:]].tolist()) == {1.0}
    speckle = NoiseSource("speckle", generator=0).generate(x)
    assert torch.equal(speckle[0], x[0])  # multiplicative: zero stays zero
    gauss = NoiseSource("gaussian", var=0.01, generator=0).generate(x[1:])
    assert 0.08 < (gauss - x[1:]).std() < 0.12 and gauss.min() >= 0 and gauss.max() <= 1
    torch.testing.assert_close(NoiseSource("gaussian", generator=3).generate(x),
                               NoiseSource("gaussian", generator=3).generate(x))
    with pytest.raises(ValueError, match="kind"):
        NoiseSource("poisson")
    with pytest.raises(ValueError, match="`amount`"):
        NoiseSource("salt", amount=1.5)
    with pytest.raises(ValueError, match="no budget"):
        NoiseSource("salt").generate(x, eps=0.1)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda a, x: a.run(x), ValueError, "at least one perturbation"),
        (lambda a, x: a.run(x, x_perturbed=x[:5]), ValueError, "`x_perturbed` has 5"),
        (lambda a, x: a.run(x, noise="poisson"), ValueError, "kind"),
        (lambda a, x: a.run(x, noise=[]), ValueError, "empty"),
        (lambda a, x: a.run(x, attack="fgsm"), ValueError, "ART attacks"),
        (lambda a, x: a.run(x, attack=object()), TypeError, "PerturbationSource"),
        (lambda a, x: a.run(x * 255, noise="salt"), ValueError, "clip_values"),
        (lambda a, x: a.run(x[:, :, :4], noise="salt"), ValueError, "shape"),
        (lambda a, x: a.run(x, noise="salt", batch_size=0), ValueError, "`batch_size`"),
    ],
)
def test_lsa_rejects_bad_input(tiny_data, call, error, match):
    analysis = LayerSustainabilityAnalysis(make_classifier())
    with pytest.raises(error, match=match):
        call(analysis, tiny_data[0][:10])


def test_lsa_rejects_bad_layers():
    clf = make_classifier()
    with pytest.raises(ValueError, match="unknown layer name"):
        LayerSustainabilityAnalysis(clf, layers=["nope"])
    with pytest.raises(ValueError, match="include_logits"):
        LayerSustainabilityAnalysis(clf, layers=["fc"], include_logits=True)
    with pytest.raises(TypeError, match="LatentClassifier"):
        LayerSustainabilityAnalysis(object())


# ---------------------------------------------------------------------------------------------- AT-LR


def _batch(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"x": torch.rand(n, 1, 8, 8, generator=gen), "y": torch.randint(0, 3, (n,), generator=gen)}


@pytest.mark.parametrize("base", ["ce", "trades"])
def test_atlr_loss_matches_hand_computation(base):
    clf = make_classifier()
    model = clf.model
    model.train()
    attack = FastGradientMethod(clf, eps=0.1)
    trainer = ATLRTrainer(clf, attack, layers=["stem.unit.act", "fc"], gamma=[0.5, 2.0], base=base, beta=3.0)
    batch = _batch()
    x, y = batch["x"], batch["y"]
    x_hat = as_perturbation_source(attack).generate(x, y)
    loss, logits, logs = trainer.training_step(batch)
    # By hand: one forward of (x, x_hat) in train mode (shared BatchNorm statistics)
    both = torch.cat([x, x_hat])
    stem = model.stem(both)
    fc = model.fc(model.pool(model.res(stem)).flatten(1))
    out = model.head(torch.relu(fc))
    cm = [(a[:6] - a[6:]).flatten(1).norm(dim=1) / a[:6].flatten(1).norm(dim=1) for a in (stem, fc)]
    reg = 0.5 * cm[0].mean() + 2.0 * cm[1].mean()
    if base == "ce":
        base_loss = nn.functional.cross_entropy(out[6:], y)
    else:
        p_clean = out[:6].softmax(1)
        kl = (p_clean * (p_clean.log() - out[6:].log_softmax(1))).sum(1).mean()
        base_loss = nn.functional.cross_entropy(out[:6], y) + 3.0 * kl
        torch.testing.assert_close(logs["kl"], kl.detach())
    torch.testing.assert_close(loss, base_loss + reg)
    torch.testing.assert_close(logits, out[:6])
    torch.testing.assert_close(logs["regularizer"], reg.detach())
    assert logs["adv_accuracy"] == pytest.approx((out[6:].argmax(1) == y).float().mean().item())


def test_atlr_regularizer_gradient_reaches_only_layers_up_to_the_selected_ones():
    torch.manual_seed(0)
    model = make_classifier().model
    clf = LatentClassifier(model, ZeroLoss(), (1, 8, 8), 3, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           clip_values=(0, 1), device_type="cpu")
    # noise, not an attack: an attack on an identically zero loss would not move x
    trainer = ATLRTrainer(clf, GaussianNoiseSource(0.1, (0.0, 1.0)), layers=["stem.unit.act", "res.bn1"], gamma=1.0)
    model.train()
    loss, _, _ = trainer.training_step(_batch())
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name in ("stem.unit.conv.weight", "stem.unit.bn.weight", "res.conv1.weight", "res.bn1.bias"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    for name in ("res.conv2.weight", "res.bn2.weight", "fc.weight", "head.weight"):
        assert grads[name] is None or grads[name].abs().sum() == 0, name


def test_gamma_zero_is_plain_adversarial_training(tiny_data):
    clf = make_classifier()
    trainer = ATLRTrainer(clf, FastGradientMethod(clf, eps=0.1), gamma=0.0, seed=0)
    calls = []
    original = trainer._classifier.forward_with_latents
    trainer._classifier.forward_with_latents = lambda *a, **k: calls.append(1) or original(*a, **k)
    history = trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    assert trainer.layers is None and trainer.lsa_result is None and calls == []  # no analysis, no activations
    assert history[-1]["regularizer"] == 0.0 and np.isfinite(history[-1]["base_loss"])
    assert ATLRTrainer(clf, FastGradientMethod(clf, eps=0.1), layers=["fc"], gamma=np.float32(0.5)).gamma == 0.5


def test_lsa_layer_selection_at_fit(tiny_data, tmp_path):
    x, y = tiny_data
    clf = make_classifier()
    attack = FastGradientMethod(clf, eps=0.1)
    expected = LayerSustainabilityAnalysis(clf).run(x, attack=attack, y=y).most_vulnerable(0.0)
    assert expected
    trainer = ATLRTrainer(clf, attack, layers="lsa", eta=0.0, lsa_samples=len(x), seed=0)
    checkpoint = tmp_path / "atlr"
    trainer.fit(x, y, nb_epochs=1, batch_size=32, checkpoint_dir=checkpoint, verbose=False)
    assert trainer.layers == expected and trainer.lsa_result.most_vulnerable(0.0) == expected
    assert torch.load(checkpoint / "checkpoint.pt", weights_only=True)["method"] == {"layers": expected}
    # a resumed run keeps the layers chosen on the starting model: no second analysis
    resumed = ATLRTrainer(clf, attack, layers="lsa", eta=0.0, seed=0)
    resumed.select_layers = None  # would fail if called
    history = resumed.fit(x, y, nb_epochs=2, batch_size=32, checkpoint_dir=checkpoint, resume=True, verbose=False)
    assert resumed.layers == expected and len(history) == 2


def test_lsa_selection_falls_back_to_the_top_layer(tiny_data, caplog):
    x, y = tiny_data
    clf = make_classifier()
    trainer = ATLRTrainer(clf, FastGradientMethod(clf, eps=0.1), eta=100.0, lsa_samples=40, seed=0)
    with caplog.at_level(logging.WARNING, logger="art_latent.trainers.atlr"):
        trainer.fit(x, y, nb_epochs=1, batch_size=32, verbose=False)
    means = trainer.lsa_result.layer_mean()
    assert trainer.layers == [trainer.lsa_result.layers[int(np.argmax(means))]]
    assert len(trainer.lsa_result.errors["attack"]) == 40 and "No layer passes" in caplog.text


def test_fit_generator_runs_the_analysis_first(tiny_data):
    x, y = tiny_data
    clf = make_classifier()
    trainer = ATLRTrainer(clf, make_fast_attack(clf, 0.1), lsa_samples=50, seed=0)
    history = trainer.fit_generator(NumpyDataGenerator(x, y, batch_size=32), nb_epochs=1, verbose=False)
    assert trainer.layers and len(trainer.lsa_result.errors["attack"]) == 50
    assert np.isfinite(history[-1]["regularizer"])


def test_fit_trains_hooks_removed_and_modes_restored(tiny_data):
    x, y = tiny_data
    clf = make_classifier()
    clf.model.eval()
    trainer = ATLRTrainer(clf, ProjectedGradientDescent(clf, eps=0.1, eps_step=0.05, max_iter=2, verbose=False),
                          base="trades", seed=0)
    history = trainer.fit(x, y, validation_data=(x, y), nb_epochs=4, batch_size=16, verbose=False)
    for key in ("loss", "ce", "kl", "regularizer", "base_loss", "adv_accuracy", "val_robust_accuracy"):
        assert np.isfinite(history[-1][key]), key
    assert history[-1]["val_accuracy"] > 0.8
    assert not clf.model.training and _hook_count(clf.model) == 0


def test_make_fast_attack():
    clf = make_classifier()
    attack = make_fast_attack(clf, 0.1)
    assert isinstance(attack, ProjectedGradientDescent)
    assert (attack.eps, attack.eps_step, attack.max_iter, attack.num_random_init) == (0.1, 0.125, 1, 1)
    source = as_perturbation_source(attack)
    assert isinstance(source, TorchGradientAttack)
    x = _batch()["x"]
    x_adv = source.generate(x, _batch()["y"])
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with pytest.raises(ValueError, match="`eps`"):
        make_fast_attack(clf, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -1.0}, "`gamma`"),
        ({"gamma": [1.0, 2.0]}, "explicit `layers`"),
        ({"gamma": [1.0], "layers": ["fc", "stem.unit.act"]}, "1 weights for 2 layers"),
        ({"gamma": "1"}, "`gamma`"),
        ({"base": "mart"}, "`base` must be one of"),
        ({"beta": 0.0}, "`beta`"),
        ({"eta": float("nan")}, "`eta`"),
        ({"lsa_samples": 0}, "`lsa_samples`"),
        ({"layers": ["nope"]}, "unknown layer name"),
    ],
)
def test_atlr_bad_hyper_parameters_rejected(kwargs, match):
    clf = make_classifier()
    with pytest.raises(ValueError, match=match):
        ATLRTrainer(clf, FastGradientMethod(clf, eps=0.1), **kwargs)
    with pytest.raises(TypeError, match="PerturbationSource"):
        ATLRTrainer(clf, "fgsm")


# ---------------------------------------------------------------------------------------------- R&G score


def test_rg_score():
    assert rg_score([0.9, 0.5, 0.25, 0.0]) == pytest.approx(165.0)
    assert rg_score([97.07, 93.63, 82.5, 76.83, 63.79, 52.35], percent=True) == pytest.approx(466.17)  # Table 2
    with pytest.raises(ValueError, match="percent=True"):
        rg_score([90.0, 50.0])
    with pytest.raises(ValueError, match="empty"):
        rg_score([])
    with pytest.raises(ValueError, match="accuracies"):
        rg_score([0.5, float("nan")])


# ---------------------------------------------------------------------------------------------- CLI


def _lsa_args(*argv):
    parser = argparse.ArgumentParser()
    add_lsa_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["lsa", *argv])


def _lsa(*argv) -> int:
    return cli_main(["lsa", *argv])


def test_cli_lsa(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "small.pt"
    torch.save(SmallCNN(channels=(4, 8), hidden=16).state_dict(), weights)
    with pytest.raises(RuntimeError):  # the CLI builds SmallCNN with its defaults: a mismatch is reported
        SmallCNN().load_state_dict(torch.load(weights, weights_only=True))
    args = (str(weights), "--model", "small_cnn", "--samples", "30", "--noise", "salt", "--attack", "fgsm",
            "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet")
    assert _lsa(*args) == 2
    err = capsys.readouterr().err
    assert "do not fit small_cnn" in err and len(err.strip().splitlines()) == 1  # one line, no traceback

    torch.save(SmallCNN().state_dict(), weights)
    assert _lsa(*args) == 0
    printed = capsys.readouterr().out
    assert "features.0.act" in printed and "most vulnerable" in printed
    data = json.loads((tmp_path / "out" / "lsa.json").read_text())
    assert list(data["perturbations"]) == ["FGSM(eps=0.1)", "salt"]
    assert len(data["perturbations"]["salt"]["errors"]) == 30 and (tmp_path / "out" / "lsa.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["missing.pt", "--model", "small_cnn"], "missing.pt does not exist"),
        (["WEIGHTS", "--model", "small_cnn", "--noise", "poisson"], "Unknown noise"),
        (["WEIGHTS", "--model", "small_cnn", "--noise", "none", "--attack", "none"], "Nothing to analyse"),
        (["NOT_A_STATE_DICT", "--model", "small_cnn"], "cannot be read safely"),
        (["WEIGHTS"], "give --model"),
        (["WEIGHTS", "--model", "small_cnn", "--eps", "8"], "did you mean 8/255"),
    ],
)
def test_cli_lsa_errors(tmp_path, capsys, argv, match):
    weights = tmp_path / "w.pt"
    torch.save(SmallCNN().state_dict(), weights)
    other = tmp_path / "other.pt"
    torch.save({"rng": np.random.get_state()}, other)
    argv = [str(weights) if a == "WEIGHTS" else str(other) if a == "NOT_A_STATE_DICT" else a for a in argv]
    with contextlib.suppress(SystemExit):  # argparse errors exit 2 themselves
        assert _lsa(*argv, "--out", str(tmp_path / "o"), "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        _lsa_args(str(weights), "--model", "resnet")
