"""
Resume refuses what it cannot honour, and refusing changes nothing: another data set, other method settings,
another architecture, another optimizer type, a corrupted file; lr / batch-size changes are warned about; write-once
per-sample state; stale temporary files; a divergence on a full disk.
"""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from helpers import NoBatchNormNet, make_classifier

from art_latent.trainers import HLDRTrainer, LatentTrainer
from art_latent.trainers import checkpoint as ckpt
from art_latent.trainers.base import TrainingDivergedError


def _data(n: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 1, 8, 8)).astype(np.float32), np.arange(n) % 3


def _hldr(clf=None, **kwargs):
    clf = make_classifier() if clf is None else clf
    clf._optimizer = torch.optim.SGD(clf.model.parameters(), lr=0.05, momentum=0.9)
    return HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=kwargs.pop("budgets", (0.0, 0.1)), seed=3,
                       **kwargs)


def _state(trainer):
    model = [t.detach().clone() for t in trainer.classifier.model.state_dict().values()]
    optimizer = trainer.classifier.optimizer.state_dict()
    return model, {k: v["momentum_buffer"].clone() for k, v in optimizer["state"].items()}, optimizer["param_groups"]


def _unchanged(before, trainer) -> bool:
    after = _state(trainer)
    return (all(torch.equal(a, b) for a, b in zip(before[0], after[0], strict=True))
            and before[1].keys() == after[1].keys()
            and all(torch.equal(before[1][k], after[1][k]) for k in before[1]) and before[2] == after[2])


def _trained_once(tmp_path: Path, **kwargs):
    """An HLDR run of 1 epoch with a checkpoint, then a fresh trainer that trained one epoch elsewhere (state to
    protect)."""
    x, y = _data()
    _hldr(**kwargs).fit(x, y, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path / "ckpt", verbose=False)
    other = _hldr(**kwargs)
    other.fit(*_data(seed=1), nb_epochs=1, batch_size=8, verbose=False)  # momentum buffers exist
    return x, y, other


@pytest.mark.parametrize("change", ["x", "fewer", "budgets", "xi"])
def test_resume_with_other_data_or_settings_is_refused_and_changes_nothing(tmp_path, change):
    x, y, trainer = _trained_once(tmp_path)
    if change == "x":
        x = x[::-1].copy()
    elif change == "fewer":
        x, y = x[:24], y[:24]
    elif change == "budgets":
        trainer = _hldr(trainer.classifier, budgets=(0.0, 0.2))
    else:
        trainer = _hldr(trainer.classifier, xi=0.5)
    before = _state(trainer)
    expected = {"x": "training data differ", "fewer": "training data differ", "budgets": "`budgets` was",
                "xi": "`xi` was"}[change]
    with pytest.raises(ValueError, match=expected):
        trainer.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=tmp_path / "ckpt", resume=True, verbose=False)
    assert _unchanged(before, trainer)


def test_resume_into_another_architecture_or_optimizer_changes_nothing(tmp_path):
    x, y = _data()
    _hldr().fit(x, y, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path / "ckpt", verbose=False)
    # another architecture: NoBatchNormNet has other keys and shapes
    clf = make_classifier(NoBatchNormNet(), layers=["fc"])
    other = LatentTrainer(clf, seed=3)
    other.fit(x, y, nb_epochs=1, batch_size=8, verbose=False)
    state = ckpt.load(tmp_path / "ckpt" / ckpt.CHECKPOINT_NAME)
    state["trainer"] = "LatentTrainer"
    state["fingerprint"] = None  # only the weights differ
    ckpt.save_atomic(state, tmp_path / "arch" / ckpt.CHECKPOINT_NAME)
    before = [t.clone() for t in clf.model.state_dict().values()]
    with pytest.raises(ValueError, match="does not fit this model"):
        other.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=tmp_path / "arch", resume=True, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(before, clf.model.state_dict().values(), strict=True))
    # an SGD checkpoint into Adam
    adam = _hldr()
    adam.classifier._optimizer = torch.optim.Adam(adam.classifier.model.parameters(), lr=1e-3)
    adam.fit(*_data(seed=1), nb_epochs=1, batch_size=8, verbose=False)
    weights = [t.clone() for t in adam.classifier.model.state_dict().values()]
    moments = {k: v["exp_avg"].clone() for k, v in adam.classifier.optimizer.state_dict()["state"].items()}
    with pytest.raises(ValueError, match="SGD"):
        adam.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=tmp_path / "ckpt", resume=True, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(weights, adam.classifier.model.state_dict().values(), strict=True))
    after = adam.classifier.optimizer.state_dict()
    assert "betas" in after["param_groups"][0] and all(torch.equal(moments[k], after["state"][k]["exp_avg"])
                                                       for k in moments)


