"""
Per-sample state (:mod:`art_latent.trainers.sample_state`): the store's row layout, loaders that yield sample
indices (rows made once per sample and found again), memory-mapped storage, exact mid-epoch resume with rows remade
every epoch, and bad loaders.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from helpers import killed_at, make_classifier
from test_reliability import FACTORIES as EVERY_TRAINER
from test_reliability import _weights
from torch.utils.data import DataLoader, TensorDataset

from art_latent import GaussianNoiseTrainer, HLDRTrainer
from art_latent.data import IndexedDataset
from art_latent.defences import DenoiserTrainer, FeatureGuidedDenoiser
from art_latent.trainers import checkpoint as ckpt
from art_latent.trainers.sample_state import SampleState, SampleStore


def _toy_make(x, y):
    # two rows per sample, grouped by copy: (x, 10 x) with a tag saying which copy
    return {"x": torch.cat([x, 10 * x]), "y": torch.cat([y, y]),
            "copy_host": torch.cat([torch.zeros(len(x)), torch.ones(len(x))])}


def test_the_store_finds_each_samples_rows_by_index_in_the_layout_make_returns():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10) % 3
    store = SampleStore(SampleState(_toy_make, "never", 2), torch.device("cpu"))
    order = torch.tensor([7, 2, 9, 0, 5, 1, 8, 3, 6, 4])
    store.fill(0, 10, [(x[i], y[i], i) for i in order.split(3)])  # batches in shuffled order, the last one short
    index = torch.tensor([4, 0, 9])
    taken = store.take(index, {})
    expected = _toy_make(x[index], y[index])
    assert set(taken) == {"x", "y", "copy_host"}
    for key, value in expected.items():
        torch.testing.assert_close(taken[key], value)
    with pytest.raises(ValueError, match="outside the 10 samples"):
        store.take(torch.tensor([10]), {})
    # the checkpointed rows give the same lookups
    restored = SampleStore(SampleState(_toy_make, "never", 2), torch.device("cpu"))
    restored.load_state_dict(store.state_dict())
    for key, value in expected.items():
        torch.testing.assert_close(restored.take(index, {})[key], value)


def test_a_declaration_is_checked():
    with pytest.raises(ValueError, match="refresh"):
        SampleState(_toy_make, "sometimes")
    with pytest.raises(ValueError, match="rows"):
        SampleState(_toy_make, "never", 0)
    store = SampleStore(SampleState(lambda x, y: {"x_pair": torch.cat([x, x])}, "never", 2, "pairs"),
                        torch.device("cpu"))
    with pytest.raises(ValueError, match="must return their labels `y`"):
        store.make(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    wrong = SampleState(_toy_make, "never", 2, "toy rows", repeats=("x",))  # its x is (x, 10 x), not (x, x)
    store = SampleStore(wrong, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"declares \['x'\] as the batch's own tensors repeated"):
        store.fill(0, 3, [(torch.ones(3, 1), torch.zeros(3, dtype=torch.long), torch.arange(3))])
    with pytest.raises(ValueError, match="repeats"):
        SampleState(_toy_make, "never", 2, repeats=("x_pair",))
    store = SampleStore(SampleState(lambda x, y: {"x_noisy": x[:1]}, "never", 1, "noise"), torch.device("cpu"))
    with pytest.raises(ValueError, match="must return 3 rows per tensor"):
        store.make(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


class _Counting:
    """Counts the samples a trainer's `make` was called on."""

    def __init__(self, trainer, name):
        self.samples = 0
        original = getattr(trainer, name)

        def counted(x, y, *args):
            self.samples += len(x)
            return original(x, y, *args)

        setattr(trainer, name, counted)


def _hldr(clf, **kwargs):
    return HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), noise_sigma=0.05, seed=0, **kwargs)


