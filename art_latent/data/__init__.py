"""
Offline datasets: loaders for local Fashion-MNIST, MNIST and CIFAR-10 files and a small bundled Fashion-MNIST subset.

Nothing in this package downloads data.
"""

from __future__ import annotations

import logging
import os

from art_latent.data.bundled import bundled_metadata, load_bundled_fashion_mnist
from art_latent.data.indexed import IndexedDataset
from art_latent.data.loaders import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    DatasetSplits,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)

logger = logging.getLogger(__name__)

DATASET_NAMES: tuple[str, ...] = ("bundled", "fashion-mnist", "mnist", "cifar10")

_ALIASES = {"fashion-mnist-subset": "bundled", "fmnist": "fashion-mnist", "cifar-10": "cifar10"}


def load_dataset(name: str = "bundled", path: str | os.PathLike | None = None) -> DatasetSplits:
    """
    Load a dataset by name.

    :param name: One of ``bundled`` (the Fashion-MNIST subset shipped with the package), ``fashion-mnist``,
                 ``mnist`` or ``cifar10``; case and ``_`` versus ``-`` are ignored.
    :param path: Directory of the dataset files (not accepted for ``bundled``); see :func:`load_fashion_mnist` for
                 where the file-based loaders look when it is None.
    :return: The dataset splits.
    :raises ValueError: If `name` is unknown, or `path` is given for the bundled subset.
    :raises FileNotFoundError: If the dataset files cannot be found.
    """
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key == "bundled":
        if path is not None:
            raise ValueError("The bundled dataset ships with the package; `path` must be None.")
        return load_bundled_fashion_mnist()
    if key == "fashion-mnist":
        return load_fashion_mnist(path)
    if key == "mnist":
        return load_mnist(path)
    if key == "cifar10":
        return load_cifar10(path)
    raise ValueError(f"Unknown dataset {name!r}; accepted names: {', '.join(DATASET_NAMES)}.")


__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "DatasetSplits",
    "IndexedDataset",
    "bundled_metadata",
    "load_bundled_fashion_mnist",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]
