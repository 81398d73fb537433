"""
What :meth:`~art_latent.trainers.base.LatentTrainer.fit` and ``fit_generator`` check and prepare before the loop:
the arguments, the model against a batch, arrays on the device or in host memory, and loaders.
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from art_latent.trainers import checkpoint as ckpt
from art_latent.trainers.batches import LoaderBatches
from art_latent.trainers.context import Batch, Callback
from art_latent.trainers.parts import TrainerParts
from art_latent.validation import check_data, check_int

logger = logging.getLogger(__name__)


class FitInputsMixin(TrainerParts):
    """
    Checks and prepares the inputs of a ``fit``: a part of
    :class:`~art_latent.trainers.base.LatentTrainer`, not used on its own.
    """

    def _resident(self, x: np.ndarray, in_memory: bool | None) -> bool:
        """Whether ``fit(x, y)`` keeps its data on the device (see its `in_memory`)."""
        if in_memory is not None:
            return in_memory
        if self.device.type != "cuda":
            return True
        spec = self.sample_state()
        rows = 0 if spec is None or spec.refresh == "batch" else spec.rows
        needed = x.nbytes * (1 + 2 * rows)  # the inputs, and per stored row an input and its pair
        free = torch.cuda.mem_get_info(self.device)[0]
        if needed * 2 > free:
            logger.info("The training data and per-sample rows (~%.0f MiB) would take over half of the device's free "
                        "memory (%.0f MiB): they stay in host memory, batches are copied per step.", needed / 2**20,
                        free / 2**20)
            return False
        return True

    def _host_batch(self, data: Batch, rows: torch.Tensor) -> Batch:
        """A batch of ``fit(x, y, in_memory=False)``: rows of the host data and per-sample store, on the device."""
        samples = self._samples
        if samples is not None and samples.stored:
            sample = rows % len(data["y"])  # row c * n + i is copy c of sample i
            batch = samples.rows(rows, {k: self._host_rows(data[k], sample) for k in samples.spec.repeats})
            if samples.spec.rows == 1:  # one row per sample: the batch is the samples' x and y with their rows
                batch.update({k: self._host_rows(v, rows) for k, v in data.items() if k not in batch})
            return batch
        return {k: self._host_rows(v, rows) for k, v in data.items()}

    def _host_rows(self, tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        picked = tensor[rows]
        if self.device.type == "cuda":
            picked = picked.pin_memory()
        return picked.to(self.device, non_blocking=True)

    def _to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.from_numpy(np.ascontiguousarray(x)).to(self.device),
            torch.from_numpy(np.ascontiguousarray(y)).to(self.device),
        )

    def _check(self, x: Any, y: Any, name: str = "x") -> tuple[np.ndarray, np.ndarray]:
        clf = self._classifier
        return check_data(x, y, clf.input_shape, clf.nb_classes, clf.clip_values, name=name)

    def _check_every_steps(self, value: int | None, checkpoint: tuple[Path, int] | None) -> int | None:
        if value is None:
            return None
        value = check_int("checkpoint_every_steps", value)
        if checkpoint is None:
            raise ValueError("`checkpoint_every_steps` needs a `checkpoint_dir`.")
        return value

    def _dist_requested(self) -> bool:
        import torch.distributed as dist

        if self.distributed is False or not dist.is_available():
            return False
        return (dist.is_initialized() and dist.get_world_size() > 1) or int(os.environ.get("WORLD_SIZE", "1")) > 1

    def _validation_tensors(self, validation_data: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        if validation_data is None:
            return None
        if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
            raise ValueError("`validation_data` must be a tuple (x_val, y_val).")
        return self._to_device(*self._check(validation_data[0], validation_data[1], name="validation_data[0]"))

    def _fit_loader(
        self,
        loader: LoaderBatches,
        nb_epochs: int,
        validation_data: Any,
        scheduler: Any,
        callbacks: Sequence[Callback] | None,
        verbose: bool,
        checkpoint: tuple[Path, int] | None,
        resume: bool,
    ) -> list[dict[str, float]]:
        """``fit_generator`` on a DataLoader or re-iterable: one pass over it per epoch (see :mod:`.batches`)."""
        if loader.size is not None and loader.batch_size and not loader.drop_last \
                and loader.size % loader.batch_size == 1 and self._has_batchnorm():
            raise ValueError(
                f"The last batch of `generator` would hold one sample (data set of {loader.size}, batch_size "
                f"{loader.batch_size}): BatchNorm cannot normalise a single sample in training mode. Use "
                "drop_last=True in the DataLoader or another batch_size.")
        val = self._validation_tensors(validation_data)
        self._fingerprint = {"data": loader.describe(), "settings": self.resume_settings(),
                             "batch_size": loader.batch_size, **self._run_settings(scheduler)}
        self._seed_everything()
        resuming = resume and checkpoint is not None and (checkpoint[0] / ckpt.CHECKPOINT_NAME).exists()
        if resuming:
            warnings.warn("Resuming a run that trains from a loader: its data is identified by the loader's class, "
                          "data set size and batch size only, not by content (reading it all to hash it would cost "
                          "an epoch). Resume only with the same data.", UserWarning, stacklevel=3)
        self.prepare_generator(loader, resuming)
        clf = self._classifier
        checked: list[bool] = []

        if self._dist_requested() and not loader.sharded:
            warnings.warn("Data-parallel training from a loader without a DistributedSampler: every process trains "
                          "on all of the data. Give each process DataLoader(..., sampler=DistributedSampler(...)).",
                          UserWarning, stacklevel=3)

        def checked_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
            for x_b, y_b, index in loader.epoch(self._check, self.device, clf.nb_classes, tuple(clf.input_shape)):
                if not checked:  # the model contract, on the first batch (before any work on it)
                    self.check_model(x_b.detach().cpu().numpy())
                    checked.append(True)
                yield x_b, y_b, index

        def build_samples(epoch: int) -> None:
            samples = self._samples
            assert samples is not None
            loader.set_epoch(epoch)
            batches = checked_batches()
            first = next(batches, None)
            if first is None:
                raise ValueError("`generator` yields no batch.")
            if first[2] is None or loader.size is None:
                why = "the loader yields no sample indices" if first[2] is None else "its data set has no length"
                samples.make_per_batch(f"{why}; to make them once per sample, iterate a DataLoader over "
                                       "art_latent.data.IndexedDataset(dataset), which yields (x, y, index)")
                return
            samples.fill(epoch, loader.size, itertools.chain([first], batches))

        self._build_samples, self._samples_by_index = build_samples, True

        def epoch_batches(epoch: int) -> tuple[int | None, Iterator[Batch]]:
            loader.set_epoch(epoch)  # a DistributedSampler's shuffling, seeded per epoch

            def gen() -> Iterator[Batch]:
                for x_b, y_b, index in checked_batches():
                    yield {"x": x_b, "y": y_b} if index is None else {"x": x_b, "y": y_b, "index": index}

            return loader.nb_batches, gen()

        return self._loop(epoch_batches, nb_epochs, scheduler, callbacks, verbose, val, checkpoint, resume)

    def _check_scheduler_and_callbacks(self, scheduler: Any, callbacks: Any) -> None:
        if scheduler is not None:
            if not callable(getattr(scheduler, "step", None)):
                raise TypeError(f"`scheduler` must have a .step() method, got {type(scheduler).__name__}.")
            bound = getattr(scheduler, "optimizer", None)
            if isinstance(bound, torch.optim.Optimizer) and bound is not self._classifier.optimizer:
                raise ValueError(
                    "`scheduler` is bound to another optimizer than the classifier's: it would change learning rates "
                    "nobody trains with. Build it on `trainer.classifier.optimizer`."
                )
        if callbacks is not None:
            if callable(callbacks) or not isinstance(callbacks, list | tuple):
                raise TypeError(
                    f"`callbacks` must be a list of callables, got {type(callbacks).__name__}; wrap a single "
                    "callback in a list: callbacks=[fn]."
                )
            for callback in callbacks:
                if not callable(callback):
                    raise TypeError(f"`callbacks` must hold callables, got {type(callback).__name__}.")

    def _check_last_batch(self, n: int, batch_size: int, drop_last: bool) -> None:
        if n % batch_size == 1 and not (drop_last and n > batch_size) and self._has_batchnorm():
            raise ValueError(
                f"The last batch of every epoch would hold one sample ({n} samples per epoch, batch_size="
                f"{batch_size}): BatchNorm cannot normalise a single sample in training mode. Pass `drop_last`=True "
                "or another `batch_size`."
            )

    def _has_batchnorm(self) -> bool:
        return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for module in self.trained_modules() for m in module.modules())

    def _check_fit_params(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        """Method-specific checks of the training data, before any work (override to add)."""

    def _seed_everything(self) -> None:
        self._shuffle_generator = torch.Generator()
        if self.seed is None:
            self._shuffle_generator.seed()
            return
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)  # ART's attacks draw their random initialisations from numpy
        self._shuffle_generator.manual_seed(self.seed)