def _indexed_loader(data, batch_size=16, shuffle=True):
    x, y = data
    torch.manual_seed(0)
    dataset = IndexedDataset(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def test_hldr_from_an_indexed_loader_makes_each_pair_once_and_trains_on_every_pair(tiny_data):
    x, y = tiny_data[0][:48], tiny_data[1][:48]
    clf = make_classifier()
    trainer = _hldr(clf)
    counter = _Counting(trainer, "make_pairs")
    seen = []
    original = trainer.training_step

    def step(batch):
        seen.append((len(batch["x"]), batch["eps_host"].clone()))
        return original(batch)

    trainer.training_step = step
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "made per batch" warning
        trainer.fit_generator(_indexed_loader((x, y)), nb_epochs=2, verbose=False)
    assert counter.samples == 48  # made once, before the first epoch, from the starting model
    assert len(seen) == 2 * 3 and all(n == 16 * 3 for n, _ in seen)  # a batch of 16 samples: their 3 pairs each
    eps = torch.cat([e for _, e in seen[:3]])
    assert sorted({round(v, 6) for v in eps.tolist()}) == [-1.0, 0.0, 0.1] and (eps > 0).sum() == 48


def test_the_pairs_of_an_indexed_loader_are_those_of_fit_for_each_sample(tiny_data):
    x, y = tiny_data[0][:32], tiny_data[1][:32]
    clf = make_classifier()
    trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.1,), seed=0)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    expected = trainer.make_pairs(x_t, y_t)
    store = SampleStore(trainer.sample_state(), torch.device("cpu"))
    loader = _indexed_loader((x, y), batch_size=5)
    store.fill(0, 32, ((xb, yb, ib) for xb, yb, ib in loader))
    index = torch.tensor([3, 17, 31])
    taken = store.take(index, {"x": x_t[index], "y": y_t[index]})
    torch.testing.assert_close(taken["x_pair"], expected["x_pair"][index])  # FGSM in eval mode: per sample
    torch.testing.assert_close(taken["x"], x_t[index])


def test_a_loader_without_indices_makes_the_pairs_per_batch_and_says_so(tiny_data):
    x, y = tiny_data[0][:32], tiny_data[1][:32]
    clf = make_classifier()
    trainer = _hldr(clf)
    counter = _Counting(trainer, "make_pairs")
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=16)
    with pytest.warns(UserWarning, match="made per batch: the loader yields no sample indices.*IndexedDataset") as seen:
        trainer.fit_generator(loader, nb_epochs=2, verbose=False)
    assert counter.samples == 2 * 32  # every batch of both epochs (the probe reads one batch, makes nothing)
    assert seen[0].filename == __file__  # the warning points at the user's call, not into the library
    with pytest.warns(UserWarning, match="made per batch") as seen:  # two library frames deeper: fit -> fit_generator
        _hldr(make_classifier()).fit(loader, nb_epochs=1, verbose=False)
    assert seen[0].filename == __file__


def test_fixed_noise_from_an_indexed_loader_is_the_same_for_a_sample_in_every_epoch(tiny_data):
    x, y = tiny_data[0][:32], tiny_data[1][:32]
    trainer = GaussianNoiseTrainer(make_classifier(), fixed_noise=True, seed=0)
    noisy: dict[int, list[torch.Tensor]] = {}
    original = trainer.training_step

    def step(batch):
        # the batch's x and x_noisy rows belong to the same samples: find them by their clean image
        for clean, row in zip(batch["x"], batch["x_noisy"], strict=True):
            key = int((clean * 1e4).sum().round())
            noisy.setdefault(key, []).append(row.clone())
        return original(batch)

    trainer.training_step = step
    trainer.fit_generator(_indexed_loader((x, y)), nb_epochs=3, verbose=False)
    assert len(noisy) == 32 and all(len(rows) == 3 for rows in noisy.values())
    assert all(torch.equal(rows[0], rows[1]) and torch.equal(rows[0], rows[2]) for rows in noisy.values())


def test_memory_mapped_storage_trains_as_host_memory_and_leaves_no_file(tiny_data, tmp_path):
    data = tiny_data[0][:48], tiny_data[1][:48]
    weights = []
    for directory in (None, tmp_path / "state"):
        clf = make_classifier()
        trainer = _hldr(clf, sample_state_dir=directory)
        files = []
        original = trainer.training_step

        def step(batch, directory=directory, files=files, original=original):
            if directory is not None:
                files.append(sorted(p.name for p in directory.iterdir()))
            return original(batch)

        trainer.training_step = step
        trainer.fit_generator(_indexed_loader(data), nb_epochs=2, verbose=False)
        weights.append(_weights(trainer))
        if directory is not None:
            # x_pair and eps: not the batch's own x and y repeated per pair, nor eps_host (a copy of eps)
            assert files and all(len(names) == 2 and all(n.startswith("sample_state-") for n in names)
                                 for names in files)
            assert list(directory.iterdir()) == []
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_a_memory_mapped_store_resumes_mid_epoch_exactly_with_its_rows_back_in_files(tiny_data, tmp_path):
    data = tiny_data[0][:48], tiny_data[1][:48]
    state_dir = tmp_path / "state"
    files: list[list[str]] = []

    def factory(clf):
        trainer = _hldr(clf, sample_state_dir=state_dir)
        original = trainer.training_step

        def step(batch):
            files.append(sorted(p.name for p in state_dir.iterdir()))
            return original(batch)

        trainer.training_step = step
        return trainer

    reference, _ = _run(factory, data, loader=True, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        _run(factory, data, tmp_path / "ckpt", kill_at=4, loader=True, epochs=2)
    files.clear()
    resumed, _ = _run(factory, data, tmp_path / "ckpt", resume=True, loader=True, epochs=2)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))
    # the checkpoint's rows went back into files, not into process memory
    assert files and all(len(names) == 2 for names in files)
    assert list(state_dir.iterdir()) == []


