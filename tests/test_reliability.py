"""
Every trainer: an interrupted run resumes to the weights of an uninterrupted one (exception from a callback, and a
real SIGTERM of a subprocess); success, exceptions and KeyboardInterrupt leave no hooks, modes, requires_grad flags
or ART_DATA_PATH files behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import art.config
import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from helpers import make_classifier

from art_latent import LatentClassifier, trainers
from art_latent.registries.trainers import trainer_entries
from art_latent.trainers import LatentTrainer
from art_latent.trainers import checkpoint as ckpt
from art_latent.trainers.base import LatentTrainer as Base

#: Every registered trainer from its test factory, with settings that keep these checks fast and exact for some.
FACTORIES: dict[str, Callable[[LatentClassifier, int], Base]] = {
    entry.key: entry.test_factory for entry in trainer_entries().values() if entry.test_factory is not None
}
FACTORIES.update({
    "hldr": lambda clf, seed: trainers.HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1),
                                                   noise_sigma=0.05, seed=seed),
    "agnt": lambda clf, seed: trainers.GaussianNoiseTrainer(clf, fixed_noise=True, seed=seed),
    "deep_defense": lambda clf, seed: trainers.DeepDefenseTrainer(clf, lam=0.01, max_iter=2, seed=seed),
    "layerwise": lambda clf, seed: trainers.LayerwisePerturbationTrainer(clf, variant="joint", seed=seed),
    "atlr": lambda clf, seed: trainers.ATLRTrainer(clf, FastGradientMethod(clf, eps=0.1), layers=["fc"],
                                                   seed=seed),
})


def _classifier() -> LatentClassifier:
    clf = make_classifier()
    # momentum: the optimizer state matters for an exact resume
    clf._optimizer = torch.optim.SGD(clf.model.parameters(), lr=0.05, momentum=0.9)
    return clf


def _weights(trainer: Base) -> list[torch.Tensor]:
    tensors = list(trainer.classifier.model.state_dict().values())
    for extra in ("discriminator", "denoiser"):
        module = getattr(trainer, extra, None)
        if module is not None:
            tensors += list((module.network if extra == "denoiser" else module).state_dict().values())
    return [t.detach().clone() for t in tensors]


def _run(name: str, x, y, nb_epochs: int, directory: Path | None = None, resume: bool = False,
         fail_after: int | None = None) -> tuple[list[torch.Tensor], Base]:
    clf = _classifier()
    trainer = FACTORIES[name](clf, 5)
    scheduler = torch.optim.lr_scheduler.StepLR(trainer.classifier.optimizer, step_size=1, gamma=0.7)

    def crash(trainer, epoch, logs):
        if epoch == fail_after:
            raise RuntimeError("crash after an epoch")

    trainer.fit(x, y, nb_epochs=nb_epochs, batch_size=16, scheduler=scheduler, checkpoint_dir=directory,
                resume=resume, callbacks=[crash], verbose=False)
    return _weights(trainer), trainer


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_resume_after_a_crash_reproduces_the_uninterrupted_run(name, tiny_data, tmp_path):
    x, y = tiny_data[0][:48], tiny_data[1][:48]
    reference, ref_trainer = _run(name, x, y, 3)
    with pytest.raises(RuntimeError, match="crash"):
        _run(name, x, y, 3, tmp_path, fail_after=1)  # killed after epoch 2 (index 1)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed, trainer = _run(name, x, y, 3, tmp_path, resume=True)
    assert [h["epoch"] for h in trainer.history] == [1, 2, 3]
    assert trainer.history[-1]["loss"] == pytest.approx(ref_trainer.history[-1]["loss"], rel=1e-6)
    assert len(resumed) == len(reference)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))


def test_checkpoint_every_and_a_finished_run(tiny_data, tmp_path):
    x, y = tiny_data
    clf = _classifier()
    written = []
    original = ckpt.save_atomic

    def spy(state, path):
        written.append((path.name, state["epoch"]))
        original(state, path)

    ckpt.save_atomic, saved = spy, ckpt.save_atomic
    try:
        LatentTrainer(clf, seed=0).fit(x, y, nb_epochs=5, batch_size=32, checkpoint_dir=tmp_path,
                                       checkpoint_every=2, verbose=False)
    finally:
        ckpt.save_atomic = saved
    assert written == [("checkpoint.pt", 2), ("checkpoint.pt", 4), ("checkpoint.pt", 5)]  # and after the last
    # resuming a finished run trains nothing and returns its history
    before = _weights(LatentTrainer(clf))
    trainer = LatentTrainer(clf, seed=0)
    history = trainer.fit(x, y, nb_epochs=5, batch_size=32, checkpoint_dir=tmp_path, resume=True, verbose=False)
    assert len(history) == 5 and all(torch.equal(a, b) for a, b in zip(before, _weights(trainer), strict=True))


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    ckpt.save_atomic({"format": ckpt.FORMAT_VERSION, "rng": ckpt.rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load(tmp_path / "r.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_unsafe_or_foreign_checkpoints_are_refused(tmp_path, tiny_data):
    torch.save({"format": ckpt.FORMAT_VERSION, "payload": object()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        ckpt.load(tmp_path / "evil.pt")
    torch.save({"epoch": 1}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="format"):
        ckpt.load(tmp_path / "old.pt")
    clf = _classifier()
    LatentTrainer(clf).fit(*tiny_data, nb_epochs=1, batch_size=32, checkpoint_dir=tmp_path / "a", verbose=False)
    with pytest.raises(ValueError, match="written by LatentTrainer"):
        trainers.FIMRTrainer(clf).fit(*tiny_data, nb_epochs=2, checkpoint_dir=tmp_path / "a", resume=True,
                                      verbose=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="`checkpoint_dir`"):
        LatentTrainer(clf).fit(*tiny_data, nb_epochs=1, checkpoint_dir=tmp_path / "file", verbose=False)


# ---------------------------------------------------------------------------------------------- SIGTERM

_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from art.attacks.evasion import FastGradientMethod
    from helpers import make_classifier
    from art_latent import HLDRTrainer

    mode, directory, out = sys.argv[1], sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (48, 1, 8, 8)).astype(np.float32)
    y = np.arange(48) % 3
    clf = make_classifier()
    clf._optimizer = torch.optim.SGD(clf.model.parameters(), lr=0.05, momentum=0.9)
    trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), seed=5)

    def wait_for_sigterm(trainer, epoch, logs):
        if mode == "interrupt" and epoch == 1:
            print("EPOCH2", flush=True)
            time.sleep(60)  # the parent sends SIGTERM now

    trainer.fit(x, y, nb_epochs=4, batch_size=16, verbose=False, callbacks=[wait_for_sigterm],
                checkpoint_dir=None if mode == "reference" else directory, resume=mode == "resume")
    torch.save(clf.model.state_dict(), out)
    """
)


