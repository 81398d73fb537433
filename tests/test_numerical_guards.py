"""
Every regularizer and loss stays finite (value and gradient) for extreme logits and dead (all-zero) activations;
a non-finite loss or gradient stops training naming the epoch, batch and term, and keeps the last good state.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from helpers import make_classifier

from art_latent import HLDRTrainer, LatentClassifier, LatentTrainer
from art_latent.regularizers import (
    deep_defense_regularizer,
    fisher_trace,
    latent_disparity,
    layerwise_relative_error,
    perturbation_ratio,
    relative_error,
    stability_kl,
)
from art_latent.trainers.afd import discriminator_loss, encoder_loss
from art_latent.trainers.base import TrainingDivergedError

EXTREME = [1e4, -1e4, 1e6, 0.0]  # saturated softmax from about 100 on


def _finite_value_and_grad(fn, *tensors: torch.Tensor) -> None:
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    assert torch.isfinite(value).all(), value
    value.sum().backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), leaf.grad


def _extreme_logits(scale: float) -> torch.Tensor:
    logits = torch.zeros(4, 5)
    logits[:, 0] = scale
    logits[1, 3] = -scale
    return logits


@pytest.mark.parametrize("scale", EXTREME)
def test_logit_regularizers_finite_for_extreme_logits(scale):
    logits = _extreme_logits(scale)
    _finite_value_and_grad(lambda z: fisher_trace(z), logits)
    _finite_value_and_grad(lambda z: fisher_trace(z, reduction="sum"), logits)
    _finite_value_and_grad(stability_kl, logits, logits.flip(1))
    _finite_value_and_grad(stability_kl, logits, logits)
    for loss in ("softplus", "wgan", "hinge"):
        _finite_value_and_grad(lambda a, b, loss=loss: discriminator_loss(a, b, loss), logits[:, 0], logits[:, 1])
        _finite_value_and_grad(lambda a, loss=loss: encoder_loss(a, loss), logits[:, 0])


@pytest.mark.parametrize("kind", ["dead", "dead-clean", "huge"])
def test_activation_regularizers_finite_for_dead_and_huge_activations(kind):
    clean = [torch.rand(3, 2, 4, 4), torch.rand(3, 6)]
    perturbed = [c + 0.1 for c in clean]
    if kind == "dead":  # ReLU layers that output nothing, for both inputs
        clean, perturbed = [torch.zeros_like(c) for c in clean], [torch.zeros_like(c) for c in clean]
    elif kind == "dead-clean":  # nothing for the benign input, something for the perturbed one
        clean = [torch.zeros_like(c) for c in clean]
    else:
        clean, perturbed = [c * 1e18 for c in clean], [c * 1e18 for c in perturbed]
    for normalization in ("batch", "layer", "sample"):
        for p in (1, 2):
            _finite_value_and_grad(
                lambda *t, n=normalization, p=p: latent_disparity(t[:2], t[2:], n, p), *clean, *perturbed
            )
    for reduction in ("mean", "batch", "none"):
        _finite_value_and_grad(lambda a, b, r=reduction: relative_error(a, b, r), clean[0], perturbed[0])
    _finite_value_and_grad(lambda *t: layerwise_relative_error(t[:2], t[2:], 1.0), *clean, *perturbed)


def test_deep_defense_regularizer_finite_for_zero_inputs_and_large_ratios():
    _finite_value_and_grad(lambda r: perturbation_ratio(r, torch.zeros(3, 4)), torch.zeros(3, 4))
    _finite_value_and_grad(lambda r: perturbation_ratio(r, torch.zeros(3, 4)), torch.full((3, 4), 1e3))
    ratio = torch.tensor([0.0, 1.0, 50.0, 1e6])
    correct = torch.tensor([True, False, False, True])
    _finite_value_and_grad(lambda r: deep_defense_regularizer(r, correct), ratio)


def _nan_at(trainer: LatentTrainer, call: int, kind: str) -> None:
    original = trainer.training_step
    calls = {"n": 0}

    def step(batch):
        calls["n"] += 1
        loss, logits, logs = original(batch)
        if calls["n"] == call:
            if kind == "loss":
                loss = loss * float("nan")
            elif kind == "regularizer":
                logs = {**logs, "regularizer": logs["regularizer"] * float("inf")}
                loss = loss + logs["regularizer"]
            else:  # finite loss, NaN gradient: d sqrt(0 * w) / dw = 0 * inf
                weight = trainer.classifier.model.fc.weight
                loss = loss + (weight.abs() * 0.0).sqrt().sum()
        return loss, logits, logs

    trainer.training_step = step


@pytest.mark.parametrize("check", [True, "deferred"])
@pytest.mark.parametrize(("kind", "term"), [("loss", "loss"), ("regularizer", "regularizer"),
                                            ("gradient", "gradient of loss")])
def test_non_finite_step_stops_with_epoch_batch_term_and_an_emergency_checkpoint(tiny_data, tmp_path, kind, term,
                                                                                 check):
    x, y = tiny_data
    clf = make_classifier()
    # deferred: the flags are read every 4 steps, so the failure at batch 2 is found after batch 4
    trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), seed=0, check_finite=check,
                          log_every=4)
    _nan_at(trainer, call=6 + 2, kind=kind)  # 96 x 2 pairs = 6 batches of 32 per epoch: epoch 2, batch 2
    snapshots = []
    original = trainer.optimization_step

    def record(batch):
        snapshots.append({k: v.clone() for k, v in clf.model.state_dict().items()})
        return original(batch)

    trainer.optimization_step = record
    with pytest.raises(TrainingDivergedError, match=rf"epoch 2, batch 2: non-finite .*{term}") as info:
        trainer.fit(x, y, nb_epochs=3, batch_size=32, checkpoint_dir=tmp_path, verbose=False)
    error = info.value
    assert (error.epoch, error.batch) == (2, 2) and term in error.terms
    assert error.checkpoint == tmp_path / "emergency.pt" and "emergency.pt" in str(error)
    # the failing step was not taken: the model holds the state from before that batch, and so does the file
    good = snapshots[-1]
    assert len(snapshots) == (6 + 2 if check is True else 6 + 4)  # deferred: the later steps ran, undone
    emergency = torch.load(tmp_path / "emergency.pt", weights_only=True)
    assert (emergency["epoch"], emergency["batch"]) == (1, 1)
    for name, value in clf.model.state_dict().items():
        assert torch.equal(value, good[name]) and torch.equal(emergency["model"][name], good[name]), name
    assert all(torch.isfinite(v).all() for v in clf.model.state_dict().values() if v.is_floating_point())
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the epoch checkpoint is kept
    with pytest.raises(ValueError, match="emergency"):  # not a file to resume an epoch from
        trainer._load_checkpoint(tmp_path / "emergency.pt", None)


def test_without_check_finite_the_epoch_means_are_checked(tiny_data):
    clf = make_classifier()
    trainer = LatentTrainer(clf, check_finite=False)
    _nan_at(trainer, call=2, kind="loss")
    with pytest.raises(TrainingDivergedError, match=r"epoch means of \['loss'\] in epoch 1 are not finite"):
        trainer.fit(*tiny_data, nb_epochs=2, batch_size=32, verbose=False)


def test_the_guard_adds_one_check_per_step_and_leaves_results_unchanged(tiny_data):
    results = []
    for check in (True, False):
        clf = make_classifier()
        LatentTrainer(clf, seed=0, check_finite=check).fit(*tiny_data, nb_epochs=2, batch_size=32, verbose=False)
        results.append([p.detach().clone() for p in clf.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    assert np.isfinite(results[0][0].numpy()).all()


@pytest.mark.parametrize("check", [True, "deferred"])
def test_afd_divergence_after_the_classification_step_says_so(tiny_classifier, tiny_data, check):
    from art_latent.trainers import AFDTrainer

    trainer = AFDTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1), validation_attack=None,
                         check_finite=check)
    original = trainer.discriminator.forward
    calls = {"n": 0}

    def forward(h, y):
        calls["n"] += 1
        scores = original(h, y)
        return scores * float("nan") if calls["n"] == 3 else scores  # batch 2's discriminator step

    trainer.discriminator.forward = forward
    with pytest.raises(TrainingDivergedError, match=r"batch 2: non-finite discriminator loss.*but 1 earlier "
                                                    r"optimizer step\(s\) of this batch were"):
        trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)


@pytest.mark.parametrize("check", [True, "deferred"])
def test_denoiser_divergence_restores_the_denoiser_batchnorm(tiny_classifier, tiny_data, check):
    from art_latent.defences import DenoiserTrainer, FeatureGuidedDenoiser

    denoiser = FeatureGuidedDenoiser(1, width=4, depth=1, device_type="cpu", identity_init=False)
    trainer = DenoiserTrainer(tiny_classifier, denoiser, FastGradientMethod(tiny_classifier, eps=0.1),
                              budgets=(0.1,), check_finite=check)
    snapshots = []
    original_step, original_training = trainer.optimization_step, trainer.training_step

    def record(batch):
        snapshots.append({k: v.clone() for k, v in denoiser.network.state_dict().items()})
        return original_step(batch)

    def failing(batch):
        loss, logits, logs = original_training(batch)
        return (loss * float("inf") if len(snapshots) == 2 else loss), logits, logs

    trainer.optimization_step, trainer.training_step = record, failing
    with pytest.raises(TrainingDivergedError, match="batch 2"):
        trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    for name, value in denoiser.network.state_dict().items():
        assert torch.equal(value, snapshots[-1][name]), name
        assert torch.equal(value, snapshots[1][name]), name  # deferred: frozen from the failing batch on


def _adam_classifier() -> LatentClassifier:
    clf = make_classifier()
    clf._optimizer = torch.optim.Adam(clf.model.parameters(), lr=1e-2)
    return clf


@pytest.mark.parametrize("log_every", [1, 3, 50])
@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_deferred_check_ends_in_the_state_the_immediate_check_leaves(tiny_data, log_every, kind):
    # Adam: per-parameter state tensors (undone on the device) and CPU step counters (restored from host copies)
    results = []
    for check in (True, "deferred"):
        clf = _adam_classifier()
        trainer = LatentTrainer(clf, seed=0, check_finite=check, log_every=log_every)
        _nan_at(trainer, call=5, kind=kind)  # epoch 2 (3 batches of 32 per epoch), batch 2
        with pytest.raises(TrainingDivergedError) as info:
            trainer.fit(*tiny_data, nb_epochs=3, batch_size=32, verbose=False)
        error = info.value
        results.append(((error.epoch, error.batch, tuple(error.terms), trainer.global_step),
                        {k: v.clone() for k, v in clf.model.state_dict().items()}, clf.optimizer.state_dict()))
    (where_i, model_i, optim_i), (where_d, model_d, optim_d) = results
    assert where_i == where_d and where_i[:2] == (2, 2)
    for name, value in model_i.items():
        assert torch.equal(value, model_d[name]), name
    for index, state in optim_i["state"].items():
        for key, value in state.items():
            assert torch.equal(value, optim_d["state"][index][key]), (index, key)


def test_deferred_check_trains_exactly_as_the_immediate_one_without_failures(tiny_data):
    results = []
    for check in (True, "deferred", False):
        clf = _adam_classifier()
        HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), seed=0, check_finite=check,
                    log_every=2).fit(*tiny_data, nb_epochs=2, batch_size=32, verbose=False)
        results.append(clf.model.state_dict())
    for name, value in results[0].items():
        assert torch.equal(value, results[1][name]) and torch.equal(value, results[2][name]), name


@pytest.mark.parametrize("value", ["yes", 1, 0.0, None])
def test_check_finite_accepts_only_its_modes(tiny_classifier, value):
    with pytest.raises(ValueError, match="`check_finite` must be True, False, 'immediate' or 'deferred'"):
        LatentTrainer(tiny_classifier, check_finite=value)


def test_gradient_check_handles_sparse_and_large_finite_gradients():
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    head = torch.nn.Linear(4, 3)
    model = torch.nn.Sequential(_ToLong(), embedding, torch.nn.Flatten(), head)
    clf = LatentClassifier(model, torch.nn.CrossEntropyLoss(), (1,), 3, layers=["3"], device_type="cpu",
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    trainer = LatentTrainer(clf)
    trainer.training_step = lambda batch: _sparse_step(model, batch)
    x = np.arange(12, dtype=np.float32).reshape(12, 1) % 10
    trainer.fit(x, np.arange(12) % 3, nb_epochs=1, batch_size=4, verbose=False)  # sparse gradients: no error
    # gradients of 1e20 are finite: the max-norm check does not overflow the way a 2-norm (1e40) would
    big = LatentTrainer(make_classifier())
    big.training_step = lambda batch: _huge_gradient_step(big.classifier.model, batch)
    big.fit(*_tiny(), nb_epochs=1, batch_size=16, verbose=False)  # one step


class _ToLong(torch.nn.Module):
    def forward(self, x):
        return x.long()


def _sparse_step(model, batch):
    logits = model(batch["x"])
    return torch.nn.functional.cross_entropy(logits, batch["y"]), logits, {}


def _huge_gradient_step(model, batch):
    logits = model(batch["x"])
    push = (model.head.bias * 1e20).sum()
    return torch.nn.functional.cross_entropy(logits, batch["y"]) + push - push.detach(), logits, {}


def _tiny():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (16, 1, 8, 8)).astype(np.float32), np.arange(16) % 3


def test_fp16_loss_scale_collapse_is_reported(tiny_classifier, tiny_data):
    # With a GradScaler, non-finite gradients only skip steps; persistent ones would skip every step silently.
    trainer = LatentTrainer(tiny_classifier, amp="fp16")
    model = tiny_classifier.model

    def step(batch):
        logits = model(batch["x"])
        dead = (model.fc.weight.abs() * 0.0).sqrt().sum()  # value 0, gradient NaN
        return torch.nn.functional.cross_entropy(logits.float(), batch["y"]) + dead, logits, {}

    trainer.training_step = step
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingDivergedError, match=r"batch 17: non-finite gradient of loss for many steps in a row"):
        trainer.fit(*tiny_data, nb_epochs=1, batch_size=4, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # every step was skipped


def test_capture_hooks_are_registered_once_per_fit_not_per_step(tiny_data, monkeypatch):
    from art_latent import capture

    entered = {"n": 0}
    original = capture.CallHooks.__enter__

    def counting(self):
        entered["n"] += 1
        return original(self)

    monkeypatch.setattr(capture.CallHooks, "__enter__", counting)
    counts = []
    for epochs in (1, 3):
        entered["n"] = 0
        clf = make_classifier()
        HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.1,), seed=0).fit(
            *tiny_data, nb_epochs=epochs, batch_size=16, verbose=False)
        counts.append(entered["n"])
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in clf.model.modules()) == 0
    assert counts == [1, 3], counts  # 6 steps per epoch: registered once per epoch, removed between epochs


def test_a_model_copied_between_epochs_carries_no_capture_hook(tiny_data):
    # A "keep the best model" callback: the copy must not carry (unpicklable) hooks of the training run.
    copies = []

    def keep(trainer, epoch, record):
        copies.append(copy.deepcopy(trainer.classifier.model))

    clf = make_classifier()
    HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.1,), seed=0).fit(
        *tiny_data, nb_epochs=2, batch_size=32, verbose=False, callbacks=[keep])
    for model in copies:
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
        pickle.dumps(model)


class _Gated(torch.nn.Module):
    """TinyNet plus a parameter that gets its first gradient only once `use_extra` is switched on."""

    def __init__(self) -> None:
        super().__init__()
        from helpers import TinyNet

        self.net = TinyNet()
        self.extra = torch.nn.Parameter(torch.zeros(3))
        self.use_extra = False

    def forward(self, x):
        out = self.net(x)
        return out + self.extra if self.use_extra else out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_deferred_check_drops_optimizer_state_the_undone_step_created(tiny_data, tmp_path, optimizer):
    results = []
    for check in (True, "deferred"):
        clf = make_classifier(_Gated())
        params = clf.model.parameters()
        clf._optimizer = (torch.optim.SGD(params, lr=0.05, momentum=0.9) if optimizer == "sgd"
                          else torch.optim.Adam(params, lr=1e-2))
        trainer = LatentTrainer(clf, seed=0, check_finite=check, log_every=4)
        original, calls = trainer.training_step, {"n": 0}

        def step(batch, original=original, calls=calls, model=clf.model):
            calls["n"] += 1
            if calls["n"] == 5:  # the branch switches on at the failing step, which creates its optimizer state
                model.use_extra = True
                loss, logits, logs = original(batch)
                return loss * float("nan"), logits, logs
            return original(batch)

        trainer.training_step = step
        with pytest.raises(TrainingDivergedError, match="epoch 2, batch 2"):
            trainer.fit(*tiny_data, nb_epochs=3, batch_size=32, verbose=False, checkpoint_dir=tmp_path / str(check))
        emergency = torch.load(tmp_path / str(check) / "emergency.pt", weights_only=True)["optimizer"]["state"]
        results.append((clf.optimizer.state.get(clf.model.extra), len(emergency)))
    assert results[0] == (None, results[0][1]) and results[1] == results[0]


def test_deferred_check_reports_an_unread_divergence_before_a_later_error(tiny_data, tmp_path):
    x, y = tiny_data
    batches = [(x[i:i + 16].copy(), y[i:i + 16]) for i in range(0, 96, 16)]
    batches[3][0][0, 0, 0, 0] = np.nan  # a bad batch after the divergence, before the flags are read
    trainer = LatentTrainer(make_classifier(), seed=0, check_finite="deferred", log_every=50)
    _nan_at(trainer, call=2, kind="loss")
    with pytest.raises(TrainingDivergedError, match="epoch 1, batch 2") as info:
        trainer.fit_generator(batches, nb_epochs=1, verbose=False, checkpoint_dir=tmp_path)
    chain, error = [], info.value
    while error is not None:
        chain.append(type(error))
        error = error.__context__
    assert ValueError in chain  # the later error is kept in the context chain
    assert (tmp_path / "emergency.pt").exists()


def test_step_loggers_never_see_a_step_the_deferred_check_undoes(tiny_data):
    logged = {}
    for check in (True, "deferred"):
        class Steps:
            every_n_steps = 1

            def __call__(self, trainer, epoch, record):
                return None

            def on_train_step(self, trainer, step, logs, check=check):
                logged.setdefault(check, []).append((step, round(logs["loss"], 6)))

        trainer = LatentTrainer(make_classifier(), seed=0, check_finite=check, log_every=50)
        _nan_at(trainer, call=5, kind="loss")
        with pytest.raises(TrainingDivergedError, match="epoch 2, batch 2"):
            trainer.fit(*tiny_data, nb_epochs=3, batch_size=32, verbose=False, callbacks=[Steps()])
    assert logged[True] == logged["deferred"] and [s for s, _ in logged[True]] == [1, 2, 3, 4]
