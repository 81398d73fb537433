"""LayerwisePerturbationTrainer: sites, the exact perturbation, the three variants, hooks, history, bad input."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from helpers import make_classifier
from torch import nn

from art_latent.models import SmallCNN
from art_latent.trainers.layerwise import LayerwisePerturbationTrainer, perturbation_sites

EPS = 5.0


class TwoLayer(nn.Module):
    """conv -> BN -> ELU -> linear: one perturbation site, the BN output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.act = nn.ELU()
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.bn(self.conv(x))).flatten(1))


def _two_layer_classifier():
    return make_classifier(TwoLayer(), lr=0.0)  # lr 0: the parameters stay put, so every step can be redone by hand


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _expected_perturbation(model: TwoLayer, x: torch.Tensor, y: torch.Tensor, added: torch.Tensor | None = None):
    """eps * (max g - min g) * sign(g), g the gradient of the CE at the BN output (with `added` on it)."""
    site = model.bn(model.conv(x))
    perturbed = site if added is None else site + added
    loss = nn.functional.cross_entropy(model.fc(model.act(perturbed).flatten(1)), y)
    (g,) = torch.autograd.grad(loss, perturbed)
    return EPS * (g.max() - g.min()) * g.sign(), site.detach()


def _batches(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        {"x": torch.rand(n, 1, 8, 8, generator=gen), "y": torch.randint(0, 3, (n,), generator=gen)} for _ in range(3)
    ]


def _record_act_inputs(model: TwoLayer) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    seen: list[torch.Tensor] = []
    handle = model.act.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().clone()))
    return seen, handle


def test_auto_sites_follow_the_paper():
    assert perturbation_sites(make_classifier().model, torch.zeros(1, 1, 8, 8)) == ["stem.unit.bn", "res.bn1",
                                                                                   "res.bn2"]
    assert perturbation_sites(SmallCNN(), torch.zeros(1, 1, 28, 28)) == ["features.0.bn", "features.1.bn"]
    no_bn = nn.Sequential(OrderedDict(c1=nn.Conv2d(1, 2, 3), r=nn.ReLU(), c2=nn.Conv2d(2, 2, 3), f=nn.Flatten(),
                                      out=nn.Linear(32, 3)))
    assert perturbation_sites(no_bn, torch.zeros(1, 1, 8, 8)) == ["c1", "c2"]  # the conv output without BN
    mlp = nn.Sequential(OrderedDict(f=nn.Flatten(), l1=nn.Linear(64, 8), b1=nn.BatchNorm1d(8), a=nn.Tanh(),
                                    l2=nn.Linear(8, 8), out=nn.Linear(8, 3)))
    assert perturbation_sites(mlp, torch.zeros(2, 1, 8, 8)) == ["b1", "l2"]  # no conv: hidden linear layers
    with pytest.raises(ValueError, match="no convolution"):
        perturbation_sites(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), torch.zeros(1, 1, 8, 8))


def test_orig_sites_receive_eps_times_sign_of_previous_gradient():
    clf = _two_layer_classifier()
    model = clf.model
    trainer = LayerwisePerturbationTrainer(clf, eps=EPS, variant="orig")
    assert trainer.sites == ["bn"]
    b1, b2, b3 = _batches()
    seen, handle = _record_act_inputs(model)
    model.train()
    with trainer.fit_context():
        trainer.optimization_step(b1)
        r1, site1 = _expected_perturbation(model, b1["x"], b1["y"])
        trainer.optimization_step(b2)
        r2, site2 = _expected_perturbation(model, b2["x"], b2["y"], added=r1)  # g of batch 2 is taken *with* r1
        _, logits, logs = trainer.optimization_step(b3)
        _, site3 = _expected_perturbation(model, b3["x"], b3["y"])
    handle.remove()
    # seen[1], seen[3] and seen[5] are the hand computations
    torch.testing.assert_close(seen[0], site1)  # the first batch is not perturbed
    torch.testing.assert_close(seen[2], site2 + r1)
    torch.testing.assert_close(seen[4], site3 + r2)
    assert r1.abs().max() > 0 and not torch.equal(r1, r2)
    torch.testing.assert_close(logits, model.fc(model.act(site3 + r2).flatten(1)))
    expected_size = r2.square().mean().sqrt() / site3.std()
    torch.testing.assert_close(logs["rel_size/bn"], expected_size)
    assert logs["perturbed"] == 1.0


