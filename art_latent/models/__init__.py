"""
PyTorch classifiers with readable hidden-layer names: the paper's VGG and a small CNN for tests and demos.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from art_latent.models.small import SmallCNN
from art_latent.models.vgg import VGG, VGG_CONFIGS, ConvUnit

logger = logging.getLogger(__name__)

MODEL_NAMES: tuple[str, ...] = ("vgg16", "vgg11", "small_cnn")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """
    Build a model by name.

    :param name: ``vgg16``, ``vgg11`` or ``small_cnn`` (case and ``-`` versus ``_`` are ignored).
    :param kwargs: Keyword arguments of :class:`VGG` (except `config`, given by `name`) or :class:`SmallCNN`.
    :return: The model, in training mode.
    :raises ValueError: If `name` is unknown or `config` conflicts with `name`.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key in VGG_CONFIGS:
        if "config" in kwargs and kwargs["config"] != key:
            raise ValueError(f"`config={kwargs['config']!r}` conflicts with model name {name!r}.")
        kwargs.pop("config", None)
        return VGG(config=key, **kwargs)
    if key == "small_cnn":
        return SmallCNN(**kwargs)
    raise ValueError(f"Unknown model {name!r}; accepted names: {', '.join(MODEL_NAMES)}.")


__all__ = ["MODEL_NAMES", "VGG", "ConvUnit", "SmallCNN", "build_model"]
