"""LatentPGD: ART's PGD without the latent term, stronger than PGD where the logit gradient is masked, ART contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_latent import LatentClassifier
from art_latent.attacks import LatentPGD

MASKED = {"eps": 0.3, "eps_step": 0.06, "max_iter": 10, "batch_size": 48, "verbose": False}


class ModeProbe(nn.Module):
    """Identity that records the train/eval flag of every forward call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


class MaskedNet(nn.Module):
    """
    Hidden features = the mean brightness of each class's region (what ``tiny_data`` encodes), read by the logits
    through a clamp that is flat at every clean point: the logit gradient is exactly 0 there, the features respond.
    """

    def __init__(self) -> None:
        super().__init__()
        self.probe = ModeProbe()
        self.features = nn.Linear(64, 3, bias=False)
        self.act = nn.ReLU()
        weight = torch.zeros(3, 1, 8, 8)
        for c in range(3):
            weight[c, 0, :, 2 * c : 2 * c + 3] = 1 / 24
        self.features.weight.data.copy_(weight.reshape(3, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.features(self.probe(x).flatten(1)))
        return 20 * torch.clamp(hidden, 0.45, 0.6)


def masked_classifier() -> LatentClassifier:
    return LatentClassifier(MaskedNet(), nn.CrossEntropyLoss(), (1, 8, 8), 3, clip_values=(0.0, 1.0),
                            device_type="cpu", layers=["act"])


def accuracy(clf: LatentClassifier, x: np.ndarray, y: np.ndarray) -> float:
    return float((clf.predict(x).argmax(1) == y).mean())


def n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def data(tiny_data):
    x, y = tiny_data
    return x[:48], y[:48]


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize(("norm", "eps", "eps_step"), [(np.inf, 0.1, 0.03), (2, 0.8, 0.3)])
def test_without_latent_term_it_is_arts_pgd(tiny_classifier, data, norm, eps, eps_step, targeted):
    x, y = data[0][:24], data[1][:24]
    labels = (y + 1) % 3 if targeted else y
    kwargs = {"norm": norm, "eps": eps, "eps_step": eps_step, "max_iter": 4, "targeted": targeted,
              "num_random_init": 0, "batch_size": 12, "verbose": False}
    expected = ProjectedGradientDescent(tiny_classifier, **kwargs).generate(x, np.eye(3)[labels])
    got = LatentPGD(tiny_classifier, latent_weight=0.0, **kwargs).generate(x, labels)
    assert got.dtype == np.float32 and np.abs(expected - x).max() > eps / 4  # the attack moved
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("mode", "restarts", "options"), [
    ("pull", 0, {}),
    ("pull", 0, {"schedule": "linear", "distance": "l1"}),
    ("pull", 0, {"reference": True}),
    ("push", 3, {}),
])
def test_stronger_than_pgd_where_the_logit_gradient_is_masked(data, mode, restarts, options):
    x, y = data
    clf = masked_classifier()
    assert accuracy(clf, x, y) == 1.0
    assert np.abs(clf.loss_gradient(x, np.eye(3)[y])).max() == 0.0  # PGD has nothing to follow
    torch.manual_seed(0)
    np.random.seed(0)
    pgd = accuracy(clf, ProjectedGradientDescent(clf, num_random_init=restarts, **MASKED).generate(x, y), y)
    if options.pop("reference", False):
        options["reference_data"] = (x, y)
    attack = LatentPGD(clf, mode=mode, num_random_init=restarts, latent_weight=0.5, **options, **MASKED)
    latent = accuracy(clf, attack.generate(x, y), y)
    assert pgd >= 0.8
    assert latent <= pgd - 0.5, f"PGD accuracy {pgd:.2f}, LatentPGD {latent:.2f}"


