"""LatentClassifier and layer selection: names, patterns, types, "auto", hooks, modes, ART interop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import DeepFool, FastGradientMethod, ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from art.metrics import empirical_robustness
from helpers import TinyNet, make_classifier
from torch import nn

from art_latent import LatentClassifier
from art_latent.layers import auto_layers, resolve_layers
from art_latent.models import VGG


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_auto_layers_tiny_net(tiny_classifier):
    # stem conv->bn->ELU gives the ELU; the residual block (relu(out + x)) is one unit, its output; fc is followed by
    # a functional relu (not hookable: fc itself); head produces the logits and is excluded.
    assert tiny_classifier.latent_layers == ["stem.unit.act", "res", "fc"]


def test_auto_layers_vgg_are_post_activation():
    model = VGG(width=0.125)
    names = auto_layers(model, torch.zeros(1, 1, 28, 28))
    assert len(names) == 14  # 13 conv units + the hidden dense layer
    assert names[0] == "block1.conv.0.act" and names[-1] == "classifier.act"
    assert "classifier.logits" not in names


def test_resolve_names_patterns_types():
    model = VGG(width=0.125)
    assert resolve_layers(model, "block2.conv.1") == ["block2.conv.1"]
    assert resolve_layers(model, "block1.conv.*.act") == ["block1.conv.0.act", "block1.conv.1.act"]
    assert len(resolve_layers(model, nn.BatchNorm2d)) == 13
    mixed = resolve_layers(model, ["classifier.fc", "block1.conv.0", "classifier.fc"])
    assert mixed == ["classifier.fc", "block1.conv.0"]


@pytest.mark.parametrize("spec", ["block9.conv.0", "nope*", nn.LSTM, [], 3])
def test_resolve_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        resolve_layers(VGG(width=0.125), spec)


def test_unknown_layer_rejected_at_construction():
    with pytest.raises(ValueError, match="unknown layer name"):
        make_classifier(layers=["stem.unit.conv", "stem.unit.nonexistent"])


def test_forward_with_latents_matches_manual_forward(tiny_classifier):
    model = tiny_classifier.model
    model.eval()
    x = torch.rand(5, 1, 8, 8)
    logits, acts = tiny_classifier.forward_with_latents(x, ["stem.unit.act", "res.bn2", "fc"])
    stem = model.stem(x)
    out = model.res.relu(model.res.bn1(model.res.conv1(stem)))
    bn2 = model.res.bn2(model.res.conv2(out))
    fc = model.fc(model.pool(model.res.relu(bn2 + stem)).flatten(1))
    torch.testing.assert_close(acts["stem.unit.act"], stem)
    torch.testing.assert_close(acts["res.bn2"], bn2)
    torch.testing.assert_close(acts["fc"], fc)
    torch.testing.assert_close(logits, model.head(torch.relu(fc)))
    assert list(acts) == ["stem.unit.act", "res.bn2", "fc"]


def test_forward_with_latents_applies_preprocessing():
    clf = make_classifier(preprocessing=(0.5, 0.25))
    clf.model.eval()
    x = torch.rand(4, 1, 8, 8)
    logits, acts = clf.forward_with_latents(x)
    torch.testing.assert_close(acts["stem.unit.act"], clf.model.stem((x - 0.5) / 0.25))
    np.testing.assert_allclose(logits.detach().numpy(), clf.predict(x.numpy()), atol=1e-5)


def test_forward_with_latents_is_differentiable_and_keeps_mode(tiny_classifier):
    model = tiny_classifier.model
    model.train()
    model.res.bn1.eval()  # a mixed-mode model must stay mixed
    x = torch.rand(6, 1, 8, 8, requires_grad=True)
    logits, acts = tiny_classifier.forward_with_latents(x)
    (logits.sum() + sum(a.sum() for a in acts.values())).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    assert model.training and model.stem.training and not model.res.bn1.training
    assert _hook_count(model) == 0


def test_hooks_removed_on_exception(tiny_classifier):
    model = tiny_classifier.model

    def boom(module, inputs, output):
        raise RuntimeError("boom")

    handle = model.fc.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        tiny_classifier.forward_with_latents(torch.rand(2, 1, 8, 8))
    handle.remove()
    assert _hook_count(model) == 0


def test_get_activations_nested_names_no_leaks(tiny_classifier):
    model = tiny_classifier.model
    model.train()
    x = np.random.default_rng(0).uniform(size=(10, 1, 8, 8)).astype(np.float32)
    for _ in range(3):
        acts = tiny_classifier.get_activations(x, "stem.unit.bn", batch_size=4)
    assert acts.shape == (10, 4, 8, 8)
    assert model.training and _hook_count(model) == 0
    model.eval()
    with torch.no_grad():
        expected = model.stem.unit.bn(model.stem.unit.conv(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(acts, expected, atol=1e-6)
    tensor = tiny_classifier.get_activations(torch.from_numpy(x).requires_grad_(True), 0, framework=True)
    assert isinstance(tensor, torch.Tensor) and tensor.requires_grad
    with pytest.raises(ValueError, match="out of range"):
        tiny_classifier.get_activations(x, 10)
    with pytest.raises(ValueError, match="unknown layer"):
        tiny_classifier.get_activations(x, "block2.conv.9")


def test_layer_names_are_arts_and_module_names_nested(tiny_classifier):
    # ART's meaning (top-level children, what get_activations(x, int) indexes); every qualified name in module_names
    assert tiny_classifier.layer_names == ["stem", "res", "pool", "fc", "head"]
    assert "stem.unit.conv" in tiny_classifier.module_names and "res.bn2" in tiny_classifier.module_names


def test_art_attacks_and_metrics_run(tiny_classifier, tiny_data):
    x, y = tiny_data
    x, y = x[:12], y[:12]
    for attack in (
        FastGradientMethod(tiny_classifier, eps=0.1),
        ProjectedGradientDescent(tiny_classifier, eps=0.1, eps_step=0.05, max_iter=3, verbose=False),
        DeepFool(tiny_classifier, max_iter=3, verbose=False),
    ):
        x_adv = attack.generate(x)
        assert x_adv.shape == x.shape and np.isfinite(x_adv).all()
    assert np.isfinite(empirical_robustness(tiny_classifier, x, "fgsm", {"eps": 0.1}))
    assert tiny_classifier.predict(x).shape == (12, 3)


def test_clone_for_refitting_keeps_layers_and_save(tmp_path):
    clf = make_classifier(layers="fc")
    clone = clf.clone_for_refitting()
    assert isinstance(clone, LatentClassifier) and clone.latent_layers == ["fc"]
    assert clone.model is not clf.model
    clf.save("tiny", str(tmp_path))
    assert (tmp_path / "tiny.model").exists() and (tmp_path / "tiny.optimizer").exists()


def test_from_classifier_and_type_errors():
    model = TinyNet()
    art_clf = PyTorchClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 3, device_type="cpu")
    clf = LatentClassifier.from_classifier(art_clf, layers="fc")
    assert clf.model is model and clf.latent_layers == ["fc"]
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        LatentClassifier.from_classifier(object())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        LatentClassifier(lambda x: x, nn.CrossEntropyLoss(), (1, 8, 8), 3)


def test_methods_accept_module_types_and_auto_as_layers(tiny_classifier):
    from art.attacks.evasion import FastGradientMethod
    from torch import nn

    from art_latent import HLDRTrainer

    assert tiny_classifier.layer_refs(nn.ELU) == ["stem.unit.act"]
    assert tiny_classifier.layer_refs(["fc", nn.ELU]) == ["fc", "stem.unit.act"]
    assert tiny_classifier.layer_refs("auto") == tiny_classifier.latent_layers
    trainer = HLDRTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1), layers=nn.ELU)
    assert trainer.layers == ["stem.unit.act"]