def test_a_failure_while_loading_rolls_everything_back(tmp_path, monkeypatch):
    x, y, trainer = _trained_once(tmp_path)
    before = _state(trainer)

    def broken(state):
        raise RuntimeError("method state cannot be restored")

    monkeypatch.setattr(trainer, "load_state_dict", broken)
    with pytest.raises(RuntimeError, match="cannot be restored"):
        trainer.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=tmp_path / "ckpt", resume=True, verbose=False)
    assert _unchanged(before, trainer)  # model and optimizer were loaded, then restored


def test_resume_with_another_lr_or_batch_size_warns(tmp_path):
    x, y = _data()
    _hldr().fit(x, y, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path / "ckpt", verbose=False)
    trainer = _hldr()
    for group in trainer.classifier.optimizer.param_groups:
        group["lr"] = 0.5
    with pytest.warns(UserWarning, match=r"learning rate\(s\) \[0.05\].*\[0.5\]"):
        trainer.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=tmp_path / "ckpt", resume=True, verbose=False)
    assert trainer.classifier.optimizer.param_groups[0]["lr"] == 0.05  # the checkpoint's
    with pytest.warns(UserWarning, match="batch_size=16.*batch_size=8"):
        _hldr().fit(x, y, nb_epochs=3, batch_size=16, checkpoint_dir=tmp_path / "ckpt", resume=True, verbose=False)


def test_never_changing_pairs_are_written_once_not_every_epoch(tmp_path, monkeypatch):
    x, y = _data()
    writes = []
    original = ckpt.save_blob
    monkeypatch.setattr(ckpt, "save_blob", lambda *a, **k: writes.append(1) or original(*a, **k))
    trainer = _hldr()
    trainer.fit(x, y, nb_epochs=3, batch_size=8, checkpoint_dir=tmp_path / "ckpt", verbose=False)
    assert len(writes) == 1
    state = torch.load(tmp_path / "ckpt" / ckpt.CHECKPOINT_NAME, weights_only=True)
    assert "pairs" not in state["method"] and state["write_once"]["keys"] == ["eps", "eps_host", "x", "x_pair", "y"]
    assert not any(isinstance(v, torch.Tensor) and v.shape[:1] == (64,) for v in state["method"].values())
    # a resumed run reuses the file (no rewrite) and reaches the uninterrupted weights
    reference = _hldr()
    reference.fit(x, y, nb_epochs=4, batch_size=8, verbose=False)
    resumed = _hldr()
    resumed.fit(x, y, nb_epochs=4, batch_size=8, checkpoint_dir=tmp_path / "ckpt", resume=True, verbose=False)
    assert len(writes) == 1
    assert all(torch.equal(a, b) for a, b in zip(reference.classifier.model.state_dict().values(),
                                                  resumed.classifier.model.state_dict().values(), strict=True))


def test_a_replaced_state_file_or_a_flipped_bit_is_detected(tmp_path):
    x, y = _data()
    _hldr().fit(x, y, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path / "ckpt", verbose=False)
    directory = tmp_path / "ckpt"
    state = torch.load(directory / ckpt.CHECKPOINT_NAME, weights_only=True)
    blob = directory / state["write_once"]["file"]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        _hldr().fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=directory, resume=True, verbose=False)
    # a flipped bit in a weight of the checkpoint itself
    main = directory / ckpt.CHECKPOINT_NAME
    state["model"]["fc.weight"].view(-1)[0] += 1e-3  # what a flipped mantissa bit does
    torch.save(state, main)  # the old checksum, new content
    with pytest.raises(ValueError, match="corrupted"):
        ckpt.load(main)