def test_no_perturbation_when_the_batch_shape_changes():
    clf = _two_layer_classifier()
    model = clf.model
    trainer = LayerwisePerturbationTrainer(clf, eps=EPS)
    b1 = _batches(n=6)[0]
    b2 = _batches(n=4)[1]
    seen, handle = _record_act_inputs(model)
    model.train()
    with trainer.fit_context():
        trainer.optimization_step(b1)
        _, logs = trainer.optimization_step(b2)[1:]
    handle.remove()
    torch.testing.assert_close(seen[1], model.bn(model.conv(b2["x"])).detach())
    assert logs["perturbed"] == 0.0 and logs["rel_size/bn"] == 0.0


def test_joint_perturbs_the_second_copy_with_the_same_perturbation():
    clf = _two_layer_classifier()
    model = clf.model
    trainer = LayerwisePerturbationTrainer(clf, eps=EPS, variant="joint", alpha=0.25)
    b1, b2, _ = _batches()
    seen, handle = _record_act_inputs(model)
    model.train()
    with trainer.fit_context():
        trainer.optimization_step(b1)
        r1, _ = _expected_perturbation(model, b1["x"], b1["y"])
        loss, logits, logs = trainer.optimization_step(b2)
        site2 = model.bn(model.conv(b2["x"])).detach()
    handle.remove()
    n = len(b2["x"])
    # One forward pass of (x, x): the gradient on the perturbed copy is divided by (1 - alpha) before eps_l is taken,
    # so the perturbation is the one "orig" would use.
    torch.testing.assert_close(seen[2][:n], site2)  # seen[1] is the hand computation
    torch.testing.assert_close(seen[2][n:], site2 + r1)
    clean = nn.functional.cross_entropy(model.fc(model.act(site2).flatten(1)), b2["y"])
    perturbed = nn.functional.cross_entropy(model.fc(model.act(site2 + r1).flatten(1)), b2["y"])
    torch.testing.assert_close(loss, 0.25 * clean + 0.75 * perturbed)
    torch.testing.assert_close(logs["ce_clean"], clean.detach())
    torch.testing.assert_close(logits, model.fc(model.act(site2).flatten(1)))


def test_fgs_inter_uses_the_current_batch_gradient():
    clf = _two_layer_classifier()
    model = clf.model
    trainer = LayerwisePerturbationTrainer(clf, eps=EPS, variant="fgs-inter", alpha=0.5)
    b1 = _batches()[0]
    seen, handle = _record_act_inputs(model)
    model.train()
    with trainer.fit_context():
        loss, _, logs = trainer.optimization_step(b1)
        r, site = _expected_perturbation(model, b1["x"], b1["y"])
    handle.remove()
    torch.testing.assert_close(seen[0], site)  # the clean pass
    torch.testing.assert_close(seen[1], site + r)  # the perturbed pass, already on the first batch
    perturbed = nn.functional.cross_entropy(model.fc(model.act(site + r).flatten(1)), b1["y"])
    torch.testing.assert_close(logs["ce_perturbed"], perturbed.detach())
    assert logs["perturbed"] == 1.0


@pytest.mark.parametrize(("variant", "forwards"), [("orig", 1), ("joint", 1), ("fgs-inter", 2)])
def test_forward_passes_per_step(variant, forwards, tiny_data):
    clf = make_classifier()
    trainer = LayerwisePerturbationTrainer(clf, variant=variant)
    calls = []
    handle = clf.model.register_forward_pre_hook(lambda _m, inputs: calls.append(len(inputs[0])))
    trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    handle.remove()
    # 3 batches of 32; "joint" runs the doubled batch in its single pass (the forward pass on 8 samples before it is
    # fit's model-contract check, in eval mode)
    assert calls[0] == 8 and calls[1:] == [64 if variant == "joint" else 32] * (3 * forwards)


def test_history_reports_sizes_and_perturbed_fraction(tiny_data):
    x, y = tiny_data
    clf = make_classifier()
    trainer = LayerwisePerturbationTrainer(clf, eps=20.0, seed=0)
    history = trainer.fit(x, y, nb_epochs=2, batch_size=40, shuffle=False, verbose=False)
    # batches of 40, 40, 16: only the second batch of each epoch follows a batch of its shape
    assert [h["perturbed"] for h in history] == pytest.approx([40 / 96, 40 / 96])
    for site in trainer.sites:
        assert 0 < history[-1][f"rel_size/{site}"] < 10


