"""
The attributes and methods that the parts of :class:`~art_latent.trainers.base.LatentTrainer` (its inputs, its epoch
loop, its checkpoints) share, declared once for type checkers. Nothing here exists at run time: the trainer's
``__init__`` sets the attributes, and :mod:`art_latent.trainers.base` and its mixins define the methods.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from art.data_generators import DataGenerator

from art_latent.estimator import LatentClassifier
from art_latent.perturbations import PerturbationSource
from art_latent.trainers.context import Batch, RunOptions, TrainingDivergedError
from art_latent.trainers.distributed import DistributedContext
from art_latent.trainers.finite_guard import DeferredFiniteGuard
from art_latent.trainers.sample_state import SampleState, SampleStore


class TrainerParts:
    """The declarations the mixins of :class:`~art_latent.trainers.base.LatentTrainer` type-check against."""

    # settings (see LatentTrainer.__init__)
    _classifier: LatentClassifier
    seed: int | None
    log_every: int
    _amp_dtype: torch.dtype | None
    distributed: bool | str
    sync_batchnorm: bool
    check_finite: bool | str
    sample_state_dir: str | None
    divergence_error: type[TrainingDivergedError]
    layers_argument: str
    validation_attack: PerturbationSource | None
    # the state of a fit
    history: list[dict[str, float]]
    _stop: bool
    global_step: int
    carried: dict[str, torch.Tensor]
    _samples: SampleStore | None
    _build_samples: Callable[[int], None] | None
    _samples_by_index: bool
    _guard: DeferredFiniteGuard | None
    _position: tuple[int, int]
    _steps_taken: int
    _saved_buffers: list[torch.Tensor] | None
    _scaler: torch.amp.GradScaler | None
    _every_steps: int | None
    _resume_mid: dict[str, Any] | None
    _callbacks: list[Any]
    _step_loggers: list[Any]
    _dist: DistributedContext | None
    _shuffle_generator: torch.Generator
    _write_once: tuple[Any, dict[str, Any]] | None
    _referenced_blob: Any
    _fingerprint: dict[str, Any] | None
    _global_batch_size: int
    _local_batch_size: int

    if TYPE_CHECKING:  # defined by LatentTrainer and its mixins; declared here so that each part type-checks alone

        @property
        def device(self) -> torch.device: ...

        @property
        def regularized_layers(self) -> list[str]: ...

        def sample_state(self) -> SampleState | None: ...

        def prepare_generator(self, generator: DataGenerator, resuming: bool) -> None: ...

        def prepare_data(self, x: torch.Tensor, y: torch.Tensor) -> Batch: ...

        def on_epoch_start(self, epoch: int, data: Batch) -> Batch: ...

        def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None: ...

        def optimization_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]: ...

        def train_mode(self) -> None: ...

        def training_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]: ...

        def _preprocess(self, x: torch.Tensor) -> torch.Tensor: ...

        def _buffers(self) -> list[torch.Tensor]: ...

        def _read_guard(self) -> None: ...

        def fit_context(self) -> contextlib.AbstractContextManager: ...

        def state_dict(self) -> dict[str, Any]: ...

        def resume_settings(self) -> dict[str, Any]: ...

        def load_state_dict(self, state: dict[str, Any]) -> None: ...

        def divergence_advice(self, terms: Sequence[str]) -> str: ...

        def checkpointed_networks(self) -> dict[str, torch.nn.Module]: ...

        def check_model(self, x: np.ndarray) -> None: ...

        def trained_modules(self) -> list[torch.nn.Module]: ...

        def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]: ...

        def _loop(self, epoch_batches: Callable[[int], tuple[int | None, Iterator[Batch]]],
                  val: tuple[torch.Tensor, torch.Tensor] | None, run: RunOptions) -> list[dict[str, float]]: ...

        def _run_settings(self, scheduler: Any) -> dict[str, Any]: ...

        @staticmethod
        def _check_checkpoint_args(checkpoint_dir: str | os.PathLike | None, checkpoint_every: int,
                                   resume: bool) -> tuple[Path, int] | None: ...

        def _write(self, path: Path, epoch: int, scheduler: Any, batch: int | None = None,
                   mid: dict[str, Any] | None = None) -> None: ...

        def _load_checkpoint(self, path: Path, scheduler: Any) -> tuple[int, bool]: ...