def test_sigterm_of_a_subprocess_then_resume_gives_the_uninterrupted_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ART_DATA_PATH": str(tmp_path / "art")}

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), mode, str(tmp_path / "ckpt"), str(tmp_path / f"{mode}.pt")],
                              env=env, capture_output=True, text=True, timeout=300)

    assert run("reference").returncode == 0
    process = subprocess.Popen([sys.executable, str(script), "interrupt", str(tmp_path / "ckpt"),
                                str(tmp_path / "interrupt.pt")], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "EPOCH2"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stderr  # TrainingTerminated: 128 + SIGTERM, after unwinding
    assert "SIGTERM received" in stderr and not (tmp_path / "interrupt.pt").exists()
    assert torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr
    reference = torch.load(tmp_path / "reference.pt", weights_only=True)
    result = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert all(torch.equal(reference[k], result[k]) for k in reference)


def test_a_user_sigterm_handler_is_left_alone(tiny_data):
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        trainer = LatentTrainer(_classifier())
        trainer.fit(*tiny_data, nb_epochs=1, batch_size=32, verbose=False,
                    callbacks=[lambda t, e, logs: os.kill(os.getpid(), signal.SIGTERM)])
        assert calls == [signal.SIGTERM] and len(trainer.history) == 1
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) == previous


# ---------------------------------------------------------------------------------------------- no leaks

def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