def test_bad_sample_indices_fail_at_the_first_batch_naming_it(tiny_data):
    x, y = torch.from_numpy(tiny_data[0][:32]), torch.from_numpy(tiny_data[1][:32])
    trainer = _hldr(make_classifier())
    wrong_shape = [(x[:16], y[:16], torch.arange(15)), (x[16:], y[16:], torch.arange(16, 32))]
    with pytest.raises(ValueError, match=r"batch 0 of `generator`: its sample indices must have shape \(16,\)"):
        trainer.fit_generator(wrong_shape, nb_epochs=1, verbose=False)

    class Shifted(torch.utils.data.Dataset):  # indices that are not the data set's
        def __len__(self):
            return 32

        def __getitem__(self, i):
            return x[i], y[i], i + 100

    with pytest.raises(ValueError, match="sample indices from 100 to 115, outside its data set's 32 samples"):
        trainer.fit_generator(DataLoader(Shifted(), batch_size=16), nb_epochs=1, verbose=False)


def _run(factory, data, directory=None, resume=False, kill_at=None, loader=False, every=1, epochs=2):
    clf = make_classifier()
    clf._optimizer = torch.optim.SGD(clf.model.parameters(), lr=0.05, momentum=0.9)
    trainer = killed_at(factory(clf), kill_at)
    kwargs = {"nb_epochs": epochs, "verbose": False, "checkpoint_dir": directory, "resume": resume,
              "checkpoint_every_steps": every if directory is not None else None}
    if loader:
        trainer.fit_generator(_indexed_loader(data), **kwargs)
    else:
        trainer.fit(*data, batch_size=16, **kwargs)
    return _weights(trainer), trainer.history


def _denoiser(clf):
    torch.manual_seed(1)
    denoiser = FeatureGuidedDenoiser(in_channels=1, width=4, depth=1, clip_values=(0.0, 1.0), device_type="cpu")
    return DenoiserTrainer(clf, denoiser, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), regenerate="epoch",
                           seed=0)


FACTORIES = {
    "hldr-epoch": lambda clf: _hldr(clf, regenerate="epoch"),
    "hldr-never": _hldr,
    "denoiser-epoch": _denoiser,
    "agnt-fixed": lambda clf: GaussianNoiseTrainer(clf, fixed_noise=True, seed=0),
}