@pytest.mark.parametrize(("norm", "eps", "mode"), [(np.inf, 0.3, "push"), (2, 1.5, "pull"), ("inf", 0.2, "pull")])
def test_in_budget_and_leaves_model_state_alone(data, norm, eps, mode):
    x, y = data
    clf = masked_classifier()
    model = clf.model
    model.train()
    model.act.eval()  # a mixed mode must come back as it was
    grads = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = grads[name].clone()
    model.probe.seen.clear()
    attack = LatentPGD(clf, norm=norm, eps=eps, eps_step=eps / 4, max_iter=6, mode=mode, num_random_init=2,
                       batch_size=20, verbose=False)
    x_adv = attack.generate(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    delta = (x_adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm in (np.inf, "inf") else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps + 1e-5 and size.max() > eps / 2
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert model.probe.seen and not any(model.probe.seen)  # every forward pass of the attack ran in eval mode
    assert model.training and not model.act.training and model.features.training
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, grads[name]), name
    assert n_hooks(model) == 0 and n_hooks(clf._model) == 0


def test_more_restarts_never_break_fewer_samples(data):
    x, y = data
    clf = masked_classifier()
    broken = {}
    for restarts in (1, 4):
        torch.manual_seed(7)
        attack = LatentPGD(clf, num_random_init=restarts, **{**MASKED, "batch_size": 16, "max_iter": 4})
        broken[restarts] = clf.predict(attack.generate(x, y)).argmax(1) != y
    assert broken[1].any() and not broken[1].all()
    assert np.all(broken[4] >= broken[1]) and broken[4].sum() > broken[1].sum()


def test_labels_default_to_predictions_and_unsupported_arguments_are_refused(tiny_classifier, data):
    x, y = data
    with pytest.raises(ValueError, match="Target labels `y`"):
        LatentPGD(tiny_classifier, targeted=True, verbose=False).generate(x)
    with pytest.raises(ValueError, match="mask"):
        LatentPGD(tiny_classifier, verbose=False).generate(x, y, mask=np.ones_like(x))
    untargeted = LatentPGD(tiny_classifier, eps=0.1, eps_step=0.05, max_iter=2, verbose=False).generate(x)
    assert np.abs(untargeted - x).max() <= 0.1 + 1e-6


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"latent_weight": 1.5}, "latent_weight"),
    ({"latent_weight": -0.1}, "latent_weight"),
    ({"eps": -1.0}, "eps"),
    ({"eps_step": 0.0}, "eps_step"),
    ({"max_iter": -1}, "max_iter"),
    ({"max_iter": 2.5}, "max_iter"),
    ({"num_random_init": -1}, "num_random_init"),
    ({"batch_size": 0}, "batch_size"),
    ({"norm": 1}, "norm"),
    ({"mode": "shove"}, "mode"),
    ({"distance": "cosine"}, "distance"),
    ({"schedule": "cosine"}, "schedule"),
    ({"targeted": "yes"}, "targeted"),
    ({"verbose": 1}, "verbose"),
    ({"layers": ["no.such.layer"]}, "layers"),
    ({"reference_data": (np.zeros((2, 1, 8, 8)), np.zeros(3))}, "reference_data"),
])
def test_bad_arguments_are_refused_by_name(tiny_classifier, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        LatentPGD(tiny_classifier, **kwargs)
    attack = LatentPGD(tiny_classifier)
    with pytest.raises(ValueError, match=f"`{name}`"):
        attack.set_params(**kwargs)


def test_requires_a_latent_classifier(tiny_classifier):
    plain = PyTorchClassifier(tiny_classifier.model, nn.CrossEntropyLoss(), (1, 8, 8), 3, device_type="cpu")
    with pytest.raises(TypeError, match="from_classifier"):
        LatentPGD(plain)
    with pytest.raises(TypeError, match="`layers`"):
        LatentPGD(tiny_classifier, layers=[3])
    LatentPGD(LatentClassifier.from_classifier(plain))


def test_default_layers_are_the_regularized_ones(tiny_classifier):
    attack = LatentPGD(tiny_classifier)
    assert attack._layers() == tiny_classifier.latent_layers
    tiny_classifier.regularized_layers = ["fc"]
    assert attack._layers() == ["fc"]
    assert LatentPGD(tiny_classifier, layers="res")._layers() == ["res"]


def test_runs_inside_arts_adversarial_trainer(tiny_classifier, data):
    from art.defences.trainer import AdversarialTrainer

    x, y = data
    attack = LatentPGD(tiny_classifier, eps=0.1, eps_step=0.05, max_iter=2, batch_size=24, verbose=False)
    AdversarialTrainer(tiny_classifier, attack, ratio=0.5).fit(x, np.eye(3)[y], nb_epochs=1, batch_size=24)
    assert n_hooks(tiny_classifier.model) == 0
