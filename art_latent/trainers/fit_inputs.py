"""
What :meth:`~art_latent.trainers.base.LatentTrainer.fit` and ``fit_generator`` check and prepare before the loop:
the arguments, the model against a batch, arrays on the device or in host memory, and loaders.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from art.data_generators import DataGenerator

from art_latent.capture import split_ref
from art_latent.trainers.batches import LoaderBatches
from art_latent.trainers.context import Batch, Callback, RunOptions
from art_latent.trainers.parts import TrainerParts
from art_latent.utils import preserve_mode, user_stacklevel
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

    def _run_options(self, nb_epochs: int, scheduler: Any, callbacks: Sequence[Callback] | None, verbose: bool,
                     checkpoint_dir: str | os.PathLike | None, checkpoint_every: int, resume: bool,
                     checkpoint_every_steps: int | None) -> RunOptions:
        """The arguments ``fit`` and ``fit_generator`` share, checked."""
        nb_epochs = check_int("nb_epochs", nb_epochs)
        self._check_scheduler_and_callbacks(scheduler, callbacks)
        checkpoint = self._check_checkpoint_args(checkpoint_dir, checkpoint_every, resume)
        every_steps = None
        if checkpoint_every_steps is not None:
            every_steps = check_int("checkpoint_every_steps", checkpoint_every_steps)
            if checkpoint is None:
                raise ValueError("`checkpoint_every_steps` needs a `checkpoint_dir`.")
        return RunOptions(nb_epochs, scheduler, callbacks, verbose, checkpoint, resume, every_steps)

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

    def _fit_loader(self, loader: LoaderBatches, validation_data: Any, run: RunOptions) -> list[dict[str, float]]:
        """``fit_generator`` on a DataLoader or re-iterable: one pass over it per epoch (see :mod:`.batches`)."""
        if loader.size is not None and loader.batch_size and not loader.drop_last \
                and loader.size % loader.batch_size == 1 and self._has_batchnorm():
            raise ValueError(
                f"The last batch of `generator` would hold one sample (data set of {loader.size}, batch_size "
                f"{loader.batch_size}): BatchNorm cannot normalise a single sample in training mode. Use "
                "drop_last=True in the DataLoader or another batch_size.")
        val = self._validation_tensors(validation_data)
        self._fingerprint = {"data": loader.describe(), "settings": self.resume_settings(),
                             "batch_size": loader.batch_size, **self._run_settings(run.scheduler)}
        self._seed_everything()
        resuming = run.resumes
        if resuming:
            warnings.warn("Resuming a run that trains from a loader: its data is identified by the loader's class, "
                          "data set size and batch size only, not by content (reading it all to hash it would cost "
                          "an epoch). Resume only with the same data.", UserWarning, stacklevel=user_stacklevel())
        self.prepare_generator(loader, resuming)
        clf = self._classifier
        checked: list[bool] = []

        if self._dist_requested() and not loader.sharded:
            warnings.warn("Data-parallel training from a loader without a DistributedSampler: every process trains "
                          "on all of the data. Give each process DataLoader(..., sampler=DistributedSampler(...)).",
                          UserWarning, stacklevel=user_stacklevel())

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

        return self._loop(epoch_batches, val, run)

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

    def _fit_arrays(
        self,
        x_np: np.ndarray,
        y_np: np.ndarray,
        in_memory: bool | None,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        val: tuple[torch.Tensor, torch.Tensor] | None,
        run: RunOptions,
    ) -> list[dict[str, float]]:
        """``fit(x, y)`` after its checks: the arrays on the device or in host memory, shuffled into batches."""
        self._seed_everything()
        resident = self._resident(x_np, in_memory)
        if resident:
            x_t, y_t = self._to_device(x_np, y_np)
        else:  # host memory, pinned for copies without blocking
            x_t, y_t = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x_np, y_np))
            if self.device.type == "cuda":
                x_t, y_t = x_t.pin_memory(), y_t.pin_memory()

        def build_samples(epoch: int) -> None:
            samples = self._samples
            assert samples is not None
            if resident:
                samples.build(epoch, x_t, y_t)
                return
            chunk = max(batch_size, 1024)
            samples.fill(epoch, len(x_t), ((x_t[s : s + chunk].to(self.device, non_blocking=True),
                                            y_t[s : s + chunk].to(self.device, non_blocking=True),
                                            torch.arange(s, min(s + chunk, len(x_t))))
                                           for s in range(0, len(x_t), chunk)))

        self._build_samples, self._samples_by_index = build_samples, False
        state: list[Batch] = []  # the per-sample tensors, made by prepare_data at the first epoch

        def epoch_batches(epoch: int) -> tuple[int, Iterator[Batch]]:
            if not state:
                state.append(self.prepare_data(x_t, y_t))  # host tensors when not resident
            data = state[0] = self.on_epoch_start(epoch, state[0])
            samples = self._samples
            n = len(data["y"])
            if samples is not None and samples.stored:
                assert samples.data is not None
                samples.place(resident, {"x": x_t, "y": y_t})  # rows a checkpoint of the other in_memory restored
                if resident:
                    data = samples.merge(data, samples.data)
                n = samples.spec.rows * len(x_t)
            # The order is drawn on the host; per-sample tensors a method keeps on the host (e.g. HLDR's budget of
            # each pair, read without a device synchronisation) are indexed with the host copy.
            order_host = torch.randperm(n, generator=self._shuffle_generator) if shuffle else torch.arange(n)
            order = order_host.to(self.device)
            on_host = {k for k, v in data.items() if v.device != order.device}
            world = 1 if self._dist is None else self._dist.world_size
            step = batch_size * world  # every process takes its contiguous part of each global batch
            # A last global batch too small to give every process a sample is dropped under data-parallel training.
            starts = [s for s in range(0, n, step) if world == 1 or min(step, n - s) >= world]
            if drop_last and n - starts[-1] < step and len(starts) > 1:
                starts = starts[:-1]
            last = min(step, n - starts[-1]) // world
            if last == 1 and self._has_batchnorm():
                raise ValueError(
                    f"The last batch of every epoch would hold one sample ({n} samples per epoch, batch_size="
                    f"{batch_size}{f' x {world} processes' if world > 1 else ''}): BatchNorm cannot normalise a "
                    "single sample in training mode. Pass `drop_last`=True or another `batch_size`."
                )

            def batches() -> Iterator[Batch]:
                for start in starts:
                    index, index_host = order[start : start + step], order_host[start : start + step]
                    self._global_batch_size = len(index)
                    if self._dist is not None:
                        index, index_host = self._dist.shard(index), self._dist.shard(index_host)
                    if resident:
                        yield {k: v[index_host if k in on_host else index] for k, v in data.items()}
                    else:
                        yield self._host_batch(data, index_host)

            return len(starts), batches()

        return self._loop(epoch_batches, val, run)

    def _fit_art_generator(self, generator: DataGenerator, validation_data: Any,
                           run: RunOptions) -> list[dict[str, float]]:
        """``fit_generator`` on an ART ``DataGenerator`` (not a torch one) after its checks: its numpy batches."""
        if generator.size is None or generator.batch_size is None:
            raise ValueError("The DataGenerator must know its `size` and `batch_size`.")
        if generator.size <= 0 or generator.batch_size <= 0:
            raise ValueError(
                f"The DataGenerator's `size` and `batch_size` must be positive, got {generator.size} and "
                f"{generator.batch_size}."
            )
        if generator.size % generator.batch_size == 1 and self._has_batchnorm():
            raise ValueError(
                f"The DataGenerator's last batch would hold one sample (size {generator.size}, batch_size "
                f"{generator.batch_size}): BatchNorm cannot normalise a single sample in training mode. Use another "
                "batch_size."
            )
        val = self._validation_tensors(validation_data)
        self._fingerprint = {"data": {"generator": f"{type(generator).__module__}.{type(generator).__qualname__}",
                                      "size": int(generator.size), "batch_size": int(generator.batch_size)},
                             "settings": self.resume_settings(), "batch_size": int(generator.batch_size),
                             **self._run_settings(run.scheduler)}
        self._seed_everything()
        self.prepare_generator(generator, run.resumes)
        # an ART DataGenerator's samples cannot be found again: made per batch
        self._build_samples, self._samples_by_index = None, False
        nb_batches = math.ceil(generator.size / generator.batch_size)
        checked: list[bool] = []

        def epoch_batches(epoch: int) -> tuple[int, Iterator[Batch]]:
            def gen() -> Iterator[Batch]:
                for _ in range(nb_batches):
                    x_np, y_np = self._check(*generator.get_batch())
                    if not checked:  # the model contract, on the first batch (before its training step)
                        self.check_model(x_np)
                        checked.append(True)
                    x_b, y_b = self._to_device(x_np, y_np)
                    yield {"x": x_b, "y": y_b}

            return nb_batches, gen()

        return self._loop(epoch_batches, val, run)

    def check_model(self, x: np.ndarray) -> None:
        """
        The model contract, checked with one forward pass in eval mode on the first samples before any other work
        (no BatchNorm statistic moves): the model has a trainable parameter, returns logits of shape
        ``(n, nb_classes)`` (through ``output_key`` / ``logits_fn`` when set), and every layer the method
        regularizes runs. Methods may extend it.

        :param x: A few training inputs (numpy, validated).
        :raises ValueError: Naming ``nb_classes``, the model's output or the layer.
        :raises TypeError: If the output is not a tensor and nothing says where the logits are.
        """
        clf = self._classifier
        model = clf.model
        if not any(p.requires_grad for module in self.trained_modules() for p in module.parameters()):
            raise ValueError("The `classifier`'s model has no trainable parameter (none, or all with requires_grad="
                             "False): there is nothing to train.")
        sample = torch.from_numpy(np.ascontiguousarray(x[:8])).to(self.device)
        with preserve_mode(model), torch.no_grad():
            model.eval()
            x_pre = self._preprocess(sample)
            output = model(x_pre)
            logits = clf.select_logits(output)
        expected = (len(sample), clf.nb_classes)
        binary = clf.nb_classes == 2 and tuple(logits.shape) == (len(sample), 1)  # ART's one-output binary convention
        if not binary and (logits.ndim != 2 or tuple(logits.shape) != expected):
            raise ValueError(
                f"The model returns logits of shape {tuple(logits.shape)} for {len(sample)} inputs, but the classifier "
                f"has `nb_classes`={clf.nb_classes}: expected {expected}. Set `nb_classes` to the model's number of "
                "outputs (or fix the model's last layer)."
            )
        layers = self.regularized_layers
        if layers:
            counts = clf.trace(x_pre, training=False).call_counts()
            for ref in layers:
                name, index = split_ref(ref)
                if counts.get(name, 0) <= index:
                    ran = counts.get(name, 0)
                    raise ValueError(
                        f"`{self.layers_argument}`: {ref!r} never runs in the model's forward pass (module {name!r} is "
                        f"called {ran} time(s)): it cannot be regularized. Choose layers that run, e.g. "
                        f"{clf.latent_layers[:4]}."
                    )
