"""
On CUDA, the training steps of every trainer at its defaults run without a host synchronisation: steps after the
first ones (whose immediate finite check, one per optimizer and fit, reads the device on purpose) run under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising call (``.item()``, ``.tolist()``,
``nonzero``, a blocking copy). Also: fp16 ``amp`` with a ``GradScaler`` and bf16 train and stay finite.

Skipped without CUDA; ``bash benchmarks/device_check.sh`` runs this module on the GPU machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from helpers import TinyNet, every_trainer

from art_latent import LatentClassifier
from art_latent.trainers import HLDRTrainer, LatentTrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: Steps before the sync-free ones: the first step of each optimizer is checked immediately (AFD has three).
_WARM_STEPS = 2


def _classifier() -> LatentClassifier:
    torch.manual_seed(0)
    model = TinyNet()
    return LatentClassifier(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 3,
                            optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), clip_values=(0.0, 1.0),
                            device_type="gpu")


#: Every trainer at its defaults except the attack (ART's FGSM, which runs on the device's fast path), and HLDR
#: with pairs made every batch.
TRAINERS: dict[str, Callable[[LatentClassifier], LatentTrainer]] = {
    **every_trainer("gpu"),  # type: ignore[dict-item]
    "hldr_online": lambda clf: HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), regenerate="batch", seed=0),
}


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_training_steps_do_not_synchronise(name, tiny_data):
    clf = _classifier()
    trainer = TRAINERS[name](clf)
    original = trainer.optimization_step
    calls = {"n": 0, "checked": 0}
    x, y = tiny_data
    nb_batches = math.ceil(len(y) * trainer.rows_per_sample() / 16)

    def step(batch):
        calls["n"] += 1
        if calls["n"] > _WARM_STEPS:
            torch.cuda.set_sync_debug_mode("error")  # stays on between steps: the loop's own per-step code too
        try:
            return original(batch)
        finally:
            if calls["n"] == nb_batches:  # the epoch end reads the metrics on purpose
                torch.cuda.set_sync_debug_mode("default")
            elif calls["n"] > _WARM_STEPS:
                calls["checked"] += 1

    trainer.optimization_step = step
    try:
        # log_every above the epoch: the deferred finite check is read once, at the epoch end
        trainer.log_every = 1000
        history = trainer.fit(x, y, nb_epochs=1, batch_size=16, verbose=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert calls["checked"] >= 2, calls
    assert np.isfinite(history[-1]["loss"])


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_trains_on_cuda(amp, tiny_data):
    clf = _classifier()
    x, y = tiny_data
    history = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), amp=amp, seed=0).fit(
        x, y, nb_epochs=3, batch_size=16, verbose=False)
    assert all(np.isfinite(record["loss"]) for record in history)
    assert history[-1]["loss"] < history[0]["loss"]


def test_deferred_check_on_cuda_leaves_the_last_good_state(tiny_data):
    from art_latent.trainers.base import TrainingDivergedError

    clf = _classifier()
    trainer = LatentTrainer(clf, seed=0, log_every=4)
    original = trainer.training_step
    snapshots: list[dict[str, torch.Tensor]] = []

    def failing(batch):
        snapshots.append({k: v.clone() for k, v in clf.model.state_dict().items()})
        loss, logits, logs = original(batch)
        return (loss * float("nan") if len(snapshots) == 3 else loss), logits, logs

    trainer.training_step = failing
    x, y = tiny_data
    with pytest.raises(TrainingDivergedError, match="epoch 1, batch 3"):
        trainer.fit(x, y, nb_epochs=1, batch_size=16, verbose=False)
    assert len(snapshots) == 4  # found at the read after batch 4
    for key, value in clf.model.state_dict().items():
        assert torch.equal(value, snapshots[2][key]), key


def test_one_process_nccl_data_parallel_with_sync_batchnorm_matches_plain_training(tiny_data, tmp_path):
    import torch.distributed as dist

    def train(distributed: bool) -> dict[str, torch.Tensor]:
        clf = _classifier()
        HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), seed=0, distributed=distributed,
                    sync_batchnorm=distributed).fit(*tiny_data, nb_epochs=2, batch_size=16, verbose=False)
        return {k: v.detach().clone() for k, v in clf.model.state_dict().items()}

    reference = train(False)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        result = train(True)
    finally:
        dist.destroy_process_group()
    for name, value in reference.items():
        torch.testing.assert_close(result[name], value, rtol=1e-4, atol=1e-5, msg=name)
