"""LatentTrainer and HLDRTrainer: the loss, gradients, pairs, modes/hooks, checkpoints, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from art.data_generators import NumpyDataGenerator
from art.estimators.classification import SklearnClassifier
from helpers import make_classifier
from sklearn.linear_model import LogisticRegression

from art_latent import HLDRTrainer, LatentTrainer
from art_latent.perturbations import TorchGradientAttack


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_hldr_step_loss_matches_hand_computation(tiny_classifier):
    model = tiny_classifier.model
    model.train()
    trainer = HLDRTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1), xi=0.3,
                          layers=["stem.unit.act", "fc"])
    torch.manual_seed(1)
    x, x_pair = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 1])
    loss, logits, logs = trainer.training_step({"x": x, "x_pair": x_pair, "y": y})
    # By hand: one concatenated forward (shared BatchNorm statistics), CE on the benign half only.
    both = torch.cat([x, x_pair])
    stem = model.stem(both)
    fc = model.fc(model.pool(model.res(stem)).flatten(1))
    full_logits = model.head(torch.relu(fc))
    ce = torch.nn.functional.cross_entropy(full_logits[:4], y)
    num = (stem[:4] - stem[4:]).abs().sum() + (fc[:4] - fc[4:]).abs().sum()
    den = stem[:4].abs().sum() + fc[:4].abs().sum()
    torch.testing.assert_close(loss, 0.7 * ce + 0.3 * num / den)
    torch.testing.assert_close(logits, full_logits[:4])
    torch.testing.assert_close(logs["regularizer"], (num / den).detach())


def test_regularizer_gradient_reaches_regularized_layers_only(tiny_classifier):
    model = tiny_classifier.model
    model.train()
    trainer = HLDRTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1), xi=1.0,
                          layers=["stem.unit.act", "res.bn2"])
    x = torch.rand(6, 1, 8, 8)
    loss, _, _ = trainer.training_step({"x": x, "x_pair": (x + 0.1).clamp(0, 1), "y": torch.tensor([0, 1, 2] * 2)})
    loss.backward()
    for name in ("stem.unit.conv.weight", "stem.unit.bn.weight", "res.conv1.weight", "res.conv2.weight",
                 "res.bn2.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    for name in ("fc.weight", "head.weight"):  # after the last regularized layer, with xi = 1: no gradient
        grad = dict(model.named_parameters())[name].grad
        assert grad is None or grad.abs().sum() == 0, name


def test_make_pairs_budgets_and_noise(tiny_classifier, tiny_data):
    x, y = (torch.from_numpy(a[:10]) for a in tiny_data)
    attack = FastGradientMethod(tiny_classifier, eps=0.2, batch_size=64)
    trainer = HLDRTrainer(tiny_classifier, attack, budgets=(0.0, 0.05, 0.1), noise_sigma=0.1)
    pairs = trainer.make_pairs(x, y)
    assert len(pairs["x"]) == 40 and torch.equal(pairs["y"][:10], y) and torch.equal(pairs["y"][30:], y)
    assert torch.equal(pairs["x_pair"][:10], x)  # budget 0: the benign pair
    for k, eps in ((1, 0.05), (2, 0.1)):
        block = pairs["x_pair"][10 * k : 10 * (k + 1)]
        expected = FastGradientMethod(tiny_classifier, eps=eps, batch_size=64).generate(x.numpy(), y=np.eye(3)[y])
        np.testing.assert_allclose(block.numpy(), expected, atol=1e-5)
    noise = pairs["x_pair"][30:] - x
    assert noise.abs().max() > 0 and pairs["x_pair"].min() >= 0 and pairs["x_pair"].max() <= 1
    assert torch.equal(pairs["eps"][30:], torch.full((10,), -1.0))
    assert attack.eps == 0.2  # the attack's own parameters are left as they were


def test_fit_history_validation_and_modes(tiny_classifier, tiny_data):
    x, y = tiny_data
    model = tiny_classifier.model
    model.eval()
    trainer = HLDRTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1), budgets=(0.0, 0.1), seed=0)
    assert isinstance(trainer.attack, TorchGradientAttack)
    history = trainer.fit(x, np.eye(3)[y], validation_data=(x[:30], y[:30]), nb_epochs=2, batch_size=16,
                          verbose=False)
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("loss", "accuracy", "ce", "regularizer", "val_accuracy", "val_robust_accuracy", "time_s"):
        assert np.isfinite(history[-1][key]), key
    assert not model.training and _hook_count(model) == 0


def test_modes_hooks_and_checkpoint_survive_an_exception(tiny_classifier, tiny_data, tmp_path):
    x, y = tiny_data
    model = tiny_classifier.model
    model.train()
    model.stem.unit.bn.eval()
    trainer = HLDRTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1), seed=0)
    calls = {"n": 0}
    original = trainer.training_step

    def failing_step(batch):
        calls["n"] += 1
        if calls["n"] == 8:  # in the middle of the second epoch
            raise RuntimeError("interrupted")
        return original(batch)

    trainer.training_step = failing_step
    checkpoint = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer.fit(x, y, nb_epochs=3, batch_size=48, checkpoint_dir=checkpoint, verbose=False)
    assert model.training and not model.stem.unit.bn.training and model.res.bn1.training
    assert _hook_count(model) == 0
    state = torch.load(checkpoint / "checkpoint.pt", weights_only=True)
    files = sorted(p.name for p in checkpoint.iterdir())  # the checkpoint and the pairs, written once
    assert state["epoch"] == 1 and files[0] == "checkpoint.pt" and len(files) == 2
    assert files[1].startswith("per_sample_state-") and state["write_once"]["file"] == files[1]


def test_resume_reproduces_an_uninterrupted_run(tiny_data, tmp_path):
    x, y = tiny_data

    def run(nb_epochs, checkpoint=None, resume=False):
        clf = make_classifier()
        trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), noise_sigma=0.05, seed=3)
        trainer.fit(x, y, nb_epochs=nb_epochs, batch_size=32, checkpoint_dir=checkpoint, resume=resume,
                    verbose=False)
        return _params(clf.model), trainer.history

    reference, ref_history = run(3)
    run(2, tmp_path / "c")
    resumed, history = run(3, tmp_path / "c", resume=True)
    assert len(history) == 3
    assert _same(reference, resumed)
    assert history[-1]["loss"] == pytest.approx(ref_history[-1]["loss"])


def test_seed_makes_runs_reproducible(tiny_data):
    x, y = tiny_data
    results = []
    for _ in range(2):
        clf = make_classifier()
        HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), regenerate="batch", seed=7).fit(
            x, y, nb_epochs=1, batch_size=32, verbose=False
        )
        results.append(_params(clf.model))
    assert _same(*results)


@pytest.mark.parametrize("regenerate", ["epoch", "batch"])
def test_regenerate_modes_train(regenerate, tiny_classifier, tiny_data):
    x, y = tiny_data
    before = _params(tiny_classifier.model)
    trainer = HLDRTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1), regenerate=regenerate,
                          normalization="sample", p=2)
    history = trainer.fit(x, y, nb_epochs=2, batch_size=32, verbose=False)
    assert np.isfinite(history[-1]["regularizer"]) and not _same(before, _params(tiny_classifier.model))


def test_fit_generator_scheduler_and_callbacks(tiny_classifier, tiny_data):
    x, y = tiny_data
    scheduler = torch.optim.lr_scheduler.StepLR(tiny_classifier.optimizer, step_size=1, gamma=0.5)
    seen = []

    def stop_after_two(trainer, epoch, logs):
        seen.append(logs["epoch"])
        return epoch == 1

    trainer = HLDRTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1))
    history = trainer.fit_generator(NumpyDataGenerator(x, y, batch_size=32), nb_epochs=5, scheduler=scheduler,
                                    callbacks=[stop_after_two], verbose=False)
    assert seen == [1, 2] and len(history) == 2
    assert history[0]["lr"] == pytest.approx(0.05) and history[1]["lr"] == pytest.approx(0.025)


def test_plain_latent_trainer_learns(tiny_classifier, tiny_data):
    x, y = tiny_data
    history = LatentTrainer(tiny_classifier, seed=0).fit(x, y, validation_data=(x, y), nb_epochs=6, batch_size=16,
                                                         verbose=False)
    assert history[-1]["val_accuracy"] > 0.9


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"xi": 1.5}, ValueError, r"`xi` must be in \[0.0, 1.0\]"),
        ({"xi": float("nan")}, ValueError, "`xi`"),
        ({"budgets": (0.0, -0.1)}, ValueError, "`budgets`"),
        ({"budgets": ()}, ValueError, "empty"),
        ({"layers": ["stem.unit.nope"]}, ValueError, "unknown layer name"),
        ({"regenerate": "always"}, ValueError, "`regenerate`"),
        ({"normalization": "global"}, ValueError, "`normalization`"),
        ({"p": 3}, ValueError, "`p`"),
        ({"noise_sigma": 0.0}, ValueError, "`noise_sigma`"),
    ],
)
def test_bad_hyper_parameters_rejected(tiny_classifier, kwargs, error, match):
    with pytest.raises(error, match=match):
        HLDRTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1), **kwargs)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32), y), "NaN"),
        (lambda x, y: (x, np.where(np.arange(len(y)) == 3, 7, y)), r"outside \[0, 2\]"),
        (lambda x, y: (x, y - 1), r"outside \[0, 2\]"),
        (lambda x, y: (x[:, :, :4], y), "shape"),
        (lambda x, y: ((x * 255).astype(np.uint8), y), "floating dtype"),
        (lambda x, y: (x * 255, y), "clip_values"),
        (lambda x, y: (x, y[:-1]), "labels"),
    ],
)
def test_bad_data_rejected_before_any_work(tiny_classifier, tiny_data, mutate, match):
    x, y = mutate(*tiny_data)
    before = _params(tiny_classifier.model)
    trainer = HLDRTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1))
    with pytest.raises(ValueError, match=match):
        trainer.fit(x, y, nb_epochs=1, verbose=False)
    assert _same(before, _params(tiny_classifier.model))


@pytest.mark.parametrize(("kwargs", "match"), [({"batch_size": 0}, "batch_size"), ({"nb_epochs": 1.5}, "nb_epochs")])
def test_bad_fit_arguments(tiny_classifier, tiny_data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatentTrainer(tiny_classifier).fit(*tiny_data, verbose=False, **kwargs)


def test_non_pytorch_estimator_rejected(tiny_data):
    x, y = tiny_data
    sk = SklearnClassifier(LogisticRegression().fit(x.reshape(len(x), -1), y))
    with pytest.raises(TypeError, match="PyTorch"):
        LatentTrainer(sk)
    with pytest.raises(TypeError, match="PyTorch"):
        HLDRTrainer(sk, None)


def test_divergence_is_reported(tiny_classifier, tiny_data):
    trainer = LatentTrainer(tiny_classifier)
    trainer.training_step = lambda batch: (
        tiny_classifier.model(batch["x"]).sum() * float("nan"), tiny_classifier.model(batch["x"]), {}
    )
    with pytest.raises(FloatingPointError, match="diverged"):
        trainer.fit(*tiny_data, nb_epochs=1, verbose=False)


@pytest.mark.parametrize("normalization", ["batch", "layer", "sample"])
def test_bf16_autocast_stays_finite(tiny_classifier, tiny_data, normalization):
    trainer = HLDRTrainer(tiny_classifier, FastGradientMethod(tiny_classifier, eps=0.1), amp="bf16",
                          normalization=normalization, p=2, seed=0)
    history = trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False)
    assert np.isfinite(history[-1]["loss"]) and np.isfinite(history[-1]["regularizer"])
    with pytest.raises(ValueError, match="`amp`"):
        LatentTrainer(tiny_classifier, amp="fp8")


def test_two_trainers_in_a_row_share_weights_and_optimizer_state_but_not_trainer_state(tiny_data):
    from art_latent.trainers import AFDTrainer

    x, y = tiny_data[0][:32], tiny_data[1][:32]
    clf = make_classifier()
    clf._optimizer = torch.optim.SGD(clf.model.parameters(), lr=0.05, momentum=0.9)
    first = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), seed=0)
    first.fit(x, y, nb_epochs=1, batch_size=16, verbose=False)
    after_hldr = [t.clone() for t in clf.model.state_dict().values()]
    momentum = {k: v["momentum_buffer"].clone() for k, v in clf.optimizer.state_dict()["state"].items()}
    assert momentum and clf.regularized_layers == first.layers
    second = AFDTrainer(clf, FastGradientMethod(clf, eps=0.1), validation_attack=None, seed=0)
    assert len(second.history) == 0  # the trainer's own state starts afresh
    state = clf.optimizer.state_dict()["state"]
    assert all(torch.equal(momentum[k], state[k]["momentum_buffer"]) for k in momentum)  # carried over
    second.fit(x, y, nb_epochs=1, batch_size=16, verbose=False)
    assert any(not torch.equal(a, b) for a, b in zip(after_hldr, clf.model.state_dict().values(), strict=True))
    assert clf.regularized_layers == second.regularized_layers and len(first.history) == 1


@pytest.mark.parametrize("regenerate", ["never", "batch"])
def test_hldr_skips_the_second_forward_of_budget_0_pairs_with_the_same_loss(regenerate, tiny_data):
    from helpers import NoBatchNormNet

    x, y = tiny_data[0][:24], tiny_data[1][:24]
    results = {}
    for skip in (True, False):
        torch.manual_seed(0)
        clf = make_classifier(NoBatchNormNet(), layers=["act", "fc_act"])
        trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.05, 0.1), noise_sigma=0.05,
                              regenerate=regenerate, skip_benign_pairs=skip, seed=0)
        rows: list[int] = []
        handle = clf.model.register_forward_pre_hook(lambda _m, inputs, rows=rows: rows.append(len(inputs[0])))
        history = trainer.fit(x, y, nb_epochs=1, batch_size=16 if regenerate == "never" else 4, shuffle=False,
                              verbose=False)
        handle.remove()
        results[skip] = (history[0], [t.clone() for t in clf.model.state_dict().values()], rows)
    (skipped, w_skip, rows_skip), (full, w_full, rows_full) = results[True], results[False]
    assert skipped["loss"] == pytest.approx(full["loss"], rel=1e-6, abs=1e-7)
    assert skipped["regularizer"] == pytest.approx(full["regularizer"], rel=1e-6, abs=1e-7)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(w_skip, w_full, strict=True))
    # a quarter of the pairs have budget 0 (4 kinds: 0, 0.05, 0.1, noise): that many fewer rows forwarded
    forwarded = lambda rows: sum(r for r in rows if r > 8)  # noqa: E731 (the contract check forwards 8 samples)
    assert forwarded(rows_full) - forwarded(rows_skip) == 24
