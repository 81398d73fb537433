"""
The stratified Fashion-MNIST subset shipped inside the package, for tests, demos and offline use.

See ``LICENSE-fashion-mnist.txt`` next to this module for its licence and ``scripts/build_bundled_subset.py`` for how
it was built.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any

import numpy as np

from art_latent.data.loaders import FASHION_MNIST_CLASSES, DatasetSplits

logger = logging.getLogger(__name__)

BUNDLED_FILENAME = "fashion_mnist_subset.npz"


def _read_npz() -> dict[str, np.ndarray]:
    resource = resources.files(__package__).joinpath(BUNDLED_FILENAME)
    with resources.as_file(resource) as file, np.load(file, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def bundled_metadata() -> dict[str, Any]:
    """
    Metadata recorded when the bundled subset was built: seed, per-class counts, source file SHA-256 digests.

    :return: The metadata dictionary.
    """
    return json.loads(str(_read_npz()["metadata"]))


def load_bundled_fashion_mnist() -> DatasetSplits:
    """
    Load the Fashion-MNIST subset bundled with the package (300 train and 100 test images per class by default).

    :return: The dataset splits, images as ``float32`` in ``[0, 1]`` of shape ``(N, 1, 28, 28)``.
    """
    arrays = _read_npz()
    logger.debug(
        "Loaded bundled Fashion-MNIST subset: %d train, %d test.", len(arrays["y_train"]), len(arrays["y_test"])
    )
    return DatasetSplits(
        x_train=arrays["x_train"][:, None].astype(np.float32) / np.float32(255.0),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"][:, None].astype(np.float32) / np.float32(255.0),
        y_test=arrays["y_test"].astype(np.int64),
        class_names=FASHION_MNIST_CLASSES,
        source="bundled",
    )