def test_stale_temporary_files_are_removed_at_the_next_fit(tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    stale = [directory / ".checkpoint.pt.abc123.tmp", directory / "checkpoint.pt.def456.tmp",
             directory / ".emergency.pt.x.tmp", directory / ".per_sample_state-0123.pt.y.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    keep = directory / "notes.tmp"
    keep.write_text("mine")
    LatentTrainer(make_classifier()).fit(*_data(), nb_epochs=1, batch_size=8, checkpoint_dir=directory,
                                         verbose=False)
    assert not any(p.exists() for p in stale) and keep.exists()


def _nan_on_third_step() -> LatentTrainer:
    """A plain trainer whose third training step returns a NaN loss."""
    trainer = LatentTrainer(make_classifier(), seed=0)
    original = trainer.training_step
    calls = {"n": 0}

    def nan_on_third(batch):
        calls["n"] += 1
        loss, logits, logs = original(batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), logits, logs

    trainer.training_step = nan_on_third
    return trainer


def test_a_divergence_on_a_full_disk_still_raises_training_diverged(tmp_path, monkeypatch):
    x, y = _data()
    trainer = _nan_on_third_step()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_atomic", full)
    with pytest.raises(TrainingDivergedError, match="writing emergency.pt failed") as info:
        trainer.fit(x, y, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path / "ckpt", verbose=False)
    assert isinstance(info.value.__cause__, OSError) and info.value.checkpoint is None


_SLOW_WRITE = textwrap.dedent(
    """
    import sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from helpers import make_classifier
    from art_latent import LatentTrainer
    import art_latent.trainers.checkpoint as ckpt

    original = torch.save
    def slow_save(obj, f, *args, **kwargs):
        print("WRITING", flush=True)
        time.sleep(3)  # the parent sends SIGTERM now, in the middle of the write
        return original(obj, f, *args, **kwargs)
    ckpt.torch.save = slow_save
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 1, 8, 8)).astype(np.float32)
    LatentTrainer(make_classifier(), seed=0).fit(x, np.arange(16) % 3, nb_epochs=3, batch_size=8, verbose=False,
                                                 checkpoint_dir=sys.argv[1])
    print("FINISHED", flush=True)
    """
)


def test_sigterm_during_a_checkpoint_write_exits_143_with_a_complete_checkpoint(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(_SLOW_WRITE.format(tests=str(Path(__file__).parent)))
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ckpt")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    try:
        assert process.stdout.readline().strip() == "WRITING"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert "FINISHED" not in out and "during a checkpoint write" in err
    state = ckpt.load(tmp_path / "ckpt" / ckpt.CHECKPOINT_NAME)
    assert state["epoch"] == 1
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


# ---------------------------------------------------------------------------------------------------- review findings

def test_a_last_batch_of_one_is_refused_before_a_resume_loads_anything(tmp_path):
    x, y = _data(33)
    _hldr().fit(x, y, nb_epochs=1, batch_size=16, checkpoint_dir=tmp_path / "ckpt", verbose=False)  # 66 pairs
    trainer = _hldr()
    trainer.fit(*_data(33, seed=1), nb_epochs=1, batch_size=16, verbose=False)
    before = _state(trainer)
    with pytest.raises(ValueError, match="`drop_last`"):  # 66 pairs in batches of 13: a last batch of one
        trainer.fit(x, y, nb_epochs=2, batch_size=13, checkpoint_dir=tmp_path / "ckpt", resume=True, verbose=False)
    assert _unchanged(before, trainer)


def test_a_full_disk_reported_by_torch_as_runtime_error_keeps_the_divergence(tmp_path, monkeypatch):
    x, y = _data()
    trainer = _nan_on_third_step()

    def zip_writer_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    monkeypatch.setattr(ckpt.torch, "save", zip_writer_full)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit(x, y, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path / "ckpt", verbose=False)
    assert isinstance(info.value.__cause__, OSError) and "disk full" in str(info.value.__cause__)


def test_a_setting_a_callback_changes_is_resumed_as_in_the_uninterrupted_run(tmp_path):
    x, y = _data()

    def ramp(trainer, epoch, logs):
        trainer.xi = 0.25 + 0.25 * (epoch + 1) / 2

    reference = _hldr()
    reference.fit(x, y, nb_epochs=3, batch_size=8, verbose=False, callbacks=[ramp])

    def crash(trainer, epoch, logs):
        if epoch == 1:
            raise RuntimeError("crash")

    same = _hldr()
    with pytest.raises(RuntimeError):
        same.fit(x, y, nb_epochs=3, batch_size=8, checkpoint_dir=tmp_path / "a", callbacks=[ramp, crash],
                 verbose=False)
    with pytest.raises(RuntimeError):
        _hldr().fit(x, y, nb_epochs=3, batch_size=8, checkpoint_dir=tmp_path / "b", callbacks=[ramp, crash],
                    verbose=False)
    same.fit(x, y, nb_epochs=3, batch_size=8, checkpoint_dir=tmp_path / "a", resume=True, callbacks=[ramp],
             verbose=False)  # the same object, holding the ramped value
    fresh = _hldr()  # a new object, holding the starting value
    fresh.fit(x, y, nb_epochs=3, batch_size=8, checkpoint_dir=tmp_path / "b", resume=True, callbacks=[ramp],
              verbose=False)
    for resumed in (same, fresh):
        assert all(torch.equal(a, b) for a, b in zip(reference.classifier.model.state_dict().values(),
                                                      resumed.classifier.model.state_dict().values(), strict=True))


def test_the_same_atlr_object_resumes_after_its_layer_analysis(tmp_path):
    from art_latent.trainers import ATLRTrainer

    x, y = _data()
    clf = make_classifier()
    trainer = ATLRTrainer(clf, FastGradientMethod(clf, eps=0.1), seed=0, lsa_samples=16)

    def crash(trainer, epoch, logs):
        if epoch == 0:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        trainer.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=tmp_path / "c", callbacks=[crash], verbose=False)
    history = trainer.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=tmp_path / "c", resume=True, verbose=False)
    assert len(history) == 2


@pytest.mark.parametrize("change", ["p-numpy", "random-eps", "label-smoothing", "scheduler-added"])
def test_settings_the_first_fingerprint_missed_are_refused(tmp_path, change):
    from art.attacks.evasion import ProjectedGradientDescent

    x, y = _data()

    def build(after: bool):
        clf = make_classifier()
        if change == "label-smoothing":
            clf._loss = torch.nn.CrossEntropyLoss(label_smoothing=0.5 if after else 0.0)
        clf._optimizer = torch.optim.SGD(clf.model.parameters(), lr=0.05, momentum=0.9)
        attack = ProjectedGradientDescent(clf, eps=0.1, eps_step=0.05, max_iter=2, verbose=False,
                                          random_eps=after and change == "random-eps")
        p = np.int64(2 if after else 1) if change == "p-numpy" else 1
        return HLDRTrainer(clf, attack, budgets=(0.0, 0.1), p=p, seed=3)

    build(False).fit(x, y, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path / "c", verbose=False)
    trainer = build(True)
    scheduler = (torch.optim.lr_scheduler.StepLR(trainer.classifier.optimizer, 1)
                 if change == "scheduler-added" else None)
    with pytest.raises(ValueError, match="Cannot resume"):
        trainer.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=tmp_path / "c", resume=True, verbose=False,
                    scheduler=scheduler)


