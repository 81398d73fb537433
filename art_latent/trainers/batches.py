"""
Training batches from a torch ``DataLoader``, ART's ``PyTorchDataGenerator`` (its loader, without the numpy round
trip of ``get_batch``) or any re-iterable of ``(x, y)`` batches: what ``fit_generator`` (and ``fit`` given a loader)
iterates once per epoch.

Each batch is validated on the host before it reaches the device (shape, floating dtype, finite values inside the
classifier's ``clip_values``, labels in range), so a wrong loader fails at its first bad batch with the batch named;
batches a loader already put on an accelerator are checked by shape and dtype only (reading their values would
synchronise the device). Host batches are pinned (unless the loader pins them: ``pin_memory=True``) and copied to
the device without blocking. Nothing data-sized is kept on the device.

Under data-parallel training each process passes its own loader reading its shard
(``DataLoader(dataset, sampler=DistributedSampler(dataset), batch_size=b)``: a global batch is ``b`` times the number
of processes); the loop calls the sampler's ``set_epoch`` before every epoch, and warns when the loader is not
sharded (every process would train on all of the data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.utils.data.distributed

#: What a batch becomes: validated ``(x as float32, y as int64 class indices)``, on the host.
Check = Callable[[Any, Any, str], tuple[np.ndarray, np.ndarray]]


class LoaderBatches:
    """
    The batches of one pass over `loader`, validated and moved to `device`.

    :param loader: A ``torch.utils.data.DataLoader`` or any object that can be iterated more than once, each pass
                   yielding ``(x, y)`` or ``(x, y, index)`` with ``x`` of shape ``(n, *input_shape)``, ``y`` class
                   indices ``(n,)`` or one-hot rows and ``index`` the samples' integer indices in the data set
                   (:class:`~art_latent.data.IndexedDataset` adds them): methods with per-sample state find their
                   samples' rows by it (further items are ignored).
    :param argument: The argument's name in error messages.
    :raises TypeError: If `loader` is not iterable, or is a one-shot iterator (a generator object).
    """

    def __init__(self, loader: Any, argument: str = "generator") -> None:
        if isinstance(loader, (torch.Tensor, np.ndarray, str, bytes, dict)) or not isinstance(loader, Iterable):
            raise TypeError(f"`{argument}` must be an ART DataGenerator, a torch DataLoader or a re-iterable of "
                            f"(x, y) batches, got {type(loader).__name__}.")
        if isinstance(loader, Iterator):
            raise TypeError(f"`{argument}` is a one-shot iterator ({type(loader).__name__}): every epoch iterates it "
                            "anew, so give a DataLoader or another re-iterable (e.g. a list of batches).")
        self.loader = loader
        self.argument = argument
        try:
            self.nb_batches: int | None = len(loader)  # type: ignore[arg-type]
        except TypeError:  # a sampler or an iterable dataset without a length: the progress bar has no total
            self.nb_batches = None
        self.batch_size: int | None = getattr(loader, "batch_size", None)
        dataset = getattr(loader, "dataset", None)
        try:
            self.size: int | None = len(dataset) if dataset is not None else None
        except TypeError:
            self.size = None
        self.drop_last = bool(getattr(loader, "drop_last", False))
        self._cycle: Iterator[Any] | None = None

    @property
    def _sampler(self) -> Any:
        batch_sampler = getattr(self.loader, "batch_sampler", None)
        return getattr(batch_sampler, "sampler", None) or getattr(self.loader, "sampler", None)

    @property
    def sharded(self) -> bool:
        """Whether the loader reads one process's shard (a ``DistributedSampler``)."""
        return isinstance(self._sampler, torch.utils.data.distributed.DistributedSampler)

    def set_epoch(self, epoch: int) -> None:
        """Tell a sampler with ``set_epoch`` (``DistributedSampler``) the epoch, so its shuffling changes per epoch."""
        set_epoch = getattr(self._sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def describe(self) -> dict[str, Any]:
        """What identifies the data for a resume: the loader's class, data set size, batch size and batch count."""
        kind = type(self.loader)
        return {"loader": f"{kind.__module__}.{kind.__qualname__}", "size": self.size,
                "batch_size": self.batch_size, "nb_batches": self.nb_batches}

    def _split(self, item: Any, index: int) -> tuple[Any, Any]:
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            return item[0], item[1]
        raise TypeError(f"Batch {index} of `{self.argument}` must be an (x, y) pair, got {type(item).__name__}.")

    def epoch(self, check: Check, device: torch.device, nb_classes: int, input_shape: tuple[int, ...]
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """
        One pass: ``(x, y, index)`` per batch, `x` and `y` on `device`, validated with `check` (host batches) or by
        shape and dtype (batches already on an accelerator); `index` (the samples' indices, on the host) is ``None``
        when the batch has none.

        :param check: ``check(x, y, name)`` returning ``(x float32, y int64 indices)`` on the host, or raising.
        :param device: The training device.
        :param nb_classes: The classifier's number of classes (one-hot labels of device batches).
        :param input_shape: The classifier's input shape (device batches).
        """
        for index, item in enumerate(self.loader):
            x, y = self._split(item, index)
            name = f"batch {index} of `{self.argument}`"
            if isinstance(x, torch.Tensor) and x.device.type != "cpu":
                yield (*self._on_device(x, y, name, device, nb_classes, input_shape), self._indices(item, name))
                continue
            try:
                x_np, y_np = check(x, y, "x")
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
            yield self._to_device(x, x_np, device), self._to_device(y, y_np, device), self._indices(item, name)

    def _indices(self, item: Any, name: str) -> torch.Tensor | None:
        """The batch's sample indices (a third item of integers, one per sample) on the host, or ``None``."""
        if not isinstance(item, (tuple, list)) or len(item) < 3:
            return None
        value = item[2]
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor) or value.dtype.is_floating_point or value.dtype == torch.bool \
                or value.is_complex():
            return None  # a third item that is not indices (e.g. sample weights): not ours to read
        if value.ndim != 1 or len(value) != len(item[0]):
            raise ValueError(f"{name}: its sample indices must have shape ({len(item[0])},), got {tuple(value.shape)}.")
        return value.cpu().long()

    @staticmethod
    def _to_device(original: Any, checked: np.ndarray, device: torch.device) -> torch.Tensor:
        # The loader's own tensor when the check kept it as it was (it may be pinned already), else the checked copy.
        same = (isinstance(original, torch.Tensor) and original.dtype == torch.from_numpy(checked[:0]).dtype
                and tuple(original.shape) == checked.shape)
        tensor = original if same else torch.from_numpy(np.ascontiguousarray(checked))
        if device.type == "cuda" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)

    def _on_device(self, x: torch.Tensor, y: Any, name: str, device: torch.device, nb_classes: int,
                   input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(x.shape[1:]) != tuple(input_shape) or not x.is_floating_point():
            raise ValueError(f"{name}: `x` must be floating with shape (n, {', '.join(map(str, input_shape))}), got "
                             f"{x.dtype} {tuple(x.shape)}.")
        if not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0] or y.ndim not in (1, 2) \
                or (y.ndim == 2 and y.shape[1] != nb_classes):
            raise ValueError(f"{name}: `y` must be {x.shape[0]} class indices or one-hot rows of {nb_classes} "
                             f"classes, got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}.")
        labels = y.argmax(1) if y.ndim == 2 else y.long()
        return x.to(device, torch.float32, non_blocking=True), labels.to(device, non_blocking=True)

    def get_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """
        The next batch as numpy ``(x, y)``, cycling over the loader (for methods that draw data before training, like
        ART's ``DataGenerator.get_batch``).
        """
        for _attempt in range(2):
            if self._cycle is None:
                self._cycle = iter(self.loader)
            try:
                x, y = self._split(next(self._cycle), 0)
            except StopIteration:
                self._cycle = None
                continue
            as_numpy = [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in (x, y)]
            return as_numpy[0], as_numpy[1]
        raise ValueError(f"`{self.argument}` yields no batch.")
