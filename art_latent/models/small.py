"""
A small convolutional network for fast tests and demos.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from art_latent.models.vgg import ConvUnit, check_positive_int, make_activation, pooled_size

logger = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """
    ``features`` of convolution units (conv, batch norm, ELU), each followed by a 2x2 ceil-mode max-pooling, then
    ``classifier``: flatten, dense layer with the activation, logits.

    Hidden layers are named ``features.0``, ``features.1``, ... (post-activation outputs of the convolution units),
    pooling layers ``features.pool0``, ``features.pool1``, ..., and the dense layers ``classifier.fc`` and
    ``classifier.logits``. ``forward`` returns logits.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        input_size: int = 28,
        activation: Callable[[], nn.Module] = nn.ELU,
    ) -> None:
        """
        Create the network.

        :param in_channels: Number of input channels.
        :param num_classes: Number of classes, i.e. of logits.
        :param channels: Output channels of each convolution unit; one unit per entry.
        :param hidden: Units of the hidden dense layer.
        :param input_size: Height and width of the (square) input images.
        :param activation: Callable returning the activation module.
        """
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        num_classes = check_positive_int(num_classes, "num_classes")
        hidden = check_positive_int(hidden, "hidden")
        input_size = check_positive_int(input_size, "input_size")
        channels = tuple(channels)
        if not channels:
            raise ValueError("`channels` must contain at least one entry.")
        for value in channels:
            check_positive_int(value, "channels entries")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.input_size = input_size
        self.channels = channels
        self.hidden = hidden

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        previous = in_channels
        for index, out_channels in enumerate(channels):
            layers[str(index)] = ConvUnit(previous, out_channels, activation)
            layers[f"pool{index}"] = nn.MaxPool2d(kernel_size=2, ceil_mode=True)
            previous = out_channels
        self.features = nn.Sequential(layers)

        self.feature_size = pooled_size(input_size, len(channels))
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc=nn.Linear(previous * self.feature_size**2, hidden),
                act=make_activation(activation),
                logits=nn.Linear(hidden, num_classes),
            )
        )

    def conv_unit_names(self) -> list[str]:
        """
        Qualified names of the convolution units in forward order, e.g. ``["features.0", "features.1"]``.

        :return: The names, usable with ``named_modules`` and as hidden-layer identifiers.
        """
        return [f"features.{index}" for index in range(len(self.channels))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Compute the logits.

        :param x: Images of shape ``(N, in_channels, input_size, input_size)``.
        :return: Logits of shape ``(N, num_classes)``.
        """
        return self.classifier(self.features(x))