def test_hooks_removed_and_prediction_unperturbed_after_fit(tiny_data):
    x, y = tiny_data
    clf = make_classifier()
    model = clf.model
    before = _hook_count(model)
    history = LayerwisePerturbationTrainer(clf, variant="joint", seed=0).fit(
        x, y, validation_data=(x, y), nb_epochs=3, batch_size=16, verbose=False
    )
    assert _hook_count(model) == before == 0
    model.eval()
    with torch.no_grad():
        plain = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(clf.predict(x), plain, rtol=1e-5, atol=1e-6)
    assert history[-1]["val_accuracy"] > 0.9  # the tiny problem is learnt


def test_resume_reproduces_an_uninterrupted_run(tiny_data, tmp_path):
    x, y = tiny_data

    def run(nb_epochs, checkpoint=None, resume=False):
        clf = make_classifier()
        trainer = LayerwisePerturbationTrainer(clf, variant="joint", seed=3)
        trainer.fit(x, y, nb_epochs=nb_epochs, batch_size=32, checkpoint_dir=checkpoint, resume=resume,
                    verbose=False)
        return [p.detach().clone() for p in clf.model.parameters()], trainer.history

    reference, ref_history = run(3)
    run(2, tmp_path / "c")
    resumed, history = run(3, tmp_path / "c", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))
    assert history[-1]["perturbed"] == 1.0 and history[-1]["loss"] == pytest.approx(ref_history[-1]["loss"])


def test_hooks_removed_after_an_exception(tiny_data):
    clf = make_classifier()
    trainer = LayerwisePerturbationTrainer(clf)
    original = trainer.training_step
    calls = {"n": 0}

    def failing(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("interrupted")
        return original(batch)

    trainer.training_step = failing
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.fit(*tiny_data, nb_epochs=2, batch_size=16, verbose=False)
    assert _hook_count(clf.model) == 0 and trainer.carried == {} and trainer._state is None


def test_a_site_perturbs_only_its_own_call_of_a_shared_module(tiny_data):
    clf = make_classifier()
    model = clf.model
    trainer = LayerwisePerturbationTrainer(clf, layers=["res.relu#1"])  # the block's shared ReLU, second call
    seen: list[torch.Tensor] = []
    handle = model.res.relu.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    x = torch.from_numpy(tiny_data[0][:4])
    model.eval()
    try:
        with torch.no_grad():
            model(x)
            with trainer.fit_context():
                trainer.carried = {"res.relu#1": torch.ones(4, 4, 8, 8)}
                with trainer._forward("cached"):
                    perturbed = model(x)
            # only the block output (call 1) is shifted by the cached perturbation; call 0 (after bn1) is not
            expected = model.head(torch.relu(model.fc(model.pool(seen[1] + 1.0).flatten(1))))
    finally:
        handle.remove()
    torch.testing.assert_close(seen[2], seen[0])  # the ReLU's own first output, the same in both passes
    torch.testing.assert_close(perturbed, expected)
    history = trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    assert history[-1]["rel_size/res.relu#1"] > 0
    assert _hook_count(model) == 0


def test_bf16_autocast_trains(tiny_data):
    trainer = LayerwisePerturbationTrainer(make_classifier(), amp="bf16", seed=0)
    history = trainer.fit(*tiny_data, nb_epochs=2, batch_size=32, verbose=False)
    assert np.isfinite(history[-1]["loss"]) and history[-1]["perturbed"] > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, r"`eps` must be in \(0.0, inf\)"),
        ({"eps": float("nan")}, "`eps`"),
        ({"eps": "20"}, "`eps`"),
        ({"variant": "fgs"}, "`variant` must be one of"),
        ({"alpha": 1.0}, r"`alpha` must be in \[0.0, 1.0\)"),
        ({"alpha": -0.1}, "`alpha`"),
        ({"layers": ["stem.unit.nope"]}, "unknown layer name"),
        ({"seed": -1}, "`seed`"),
    ],
)
def test_bad_hyper_parameters_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerwisePerturbationTrainer(make_classifier(), **kwargs)
