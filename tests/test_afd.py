"""AFD: losses, discriminator, embedding, which parameters each step moves, the loop, checkpoints, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.data_generators import NumpyDataGenerator
from helpers import TinyNet
from torch import nn
from torch.nn.functional import softplus

from art_latent import LatentClassifier
from art_latent.trainers.afd import (
    AFDDivergenceError,
    AFDTrainer,
    ProjectionDiscriminator,
    discriminator_loss,
    encoder_loss,
)

D_CLEAN = torch.tensor([2.0, -1.0, 0.5])
D_ADV = torch.tensor([-3.0, 1.5, 0.0])


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _changed(before: list[torch.Tensor], params) -> list[bool]:
    return [not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True)]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _sgd_classifier(lr: float = 0.05, **sgd_kwargs) -> LatentClassifier:
    torch.manual_seed(0)
    model = TinyNet()
    return LatentClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 3, clip_values=(0.0, 1.0), device_type="cpu",
                            optimizer=torch.optim.SGD(model.parameters(), lr=lr, **sgd_kwargs))


def _trainer(clf, **kwargs) -> AFDTrainer:
    kwargs.setdefault("seed", 0)
    return AFDTrainer(clf, FastGradientMethod(clf, eps=0.1), **kwargs)


@pytest.mark.parametrize(
    ("loss", "expected_d", "expected_e"),
    [
        # softplus: mean S(-d_clean) + mean S(d_adv); encoder: mean S(-d_adv)
        ("softplus",
         (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(1.0)) + np.log1p(np.exp(-0.5))) / 3
         + (np.log1p(np.exp(-3.0)) + np.log1p(np.exp(1.5)) + np.log(2.0)) / 3,
         (np.log1p(np.exp(3.0)) + np.log1p(np.exp(-1.5)) + np.log(2.0)) / 3),
        # wgan: mean d_adv - mean d_clean = (-1.5) / 3 - 1.5 / 3; encoder: -mean d_adv
        ("wgan", -1.5 / 3 - 1.5 / 3, 1.5 / 3),
        # hinge: mean relu(1 - d_clean) = (0 + 2 + 0.5) / 3, mean relu(1 + d_adv) = (0 + 2.5 + 1) / 3
        ("hinge", 2.5 / 3 + 3.5 / 3, 1.5 / 3),
    ],
)
def test_losses_match_hand_computation(loss, expected_d, expected_e):
    assert discriminator_loss(D_CLEAN, D_ADV, loss).item() == pytest.approx(expected_d, rel=1e-6)
    assert encoder_loss(D_ADV, loss).item() == pytest.approx(expected_e, rel=1e-6)


def test_projection_discriminator_formula():
    torch.manual_seed(0)
    disc = ProjectionDiscriminator(in_features=5, nb_classes=3, width=4).eval()
    h, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 2, 1, 0])
    hidden = nn.functional.leaky_relu(disc.fc2(nn.functional.leaky_relu(disc.fc1(h), 0.2)), 0.2)
    expected = hidden @ disc.out.weight[0] + disc.out.bias + (disc.embed.weight[y] * hidden).sum(1)
    torch.testing.assert_close(disc(h, y), expected)
    for layer in (disc.fc1, disc.fc2, disc.out, disc.embed):  # spectral normalization on every layer
        assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item() == pytest.approx(1.0, abs=0.05)
    assert ProjectionDiscriminator(in_features=7, nb_classes=2).width == 7  # default width: the embedding size


def test_discriminator_step_loss_and_accuracy_match_hand_computation(tiny_classifier):
    model = tiny_classifier.model
    trainer = _trainer(tiny_classifier)
    model.train()
    torch.manual_seed(1)
    x, x_adv, y = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    disc = trainer.discriminator
    frozen = ProjectionDiscriminator(8, 3)
    frozen.load_state_dict(disc.state_dict())
    frozen.train()
    bn_state = {k: v.clone() for k, v in model.state_dict().items()}
    _, d_loss, logs = trainer.discriminator_step(x, x_adv, y)
    # By hand: the embedding is the input of `head` (relu(fc(...))), clean and adversarial forwards separately.
    model.load_state_dict(bn_state)
    with torch.no_grad():
        def embed(z):
            return torch.relu(model.fc(model.pool(model.res(model.stem(z))).flatten(1)))

        scores = frozen(torch.cat([embed(x), embed(x_adv)]), torch.cat([y, y]))
    d_clean, d_adv = scores[:4], scores[4:]
    expected = softplus(-d_clean).mean() + softplus(d_adv).mean()
    torch.testing.assert_close(d_loss, expected)
    torch.testing.assert_close(logs["disc_acc_clean"], (d_clean > 0).float().mean())
    torch.testing.assert_close(logs["disc_acc_adv"], (d_adv < 0).float().mean())


def test_embedding_and_parameter_split(tiny_classifier):
    trainer = _trainer(tiny_classifier)
    model = tiny_classifier.model
    assert trainer.embedding.name == "head" and trainer.embedding.use_input
    head = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in trainer.encoder_parameters} == {id(p) for p in model.parameters()} - head
    assert trainer.discriminator.in_features == 8 and trainer.discriminator.width == 8
    named = _trainer(tiny_classifier, embedding_layer="stem.unit.act")
    assert not named.embedding.use_input and named.discriminator.in_features == 4 * 8 * 8
    stem = {id(p) for p in model.stem.parameters()}
    assert {id(p) for p in named.encoder_parameters} == stem


def test_each_step_moves_only_its_parameters(tiny_classifier):
    model = tiny_classifier.model
    trainer = _trainer(tiny_classifier, lr_encoder=0.1, lr_discriminator=0.1)
    model.train()
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2] * 2)
    x_adv = (x + 0.1).clamp(0, 1)
    encoder, head, disc = trainer.encoder_parameters, list(model.head.parameters()), list(trainer.discriminator
                                                                                          .parameters())
    before = [_snapshot(encoder), _snapshot(head), _snapshot(disc)]
    h_adv, _, _ = trainer.discriminator_step(x, x_adv, y)
    assert not any(_changed(before[0], encoder)) and not any(_changed(before[1], head))
    assert all(_changed(before[2], disc))
    before = [_snapshot(encoder), _snapshot(head), _snapshot(disc)]
    disc_grads = [p.grad.clone() for p in disc]
    trainer.encoder_step(h_adv, y)
    assert any(_changed(before[0], encoder)) and not any(_changed(before[1], head))
    assert not any(_changed(before[2], disc)) and all(p.requires_grad for p in disc)
    assert all(torch.equal(g, p.grad) for g, p in zip(disc_grads, disc, strict=True))  # none computed
    before = [_snapshot(head), _snapshot(disc)]
    trainer.classification_step({"x": x, "y": y})
    assert all(_changed(before[0], head)) and not any(_changed(before[1], disc))


def test_steps_run_in_the_papers_order(tiny_classifier, tiny_data):
    trainer = _trainer(tiny_classifier)
    calls = []
    for name in ("classification_step", "discriminator_step", "encoder_step"):
        method = getattr(trainer, name)
        setattr(trainer, name, lambda *a, _m=method, _n=name: calls.append(_n) or _m(*a))
    generate = trainer.attack.generate
    model = tiny_classifier.model

    def attack(x, y, eps=None):
        modes = []
        handle = model.register_forward_pre_hook(lambda module, inputs: modes.append(module.training))
        grads = [p.grad for p in model.parameters()]
        try:
            return generate(x, y, eps)
        finally:
            handle.remove()
            same_grads = all(g is p.grad for g, p in zip(grads, model.parameters(), strict=True))
            calls.append(("attack", any(modes), same_grads))

    trainer.attack.generate = attack
    trainer.fit(*tiny_data, nb_epochs=1, batch_size=48, verbose=False)
    # The attack runs first, with the model in eval mode and the parameter gradients untouched.
    step = [("attack", False, True), "classification_step", "discriminator_step", "encoder_step"]
    assert calls == step * 2


def test_afd_trains_and_restores_modes_and_hooks(tiny_classifier, tiny_data):
    x, y = tiny_data
    model = tiny_classifier.model
    model.eval()
    attack = ProjectedGradientDescent(tiny_classifier, eps=0.1, eps_step=0.03, max_iter=3, verbose=False)
    trainer = AFDTrainer(tiny_classifier, attack, seed=0)
    trainer.discriminator.eval()
    history = trainer.fit(x, y, validation_data=(x, y), nb_epochs=4, batch_size=16, verbose=False)
    for key in ("ce", "discriminator_loss", "encoder_loss", "disc_acc_clean", "disc_acc_adv", "val_robust_accuracy"):
        assert np.isfinite(history[-1][key]), key
    assert 0.0 <= history[-1]["disc_acc_clean"] <= 1.0
    assert history[-1]["val_accuracy"] > 0.9
    assert not model.training and not trainer.discriminator.training and _hooks(model) == 0


@pytest.mark.parametrize("loss", ["wgan", "hinge"])
def test_other_losses_train(tiny_classifier, tiny_data, loss):
    history = _trainer(tiny_classifier, loss=loss).fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    assert np.isfinite(history[-1]["discriminator_loss"]) and np.isfinite(history[-1]["encoder_loss"])


def test_modes_and_hooks_restored_after_an_exception(tiny_classifier, tiny_data):
    model = tiny_classifier.model
    model.train()
    trainer = _trainer(tiny_classifier)
    original = trainer.encoder_step

    def failing(*args):
        original(*args)
        raise RuntimeError("interrupted")

    trainer.encoder_step = failing
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    assert model.training and trainer.discriminator.training and _hooks(model) == 0
    trainer.discriminator.eval()
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    assert not trainer.discriminator.training


class _NaNAfter(nn.Module):
    """A discriminator whose scores become NaN from its `after`-th call on."""

    def __init__(self, features: int, after: int) -> None:
        super().__init__()
        self.inner = ProjectionDiscriminator(features, 3)
        self.calls, self.after = 0, after

    def forward(self, h, y):
        self.calls += 1
        scores = self.inner(h, y)
        return scores * float("nan") if self.calls > self.after else scores


@pytest.mark.parametrize("generator", [False, True])
def test_divergence_names_the_step(tiny_classifier, tiny_data, generator):
    trainer = _trainer(tiny_classifier, discriminator=_NaNAfter(8, after=5))
    message = r"epoch 1, batch 3: non-finite discriminator loss.*lr_discriminator"
    with pytest.raises(AFDDivergenceError, match=message) as info:
        if generator:
            trainer.fit_generator(NumpyDataGenerator(*tiny_data, batch_size=32), nb_epochs=2, verbose=False)
        else:
            trainer.fit(*tiny_data, nb_epochs=2, batch_size=32, shuffle=False, verbose=False)
    assert isinstance(info.value, FloatingPointError)
    assert _hooks(tiny_classifier.model) == 0


def test_checkpoint_holds_discriminator_and_optimizers_and_resume_reproduces(tiny_data, tmp_path):
    x, y = tiny_data

    def run(nb_epochs, checkpoint=None, resume=False):
        clf = _sgd_classifier(momentum=0.9)
        attack = ProjectedGradientDescent(clf, eps=0.1, eps_step=0.03, max_iter=2, num_random_init=1, verbose=False)
        trainer = AFDTrainer(clf, attack, seed=3, validation_attack=None)
        trainer.fit(x, y, nb_epochs=nb_epochs, batch_size=32, checkpoint_dir=checkpoint, resume=resume,
                    verbose=False)
        return _snapshot(clf.model.parameters()) + _snapshot(trainer.discriminator.parameters()), trainer

    reference, _ = run(3)
    run(2, tmp_path / "c")
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)["method"]
    assert set(state) == {"discriminator", "discriminator_optimizer", "encoder_optimizer"}
    assert state["encoder_optimizer"]["state"]  # momentum buffers are saved
    resumed, trainer = run(3, tmp_path / "c", resume=True)
    assert len(trainer.history) == 3
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))


def test_scheduler_scales_all_three_learning_rates(tiny_classifier, tiny_data):
    trainer = _trainer(tiny_classifier, lr_encoder=0.2, lr_discriminator=0.4)
    scheduler = torch.optim.lr_scheduler.StepLR(tiny_classifier.optimizer, step_size=1, gamma=0.5)
    trainer.fit(*tiny_data, nb_epochs=2, batch_size=96, scheduler=scheduler, verbose=False)
    # Epoch 2 ran at half the learning rates.
    assert trainer.encoder_optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert trainer.discriminator_optimizer.param_groups[0]["lr"] == pytest.approx(0.2)


def test_default_optimizers_copy_the_classifier_optimizer():
    clf = _sgd_classifier(lr=0.01, momentum=0.9, weight_decay=1e-4)
    trainer = _trainer(clf, lr_encoder=0.05)
    group = trainer.encoder_optimizer.param_groups[0]
    assert isinstance(trainer.encoder_optimizer, torch.optim.SGD)
    assert group["lr"] == 0.05 and group["momentum"] == 0.9 and group["weight_decay"] == 0.0
    assert trainer.discriminator_optimizer.param_groups[0]["lr"] == 0.01
    custom = _trainer(clf, optimizer_factory=lambda params, lr: torch.optim.Adam(params, lr, (0.5, 0.999)))
    assert isinstance(custom.discriminator_optimizer, torch.optim.Adam)


class _BadShape(nn.Module):
    def forward(self, h, y):
        return h


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss": "bce"}, ValueError, "`loss`"),
        ({"lr_encoder": 0.0}, ValueError, "`lr_encoder`"),
        ({"lr_discriminator": -1.0}, ValueError, "`lr_discriminator`"),
        ({"lr_encoder": float("inf")}, ValueError, "`lr_encoder`"),
        ({"embedding_layer": "nope"}, ValueError, "unknown layer name"),
        ({"discriminator_width": 0}, ValueError, "`discriminator_width`"),
        ({"discriminator": ProjectionDiscriminator(8, 3), "discriminator_width": 16}, ValueError, "_width"),
        ({"discriminator": _BadShape()}, ValueError, "scores"),
        ({"discriminator": "mlp"}, TypeError, "torch.nn.Module"),
        ({"optimizer_factory": "adam"}, TypeError, "optimizer_factory"),
        ({"optimizer_factory": lambda params, lr: None}, TypeError, "optimizer_factory"),
    ],
)
def test_bad_hyper_parameters_rejected(tiny_classifier, kwargs, error, match):
    with pytest.raises(error, match=match):
        _trainer(tiny_classifier, **kwargs)
