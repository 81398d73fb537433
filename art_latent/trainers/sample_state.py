"""
Per-sample state: tensors a defense keeps for every training sample (HLDR's and the denoiser's precomputed pairs,
AGNT's fixed noise), declared by the method as a :class:`SampleState` and made, stored, looked up, refreshed and
checkpointed by the training loop (:class:`SampleStore`), so that no method hand-writes that bookkeeping.

A method returns its declaration from :meth:`~art_latent.trainers.base.LatentTrainer.sample_state`:

* ``make(x, y)`` builds the tensors of a batch of benign samples: a dict of tensors with ``rows * len(x)`` rows,
  grouped by copy (all samples' first row, then all samples' second row, ...: the layout of
  :func:`~art_latent.perturbations.budget_pairs`). With one row per sample its keys are added to the batch's
  ``"x"`` and ``"y"`` (or replace them); with several, what it returns *is* the batch (it must hold ``"y"``, the
  label of each row). Keys ending in ``_host`` stay on the host (read without a device synchronisation).
* ``refresh``: ``"never"`` (made once at the start of ``fit`` from the starting model, reused by a resumed run),
  ``"epoch"`` (remade before every epoch from the model of that moment) or ``"batch"`` (made per batch: nothing is
  stored).

Where it lives:

* ``fit(x, y)``: the whole data set is on the device already, so the tensors are made in one go and stored there;
  the loop shuffles their rows (a batch of ``batch_size`` rows is ``batch_size`` pairs).
* ``fit_generator`` / ``fit`` with a loader that yields sample indices (``(x, y, index)`` batches, e.g. a
  ``DataLoader`` over :class:`~art_latent.data.IndexedDataset`): a pass over the loader before training (before
  every epoch with ``"epoch"``) fills a host store of ``rows * len(dataset)`` rows, or memory-mapped files in
  ``sample_state_dir`` for data larger than memory; each batch then takes its samples' rows (a batch of ``b``
  samples trains on ``rows * b`` rows, as ``"batch"`` does) and copies them to the device without blocking. Keys the
  declaration lists in ``repeats`` (the batch's own ``x`` / ``y`` repeated per copy, e.g. HLDR's clean member of
  each pair) and host copies of other keys are not stored: they are rebuilt per batch.
* a loader without indices, or an ART ``DataGenerator``: the rows cannot be found again, so they are made per batch
  (``"batch"``) and a warning says so.

Checkpoints hold the stored tensors: with ``"never"`` in a file of their own written once per run, with ``"epoch"``
in checkpoints inside an epoch (an epoch's rows come from the model at its start, which a later model cannot remake),
so a resume continues with exactly the rows the interrupted run had.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from art_latent.utils import user_stacklevel
from art_latent.validation import check_choice, check_int

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
REFRESH = ("never", "epoch", "batch")
#: Suffix of the keys kept on the host.
HOST = "_host"


@dataclass(frozen=True)
class SampleState:
    """
    What a method keeps per training sample (see the module documentation).

    :param make: ``make(x, y) -> dict`` of tensors with ``rows * len(x)`` rows, grouped by copy.
    :param refresh: ``"never"``, ``"epoch"`` or ``"batch"``.
    :param rows: Rows made per sample (HLDR: one per budget, plus one noise pair).
    :param name: What the rows are, for log messages.
    :param repeats: Keys of ``make``'s result that are its own ``x`` / ``y`` repeated once per copy (HLDR's clean
                    member of each pair): a store indexed by sample does not keep them but repeats the batch's own.
    """

    make: Callable[[torch.Tensor, torch.Tensor], Batch]
    refresh: str = "never"
    rows: int = 1
    name: str = "per-sample state"
    repeats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not callable(self.make):
            raise TypeError(f"`make` must be callable, got {type(self.make).__name__}.")
        check_choice("refresh", self.refresh, REFRESH)
        check_int("rows", self.rows)
        for key in self.repeats:
            check_choice("repeats", key, ("x", "y"))


def _repeat(tensor: torch.Tensor, copies: int) -> torch.Tensor:
    return tensor.repeat(copies, *([1] * (tensor.ndim - 1)))


def _checked(made: Any, nb_rows: int, name: str, copies: int) -> Batch:
    if not isinstance(made, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in made.items()):
        raise TypeError(f"The {name}'s `make` must return a dict of tensors by name, got {type(made).__name__}.")
    if copies > 1 and "y" not in made:
        raise ValueError(f"The {name}'s `make` returns {copies} rows per sample, so it must return their labels "
                         "`y` too.")
    wrong = {k: tuple(v.shape) for k, v in made.items() if v.ndim == 0 or v.shape[0] != nb_rows}
    if wrong:
        raise ValueError(f"The {name}'s `make` must return {nb_rows} rows per tensor, got shapes {wrong}.")
    return made


class SampleStore:
    """
    The storage of one :class:`SampleState` during a ``fit`` (made by the loop, not by users).

    :param spec: The method's declaration.
    :param device: The training device.
    :param directory: Where memory-mapped files hold the rows of a loader's data set (default: host memory).
    """

    def __init__(self, spec: SampleState, device: torch.device, directory: str | Path | None = None) -> None:
        self.spec = spec
        #: Whether the rows are made per batch (``"batch"``, or data without sample indices).
        self.per_batch = spec.refresh == "batch"
        #: Whether batches come with sample indices and take their rows here (a loader), rather than holding them.
        self.by_index = False
        self.device = device
        self.directory = None if directory is None else Path(directory)
        #: The stored rows (``fit(x, y)``: on the device; a loader: on the host), ``None`` before they are made.
        self.data: Batch | None = None
        #: The epoch the rows were made for (``"epoch"``), or ``-1`` (``"never"``).
        self.epoch: int | None = None
        self._size = 0  # samples of an indexed store (0: rows in data-set order, fit(x, y))
        self._filled: torch.Tensor | None = None
        self._files: list[Path] = []
        self._host_keys: tuple[str, ...] = ()
        self._state: Batch | None = None  # what state_dict returns, the same objects until the rows change
        #: Counts the changes of the rows (made, remade, loaded, moved): equal generations hold equal rows.
        self.generation = 0

    @property
    def stored(self) -> bool:
        """Whether the rows are stored (``"never"`` / ``"epoch"``) rather than made per batch."""
        return not self.per_batch

    @property
    def indexed(self) -> bool:
        """Whether the rows are stored by sample index (a loader's data set) and taken per batch."""
        return self._size > 0

    def make_per_batch(self, reason: str) -> None:
        """Make the rows per batch from now on (data whose samples cannot be found again), warning why."""
        if not self.per_batch:
            warnings.warn(f"The {self.spec.name} (refresh={self.spec.refresh!r}) will be made per batch: {reason}.",
                          UserWarning, stacklevel=user_stacklevel())
            self.per_batch = True

    def due(self, epoch: int) -> bool:
        """Whether the rows must be made before `epoch`."""
        if not self.stored:
            return False
        return self.data is None or (self.spec.refresh == "epoch" and self.epoch != epoch)

    # ------------------------------------------------------------------ making

    def make(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        """The rows of one batch, with the host copies of their ``_host`` keys."""
        return _checked(self.spec.make(x, y), self.spec.rows * len(x), self.spec.name, self.spec.rows)

    def merge(self, batch: Batch, rows: Batch) -> Batch:
        """The batch `rows` make of `batch`: added to it (one row per sample), or replacing it (several)."""
        return rows if self.spec.rows > 1 else {**batch, **rows}

    def build(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Make the rows of the whole data set `x`, `y` (on the device: ``fit(x, y)``)."""
        logger.info("Making the %s of %d samples (%d row(s) each).", self.spec.name, len(x), self.spec.rows)
        self._release()
        self.data, self._size, self._filled = self.make(x, y), 0, None
        self.epoch = epoch if self.spec.refresh == "epoch" else -1

    def fill(self, epoch: int, size: int, batches: Any) -> None:
        """
        Make the rows of every sample of a loader's data set, stored on the host by sample index.

        :param epoch: The epoch the rows are for.
        :param size: The data set's number of samples (indices are ``0 .. size - 1``).
        :param batches: Iterable of ``(x, y, index)`` with `x`, `y` on the device and `index` on the host.
        """
        logger.info("Making the %s of %d samples (%d row(s) each) in a pass over the loader.", self.spec.name,
                    size, self.spec.rows)
        self._release()
        self._size, self._filled, self.data = size, torch.zeros(size, dtype=torch.bool), None
        for x, y, index in batches:
            made = self.make(x, y)
            if self.data is None:  # neither host copies nor the batch's own x / y are stored twice
                own = {"x": x, "y": y}
                wrong = [k for k in self.spec.repeats
                         if k not in made or not torch.equal(made[k], _repeat(own[k], self.spec.rows))]
                if wrong:
                    raise ValueError(f"The {self.spec.name} declares {wrong} as the batch's own tensors repeated per "
                                     "copy (`repeats`), but `make` returns other values.")
                self._host_keys = tuple(k[: -len(HOST)] for k in made if k.endswith(HOST) and k[: -len(HOST)] in made)
                self.data = {k: self._allocate(k, v) for k, v in made.items()
                             if not (k.endswith(HOST) and k[: -len(HOST)] in made) and k not in self.spec.repeats}
            if len(index) and (int(index.min()) < 0 or int(index.max()) >= size):
                raise ValueError(f"The loader yielded sample indices from {int(index.min())} to {int(index.max())}, "
                                 f"outside its data set's {size} samples: they must be the data set's indices.")
            rows = self._rows(index)
            for key, stored in self.data.items():
                stored[rows] = made[key].detach().to(stored.device, stored.dtype)
            self._filled[index] = True
        if self.data is None:
            raise ValueError("The loader yielded no batch: nothing to make the per-sample state from.")
        self.epoch = epoch if self.spec.refresh == "epoch" else -1

    def _allocate(self, key: str, like: torch.Tensor) -> torch.Tensor:
        shape = (self.spec.rows * self._size, *like.shape[1:])
        if self.directory is None:
            return torch.empty(shape, dtype=like.dtype, pin_memory=self.device.type == "cuda")
        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=self.directory, prefix=f"sample_state-{key}-", suffix=".bin")
        os.close(descriptor)
        path = Path(name)
        self._files.append(path)
        return torch.from_file(str(path), shared=True, size=math.prod(shape), dtype=like.dtype).view(shape)

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        # Row r of copy c of sample i is c * size + i: the layout make() returns for a batch, for the whole data set.
        copies = torch.arange(self.spec.rows, dtype=torch.long).unsqueeze(1) * self._size
        return (copies + index.long().unsqueeze(0)).reshape(-1)

    def place(self, on_device: bool, source: Batch) -> None:
        """
        Keep the rows where this ``fit(x, y)`` keeps its data (a checkpoint written with the other ``in_memory``):
        on the device in data-set order, or on the host indexed by sample. The row layout is the same.

        :param on_device: Whether the data is on the device.
        :param source: The fit's ``x`` and ``y`` (for the keys in ``repeats``).
        """
        if self.data is None or on_device != self.indexed:
            return
        data = self.data
        if on_device:
            placed = {k: v.to(self.device) for k, v in data.items()}
            placed.update({k + HOST: data[k].cpu() for k in self._host_keys})
            placed.update({k: _repeat(source[k], self.spec.rows).to(self.device) for k in self.spec.repeats})
            self._size, self._filled, self._host_keys = 0, None, ()
        else:
            size = len(source["y"])
            self._host_keys = tuple(k[: -len(HOST)] for k in data if k.endswith(HOST) and k[: -len(HOST)] in data)
            placed = {k: v.cpu() for k, v in data.items()
                      if not (k.endswith(HOST) and k[: -len(HOST)] in data) and k not in self.spec.repeats}
            self._size, self._filled = size, torch.ones(size, dtype=torch.bool)
        self.data, self._state = placed, None
        self.generation += 1

    # ------------------------------------------------------------------ batches

    def take(self, index: torch.Tensor, batch: Batch) -> Batch:
        """The stored rows of `batch`, whose samples are `index` (host indices into the data set), on the device."""
        assert self.data is not None and self._filled is not None
        index = index.cpu()
        if bool(((index < 0) | (index >= self._size)).any()) or not bool(self._filled[index].all()):
            raise ValueError(
                f"The loader yielded sample indices outside the {self._size} samples whose {self.spec.name} was made "
                "(the indices must be the data set's, and every epoch must yield the same samples; under data-parallel "
                "training from sharded loaders a resume restores the main process's rows only: resume such runs with "
                "fit(x, y), or from an epoch checkpoint with regenerate='epoch').")
        return self.rows(self._rows(index), {k: _repeat(batch[k], self.spec.rows) for k in self.spec.repeats})

    def rows(self, rows: torch.Tensor, own: Batch) -> Batch:
        """
        Rows of a host store by row index (copy ``c`` of sample ``i`` is row ``c * size + i``), on the device, with
        the host copies a method reads.

        :param rows: Host row indices.
        :param own: The keys of ``repeats`` for these rows (the batch's own ``x`` / ``y``), on the device.
        """
        assert self.data is not None
        batch: Batch = dict(own)
        for key, stored in self.data.items():
            host = stored[rows]
            if self.device.type == "cuda":
                host = host.pin_memory()
            batch[key] = host.to(self.device, non_blocking=True)
            if key in self._host_keys:
                batch[key + HOST] = host
        return batch

    def complete(self, batch: Batch) -> Batch:
        """`batch` with its per-sample rows: taken from the store by ``"index"``, or made now."""
        index = batch.pop("index", None)
        if self.by_index and not self.per_batch:
            if index is None:
                raise ValueError("A batch without sample indices: the loader yielded them in the pass that made the "
                                 f"{self.spec.name}, so it must yield (x, y, index) in every epoch.")
            return self.merge(batch, self.take(index, batch))
        return self.merge(batch, self.make(batch["x"], batch["y"]))

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> Batch | None:
        """The stored rows (with the bookkeeping of a loader's store), ``None`` when nothing is stored."""
        if self.data is None:
            return None
        if self._state is None:
            state = {k: v.detach().cpu() if k.endswith(HOST) else v for k, v in self.data.items()}
            if self.spec.refresh == "epoch":  # the epoch the rows are for
                state["__epoch__"] = torch.tensor(-1 if self.epoch is None else self.epoch)
            if self._filled is not None:
                state["__filled__"] = self._filled
                state["__host_keys__"] = torch.tensor([k in self._host_keys for k in sorted(self.data)])
            self._state = state
        return self._state

    def load_state_dict(self, state: Batch) -> None:
        """Use the rows of a checkpoint (what :meth:`state_dict` returned) instead of making them."""
        state = dict(state)
        filled, epoch = state.pop("__filled__", None), state.pop("__epoch__", None)
        host_keys = state.pop("__host_keys__", None)
        self._release()
        self.epoch = -1 if epoch is None else int(epoch)
        if filled is None:  # rows in data-set order (fit(x, y)): back to the device, host copies on the host
            self._size, self._filled = 0, None
            self.data = {k: v.cpu() if k.endswith(HOST) else v.to(self.device) for k, v in state.items()}
        else:
            self._filled = filled.cpu().bool()
            self._size = len(self._filled)
            self.data = {k: self._allocate(k, v).copy_(v) for k, v in state.items()}  # memory-mapped if configured
            flags = [] if host_keys is None else host_keys.tolist()
            self._host_keys = tuple(k for k, flag in zip(sorted(self.data), flags, strict=False) if flag)

    def _release(self) -> None:
        self.data, self._state = None, None
        self.generation += 1
        for path in self._files:
            path.unlink(missing_ok=True)
        self._files = []

    def close(self) -> None:
        """Drop the rows and delete memory-mapped files (at the end of ``fit``)."""
        self._release()
        self._filled = None
        self.epoch = None
