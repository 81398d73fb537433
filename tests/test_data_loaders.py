"""
Training from a torch ``DataLoader`` (``fit_generator(loader)`` or ``fit(loader)``), from ART's
``PyTorchDataGenerator`` through its loader, and from any re-iterable of batches: every trainer trains, the loop is the
one ``fit(x, y)`` runs (same weights for the same batches), a loader without a length works, and bad batches are
refused naming the batch and the argument.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.data_generators import PyTorchDataGenerator
from helpers import every_trainer, make_classifier
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from art_latent import LatentTrainer


def _loader(data, batch_size: int = 16, shuffle: bool = False, **kwargs) -> DataLoader:
    x, y = data
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=batch_size, shuffle=shuffle,
                      **kwargs)


def _weights(clf) -> list[torch.Tensor]:
    return [v.detach().clone() for v in clf.model.state_dict().values()]


@pytest.mark.parametrize("name", sorted(every_trainer()))
def test_every_trainer_trains_from_a_dataloader(name, tiny_data):
    clf = make_classifier()
    if name == "deep_defense":  # fine-tunes a trained model: under a loader it cannot estimate BatchNorm first
        LatentTrainer(clf, seed=0).fit(*tiny_data, nb_epochs=3, batch_size=16, verbose=False)
    trainer = every_trainer()[name](clf)
    history = trainer.fit_generator(_loader(tiny_data, shuffle=True), nb_epochs=1, verbose=False)
    assert np.isfinite(history[-1]["loss"])
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in clf.model.modules()) == 0


def test_a_loader_trains_exactly_as_fit_on_the_same_batches(tiny_data):
    results = []
    for feed in ("fit", "loader", "fit_loader", "art_generator", "list"):
        clf = make_classifier()
        trainer = LatentTrainer(clf, seed=0)
        if feed == "fit":
            trainer.fit(*tiny_data, batch_size=16, shuffle=False, nb_epochs=2, verbose=False)
        elif feed == "loader":
            trainer.fit_generator(_loader(tiny_data), nb_epochs=2, verbose=False)
        elif feed == "fit_loader":
            trainer.fit(_loader(tiny_data), nb_epochs=2, verbose=False)
        elif feed == "art_generator":
            trainer.fit_generator(PyTorchDataGenerator(_loader(tiny_data), size=96, batch_size=16), nb_epochs=2,
                                  verbose=False)
        else:  # numpy batches in a list: any re-iterable
            x, y = tiny_data
            trainer.fit_generator([(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)], nb_epochs=2, verbose=False)
        results.append(_weights(clf))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


class _Stream(IterableDataset):
    """Batches with no length (a streamed data set)."""

    def __init__(self, data) -> None:
        self.x, self.y = data

    def __iter__(self):
        for i in range(0, len(self.y), 32):
            yield torch.from_numpy(self.x[i:i + 32]), torch.from_numpy(self.y[i:i + 32])


def test_a_loader_without_a_length_trains(tiny_data):
    clf = make_classifier()
    loader = DataLoader(_Stream(tiny_data), batch_size=None)
    with pytest.raises(TypeError):
        len(loader)
    history = LatentTrainer(clf, seed=0).fit_generator(loader, nb_epochs=2, verbose=False)
    assert len(history) == 2 and np.isfinite(history[-1]["loss"])


def _batches(data, change):
    x, y = data
    batches = [[x[i:i + 16].copy(), y[i:i + 16].copy()] for i in range(0, 96, 16)]
    change(batches)
    return batches


BAD = {
    "shape": (lambda b: b[0].__setitem__(0, b[0][0][:, :, :4]), r"batch 0 of `generator`: `x` must have shape"),
    "dtype": (lambda b: b[0].__setitem__(0, (b[0][0] * 255).astype(np.uint8)), r"batch 0 of `generator`: .*floating"),
    "nan": (lambda b: b[0][0].__setitem__((0, 0, 0, 0), np.nan), r"batch 0 of `generator`: `x` contains NaN"),
    "label range": (lambda b: b[0][1].__setitem__(0, 7), r"batch 0 of `generator`: `y`"),
    "outside clip": (lambda b: b[0][0].__setitem__((0, 0, 0, 0), 3.0), r"batch 0 of `generator`: .*clip_values"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_first_batch_is_refused_naming_it_before_any_step(case, tiny_data):
    change, message = BAD[case]
    clf = make_classifier()
    before = _weights(clf)
    with pytest.raises(ValueError, match=message):
        LatentTrainer(clf).fit_generator(_batches(tiny_data, change), nb_epochs=1, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(clf), strict=True))


def test_a_bad_later_batch_names_its_index(tiny_data):
    def change(batches):
        batches[3][0] = batches[3][0][:, :, :4]

    with pytest.raises(ValueError, match=r"batch 3 of `generator`"):
        LatentTrainer(make_classifier()).fit_generator(_batches(tiny_data, change), nb_epochs=1, verbose=False)


def test_what_is_not_a_reiterable_loader_is_refused(tiny_data):
    trainer = LatentTrainer(make_classifier())
    one_shot = (batch for batch in _batches(tiny_data, lambda b: None))
    with pytest.raises(TypeError, match="one-shot iterator"):
        trainer.fit_generator(one_shot, nb_epochs=1)
    with pytest.raises(TypeError, match="`generator` must be an ART DataGenerator, a torch DataLoader"):
        trainer.fit_generator(tiny_data[0], nb_epochs=1)
    with pytest.raises(TypeError, match=r"Batch 0 of `generator` must be an \(x, y\) pair"):
        trainer.fit_generator([tiny_data[0][:16]], nb_epochs=1, verbose=False)
    with pytest.raises(ValueError, match="`y` is missing"):
        trainer.fit(tiny_data[0])
    with pytest.raises(ValueError, match="the loader decides the batches"):
        trainer.fit(_loader(tiny_data), batch_size=32)


def test_a_last_batch_of_one_is_refused_before_training(tiny_data):
    x, y = tiny_data
    loader = _loader((x[:33], y[:33]), batch_size=16)
    with pytest.raises(ValueError, match="last batch of `generator` would hold one sample"):
        LatentTrainer(make_classifier()).fit_generator(loader, nb_epochs=1)
    LatentTrainer(make_classifier()).fit_generator(_loader((x[:33], y[:33]), batch_size=16, drop_last=True),
                                                   nb_epochs=1, verbose=False)


def test_a_loader_run_resumes_to_the_uninterrupted_weights(tiny_data, tmp_path):
    def run(epochs: int, resume: bool) -> list[torch.Tensor]:
        clf = make_classifier()
        LatentTrainer(clf, seed=0).fit_generator(_loader(tiny_data, shuffle=True), nb_epochs=epochs, verbose=False,
                                                 checkpoint_dir=tmp_path / ("a" if resume else "b"), resume=resume)
        return _weights(clf)

    uninterrupted = run(3, resume=False)
    run(1, resume=True)
    resumed = run(3, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, resumed, strict=True))
