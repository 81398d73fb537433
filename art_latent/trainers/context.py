"""
The types the training loop shares with methods and its own modules: the batch, the callback signature, the
divergence error, :class:`LoopContext` (what a method's hooks may read of the loop) and :class:`RunOptions` (what one
``fit`` call asks of the loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from art_latent.trainers.checkpoint import CHECKPOINT_NAME
from art_latent.trainers.distributed import DistributedContext

if TYPE_CHECKING:
    from art_latent.trainers.base import LatentTrainer

Batch = dict[str, torch.Tensor]
#: The key of :meth:`~art_latent.trainers.base.LatentTrainer.state_dict` for per-sample tensors written once per
#: run (see there).
WRITE_ONCE = "write_once"
Callback = Callable[["LatentTrainer", int, dict[str, float]], Any]


class TrainingDivergedError(FloatingPointError):
    """
    A loss term or a gradient became NaN/inf. ``fit`` raises it before the optimizer step, so the model and the
    optimizers still hold the last good state; the message names the epoch, the batch and the term.
    """

    def __init__(self, message: str, terms: Sequence[str] = (), epoch: int | None = None,
                 batch: int | None = None, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.terms = list(terms)
        self.epoch = epoch
        self.batch = batch
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class RunOptions:
    """
    What a ``fit`` or ``fit_generator`` call asks of the loop besides its data, once checked: handed from the input
    paths (:mod:`~art_latent.trainers.fit_inputs`) to the epoch loop (:mod:`~art_latent.trainers.epoch_loop`).
    """

    nb_epochs: int
    scheduler: Any
    callbacks: Sequence[Callback] | None
    verbose: bool
    #: The checkpoint directory and the epochs between checkpoints, or ``None``.
    checkpoint: tuple[Path, int] | None
    resume: bool
    #: Optimizer steps between checkpoints inside an epoch, or ``None`` (at epoch ends only).
    every_steps: int | None

    @property
    def resumes(self) -> bool:
        """Whether the run resumes from a checkpoint that exists."""
        return self.resume and self.checkpoint is not None and (self.checkpoint[0] / CHECKPOINT_NAME).exists()


@dataclass(frozen=True)
class LoopContext:
    """
    What the training loop is doing, for a method's hooks (:attr:`~art_latent.trainers.base.LatentTrainer.loop`):
    read it instead of the loop's private attributes.
    """

    #: The device the batches are on.
    device: torch.device
    #: The fp16 ``GradScaler`` of this ``fit`` (``amp="fp16"``), else ``None``: gradients seen in tensor hooks are
    #: scaled by it.
    scaler: torch.amp.GradScaler | None
    #: The data-parallel context (``broadcast_module``, ``sum_``, ``world_size``, ...), or ``None``.
    distributed: DistributedContext | None
    #: The 0-based epoch and batch of the step in progress.
    epoch: int
    batch: int
    #: Optimizer steps completed in the run (resumes included).
    global_step: int
