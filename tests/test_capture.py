"""Per-call capture: in-place safety, repeated calls, the traced forward, logits selection, lazy layers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from helpers import make_classifier
from torch import nn

from art_latent import HLDRTrainer, LatentClassifier
from art_latent.capture import CallHooks, split_ref, trace_model


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class InPlaceBlock(nn.Module):
    """torchvision's BasicBlock pattern: one in-place ReLU called twice, ``out += identity``."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class InPlaceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.block = InPlaceBlock()
        self.fc = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).flatten(1))


def _manual(model: InPlaceNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    b = model.block
    stem = model.stem(x)
    bn1 = b.bn1(b.conv1(stem))
    relu0 = torch.relu(bn1)
    bn2 = b.bn2(b.conv2(relu0))
    relu1 = torch.relu(bn2 + stem)
    return {"block.bn1": bn1, "block.relu": relu0, "block.bn2": bn2, "block.relu#1": relu1, "block": relu1}


def _inplace_classifier() -> LatentClassifier:
    torch.manual_seed(0)
    model = InPlaceNet()
    return LatentClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 3, clip_values=(0, 1), device_type="cpu",
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("training", [False, True])
def test_captures_equal_what_the_module_returned_despite_inplace_ops(training):
    clf = _inplace_classifier()
    clf.model.train(training)
    x = torch.rand(6, 1, 8, 8)
    refs = ["block.bn1", "block.relu", "block.bn2", "block.relu#1", "block"]
    stats = [b.clone() for b in clf.model.buffers()]
    logits, acts = clf.forward_with_latents(x, refs)
    with torch.no_grad():  # the train-mode forward moved the statistics once: restore them for the manual pass
        for buffer, value in zip(clf.model.buffers(), stats, strict=True):
            buffer.copy_(value)
        expected = _manual(clf.model, x)
    for ref in refs:
        torch.testing.assert_close(acts[ref], expected[ref], msg=ref)
    assert list(acts) == refs
    torch.testing.assert_close(logits, clf.model.fc(expected["block"].flatten(1)))


def test_inplace_capture_has_the_gradient_of_the_true_tensor():
    clf = _inplace_classifier()
    clf.model.eval()
    x = torch.rand(4, 1, 8, 8)
    _, acts = clf.forward_with_latents(x, ["block.bn2"])
    (grad,) = torch.autograd.grad(acts["block.bn2"].square().sum(), clf.model.block.conv2.weight)
    expected_bn2 = _manual(clf.model, x)["block.bn2"]
    (expected,) = torch.autograd.grad(expected_bn2.square().sum(), clf.model.block.conv2.weight)
    torch.testing.assert_close(grad, expected)


def test_trace_finds_exactly_the_tensors_modified_in_place():
    clf = _inplace_classifier()
    trace = clf.trace(torch.rand(4, 1, 8, 8), training=False)
    # bn1's output is overwritten by the in-place ReLU; bn2's by `out += identity` and the second ReLU call; the
    # stem's output is the identity the block adds to a new tensor: unchanged, so never copied
    assert trace.inplace_refs == {"block.bn1", "block.bn2"}
    assert trace.call_counts()["block.relu"] == 2
    assert [c.ref for c in trace.calls if c.name == "block.relu"] == ["block.relu", "block.relu#1"]
    assert [c.ref for c in trace.calls if c.residual] == ["block"]


def test_no_copy_where_nothing_modifies_the_tensor():
    clf = make_classifier()  # TinyNet: no in-place op
    x = torch.rand(4, 1, 8, 8)
    assert clf.trace(x, training=False).inplace_refs == set()
    seen = {}
    handle = clf.model.fc.register_forward_hook(lambda _m, _i, out: seen.setdefault("fc", out))
    try:
        clf.model.eval()
        _, acts = clf.forward_with_latents(x, ["fc"])
    finally:
        handle.remove()
    assert acts["fc"] is seen["fc"]  # the module's own tensor, no copy


def test_trace_restores_batchnorm_statistics_and_rng():
    clf = _inplace_classifier()
    clf.model.train()
    buffers = [b.clone() for b in clf.model.buffers()]
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    trace_model(clf.model, torch.ones(4, 1, 8, 8))
    draw = torch.rand(3)
    torch.testing.assert_close(draw, expected_draw)
    for before, after in zip(buffers, clf.model.buffers(), strict=True):
        assert torch.equal(before, after)
    assert clf.model.training and _hook_count(clf.model) == 0


def test_repeated_call_indices_and_errors():
    clf = _inplace_classifier()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(RuntimeError, match=r"'block.relu#2' \(module called 2 times\)"):
        clf.forward_with_latents(x, ["block.relu#2"])
    with pytest.raises(ValueError, match="call index"):
        clf.forward_with_latents(x, ["block.relu#first"])
    with pytest.raises(ValueError, match="unknown layer name 'block.rellu#1'"):
        clf.forward_with_latents(x, ["block.rellu#1"])
    assert split_ref("a.b#3") == ("a.b", 3) and split_ref("a.b") == ("a.b", 0)
    assert _hook_count(clf.model) == 0


def test_call_hooks_fire_on_the_chosen_call_only_and_count_per_forward():
    model = InPlaceNet().eval()
    fired = []

    def fn(ref, output):
        fired.append(ref)
        return output * 0.0 if ref == "block.relu#1" else None

    with torch.no_grad(), CallHooks(model, ["block.relu#1"], fn):
        out1 = model(torch.rand(2, 1, 8, 8))
        out2 = model(torch.rand(2, 1, 8, 8))
    assert fired == ["block.relu#1", "block.relu#1"]  # counts restart every forward pass
    torch.testing.assert_close(out1, model.fc.bias.expand(2, 3))  # the block output was zeroed
    torch.testing.assert_close(out2, model.fc.bias.expand(2, 3))
    assert _hook_count(model) == 0


def test_data_dependent_inplace_is_caught_and_repeated(caplog):
    class Sneaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(x)
            if x.shape[0] > 4:  # the traced forward (4 samples) does not see this
                h.mul_(2.0)
            return self.out(h)

    model = Sneaky()
    clf = LatentClassifier(model, nn.CrossEntropyLoss(), (4,), 2, device_type="cpu", layers=["lin"])
    x = torch.rand(8, 4)
    with caplog.at_level(logging.WARNING, logger="art_latent.estimator"):
        _, acts = clf.forward_with_latents(x, ["lin"])
    torch.testing.assert_close(acts["lin"], model.lin(x))
    assert "modified in place" in caplog.text


def test_model_output_selection():
    class DictNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.Linear(4, 8)
            self.act = nn.ReLU()
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.act(self.hidden(x))
            return {"features": h, "logits": self.head(h)}

    x = np.random.default_rng(0).uniform(size=(5, 4)).astype(np.float32)
    plain = LatentClassifier(DictNet(), nn.CrossEntropyLoss(), (4,), 3, device_type="cpu")
    with pytest.raises(TypeError, match=r"returned a dict with keys \['features', 'logits'\].*`output_key`='logits'"):
        plain.predict(x)
    net = DictNet()
    clf = LatentClassifier(net, nn.CrossEntropyLoss(), (4,), 3, device_type="cpu", output_key="logits",
                           clip_values=(0, 1), optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    assert clf.predict(x).shape == (5, 3)
    assert clf.loss_gradient(x, np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]).shape == x.shape
    logits, acts = clf.forward_with_latents(torch.from_numpy(x))
    assert logits.shape == (5, 3) and clf.latent_layers == ["act"]
    by_fn = LatentClassifier(DictNet(), nn.CrossEntropyLoss(), (4,), 3, device_type="cpu",
                             logits_fn=lambda out: out["logits"])
    assert by_fn.predict(x).shape == (5, 3)
    wrong = LatentClassifier(DictNet(), nn.CrossEntropyLoss(), (4,), 3, device_type="cpu", output_key="scores")
    with pytest.raises(TypeError, match="`output_key`='scores' does not pick the logits"):
        wrong.predict(x)
    with pytest.raises(ValueError, match="not both"):
        LatentClassifier(DictNet(), nn.CrossEntropyLoss(), (4,), 3, output_key="logits", logits_fn=lambda o: o)
    with pytest.raises(TypeError, match="`output_key`"):
        LatentClassifier(DictNet(), nn.CrossEntropyLoss(), (4,), 3, output_key=1.5)
    clone = clf.clone_for_refitting()
    assert clone.output_key == "logits" and clone.predict(x).shape == (5, 3)


def test_construction_runs_nothing_and_models_without_hidden_layers_work():
    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the constructor must not run the model")

    LatentClassifier(Exploding(), nn.CrossEntropyLoss(), (4,), 2, device_type="cpu")
    single = LatentClassifier(nn.Sequential(nn.Linear(4, 2), nn.Sigmoid()), nn.BCELoss(), (4,), 2,
                              device_type="cpu")
    assert single.latent_layers == []
    assert single.predict(np.zeros((2, 4), dtype=np.float32)).shape == (2, 2)
    linear = LatentClassifier(nn.Linear(4, 2), nn.CrossEntropyLoss(), (4,), 2, device_type="cpu",
                              optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1))
    from art.attacks.evasion import FastGradientMethod

    with pytest.raises(ValueError, match="no hidden layer to regularize"):
        HLDRTrainer(linear, FastGradientMethod(linear, eps=0.1))