@pytest.mark.parametrize("loader", [False, True], ids=["arrays", "indexed-loader"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_run_killed_mid_epoch_resumes_exactly_with_its_per_sample_state(name, loader, tiny_data, tmp_path):
    data = tiny_data[0][:48], tiny_data[1][:48]
    factory = FACTORIES[name]
    reference, ref_history = _run(factory, data, loader=loader, epochs=3)
    per_epoch = 3 if loader else len(data[1]) * factory(make_classifier()).rows_per_sample() // 16
    with pytest.raises(KeyboardInterrupt):
        _run(factory, data, tmp_path, kill_at=per_epoch + 3, loader=loader, epochs=3)  # epoch 2, after 2 steps
    state = torch.load(tmp_path / ckpt.CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 1 and state["mid_epoch"]["step"] == 2 and state["write_once"] is not None
    resumed, history = _run(factory, data, tmp_path, resume=True, loader=loader, epochs=3)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))
    assert [h["loss"] for h in history] == [h["loss"] for h in ref_history]


@pytest.mark.parametrize("name", sorted(EVERY_TRAINER))
def test_fit_from_host_memory_trains_as_fit_on_the_device(name, tiny_data):
    data = tiny_data[0][:48], tiny_data[1][:48]
    weights, histories = [], []
    for in_memory in (True, False):
        clf = make_classifier()
        clf._optimizer = torch.optim.SGD(clf.model.parameters(), lr=0.05, momentum=0.9)
        trainer = EVERY_TRAINER[name](clf, 0)
        histories.append([h["loss"] for h in trainer.fit(*data, batch_size=16, nb_epochs=2, verbose=False,
                                                          in_memory=in_memory)])
        weights.append(_weights(trainer))
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
    assert histories[0] == histories[1]


def test_fit_from_host_memory_resumes_mid_epoch_exactly_with_pairs_remade_every_epoch(tiny_data, tmp_path):
    data = tiny_data[0][:48], tiny_data[1][:48]

    def run(directory=None, resume=False, kill_at=None):
        clf = make_classifier()
        trainer = killed_at(_hldr(clf, regenerate="epoch"), kill_at)
        trainer.fit(*data, batch_size=16, nb_epochs=3, verbose=False, in_memory=False, checkpoint_dir=directory,
                    resume=resume, checkpoint_every_steps=None if directory is None else 2)
        return _weights(trainer)

    reference = run()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, kill_at=9 + 3)  # 9 batches of 16 pairs per epoch: epoch 2, after its second step
    resumed = run(tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))


def test_in_memory_is_checked(tiny_data):
    with pytest.raises(ValueError, match="`in_memory` must be True, False or None"):
        _hldr(make_classifier()).fit(*tiny_data, in_memory="yes")


@pytest.mark.parametrize("first", [True, False], ids=["device-then-host", "host-then-device"])
def test_a_checkpoint_resumes_with_the_other_in_memory_choice(first, tiny_data, tmp_path):
    data = tiny_data[0][:48], tiny_data[1][:48]

    def run(in_memory, directory=None, resume=False, kill_at=None):
        trainer = killed_at(_hldr(make_classifier()), kill_at)
        trainer.fit(*data, batch_size=16, nb_epochs=2, verbose=False, in_memory=in_memory, checkpoint_dir=directory,
                    resume=resume, checkpoint_every_steps=None if directory is None else 2)
        return _weights(trainer)

    reference = run(first)
    with pytest.raises(KeyboardInterrupt):
        run(first, tmp_path, kill_at=9 + 3)
    resumed = run(not first, tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))


def test_state_files_are_written_when_the_rows_change_and_pruned_only_then(tiny_data, tmp_path, monkeypatch):
    # Pairs remade every epoch, a checkpoint after every step: the epoch's rows are written once per epoch (not per
    # step), the directory is searched for stale state files only when the file a checkpoint refers to changes, and
    # what is left is the file checkpoint.pt refers to.
    data = tiny_data[0][:48], tiny_data[1][:48]
    saved, pruned = [], []
    save_blob, remove = ckpt.save_blob, ckpt.remove_unreferenced_blobs
    monkeypatch.setattr(ckpt, "save_blob", lambda *a: saved.append(1) or save_blob(*a))
    monkeypatch.setattr(ckpt, "remove_unreferenced_blobs", lambda d: pruned.append(1) or remove(d))
    _run(lambda clf: _hldr(clf, regenerate="epoch"), data, tmp_path, epochs=3)
    steps_per_epoch = len(data[1]) * 2 // 16  # two pairs per sample
    assert len(saved) == 3  # one file per epoch's rows, not one per step (the last step of an epoch writes none)
    # once at the start of fit, then when the reference changes: to the new epoch's file, and to none at epoch end
    assert len(pruned) <= 1 + 2 * 3 < 3 * steps_per_epoch
    state = torch.load(tmp_path / ckpt.CHECKPOINT_NAME, weights_only=True)
    assert state["write_once"] is None  # an epoch-end checkpoint: the next epoch remakes its rows
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.CHECKPOINT_NAME]


def test_the_generation_of_a_store_changes_whenever_its_rows_do():
    spec = SampleState(lambda x, y: {"noise": torch.randn_like(x)}, "epoch")
    store = SampleStore(spec, torch.device("cpu"))
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    seen = [store.generation]
    store.build(0, x, y)
    seen.append(store.generation)
    store.build(1, x, y)  # new tensors, which may sit at the freed tensors' addresses
    seen.append(store.generation)
    store.load_state_dict(store.state_dict())
    seen.append(store.generation)
    assert len(set(seen)) == len(seen)
