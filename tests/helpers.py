"""Tiny models and classifiers for the tests."""

from __future__ import annotations

import importlib.util
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from art_latent import LatentClassifier


class Residual(nn.Module):
    """A residual block whose final activation is shared with the conv branch (a reused module)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class TinyNet(nn.Module):
    """Nested Sequentials, a residual block, a functional activation: 1x8x8 inputs, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(unit=nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3, padding=1), bn=nn.BatchNorm2d(4),
                                                       act=nn.ELU())))
        )
        self.res = Residual(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.res(self.stem(x)))
        x = torch.relu(self.fc(x.flatten(1)))  # functional activation: hooked through its producer, fc
        return self.head(x)


def make_classifier(model: nn.Module | None = None, lr: float = 0.05, **kwargs) -> LatentClassifier:
    torch.manual_seed(0)
    model = TinyNet() if model is None else model
    kwargs.setdefault("clip_values", (0.0, 1.0))
    return LatentClassifier(
        model, nn.CrossEntropyLoss(), (1, 8, 8), 3, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        device_type="cpu", **kwargs
    )


class NoBatchNormNet(nn.Module):
    """Conv-ELU-pool-linear on 1x8x8 inputs, no BatchNorm: per-sample losses are independent of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ELU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(64, 8)
        self.fc_act = nn.ELU()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv(x)))
        return self.head(self.fc_act(self.fc(x.flatten(1))))


def hldr_weights_after_training(x, y, batch_size: int, checkpoint: str | None = None, distributed: bool = False,
                                loader=None, regenerate: str = "never"):
    """
    Train NoBatchNormNet with HLDR (sample normalization, FGSM pairs made as `regenerate` says) for two epochs, on
    arrays or on `loader`; return weights and history.
    """
    from art.attacks.evasion import FastGradientMethod

    from art_latent import HLDRTrainer

    torch.manual_seed(0)
    clf = make_classifier(NoBatchNormNet(), lr=0.1)
    trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), normalization="sample", seed=0,
                          distributed=distributed, validation_attack=None, regenerate=regenerate)
    if loader is not None:
        history = trainer.fit_generator(loader, nb_epochs=2, checkpoint_dir=checkpoint, verbose=False)
    else:
        history = trainer.fit(x, y, nb_epochs=2, batch_size=batch_size, checkpoint_dir=checkpoint, verbose=False)
    return {k: v.detach().clone() for k, v in clf.model.state_dict().items()}, history


def sharded_loader(x, y, batch_size: int, rank: int | None = None, world_size: int = 1):
    """A DataLoader of (x, y) in order; with `rank`, this process's DistributedSampler shard (no shuffling)."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    sampler = None if rank is None else DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                               shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def ddp_worker(rank: int, world_size: int, port: int, x, y, out_dir: str) -> None:
    """One process of a gloo data-parallel run; writes its final weights and history to `out_dir`."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        loader = sharded_loader(x, y, 8, rank, world_size) if os.environ.get("ART_LATENT_TEST_LOADER") else None
        weights, history = hldr_weights_after_training(
            x, y, batch_size=8, checkpoint=f"{out_dir}/ckpt", distributed=True, loader=loader,
            regenerate=os.environ.get("ART_LATENT_TEST_REGENERATE", "never"))
        torch.save({"weights": weights, "history": history}, f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # neither process closes its connections while the other still uses them (gloo aborts)
    finally:
        dist.destroy_process_group()
    _leave_spawned_process()


def _leave_spawned_process() -> None:
    """
    End a spawned gloo worker that has written its results without interpreter finalization: on a loaded machine a
    worker occasionally aborted there ("terminate called without an active exception", SIGABRT) after both processes
    had written their files, failing a run whose results were complete.
    """
    import multiprocessing
    import os

    assert multiprocessing.parent_process() is not None, "only a spawned worker may leave this way"
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def killed_at(trainer, kill_at: int | None):
    """`trainer`, interrupted (KeyboardInterrupt) at its `kill_at`-th optimizer step (``None``: never)."""
    original, calls = trainer.optimization_step, {"n": 0}

    def step(batch):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return original(batch)

    trainer.optimization_step = step
    return trainer


def ddp_resume_worker(rank: int, world_size: int, port: int, x, y, out_dir: str, kill_at: int | None,
                      resume: bool) -> None:
    """
    One process of a gloo data-parallel HLDR run with a checkpoint every step, interrupted at its `kill_at`-th step
    (``None``: not), or resumed; writes its final weights and history to `out_dir`.
    """
    import os

    import torch.distributed as dist
    from art.attacks.evasion import FastGradientMethod

    from art_latent import HLDRTrainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        clf = make_classifier(NoBatchNormNet(), lr=0.1)
        trainer = HLDRTrainer(clf, FastGradientMethod(clf, eps=0.1), budgets=(0.0, 0.1), noise_sigma=0.05,
                              normalization="sample", seed=0, distributed=True, validation_attack=None)
        killed_at(trainer, kill_at)
        try:
            history = trainer.fit(x, y, nb_epochs=2, batch_size=8, checkpoint_dir=f"{out_dir}/ckpt", resume=resume,
                                  checkpoint_every_steps=1, verbose=False)
        except KeyboardInterrupt:  # both processes stop at the same step, after the same checkpoint barrier
            pass
        else:
            weights = {k: v.detach().clone() for k, v in clf.model.state_dict().items()}
            torch.save({"weights": weights, "history": history}, f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # neither process closes its connections while the other still uses them (gloo aborts)
    finally:
        dist.destroy_process_group()
    _leave_spawned_process()


def every_trainer(device_type: str = "cpu") -> dict[str, Callable[[LatentClassifier], object]]:
    """
    Every registered trainer (:mod:`art_latent.registries.trainers`) from its test factory: defaults except the attack
    (ART's FGSM, to keep test matrices fast), by short name. The device comes from the classifier (`device_type` is
    kept for the callers).
    """
    from art_latent.registries.trainers import trainer_entries

    return {entry.key: (lambda clf, factory=entry.test_factory: factory(clf, 0))
            for entry in trainer_entries().values() if entry.test_factory is not None}


def import_script(path: Path, name: str | None = None) -> ModuleType:
    """A script of ``scripts/`` or ``benchmarks/`` imported as a module (registered in ``sys.modules``, where
    dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