def test_art_meaning_of_get_activations_index_and_repr():
    clf = make_classifier()
    x = np.random.default_rng(0).uniform(size=(3, 1, 8, 8)).astype(np.float32)
    for i, name in enumerate(clf.layer_names):
        np.testing.assert_allclose(clf.get_activations(x, i), clf.get_activations(x, name), atol=0)
    text = repr(clf)
    assert text.startswith("art_latent.estimator.LatentClassifier(art.estimators.classification.pytorch."
                           "PyTorchClassifier(model=")
    for field in ("loss=", "optimizer=", "input_shape=", "nb_classes=", "channels_first=", "clip_values=",
                  "preprocessing=", "layers='auto'"):
        assert field in text, field


def test_numpy_preprocessing_defence_works():
    from art.defences.preprocessor import SpatialSmoothing

    clf = make_classifier(preprocessing_defences=SpatialSmoothing(window_size=2))
    x = np.random.default_rng(0).uniform(size=(3, 1, 8, 8)).astype(np.float32)
    assert clf.predict(x).shape == (3, 3)
    assert clf.get_activations(x, "res").shape == (3, 4, 8, 8)
    assert clf.latent_layers == ["stem.unit.act", "res", "fc"]


def test_trainers_record_the_layers_they_regularize(tiny_data):
    from art.attacks.evasion import FastGradientMethod

    from art_latent import LayerwisePerturbationTrainer

    clf = make_classifier()
    assert clf.regularized_layers == []
    HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), layers=["res", "fc"]).fit(
        *tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    assert clf.regularized_layers == ["res", "fc"]
    trainer = LayerwisePerturbationTrainer(clf, layers=["res.relu#1"])
    trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    assert clf.regularized_layers == ["res.relu#1"]