def test_other_optimizer_options_are_warned_about(tmp_path):
    x, y = _data()
    _hldr().fit(x, y, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path / "c", verbose=False)
    trainer = _hldr()
    trainer.classifier.optimizer.param_groups[0]["momentum"] = 0.5
    with pytest.warns(UserWarning, match="optimizer's options"):
        trainer.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=tmp_path / "c", resume=True, verbose=False)


def test_another_discriminator_is_refused_before_anything_is_loaded(tmp_path):
    from art_latent.trainers import AFDTrainer

    x, y = _data()

    def afd(width):
        clf = make_classifier()
        return AFDTrainer(clf, FastGradientMethod(clf, eps=0.1), discriminator_width=width, validation_attack=None,
                          seed=0)

    afd(8).fit(x, y, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path / "c", verbose=False)
    other = afd(5)
    weights = [t.clone() for t in other.classifier.model.state_dict().values()]
    with pytest.raises(ValueError, match="`discriminator` was .*'width': 8.*now .*'width': 5"):
        other.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=tmp_path / "c", resume=True, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(weights, other.classifier.model.state_dict().values(), strict=True))


def test_a_downgraded_format_byte_does_not_switch_the_checksum_off(tmp_path):
    x, y = _data()
    LatentTrainer(make_classifier(), seed=0).fit(x, y, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path,
                                                 verbose=False)
    state = torch.load(tmp_path / ckpt.CHECKPOINT_NAME, weights_only=True)
    state["format"] = 2
    state["model"]["fc.weight"].view(-1)[0] += 1.0
    torch.save(state, tmp_path / ckpt.CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="corrupted"):
        ckpt.load(tmp_path / ckpt.CHECKPOINT_NAME)


def test_a_checkpoint_path_that_is_a_directory_or_has_a_null_byte_is_refused_at_once(tmp_path):
    (tmp_path / "c" / ckpt.CHECKPOINT_NAME).mkdir(parents=True)
    with pytest.raises(ValueError, match="`checkpoint_dir`.*not a file"):
        LatentTrainer(make_classifier()).fit(*_data(), nb_epochs=1, checkpoint_dir=tmp_path / "c", verbose=False)
    with pytest.raises(ValueError, match="`checkpoint_dir`.*null byte"):
        LatentTrainer(make_classifier()).fit(*_data(), nb_epochs=1, checkpoint_dir="a\0b", verbose=False)


def test_a_numpy_seed_is_accepted():
    trainer = LatentTrainer(make_classifier(), seed=np.int64(3))
    assert trainer.seed == 3 and type(trainer.seed) is int
    trainer.fit(*_data(), nb_epochs=1, batch_size=8, verbose=False)
