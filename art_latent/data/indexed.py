"""
:class:`IndexedDataset`: a map-style dataset that also yields each sample's index, so that a trainer training from a
``DataLoader`` over it can find its per-sample state (HLDR's precomputed pairs, AGNT's fixed noise) by sample.
"""

from __future__ import annotations

from typing import Any

import torch


class IndexedDataset(torch.utils.data.Dataset):
    """
    Wrap a map-style dataset of ``(x, y, ...)`` items so that item ``i`` is ``(x, y, i)``; the default collate then
    gives batches ``(x, y, index)``, which :meth:`~art_latent.trainers.base.LatentTrainer.fit_generator` reads (see
    :mod:`art_latent.trainers.sample_state`).

    :param dataset: Any dataset with ``__len__`` and ``__getitem__`` returning ``(x, y)`` (further items are dropped).
    :raises TypeError: If `dataset` has no length.
    """

    def __init__(self, dataset: Any) -> None:
        try:
            self.size = len(dataset)
        except TypeError:
            raise TypeError(f"`dataset` must have a length (a map-style dataset), got {type(dataset).__name__}: "
                            "sample indices need a fixed set of samples.") from None
        self.dataset = dataset

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        item = self.dataset[index]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise TypeError(f"Item {index} of the dataset must be an (x, y) pair, got {type(item).__name__}.")
        return item[0], item[1], index
