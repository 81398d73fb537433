"""
One file format for saved model weights, written by ``art-latent demo`` and ``art-latent benchmark`` and read by
``art-latent lsa`` (and by you): a ``state_dict`` plus what is needed to rebuild the model.

.. code-block:: python

   {"format": "art_latent.weights", "version": 1, "state_dict": {...},
    "model": "vgg16", "model_kwargs": {"width": 0.25}, "dataset": "bundled",
    "input_shape": [1, 28, 28], "nb_classes": 10, ...}

Files are written atomically and read with ``torch.load(weights_only=True)``. A plain ``state_dict`` file
(``torch.save(model.state_dict(), path)``) is read too, without metadata.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from art_latent.io import atomic_path, safe_load, unpickling_reason

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "SavedWeights", "load_weights", "save_weights", "unpickling_reason"]

#: The ``format`` entry of a weights file.
FORMAT = "art_latent.weights"
_META = ("model", "model_kwargs", "dataset", "input_shape", "nb_classes")


class SavedWeights(dict):
    """What :func:`load_weights` returns: the file's dict, with ``state_dict`` and the metadata (``None`` if absent)."""

    @property
    def state_dict(self) -> dict[str, Any]:
        """The model's ``state_dict``."""
        return self["state_dict"]

    def meta(self, key: str) -> Any:
        """
        A metadata entry.

        :param key: ``model``, ``model_kwargs``, ``dataset``, ``input_shape``, ``nb_classes`` or another key.
        :return: The value, or ``None`` when the file does not record it.
        """
        return self.get(key)


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, Any], model: str | None = None,
                 model_kwargs: Mapping[str, Any] | None = None, dataset: str | None = None,
                 input_shape: tuple[int, ...] | None = None, nb_classes: int | None = None,
                 **extra: Any) -> Path:
    """
    Write model weights with the metadata to rebuild the model.

    :param path: The file.
    :param state_dict: The model's ``state_dict`` (copied to the CPU).
    :param model: The :func:`art_latent.models.build_model` name (``vgg16``, ``small_cnn``, ...).
    :param model_kwargs: Its keyword arguments besides the data-derived ones (``{"width": 0.25}``).
    :param dataset: The data set it was trained on.
    :param input_shape: The input shape ``(C, H, W)``.
    :param nb_classes: The number of classes.
    :param extra: Further plain entries (``digest``, ``info``, ...).
    :return: The path.
    """
    import torch

    from art_latent.trainers.checkpoint import plain

    state = {"format": FORMAT, "version": 1,
             "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
             "model": model, "model_kwargs": dict(model_kwargs or {}), "dataset": dataset,
             "input_shape": None if input_shape is None else [int(s) for s in input_shape],
             "nb_classes": None if nb_classes is None else int(nb_classes), **extra}
    with atomic_path(path) as tmp:
        torch.save(plain(state), tmp)
    return Path(path)


def load_weights(path: str | os.PathLike) -> SavedWeights:
    """
    Read a weights file of :func:`save_weights` (or a plain ``state_dict`` file) with ``weights_only=True``.

    :param path: The file.
    :return: The entries; for a plain ``state_dict``, only ``state_dict`` (the metadata are ``None``).
    :raises FileNotFoundError: If the file does not exist.
    :raises ValueError: If it cannot be read safely or holds neither format.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The weights file {path} does not exist.")
    state = safe_load(path)  # ValueError with a one-line message
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not weights (a state_dict or an art_latent "
                         "weights file).")
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        result = SavedWeights(state)
    elif all(isinstance(v, torch.Tensor) for v in state.values()):
        result = SavedWeights({"state_dict": dict(state)})
    else:
        raise ValueError(f"{path} is neither a state_dict nor an art_latent weights file (keys: {sorted(state)[:6]}).")
    for key in _META:
        result.setdefault(key, None)
    return result
