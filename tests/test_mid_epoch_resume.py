"""
Checkpoints inside an epoch (``checkpoint_every_steps``): a run killed at any step and resumed ends with the weights
and history of the uninterrupted run, for every trainer, from arrays and from a shuffling DataLoader.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_classifier
from test_reliability import FACTORIES, _weights  # every trainer, seeded, in settings whose steps stay finite
from torch.utils.data import DataLoader, TensorDataset

from art_latent import LatentTrainer
from art_latent.trainers import checkpoint as ckpt

TRAINERS = {name: (lambda clf, make=make: make(clf, 0)) for name, make in FACTORIES.items()}


class KilledError(RuntimeError):
    pass


def _run(name, data, directory=None, resume=False, kill_at=None, loader=False, every=1):
    clf = make_classifier()
    clf._optimizer = torch.optim.SGD(clf.model.parameters(), lr=0.05, momentum=0.9)  # state that must be restored
    trainer = TRAINERS[name](clf)
    original, calls = trainer.optimization_step, {"n": 0}

    def step(batch):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KilledError(f"killed at step {kill_at}")
        return original(batch)

    trainer.optimization_step = step
    kwargs = {"nb_epochs": 2, "verbose": False, "checkpoint_dir": directory, "resume": resume,
              "checkpoint_every_steps": every if directory is not None else None}
    if loader:
        x, y = data
        torch.manual_seed(0)
        batches = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=16, shuffle=True)
        trainer.fit_generator(batches, **kwargs)
    else:
        trainer.fit(*data, batch_size=16, **kwargs)
    return _weights(trainer), trainer.history  # the model's, and a discriminator's or denoiser's


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(name, tiny_data, tmp_path):
    data = tiny_data[0][:48], tiny_data[1][:48]
    reference, ref_history = _run(name, data)
    per_epoch = len(data[1]) * TRAINERS[name](make_classifier()).rows_per_sample() // 16
    kill_at = per_epoch + 2  # the second step of the second epoch: the checkpoint holds its first step
    with pytest.raises(KilledError):
        _run(name, data, tmp_path, kill_at=kill_at)
    state = torch.load(tmp_path / ckpt.CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 1 and state["mid_epoch"]["step"] == 1
    resumed, history = _run(name, data, tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))
    assert [h["loss"] for h in history] == [h["loss"] for h in ref_history]


@pytest.mark.parametrize("name", ["plain", "hldr", "layerwise"])
def test_a_loader_run_killed_mid_epoch_resumes_exactly(name, tiny_data, tmp_path):
    reference, _ = _run(name, tiny_data, loader=True)
    with pytest.raises(KilledError):
        _run(name, tiny_data, tmp_path, kill_at=9, loader=True, every=2)  # 6 batches per epoch: epoch 2, step 3
    assert torch.load(tmp_path / ckpt.CHECKPOINT_NAME, weights_only=True)["mid_epoch"]["step"] == 2
    resumed, _ = _run(name, tiny_data, tmp_path, resume=True, loader=True, every=2)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))


def test_checkpoint_every_steps_is_checked_before_any_work(tiny_data, tmp_path):
    clf = make_classifier()
    with pytest.raises(ValueError, match="`checkpoint_every_steps` needs a `checkpoint_dir`"):
        LatentTrainer(clf).fit(*tiny_data, checkpoint_every_steps=2)
    with pytest.raises(ValueError, match="`checkpoint_every_steps`"):
        LatentTrainer(clf).fit(*tiny_data, checkpoint_dir=tmp_path, checkpoint_every_steps=0)
    assert not (tmp_path / ckpt.CHECKPOINT_NAME).exists()


def _mid_checkpoint(tiny_data, directory):
    with pytest.raises(KilledError):
        _run("plain", tiny_data, directory, kill_at=9)  # 6 batches of 16 per epoch: epoch 2, after step 2
    return torch.load(directory / ckpt.CHECKPOINT_NAME, weights_only=True)


def test_a_mid_epoch_resume_with_another_batch_size_is_refused_before_loading(tiny_data, tmp_path):
    _mid_checkpoint(tiny_data, tmp_path)
    clf = make_classifier()
    before = [v.clone() for v in clf.model.state_dict().values()]
    with pytest.raises(ValueError, match="inside an epoch with batch_size=32: it was written with batch_size=16"):
        LatentTrainer(clf, seed=0).fit(*tiny_data, batch_size=32, nb_epochs=2, checkpoint_dir=tmp_path, resume=True,
                                       verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(before, clf.model.state_dict().values(), strict=True))


CRAFTED = {
    "step beyond the count": (lambda m: m.update(step=50), "step 50"),
    "negative step": (lambda m: m.update(step=-3), "step -3"),
    "step not an integer": (lambda m: m.update(step=2.5), "step 2.5"),
    "sums missing": (lambda m: m.pop("sums"), "not a position inside an epoch"),
    "sums not tensors": (lambda m: m.update(sums={"loss": "x"}), "sums are not scalar tensors"),
    "random state garbage": (lambda m: m.update(epoch_rng={"torch": "x"}), "random states are not random states"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_malformed_mid_epoch_entry_is_refused_before_loading(case, tiny_data, tmp_path):
    state = _mid_checkpoint(tiny_data, tmp_path)
    change, message = CRAFTED[case]
    change(state["mid_epoch"])
    state.pop("checksum", None)
    state["checksum"] = ckpt.content_digest(state)
    torch.save(state, tmp_path / ckpt.CHECKPOINT_NAME)
    clf = make_classifier()
    before = [v.clone() for v in clf.model.state_dict().values()]
    with pytest.raises(ValueError, match=message):
        LatentTrainer(clf, seed=0).fit(*tiny_data, batch_size=16, nb_epochs=2, checkpoint_dir=tmp_path, resume=True,
                                       verbose=False, checkpoint_every_steps=1)
    assert all(torch.equal(a, b) for a, b in zip(before, clf.model.state_dict().values(), strict=True))