def _flags(model: torch.nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("how", ["success", "exception", "keyboard_interrupt"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_no_hooks_modes_flags_or_files_leak(name, how, tiny_data):
    x, y = tiny_data[0][:32], tiny_data[1][:32]
    clf = _classifier()
    model = clf.model
    model.train()
    model.stem.unit.bn.eval()  # a frozen BatchNorm: mixed modes must come back as they were
    model.res.conv1.bias.requires_grad_(False)
    before = _flags(model)
    trainer = FACTORIES[name](clf, 0)
    original = trainer.training_step
    calls = {"n": 0}

    def step(batch):
        calls["n"] += 1
        if how != "success" and calls["n"] == 2:
            raise KeyboardInterrupt if how == "keyboard_interrupt" else RuntimeError("boom")
        return original(batch)

    trainer.training_step = step
    if how == "success":
        trainer.fit(x, y, nb_epochs=1, batch_size=16, verbose=False)
    else:
        with pytest.raises(KeyboardInterrupt if how == "keyboard_interrupt" else RuntimeError):
            trainer.fit(x, y, nb_epochs=2, batch_size=16, verbose=False)
    assert _hooks(model) == 0
    assert _flags(model) == before
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert not any(Path(art.config.ART_DATA_PATH).rglob("*")), "files left in ART_DATA_PATH"


# ---------------------------------------------------------------------------------------------- review findings

def test_callbacks_edit_the_history_and_their_changes_are_in_the_checkpoint(tiny_data, tmp_path):
    x, y = tiny_data

    def halve_lr(trainer, epoch, logs):
        logs["my_metric"] = float(epoch)
        for group in trainer.classifier.optimizer.param_groups:
            group["lr"] *= 0.5
        np.random.rand(3)  # a callback drawing random numbers (e.g. a random-start evaluation attack)

    def run(nb_epochs, directory=None, resume=False, crash_after=None):
        clf = _classifier()
        trainer = trainers.HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), regenerate="epoch", seed=2)

        def crash(trainer, epoch, logs):
            if epoch == crash_after:
                raise RuntimeError("crash")

        trainer.fit(x, y, nb_epochs=nb_epochs, batch_size=32, checkpoint_dir=directory, resume=resume,
                    callbacks=[halve_lr, crash], verbose=False)
        return _weights(trainer), trainer

    reference, trainer = run(3)
    assert [h["my_metric"] for h in trainer.history] == [0.0, 1.0, 2.0]
    with pytest.raises(RuntimeError):
        run(3, tmp_path, crash_after=1)
    resumed, _ = run(3, tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))


def test_an_early_stopped_run_stays_stopped_on_resume(tiny_data, tmp_path):
    clf = _classifier()
    stop = lambda trainer, epoch, logs: epoch == 1  # noqa: E731
    LatentTrainer(clf, seed=0).fit(*tiny_data, nb_epochs=5, batch_size=32, checkpoint_dir=tmp_path, callbacks=[stop],
                                   verbose=False)
    before = _weights(LatentTrainer(clf))
    trainer = LatentTrainer(clf, seed=0)
    history = trainer.fit(*tiny_data, nb_epochs=5, batch_size=32, checkpoint_dir=tmp_path, resume=True,
                          verbose=False)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(trainer), strict=True))


def test_checkpoints_keep_ordered_dicts_and_multistep_schedulers_resume(tiny_data, tmp_path):
    def run(nb_epochs, resume=False):
        clf = _classifier()
        scheduler = torch.optim.lr_scheduler.MultiStepLR(clf.optimizer, milestones=[1, 2], gamma=0.5)
        LatentTrainer(clf, seed=0).fit(*tiny_data, nb_epochs=nb_epochs, batch_size=32, scheduler=scheduler,
                                       checkpoint_dir=tmp_path, resume=resume, verbose=False)
        return clf, scheduler

    run(2)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert type(state["model"]).__name__ == "OrderedDict" and hasattr(state["model"], "_metadata")
    clf, scheduler = run(3, resume=True)
    assert scheduler.get_last_lr() == [pytest.approx(0.0125)]
    assert list(tmp_path.iterdir()) == [tmp_path / "checkpoint.pt"]  # no temporary file left


def test_sigterm_handler_installed_during_fit_is_kept(tiny_data):
    def install(trainer, epoch, logs):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    try:
        LatentTrainer(_classifier()).fit(*tiny_data, nb_epochs=1, batch_size=32, callbacks=[install], verbose=False)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
